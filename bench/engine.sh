#!/usr/bin/env bash
# `make bench-engine`: 2,000 deterministic review-like texts through (a) the usual Python
# pipeline at batch 32 and (b) pgml-engine with its own batching, in fp32 and in int8
# (onnx/model_int8.onnx, laid by scripts/quantize_model.py); prints texts/s for each, the
# ratios engine/python and int8/fp32, the int8 vectors' min/mean cosine against fp32 on the
# 2,000 texts (held out: the int8 file was calibrated on other texts), single-text latency
# p50/p99 and cache-hit latency.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HF_HOME:?run through make bench-engine (needs .cache/env.mk)}"
: "${ORT_DYLIB_PATH:?}" "${PGML_PROXY_VENV:?}"
py="$PGML_PROXY_VENV/bin/python"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
repo="$HF_HOME/hub/models--sentence-transformers--all-MiniLM-L6-v2"
model_dir="$repo/snapshots/$(cat "$repo/refs/main")"

"$py" bench/engine_baseline.py --gen "$work/texts.jsonl"
cargo build --release --locked -q -p pgml-engine --example bench
python_line=$("$py" bench/engine_baseline.py "$work/texts.jsonl" "$model_dir")
echo "$python_line"
engine_out=$("${CARGO_TARGET_DIR:-target}/release/examples/bench" "$work/texts.jsonl")
echo "$engine_out"
py_tps=${python_line#*=}
en_tps=$(sed -n 's/^engine_texts_per_s=//p' <<<"$engine_out")
"$py" -c "print(f'ratio_engine_over_python={$en_tps/$py_tps:.2f} (target >= 1.2)')"
