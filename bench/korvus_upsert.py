#!/usr/bin/env python3
"""The korvus half of `make bench-clients`: korvus upsert_documents through pgml-proxy versus the
engine alone chunking and embedding the same documents.

korvus (pinned 1.1.5): a Collection with a Pipeline (splitter recursive_character with
chunk_size 300 / chunk_overlap 40, semantic_search with sentence-transformers/all-MiniLM-L6-v2),
add_pipeline, then upsert_documents of DOCS documents, timed. Each document is 2 or 3 review
texts of TABLE (review_body, ordered by id) joined by blank lines, behind a header with a PREFIX
and its number, so no text was embedded by an earlier step. The bundled reviews are short
(37 to 262 characters, 127 on average), hence chunk_size 300 rather than korvus's 4000: the
3-review documents and the longer 2-review ones split into 2+ chunks (--chunk-size and
--chunk-overlap change it). korvus chunks upstream (pgml.chunk) and embeds with the batch
pgml.embed(inputs => array_agg(chunk), ...) per upsert batch of 100, inside its transaction.

Engine alone: the same documents through `pgml-proxy chunk --splitter recursive_character
--kwargs '{"chunk_size":300,"chunk_overlap":40}'` (JSON-lines texts in, one JSON array of
chunks per text out) and the chunks through `pgml-proxy embed` (own process, cold cache); the
model-load time (embedding one text) is subtracted, as bench/embed.sh does.

Prints both times, the chunk counts (korvus's stored chunks and the engine chunker's must
agree) and the ratio engine time / korvus time (target >= 0.8). Exit status 0 when it ran,
1 when a step failed, 2 when the environment is not set up (korvus or psycopg missing, no URL).

Usage:
    .venv/bin/python bench/korvus_upsert.py --url postgres://postgres:postgres@127.0.0.1:PORT/postgres \
        [--docs 2000] [--table reviews] [--prefix 'korvus-bench'] [--bin target/release/pgml-proxy]
The table must exist (bench/clients.sh creates it from pgml.load_dataset('reviews_sample', NULL, 1000)).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SPLITTER = "recursive_character"
SPLITTER_KWARGS = {"chunk_size": 300, "chunk_overlap": 40}

try:
    from korvus import Collection, Pipeline
except ImportError as e:
    print(
        f"korvus_upsert: cannot import korvus ({e}): the korvus half of bench-clients needs korvus==1.1.5 "
        f"(requirements.txt; `make setup` installs it into .venv)",
        file=sys.stderr,
    )
    sys.exit(2)
try:
    import psycopg
except ImportError as e:
    print(f"korvus_upsert: cannot import psycopg ({e}); pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)


def documents(bodies, n, prefix):
    """n documents of 2 or 3 review texts each (every third has 3), cycling through the bodies."""
    docs = []
    m = len(bodies)
    for i in range(n):
        parts = [bodies[(2 * i) % m], bodies[(2 * i + 1) % m]]
        if i % 3 == 0:
            parts.append(bodies[(7 * i + 3) % m])
        text = f"{prefix} document {i}\n\n" + "\n\n".join(parts)
        docs.append({"id": f"{prefix}-{i}", "text": text})
    return docs


def run_tool(args, lines):
    """Runs a pgml-proxy subcommand with JSON-lines stdin; its stdout lines."""
    out = subprocess.run(
        args,
        input="".join(json.dumps(x) + "\n" for x in lines),
        capture_output=True,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.splitlines()


def engine_alone(binary, texts):
    """Seconds the engine alone takes to chunk `texts` and embed the chunks; the chunk count."""
    chunk = [binary, "chunk", "--splitter", SPLITTER, "--kwargs", json.dumps(SPLITTER_KWARGS)]
    embed = [binary, "embed", "--offline", "--model", MODEL]
    t0 = time.perf_counter()
    run_tool(embed, ["model load only"])
    t1 = time.perf_counter()
    chunk_lines = run_tool(chunk, texts)
    chunks = [c for line in chunk_lines for c in json.loads(line)]
    if len(chunk_lines) != len(texts):
        raise RuntimeError(f"pgml-proxy chunk printed {len(chunk_lines)} lines for {len(texts)} texts")
    vectors = run_tool(embed, chunks)
    t2 = time.perf_counter()
    if len(vectors) != len(chunks):
        raise RuntimeError(f"pgml-proxy embed printed {len(vectors)} vectors for {len(chunks)} chunks")
    return (t2 - t1) - (t1 - t0), len(chunks)


async def korvus_upsert(url, docs, prefix):
    """Seconds korvus's upsert_documents takes; the chunks and embeddings it stored."""
    os.environ["KORVUS_DATABASE_URL"] = url
    name = f"kbench_{uuid.uuid4().hex[:10]}"
    collection = Collection(name)
    pipeline = Pipeline(
        "v1",
        {
            "text": {
                "splitter": {"model": SPLITTER, "parameters": SPLITTER_KWARGS},
                "semantic_search": {"model": MODEL},
            }
        },
    )
    try:
        await collection.add_pipeline(pipeline)
        # Warm-up on other texts (the proxy preloads the model; this warms korvus's pool and the
        # statements): a few small documents with another prefix.
        await collection.upsert_documents(
            [{"id": f"warm-{i}", "text": f"{prefix} warm-up {i}: the soup was fine"} for i in range(5)]
        )
        t0 = time.perf_counter()
        await collection.upsert_documents(docs)
        t1 = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            counts = []
            for what in ("chunks", "embeddings"):
                cur = await conn.execute(f'SELECT count(*) FROM "{name}_v1"."text_{what}"')
                counts.append((await cur.fetchone())[0])
        warm_chunks = 5  # one chunk per warm-up document
        return t1 - t0, counts[0] - warm_chunks, counts[1] - warm_chunks
    finally:
        try:
            await collection.archive()
        except Exception as e:  # best-effort clean-up
            print(f"  (clean-up: archive failed: {e})", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("KORVUS_DATABASE_URL"), help="the proxy's postgres:// URL")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--table", default="reviews", help="table with id and review_body")
    parser.add_argument("--prefix", default="korvus-bench")
    parser.add_argument("--bin", default=os.environ.get("PGML_PROXY_BIN", "target/release/pgml-proxy"))
    parser.add_argument("--chunk-size", type=int, default=SPLITTER_KWARGS["chunk_size"])
    parser.add_argument("--chunk-overlap", type=int, default=SPLITTER_KWARGS["chunk_overlap"])
    args = parser.parse_args()
    SPLITTER_KWARGS.update(chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
    if not args.url:
        print("korvus_upsert: pass --url (or set KORVUS_DATABASE_URL) to the proxy's connection string", file=sys.stderr)
        return 2

    with psycopg.connect(args.url, autocommit=True) as conn:
        bodies = [r[0] for r in conn.execute(f"SELECT review_body FROM {args.table} ORDER BY id").fetchall()]
    if not bodies:
        print(f"korvus_upsert: {args.table} is empty", file=sys.stderr)
        return 1
    docs = documents(bodies, args.docs, args.prefix)

    try:
        engine_s, engine_chunks = engine_alone(args.bin, [d["text"] for d in docs])
    except (RuntimeError, OSError) as e:
        print(f"korvus_upsert: engine-alone baseline failed: {e}", file=sys.stderr)
        return 1
    print(f"documents:                       {len(docs)}, {engine_chunks} chunks by the engine's chunker "
          f"({SPLITTER} {json.dumps(SPLITTER_KWARGS)})")
    print(f"engine alone (chunk + embed):    {engine_s:.2f} s  ({engine_chunks / engine_s:.1f} chunks/s)", flush=True)
    try:
        korvus_s, stored_chunks, stored_embeddings = asyncio.run(korvus_upsert(args.url, docs, args.prefix))
    except Exception as e:
        print(f"korvus_upsert: korvus upsert_documents failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    print(f"korvus upsert_documents:         {korvus_s:.2f} s  ({stored_chunks / korvus_s:.1f} chunks/s; "
          f"{stored_chunks} chunks and {stored_embeddings} embeddings stored)")
    print(f"ratio engine/korvus:             {engine_s / korvus_s:.2f}  (target >= 0.8)")
    ok = stored_chunks == engine_chunks and stored_embeddings == stored_chunks
    if not ok:
        print("korvus_upsert: korvus stored a different number of chunks or embeddings than the engine's chunker made",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # korvus 1.1.5's Python binding can abort the interpreter at finalisation (PyGILState_Release
    # from its runtime threads, seen after a failed upsert): leave without finalising.
    os._exit(status)
