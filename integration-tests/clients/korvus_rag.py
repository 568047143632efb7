#!/usr/bin/env python3
"""korvus 1.1.5's LLM calls, unchanged, through pgml-proxy to an OpenAI-compatible server.

Every korvus entry point that ends in pgml.transform or pgml.transform_stream:
OpenSourceAI.chat_completions_create / _stream / _async / _stream_async, Collection.rag and
rag_stream (completion and chat) over a vector_search context (documents upserted with the
local default embedding model first), TransformerPipeline.transform / transform_stream
(text-generation and conversational, batch sizes 1 and 2) and Builtins.transform with a text
task. Each call carries a marker of its own in its prompt or messages, so that the server's
record of the request can be found.

The script checks what korvus gives back against the test server's documented rules (a chat
answer is `echo: <last user message>`, a completion its prompt reversed, streamed word by
word) and prints everything korvus returned as one line `KORVUS_RESULTS <json>`; the Rust
test (integration-tests/tests/korvus_transform.rs) matches it with what the server received.

Usage:
    KORVUS_DATABASE_URL=postgres://USER:PASSWORD@PROXY_HOST:PROXY_PORT/DB KORVUS_LLM=MODEL \
        .venv/bin/python integration-tests/clients/korvus_rag.py

Exit status 0 when every check passed, 1 otherwise (each failure is printed), 2 when the
environment is not set up.
"""

import asyncio
import json
import os
import sys
import traceback
import uuid

from checks import Checks, chat_answer, completion_of, pieces_of, step

try:
    from korvus import Builtins, Collection, OpenSourceAI, Pipeline, TransformerPipeline
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(f"korvus_rag: cannot import korvus ({e}); pip install korvus==1.1.5", file=sys.stderr)
    sys.exit(2)

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SYSTEM = "You are a terse assistant."
JOIN = "\n--\n"
DOCUMENTS = [
    {"id": "1", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris."},
    {"id": "2", "text": "Tomatoes are incredible on burgers."},
    {"id": "3", "text": "Photosynthesis turns sunlight, water and carbon dioxide into sugar."},
]
QUERY = "famous iron landmark in the French capital"


def messages_for(marker):
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{marker} how many legs has a spider"},
    ]


def check_chat_completion(checks, name, result, model, messages):
    choices = result.get("choices") or []
    checks.check(result.get("object") == "chat.completion" and result.get("model") == model, f"{name}: a chat.completion of {model}")
    checks.check(len(choices) == 1, f"{name}: one choice (got {len(choices)})")
    if choices:
        message = choices[0].get("message") or {}
        checks.check(
            message.get("role") == "assistant" and message.get("content") == chat_answer(messages),
            f"{name}: assistant content {chat_answer(messages)!r} (got {message!r})",
        )


def check_chat_chunks(checks, name, chunks, model, messages):
    checks.check(all(c.get("object") == "chat.completion.chunk" and c.get("model") == model for c in chunks), f"{name}: chat.completion.chunk objects of {model}")
    checks.check(all(len(c.get("choices") or []) == 1 for c in chunks), f"{name}: one choice per chunk")
    got = [((c.get("choices") or [{}])[0].get("delta") or {}).get("content") for c in chunks]
    expected = pieces_of(chat_answer(messages))
    checks.check(got == expected, f"{name}: the pieces in order {expected!r} (got {got!r})")


