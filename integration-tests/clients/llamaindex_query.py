#!/usr/bin/env python3
"""LlamaIndex's PostgresML index and query engine, unchanged, through pgml-proxy.

llama-index-indices-managed-postgresml 0.4.0 (with llama-index-core 0.12.0 and PostgresML's
Python SDK `pgml` 1.1.1, pinned in requirements-llamaindex.txt and installed into
.venv-llamaindex by scripts/setup_llamaindex.sh): PostgresMLIndex.from_documents (chunked with
pgml.chunk, embedded with the local default model), its retriever, and its query engine's
query, aquery and streaming query, which end in pgml.transform / pgml.transform_stream of a
chat model that the proxy routes to the OpenAI-compatible test server. Later releases (0.5.0+)
need llama-index-core 0.13+, whose ChatMessage.dict() has no "content": their query engine fails
with KeyError 'content' inside LlamaIndex, before any SQL is sent.

The script checks what LlamaIndex returns against the test server's rules (a chat answer is
`echo: <last user message>`, streamed word by word) and prints `LLAMAINDEX_RESULTS <json>`; the
Rust test (integration-tests/tests/korvus_transform.rs) matches it with what the server got.

Usage:
    PGML_DATABASE_URL=postgres://USER:PASSWORD@PROXY_HOST:PROXY_PORT/DB \
        .venv-llamaindex/bin/python integration-tests/clients/llamaindex_query.py

Exit status 0 when every check passed, 1 otherwise (each failure is printed), 2 when the
environment is not set up.
"""

import asyncio
import json
import os
import sys
import traceback
import uuid

from checks import Checks, pieces_of, step

try:
    from llama_index.core import Document
    from llama_index.indices.managed.postgresml import PostgresMLIndex
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(f"llamaindex_query: cannot import LlamaIndex ({e}); run scripts/setup_llamaindex.sh", file=sys.stderr)
    sys.exit(2)

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EIFFEL = "The Eiffel Tower is a wrought-iron lattice tower in Paris."
DOCUMENTS = [
    Document(id_="1", text=EIFFEL),
    Document(id_="2", text="Tomatoes are incredible on burgers."),
]
SCHEMA = {
    "content": {
        "splitter": {"model": "recursive_character"},
        "semantic_search": {"model": EMBEDDING_MODEL},
    }
}


def check_answer(checks, name, text, marker):
    """The server echoes the last user message: LlamaIndex's prompt with the context and query."""
    checks.check(isinstance(text, str) and text.startswith("echo: Context information is below."), f"{name}: the assistant text of LlamaIndex's prompt (got {text!r})")
    checks.check(isinstance(text, str) and EIFFEL in text, f"{name}: the context holds the Eiffel Tower document")
    checks.check(isinstance(text, str) and f"Query: {marker}" in text, f"{name}: the query {marker!r} in the prompt")


def main():
    checks = Checks()
    observed = {}
    url = os.environ.get("PGML_DATABASE_URL")
    if not url:
        print("llamaindex_query: set PGML_DATABASE_URL to the proxy", file=sys.stderr)
        return 2
    try:
        name = "li_" + uuid.uuid4().hex[:10]
        step(f"PostgresMLIndex.from_documents (collection {name})")
        index = PostgresMLIndex.from_documents(DOCUMENTS, collection_name=name, pipeline_schema=SCHEMA, pgml_database_url=url)

        step("retriever")
        nodes = index.as_retriever(limit=1).retrieve("iron tower in France")
        texts = [n.node.text for n in nodes]
        observed["retrieved"] = texts
        checks.check(texts == [EIFFEL], f"the best node is the Eiffel Tower document (got {texts!r})")

        step("query engine: query")
        engine = index.as_query_engine(vector_search_limit=1, model_parameters={"max_tokens": 40})
        response = engine.query("li-query where is the iron tower?")
        observed["query"] = response.response
        check_answer(checks, "query", response.response, "li-query where is the iron tower?")
        sources = [n.node.text for n in response.source_nodes]
        checks.check(sources == [EIFFEL], f"query: the source node is the Eiffel Tower document (got {sources!r})")

        step("query engine: aquery")
        response = asyncio.run(engine.aquery("li-aquery where?"))
        observed["aquery"] = response.response
        check_answer(checks, "aquery", response.response, "li-aquery where?")

        step("query engine: streaming query")
        streaming = index.as_query_engine(streaming=True, vector_search_limit=1)
        pieces = list(streaming.query("li-stream where?").response_gen)
        observed["stream"] = pieces
        text = "".join(pieces)
        check_answer(checks, "stream", text, "li-stream where?")
        checks.check(len(pieces) > 1 and [p for p in pieces if p] == pieces_of(text), "stream: the answer word by word, in order")
    except Exception:
        traceback.print_exc()
        checks.failures.append("an exception")
    print("LLAMAINDEX_RESULTS " + json.dumps(observed), flush=True)
    if checks.failures:
        print(f"\n{len(checks.failures)} check(s) failed", flush=True)
        return 1
    print("\nall checks passed", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # pgml's runtime threads keep the interpreter from exiting on its own.
    os._exit(code)
