"""Engine benchmark, Python side: writes the deterministic review-like texts (--gen) and runs
the usual Python pipeline on them: HF tokenizers encode_batch + onnxruntime session.run +
numpy mean pooling, batch 32. Prints `python_texts_per_s=N`."""
import json
import os
import random
import sys
import time

WORDS = ("great terrible product shipping arrived broken works perfectly love hate battery "
         "screen price value quality customer service refund would recommend again never "
         "disappointed excellent sound picture movie dvd season episode actor plot boring "
         "funny classic kids family gift box package late fast cheap expensive size fits "
         "color returned second bought months ago still").split()


def gen(path, n=2000, seed=42):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(20, 200))]
            sentences, i = [], 0
            while i < len(words):
                k = rng.randint(5, 15)
                sentences.append(" ".join(words[i:i + k]).capitalize() + rng.choice([".", "!", "."]))
                i += k
            f.write(json.dumps(" ".join(sentences)) + "\n")


def run(path, model_dir, batch=32):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
    texts = [json.loads(line) for line in open(path)]
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.enable_padding()
    sess = ort.InferenceSession(os.path.join(model_dir, "onnx", "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    start = time.perf_counter()
    out = []
    for i in range(0, len(texts), batch):
        encs = tok.encode_batch(texts[i:i + batch])
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        m = mask[:, :, None].astype(np.float32)
        v = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    elapsed = time.perf_counter() - start
    print(f"python_texts_per_s={len(texts) / elapsed:.1f}")


if __name__ == "__main__":
    if sys.argv[1] == "--gen":
        gen(sys.argv[2])
    else:
        run(sys.argv[1], sys.argv[2])