def sync_open_source_ai(checks, model, observed):
    """OpenSourceAI's blocking calls (korvus runs its own runtime): outside asyncio."""
    client = OpenSourceAI()
    step("OpenSourceAI.chat_completions_create")
    messages = messages_for("osai-sync")
    result = client.chat_completions_create(model, messages, max_tokens=11, temperature=0.25)
    observed["osai_sync"] = result
    check_chat_completion(checks, "chat_completions_create", result, model, messages)

    step("OpenSourceAI.chat_completions_create, the model as an object")
    # korvus puts the object's other keys into the task (PostgresML's pipeline options).
    messages = messages_for("osai-object")
    result = client.chat_completions_create({"model": model, "device_map": "auto"}, messages, max_tokens=15, temperature=0.65)
    observed["osai_object"] = result
    check_chat_completion(checks, "chat_completions_create (model object)", result, model, messages)

    step("OpenSourceAI.chat_completions_create_stream")
    messages = messages_for("osai-stream-sync")
    chunks = list(client.chat_completions_create_stream(model, messages, max_tokens=12, temperature=0.35))
    observed["osai_stream_sync"] = chunks
    check_chat_chunks(checks, "chat_completions_create_stream", chunks, model, messages)


async def async_open_source_ai(checks, model, observed):
    client = OpenSourceAI()
    step("OpenSourceAI.chat_completions_create_async")
    messages = messages_for("osai-async")
    result = await client.chat_completions_create_async(model, messages, max_tokens=13, temperature=0.45)
    observed["osai_async"] = result
    check_chat_completion(checks, "chat_completions_create_async", result, model, messages)

    step("OpenSourceAI.chat_completions_create_stream_async")
    messages = messages_for("osai-stream-async")
    chunks = [c async for c in await client.chat_completions_create_stream_async(model, messages, max_tokens=14, temperature=0.55)]
    observed["osai_stream_async"] = chunks
    check_chat_chunks(checks, "chat_completions_create_stream_async", chunks, model, messages)


def context_query():
    return {
        "vector_search": {"query": {"fields": {"text": {"query": QUERY}}}, "document": {"keys": ["id"]}, "limit": 2},
        "aggregate": {"join": JOIN},
    }


def check_context(checks, name, text):
    """The context korvus put in: the vector_search's best document (local embedding model)."""
    checks.check(DOCUMENTS[0]["text"] in text, f"{name}: the context holds the Eiffel Tower document (got {text!r})")


async def rag(checks, model, observed):
    collection_name = f"korvus_rag_{uuid.uuid4().hex[:12]}"
    collection = Collection(collection_name)
    pipeline = Pipeline("v1", {"text": {"semantic_search": {"model": EMBEDDING_MODEL}}})
    try:
        step(f"collection {collection_name}: add_pipeline, upsert_documents")
        await collection.add_pipeline(pipeline)
        await collection.upsert_documents(DOCUMENTS)

        step("Collection.rag (completion)")
        prompt = "rag-completion Answer from: {CONTEXT}"
        result = await collection.rag(
            {"CONTEXT": context_query(), "completion": {"model": model, "prompt": prompt, "max_tokens": 21, "temperature": 0.5}},
            pipeline,
        )
        observed["rag_completion"] = result
        answers = result.get("rag")
        sources = (result.get("sources") or {}).get("CONTEXT") or []
        checks.check(isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str), f"rag: 'rag' is one generated text (got {answers!r})")
        checks.check([s["document"]["id"] for s in sources][:1] == ["1"], f"rag: sources.CONTEXT lists the Eiffel Tower document first (got {sources!r})")
        if isinstance(answers, list) and answers and isinstance(answers[0], str):
            sent = completion_of(answers[0])  # the server reverses the prompt it got
            check_context(checks, "rag", sent)
            checks.check(sent.startswith("rag-completion Answer from: "), f"rag: the prompt is korvus's template with the context in it (got {sent!r})")

        step("Collection.rag (chat)")
        chat_query = {
            "CONTEXT": context_query(),
            "chat": {
                "model": model,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "rag-chat Given {CONTEXT} where is the tower?"},
                ],
                "max_tokens": 22,
            },
        }
        result = await collection.rag(chat_query, pipeline)
        observed["rag_chat"] = result
        answers = result.get("rag")
        checks.check(isinstance(answers, list) and len(answers) == 1 and str(answers[0]).startswith("echo: rag-chat Given "), f"rag chat: 'rag' is the assistant text (got {answers!r})")
        if isinstance(answers, list) and answers:
            check_context(checks, "rag chat", str(answers[0]))

        step("Collection.rag_stream (completion)")
        stream = await collection.rag_stream(
            {"CONTEXT": context_query(), "completion": {"model": model, "prompt": "rag-stream-completion {CONTEXT}", "max_tokens": 23}},
            pipeline,
        )
        chunks = [c async for c in stream.stream()]
        observed["rag_stream_completion"] = chunks
        ok = checks.check(all(isinstance(c, list) and len(c) == 1 and isinstance(c[0], str) for c in chunks) and len(chunks) > 1, f"rag_stream: several chunks, each [piece] (got {chunks!r})")
        if ok:
            text = "".join(c[0] for c in chunks)
            check_context(checks, "rag_stream", completion_of(text))
            checks.check([c[0] for c in chunks] == pieces_of(text), "rag_stream: the pieces in the server's order")

        step("Collection.rag_stream (chat)")
        stream = await collection.rag_stream(
            {
                "CONTEXT": context_query(),
                "chat": {"model": model, "messages": [{"role": "user", "content": "rag-stream-chat {CONTEXT} where?"}], "max_tokens": 24},
            },
            pipeline,
        )
        chunks = [c async for c in stream.stream()]
        observed["rag_stream_chat"] = chunks
        ok = checks.check(all(isinstance(c, list) and len(c) == 1 and isinstance(c[0], str) for c in chunks) and len(chunks) > 1, f"rag_stream chat: several chunks, each [piece] (got {chunks!r})")
        if ok:
            text = "".join(c[0] for c in chunks)
            checks.check(text.startswith("echo: rag-stream-chat "), f"rag_stream chat: the assistant text (got {text!r})")
            check_context(checks, "rag_stream chat", text)
    finally:
        try:
            await collection.archive()
        except Exception as e:  # best-effort clean-up
            print(f"  (clean-up: archive failed: {e})")


