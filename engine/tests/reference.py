"""Independent reference for the fidelity tests: HF tokenizers + onnxruntime + numpy pooling
(CLS, max, mean, as the model's 1_Pooling/config.json says; Normalize as modules.json says),
read from the same model directory the engine uses, one text per run (no padding).
stdin: {"model_dir": str, "texts": [str], "prompt": str|null, "exclude_prompt": bool}
stdout: {"ids": [[int]], "vectors": [[float]]}"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    req = json.load(sys.stdin)
    d = req["model_dir"]
    sbert = json.load(open(os.path.join(d, "sentence_bert_config.json")))
    pooling = json.load(open(os.path.join(d, "1_Pooling", "config.json")))
    modules = json.load(open(os.path.join(d, "modules.json")))
    # sentence-transformers' Pooling: the active modes, concatenated in this order.
    modes = [m for m in ("cls_token", "max_tokens", "mean_tokens") if pooling.get("pooling_mode_" + m)]
    others = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k[13:] not in modes]
    assert modes and not others, f"reference implements cls, max and mean pooling only: {pooling}"
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    # sentence-transformers: truncate at max_seq_length, pad only to the batch's longest.
    tok.no_padding()
    tok.enable_truncation(max_length=sbert["max_seq_length"])
    sess = ort.InferenceSession(os.path.join(d, "onnx", "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    # The token states: by their usual names, else the first float output of rank 3.
    outs = sess.get_outputs()
    named = [o.name for o in outs if o.name in ("last_hidden_state", "token_embeddings")]
    rank3 = [o.name for o in outs if o.type == "tensor(float)" and len(o.shape) == 3]
    hidden_name = (named or rank3)[0]
    prompt = req.get("prompt") or ""
    excluded = 0
    if prompt and req.get("exclude_prompt"):
        excluded = len(tok.encode(prompt).ids) - 1
    ids_out, vecs = [], []
    for text in req["texts"]:
        enc = tok.encode(prompt + text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run([hidden_name], {k: v for k, v in feeds.items() if k in names})[0][0]
        m = mask[0].astype(np.float32).copy()
        m[:excluded] = 0
        parts = {
            "cls_token": lambda: hidden[0],
            "max_tokens": lambda: np.where(m[:, None] > 0, hidden, -1e9).max(0),
            "mean_tokens": lambda: (hidden * m[:, None]).sum(0) / max(m.sum(), 1e-9),
        }
        v = np.concatenate([parts[mode]() for mode in modes])
        if normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        ids_out.append(enc.ids)
        vecs.append(v.astype(float).tolist())
    json.dump({"ids": ids_out, "vectors": vecs}, sys.stdout)


main()
