"""Lay the default model's int8 variant (onnx/model_int8.onnx) and its fidelity record
(onnx/model_int8.fidelity.json) into the hub cache, next to the fp32 model lay_model.py laid.

The recipe (measured: `--frontier` prints every variant tried, see README "int8"):
  1. fp32 reference: the shipped onnx/model.onnx stores its weights as int8 + scale and casts
     them back to fp32 before every MatMul, so it computes in fp32; its DequantizeLinear-like
     Cast/Mul pairs are folded into fp32 initializers (the same arithmetic, cosine 1.0).
  2. Smoothing (SmoothQuant, alpha 0.5): BERT's LayerNorm outputs have a few channels with
     large values, which per-tensor activation scales cannot hold; each weight MatMul's input
     is divided per channel by s = max|x|^a / max|w|^(1-a) (a Mul node) and the weight's rows
     multiplied by s, which leaves the fp32 result unchanged and evens out the ranges.
  3. Static QDQ quantization (onnxruntime.quantization.quantize_static): per-channel int8
     weights, uint8 activations calibrated (MinMax) on CALIBRATION texts, which are not the
     held-out texts. Mixed precision: kept in fp32 are the attention score/context MatMuls
     (softmax path, two activations) and the second FFN MatMul of every layer (its input is
     the GELU output, whose range no static scale fits: quantizing it drops the minimum cosine
     to 0.89 even with smoothing).
  4. Fidelity: the int8 and fp32 models embed HELD_OUT texts (the first N of bench-engine's
     2,000, mean pooling, normalised) and the minimum and mean cosine are recorded.
Deterministic for a given ONNX Runtime (fixed texts, single-threaded statistics); idempotent
(skipped when the record says it was made by this recipe from this model); offline.
"""

import argparse
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
import engine_baseline  # noqa: E402  (bench-engine's held-out text generator)
from lay_model import REPO, REVISION, lay  # noqa: E402

INT8_FILE = "onnx/model_int8.onnx"
RECORD_FILE = "onnx/model_int8.fidelity.json"
ALPHA = 0.5
CALIBRATION_TEXTS = 64
HELD_OUT_TEXTS = 400
# Calibration: the same shape of text as bench-engine's, from another seed and a wider
# vocabulary, so no calibration text is a held-out text.
CALIBRATION_WORDS = engine_baseline.WORDS + (
    "the a and it is was this that for with but not very my i we they you of to in on at "
    "phone laptop camera charger cable headphones speaker book novel author chapter story "
    "kitchen blender coffee maker knife pan pot vacuum filter shoes shirt jacket dress "
    "instructions manual setup easy difficult broke stopped working replaced warranty seller "
    "delivery described expected cheaply made sturdy comfortable loud quiet bright dim heavy "
    "light small large worth money five stars one star"
).split()
CALIBRATION_SEED = 1234


def texts(n: int, seed: int, words) -> list:
    """bench/engine_baseline.py's generator: 20-200 words in sentences of 5-15."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = [rng.choice(words) for _ in range(rng.randint(20, 200))]
        sentences, i = [], 0
        while i < len(w):
            k = rng.randint(5, 15)
            sentences.append(" ".join(w[i:i + k]).capitalize() + rng.choice([".", "!", "."]))
            i += k
        out.append(" ".join(sentences))
    return out


def held_out(n: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.jsonl"
        engine_baseline.gen(str(path))
        return [json.loads(line) for line in path.read_text().splitlines()][:n]


class Tokens:
    def __init__(self, snapshot: Path):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(str(snapshot / "tokenizer.json"))
        self.tok.enable_truncation(max_length=256)
        self.tok.enable_padding()

    def feeds(self, batch: list) -> dict:
        encs = self.tok.encode_batch(batch)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def session(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def embed(sess, tokens: Tokens, batch_texts: list, batch: int = 16) -> np.ndarray:
    """Length-sorted batches of 16 (as the engine batches on CPU), mean pooling, L2 norm."""
    order = sorted(range(len(batch_texts)), key=lambda i: len(batch_texts[i]))
    out = [None] * len(batch_texts)
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        f = tokens.feeds([batch_texts[i] for i in idx])
        hidden = sess.run(None, f)[0]
        m = f["attention_mask"][:, :, None].astype(np.float32)
        v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        for j, i in enumerate(idx):
            out[i] = v[j]
    return np.stack(out)


def fold_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Folds Cast/Mul nodes whose inputs are all constants (the shipped file's int8 weights
    and their scales) into fp32 initializers."""
    inits = {i.name: i for i in model.graph.initializer}
    values, keep = {}, []
    for node in model.graph.node:
        constant = all(i in inits or i in values for i in node.input)
        if node.op_type in ("Cast", "Mul") and constant:
            args = [values[i] if i in values else numpy_helper.to_array(inits[i]) for i in node.input]
            if node.op_type == "Cast":
                values[node.output[0]] = args[0].astype(np.float32)
            else:
                values[node.output[0]] = (args[0] * args[1]).astype(np.float32)
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in model.graph.output}
    initializers = [i for i in model.graph.initializer if i.name in used]
    initializers += [numpy_helper.from_array(v, k) for k, v in values.items() if k in used]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    return model