def with_application_name(url, name):
    """The same database under another URL: korvus keeps one connection pool per URL."""
    return url + ("&" if "?" in url else "?") + f"application_name={name}"


async def transformer_pipeline(checks, model, observed):
    step("TransformerPipeline('text-generation').transform")
    # korvus sends text-generation and conversational calls as the same SQL text
    # (`SELECT pgml.transform(task => $1, inputs => $2, args => $3)`, transformer_pipeline.rs
    # and builtins.rs), once with text[] and once with jsonb[] inputs, and sqlx caches a
    # prepared statement per connection by its SQL text: after OpenSourceAI's jsonb[] call,
    # a text[] call on the same pooled connection fails in Postgres' Bind ("binary data has
    # array element type 25 (text) instead of expected 3802 (jsonb)"), through the proxy as
    # against Postgres directly. Text generation therefore gets a pool of its own here.
    text_url = with_application_name(os.environ["KORVUS_DATABASE_URL"], "korvus_rag_text")
    generation = TransformerPipeline("text-generation", model, None, text_url)
    inputs = ["tp-transform one", "tp-transform two"]
    result = await generation.transform(inputs, {"max_new_tokens": 5})
    observed["tp_transform"] = result
    expected = [completion_of(i) for i in inputs]
    checks.check(result == expected, f"transform: one generation per input, in order {expected!r} (got {result!r})")

    step("TransformerPipeline('conversational').transform")
    conversational = TransformerPipeline("conversational", model)
    messages = messages_for("tp-chat")
    result = await conversational.transform(messages, {"max_tokens": 6})
    observed["tp_chat"] = result
    checks.check(result == [chat_answer(messages)], f"conversational transform: [{chat_answer(messages)!r}] (got {result!r})")

    step("TransformerPipeline('text-generation').transform_stream")
    prompt = "tp-stream a b c d e"
    chunks = [c async for c in await generation.transform_stream(prompt, {"max_tokens": 7})]
    observed["tp_stream"] = chunks
    expected = [[p] for p in pieces_of(completion_of(prompt))]
    checks.check(chunks == expected, f"transform_stream: one [piece] per row, in order {expected!r} (got {chunks!r})")

    step("TransformerPipeline('text-generation').transform_stream, batch_size 2")
    prompt = "tp-stream-batched f g h i j"
    chunks = [c async for c in await generation.transform_stream(prompt, {"max_tokens": 8}, 2)]
    observed["tp_stream_batched"] = chunks
    pieces = pieces_of(completion_of(prompt))
    expected = [pieces[i : i + 2] for i in range(0, len(pieces), 2)]
    checks.check(chunks == expected, f"transform_stream batch_size 2: pieces two by two {expected!r} (got {chunks!r})")

    step("TransformerPipeline('conversational').transform_stream")
    messages = messages_for("tp-chat-stream")
    chunks = [c async for c in await conversational.transform_stream(messages, {"max_tokens": 9})]
    observed["tp_chat_stream"] = chunks
    expected = [[p] for p in pieces_of(chat_answer(messages))]
    checks.check(chunks == expected, f"conversational transform_stream: {expected!r} (got {chunks!r})")

    step("Builtins.transform (a text task, the model in args)")
    # Objects korvus's coroutines use stay referenced until awaited: korvus 1.1.5's binding
    # reads them from its runtime's thread, and a freed temporary crashes the interpreter.
    # Builtins.transform sends that same SQL text again, with the task as text: a pool of its
    # own too (on a connection that cached the jsonb task, Postgres reads the text as jsonb:
    # "unsupported jsonb version number 116").
    builtins = Builtins(with_application_name(os.environ["KORVUS_DATABASE_URL"], "korvus_rag_builtins"))
    result = await builtins.transform("text-generation", ["builtins-transform k"], {"model": model, "max_new_tokens": 10})
    observed["builtins_transform"] = result
    checks.check(result == [completion_of("builtins-transform k")], f"Builtins.transform: {[completion_of('builtins-transform k')]!r} (got {result!r})")

    step("note: a text-generation call on the pool that ran OpenSourceAI (not a check)")
    try:
        clash = TransformerPipeline("text-generation", model)
        result = await clash.transform(["tp-clash x"])
        print(f"  answered {result!r} (the call found a connection without the jsonb[] statement)")
    except Exception as e:
        print(f"  korvus/sqlx statement cache: {e}")


