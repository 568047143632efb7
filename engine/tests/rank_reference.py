"""Independent reference for the rank fidelity test: sentence-transformers 3.3.1's
CrossEncoder.rank re-done with HF tokenizers + onnxruntime + numpy on the same model files:
strip, text-pair tokenization with longest_first truncation to model_max_length, batches of
batch_size in order padded to their longest pair with the pad token, Sigmoid in float32,
sorted(reverse=True) on the scores, [:top_k].
stdin: {"model_dir": str, "sets": [{"query": str, "documents": [str], "batch_size": int,
        "top_k": int|null}]}
stdout: [{"ids": [[int]], "scores": [float], "order": [int]}]"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    req = json.load(sys.stdin)
    d = req["model_dir"]
    tok_config = json.load(open(os.path.join(d, "tokenizer_config.json")))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=int(tok_config["model_max_length"]), strategy="longest_first")
    pad = tok_config["pad_token"]
    pad_id = tok.token_to_id(pad if isinstance(pad, str) else pad["content"])
    sess = ort.InferenceSession(os.path.join(d, "onnx", "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = []
    for s in req["sets"]:
        query = s["query"].strip()
        encs = [tok.encode(query, doc.strip()) for doc in s["documents"]]
        scores = []
        bs = s["batch_size"]
        for start in range(0, len(encs), bs):
            batch = encs[start : start + bs]
            width = max(len(e.ids) for e in batch)
            ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for r, e in enumerate(batch):
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = e.attention_mask
                types[r, : len(e.ids)] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = sess.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]
            x = logits[:, 0].astype(np.float32)
            scores.extend((np.float32(1) / (np.float32(1) + np.exp(-x))).tolist())
        results = sorted(
            [{"corpus_id": i, "score": np.float32(v)} for i, v in enumerate(scores)],
            key=lambda r: r["score"],
            reverse=True,
        )[: s["top_k"]]
        out.append(
            {
                "ids": [e.ids for e in encs],
                "scores": scores,
                "order": [r["corpus_id"] for r in results],
            }
        )
    json.dump(out, sys.stdout)


main()