def matmul_kinds(model: onnx.ModelProto) -> dict:
    """Each MatMul's (layer, kind): qkv, attn (two activations), out, ffn1, ffn2."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    kinds, layer, seen_attention_ln = {}, 0, set()
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        x, w = node.input
        src = producer.get(x)
        if w not in inits:
            kind = "attn"
        elif src is not None and src.op_type == "LayerNormalization":
            # A layer's first LayerNorm input feeds Q, K, V; the attention output's feeds FFN1.
            kind = "ffn1" if src.name in seen_attention_ln else "qkv"
        elif src is not None and src.op_type in ("Mul", "Erf") or "gelu" in x:
            kind = "ffn2"
        else:
            kind = "out"
        if kind == "out":
            # The next LayerNorm (residual + out) is the attention output's.
            seen_attention_ln.add(next_layer_norm(model, node))
        kinds[node.name] = (layer, kind)
        if kind == "ffn2":
            layer += 1
    return kinds


def next_layer_norm(model: onnx.ModelProto, start) -> str:
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier = list(start.output)
    for _ in range(8):
        nxt = []
        for name in frontier:
            for n in consumers.get(name, []):
                if n.op_type == "LayerNormalization":
                    return n.name
                nxt.extend(n.output)
        frontier = nxt
    return ""


def activation_absmax(model: onnx.ModelProto, names: list, tokens: Tokens, calibration: list) -> dict:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = session(probe, 1)
    absmax = {}
    for i in range(0, len(calibration), 8):
        for name, v in zip(names, sess.run(names, tokens.feeds(calibration[i:i + 8]))):
            a = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            absmax[name] = a if name not in absmax else np.maximum(absmax[name], a)
    return absmax


def smooth(model: onnx.ModelProto, kinds: dict, select, alpha: float, tokens: Tokens,
           calibration: list) -> onnx.ModelProto:
    """SmoothQuant: x' = x / s (a Mul node), w' = s * w rows, for the selected weight MatMuls;
    MatMuls sharing an input share its s."""
    inits = {i.name: i for i in model.graph.initializer}
    targets = [n for n in model.graph.node
               if n.op_type == "MatMul" and n.name in kinds and select(*kinds[n.name])
               and n.input[1] in inits]
    inputs = sorted({n.input[0] for n in targets})
    absmax = activation_absmax(model, inputs, tokens, calibration)
    for x in inputs:
        users = [n for n in targets if n.input[0] == x]
        wmax = np.max([np.abs(numpy_helper.to_array(inits[n.input[1]])).max(1) for n in users], axis=0)
        s = np.maximum(absmax[x], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        smoothed = x + "_smooth"
        model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), smoothed + "_inv"))
        model.graph.node.append(helper.make_node("Mul", [x, smoothed + "_inv"], [smoothed], name=smoothed + "_mul"))
        for n in users:
            w = numpy_helper.to_array(inits[n.input[1]])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
            n.input[0] = smoothed
    return topological(model)


def topological(model: onnx.ModelProto) -> onnx.ModelProto:
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    pending, ordered = list(model.graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i == "" or i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            sys.exit("quantize_model: graph has a cycle or a missing input")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


class Reader(CalibrationDataReader):
    def __init__(self, tokens: Tokens, calibration: list):
        self.batches = iter([tokens.feeds(calibration[i:i + 8]) for i in range(0, len(calibration), 8)])

    def get_next(self):
        return next(self.batches, None)


def quantize(pre: Path, out: Path, kinds: dict, tokens: Tokens, calibration: list, *,
             smooth_alpha=ALPHA, keep_fp32=lambda layer, kind: kind in ("attn", "ffn2"),
             dynamic=lambda layer, kind: False, activation=QuantType.QUInt8) -> None:
    """One variant: optional smoothing, static QDQ for the MatMuls neither kept in fp32 nor
    dynamic, then dynamic quantization for the `dynamic` ones."""
    model = onnx.load(str(pre))
    if smooth_alpha is not None:
        select = lambda layer, kind: kind != "attn" and not keep_fp32(layer, kind)  # noqa: E731
        model = smooth(model, kinds, select, smooth_alpha, tokens, calibration)
    smoothed = out.with_suffix(".smoothed.onnx")
    onnx.save(model, str(smoothed))
    excluded = [n for n, (layer, kind) in kinds.items() if keep_fp32(layer, kind) or dynamic(layer, kind)]
    dyn = [n for n, (layer, kind) in kinds.items() if dynamic(layer, kind) and not keep_fp32(layer, kind)]
    static_out = out.with_suffix(".static.onnx") if dyn else out
    quantize_static(str(smoothed), str(static_out), Reader(tokens, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activation,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": activation == QuantType.QInt8})
    if dyn:
        quantize_dynamic(str(static_out), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=dyn)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


def snapshot_dir(hub: Path) -> Path:
    repo = hub / ("models--" + REPO.replace("/", "--"))
    return repo / "snapshots" / REVISION


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_id(source_sha: str) -> str:
    """Changes when the source model, this script or ONNX Runtime changes."""
    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return hashlib.sha256(f"{source_sha}:{script}:{ort.__version__}".encode()).hexdigest()[:16]


def prepare(snapshot: Path, work: Path):
    source = snapshot / "onnx" / "model.onnx"
    fp32 = work / "fp32.onnx"
    onnx.save(fold_weights(onnx.load(str(source))), str(fp32))
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_optimization=False, skip_symbolic_shape=True)
    return fp32, pre, matmul_kinds(onnx.load(str(pre)))


def texts_per_s(path: Path, tokens: Tokens, sample: list, threads: int, rounds: int = 3) -> float:
    sess = session(path, threads)
    embed(sess, tokens, sample[:16])
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        embed(sess, tokens, sample)
        best = max(best, len(sample) / (time.perf_counter() - start))
    return best


def frontier(snapshot: Path, n_held: int) -> None:
    """Every variant tried, with its min/mean cosine on n_held held-out texts and its texts/s
    (best of 3 rounds over 200 texts, 1 and 2 intra-op threads)."""
    tokens = Tokens(snapshot)
    calibration = texts(CALIBRATION_TEXTS, CALIBRATION_SEED, CALIBRATION_WORDS)
    held = held_out(n_held)
    sample = held[:200]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32, pre, kinds = prepare(snapshot, work)
        reference = embed(session(fp32, 2), tokens, held)
        base = (texts_per_s(fp32, tokens, sample, 1), texts_per_s(fp32, tokens, sample, 2))
        print(f"{'variant':<44} {'min':>7} {'mean':>7} {'t/s 1th':>8} {'x fp32':>6} {'t/s 2th':>8} {'x fp32':>6}")
        print(f"{'fp32 (shipped weights, folded)':<44} {1:7.4f} {1:7.4f} {base[0]:8.1f} {1:6.2f} {base[1]:8.1f} {1:6.2f}")
        static = lambda **kw: (lambda out: quantize(pre, out, kinds, tokens, calibration, **kw))  # noqa: E731
        none = lambda layer, kind: False  # noqa: E731
        variants = [
            ("dynamic int8, all MatMuls (MatMulInteger)",
             lambda out: quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8,
                                          per_channel=True, op_types_to_quantize=["MatMul"])),
            ("static QDQ s8/s8, all MatMuls", static(smooth_alpha=None, keep_fp32=none, activation=QuantType.QInt8)),
            ("static QDQ u8/s8, all MatMuls", static(smooth_alpha=None, keep_fp32=none)),
            ("static u8/s8, attn fp32", static(smooth_alpha=None, keep_fp32=lambda l, k: k == "attn")),
            ("static u8/s8, attn+ffn2 fp32", static(smooth_alpha=None)),
            ("static u8/s8, attn+ffn2 fp32, ffn2 dynamic", static(smooth_alpha=None, keep_fp32=lambda l, k: k == "attn",
                                                                   dynamic=lambda l, k: k == "ffn2")),
            ("smooth 0.5 + static, attn fp32", static(keep_fp32=lambda l, k: k == "attn")),
            ("smooth 0.5 + static, attn+ffn2 fp32 (shipped)", static()),
            ("smooth 0.5 + static, attn fp32, ffn2 dynamic", static(keep_fp32=lambda l, k: k == "attn",
                                                                    dynamic=lambda l, k: k == "ffn2")),
            ("smooth 0.5 + static, attn+ffn2 of layers 0,5 fp32",
             static(keep_fp32=lambda l, k: k == "attn" or (k == "ffn2" and l in (0, 5)))),
        ]
        for name, make in variants:
            out = work / "variant.onnx"
            make(out)
            c = cosines(embed(session(out, 2), tokens, held), reference)
            s1 = texts_per_s(out, tokens, sample, 1)
            s2 = texts_per_s(out, tokens, sample, 2)
            print(f"{name:<44} {c.min():7.4f} {c.mean():7.4f} {s1:8.1f} {s1 / base[0]:6.2f} {s2:8.1f} {s2 / base[1]:6.2f}", flush=True)


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice lines
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("hub", nargs="?", default=".cache/huggingface/hub")
    parser.add_argument("--frontier", action="store_true", help="measure every variant tried and print the table")
    parser.add_argument("--held-out", type=int, default=HELD_OUT_TEXTS, help="held-out texts measured")
    args = parser.parse_args()
    hub = Path(args.hub)
    snapshot = snapshot_dir(hub)
    source = snapshot / "onnx" / "model.onnx"
    if not source.exists():
        sys.exit(f"quantize_model: {source} is missing (run scripts/lay_model.py first)")
    if args.frontier:
        frontier(snapshot, args.held_out)
        return
    recipe = recipe_id(sha256(source))
    record_path = snapshot / RECORD_FILE
    if (snapshot / INT8_FILE).exists() and record_path.exists():
        try:
            if json.loads(record_path.read_text()).get("recipe") == recipe:
                return
        except ValueError:
            pass
    started = time.time()
    tokens = Tokens(snapshot)
    calibration = texts(CALIBRATION_TEXTS, CALIBRATION_SEED, CALIBRATION_WORDS)
    held = held_out(args.held_out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32, pre, kinds = prepare(snapshot, work)
        out = work / "model_int8.onnx"
        quantize(pre, out, kinds, tokens, calibration)
        c = cosines(embed(session(out, 2), tokens, held), embed(session(fp32, 2), tokens, held))
        kept = sorted(n for n, (layer, kind) in kinds.items() if kind in ("attn", "ffn2"))
        record = {
            "precision": "int8",
            "min_cosine": round(float(c.min()), 6),
            "mean_cosine": round(float(c.mean()), 6),
            "texts": len(held),
            "reference": "onnx/model.onnx (fp32 compute)",
            "held_out": f"bench/engine_baseline.py gen(seed 42), first {len(held)} of 2000",
            "calibration": f"{CALIBRATION_TEXTS} texts, scripts/quantize_model.py seed {CALIBRATION_SEED}",
            "method": f"SmoothQuant alpha {ALPHA} + static QDQ (MinMax), per-channel int8 weights, "
                      "uint8 activations; fp32: attention score/context MatMuls and FFN output MatMuls",
            "fp32_nodes": kept,
            "onnxruntime": ort.__version__,
            "recipe": recipe,
        }
        files = {
            INT8_FILE: out.read_bytes(),
            RECORD_FILE: (json.dumps(record, indent=1) + "\n").encode(),
        }
        lay(hub, REPO, REVISION, files)
    print(f"quantize_model: {REPO} int8 -> {snapshot / INT8_FILE} (min cosine {record['min_cosine']:.4f}, "
          f"mean {record['mean_cosine']:.4f} on {len(held)} held-out texts; {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