def guarded(checks, title, fn, *args):
    try:
        result = fn(*args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except Exception as e:  # one part failing must not hide the others
        traceback.print_exc()
        checks.failures.append(f"{title}: {type(e).__name__}: {e}")


def main():
    if not os.environ.get("KORVUS_DATABASE_URL"):
        print("korvus_rag: set KORVUS_DATABASE_URL to the proxy's connection string", file=sys.stderr)
        return 2
    model = os.environ.get("KORVUS_LLM", "meta-llama/Meta-Llama-3-8B-Instruct")
    checks = Checks()
    observed = {}
    guarded(checks, "OpenSourceAI (sync)", sync_open_source_ai, checks, model, observed)

    async def the_rest():
        for title, part in (("OpenSourceAI (async)", async_open_source_ai), ("rag", rag), ("TransformerPipeline", transformer_pipeline)):
            try:
                await part(checks, model, observed)
            except Exception as e:
                traceback.print_exc()
                checks.failures.append(f"{title}: {type(e).__name__}: {e}")

    guarded(checks, "async parts", the_rest)
    print("\nKORVUS_RESULTS " + json.dumps(observed), flush=True)
    if checks.failures:
        print(f"korvus rag: FAILED ({len(checks.failures)} check(s))", file=sys.stderr)
        for failure in checks.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("korvus rag: all checks passed")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # korvus 1.1.5's binding can abort the interpreter at finalization (PyGILState_Release
    # from its runtime's threads, seen against plain Postgres too): skip finalization.
    os._exit(code)
