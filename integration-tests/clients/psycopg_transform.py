#!/usr/bin/env python3
"""pgml.transform and pgml.transform_stream from psycopg 3, through pgml-proxy.

psycopg 3 binds parameters server-side (Parse/Bind with $n), so every call here is a
prepared statement with typed parameters: the task as jsonb or text, inputs as text[] (a
Python list of str, cast in the SQL or dumped as text) or jsonb[] (a list of Jsonb), args as
jsonb. The streams are read the way
PostgresML's docs and korvus read them: `DECLARE c CURSOR FOR SELECT pgml.transform_stream(...)`
and `FETCH 1 FROM c` in a loop inside a transaction, and through psycopg's own server-side
cursor (a named cursor: DECLARE with bound parameters, then FETCH).

The script checks the answers against the test server's documented rules (a chat answer is
`echo: <last user message>`, a completion its prompt reversed, streamed word by word) and
prints what it got as one line `PSYCOPG_RESULTS <json>` for the Rust test
(integration-tests/tests/korvus_transform.rs), which matches it with what the server received.

Usage:
    PGML_DATABASE_URL=postgres://USER:PASSWORD@PROXY_HOST:PROXY_PORT/DB PGML_LLM=MODEL \
        [PGML_TRICKLE_LLM=MODEL] .venv/bin/python integration-tests/clients/psycopg_transform.py

PGML_TRICKLE_LLM names a model whose server waits between stream chunks; with it, the script
also times how soon the first FETCH returns. Exit status 0 when every check passed, 1
otherwise, 2 when the environment is not set up.
"""

import json
import os
import sys
import time
import traceback

from checks import Checks, chat_answer, completion_of, pieces_of, step

try:
    import psycopg
    from psycopg.types.json import Jsonb
    from psycopg.types.string import StrDumper
except ImportError as e:  # pragma: no cover
    print(f"psycopg_transform: cannot import psycopg ({e}); pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)

SYSTEM = "You are a terse assistant."


def fetch_one_by_one(conn, declare, params):
    """DECLARE c CURSOR FOR ... then FETCH 1 FROM c until no row, inside one transaction; the
    rows and the seconds from DECLARE to its end and to each row."""
    rows, times = [], []
    with conn.transaction():
        with conn.cursor() as cur:
            start = time.monotonic()
            cur.execute(declare, params)
            times.append(time.monotonic() - start)
            while True:
                cur.execute("FETCH 1 FROM c")
                row = cur.fetchone()
                if row is None:
                    break
                rows.append(row[0])
                times.append(time.monotonic() - start)
            cur.execute("CLOSE c")
    return rows, times


def run(url, model, trickle):
    checks = Checks()
    observed = {}
    task = Jsonb({"task": "text-generation", "model": model})
    with psycopg.connect(url) as conn:
        step("pgml.transform, text[] inputs as a parameter")
        # psycopg sends a list of str as an untyped (unknown) array, and pgml.transform has a
        # text[] and a jsonb[] `inputs` (as in PostgresML): Postgres cannot choose (42725)
        # unless the SQL casts the parameter or the str dumper is typed.
        try:
            conn.execute("SELECT pgml.transform(task => %s, inputs => %s)", (task, ["untyped"]))
            checks.check(False, "an untyped list of str is ambiguous between text[] and jsonb[] (it was accepted)")
        except psycopg.errors.AmbiguousFunction:
            checks.check(True, "an untyped list of str is ambiguous between text[] and jsonb[] (42725), as in PostgresML")
        conn.rollback()
        prompts = ["psycopg text one", "psycopg text two", "psycopg text three"]
        row = conn.execute(
            "SELECT pgml.transform(task => %s, inputs => %s::text[], args => %s)",
            (task, prompts, Jsonb({"max_new_tokens": 31, "temperature": 0.2})),
        ).fetchone()
        observed["text_array"] = row[0]
        expected = [completion_of(p) for p in prompts]
        checks.check(row[0] == expected, f"inputs => %s::text[]: one generation per input, in order {expected!r} (got {row[0]!r})")
        with conn.cursor() as cur:
            # A typed str dumper: the parameter goes out as text[] (OID 1009), no cast in the SQL.
            cur.adapters.register_dumper(str, StrDumper)
            prompts = ["psycopg typed four", "psycopg typed five"]
            row = cur.execute(
                "SELECT pgml.transform(task => %s, inputs => %s, args => %s)",
                (task, prompts, Jsonb({"max_new_tokens": 30})),
            ).fetchone()
        observed["typed_text_array"] = row[0]
        expected = [completion_of(p) for p in prompts]
        checks.check(row[0] == expected, f"a text[] parameter: one generation per input, in order {expected!r} (got {row[0]!r})")

        step("pgml.transform, jsonb[] messages as a parameter (chat)")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "psycopg chat what is two plus two"}]
        row = conn.execute(
            "SELECT pgml.transform(task => %s, inputs => %s, args => %s)",
            (Jsonb({"task": "conversational", "model": model}), [Jsonb(m) for m in messages], Jsonb({"max_tokens": 32})),
        ).fetchone()
        observed["jsonb_array"] = row[0]
        checks.check(row[0] == [chat_answer(messages)], f"the assistant text [{chat_answer(messages)!r}] (got {row[0]!r})")

        step("pgml.transform, a text task with the model in args, prepared and run twice")
        sql = "SELECT pgml.transform(task => %s::text, inputs => %s::text[], args => %s)"
        for n in (1, 2):
            prompt = f"psycopg prepared {n}"
            row = conn.execute(sql, ("text-generation", [prompt], Jsonb({"model": model, "max_new_tokens": 33})), prepare=True).fetchone()
            observed[f"prepared_{n}"] = row[0]
            checks.check(row[0] == [completion_of(prompt)], f"prepared call {n}: {[completion_of(prompt)]!r} (got {row[0]!r})")
        conn.commit()

        step("DECLARE c CURSOR FOR SELECT pgml.transform_stream(...); FETCH 1 FROM c in a loop")
        prompt = "psycopg stream a b c d e f"
        rows, _times = fetch_one_by_one(
            conn,
            "DECLARE c CURSOR FOR SELECT pgml.transform_stream(task => %s, input => %s, args => %s)",
            (task, prompt, Jsonb({"max_tokens": 34})),
        )
        observed["cursor_text"] = rows
        expected = [[p] for p in pieces_of(completion_of(prompt))]
        checks.check(rows == expected, f"one [piece] per FETCH, in order {expected!r} (got {rows!r})")

        step("the same with jsonb[] messages (chat)")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "psycopg cursor chat g h i"}]
        rows, _times = fetch_one_by_one(
            conn,
            "DECLARE c CURSOR FOR SELECT pgml.transform_stream(task => %s, inputs => %s, args => %s)",
            (Jsonb({"task": "conversational", "model": model}), [Jsonb(m) for m in messages], Jsonb({"max_tokens": 35})),
        )
        observed["cursor_chat"] = rows
        expected = [[p] for p in pieces_of(chat_answer(messages))]
        checks.check(rows == expected, f"one [piece] per FETCH, in order {expected!r} (got {rows!r})")

        step("psycopg's server-side (named) cursor over pgml.transform_stream")
        prompt = "psycopg named cursor j k l"
        with conn.transaction():
            with conn.cursor(name="named_stream") as cur:
                cur.itersize = 1
                cur.execute("SELECT pgml.transform_stream(task => %s, input => %s, args => %s)", (task, prompt, Jsonb({"max_tokens": 36})))
                rows = [r[0] for r in cur]
        observed["named_cursor"] = rows
        expected = [[p] for p in pieces_of(completion_of(prompt))]
        checks.check(rows == expected, f"the named cursor yields {expected!r} (got {rows!r})")

        step("a plain SELECT of pgml.transform_stream returns every row")
        prompt = "psycopg plain select m n"
        rows = [r[0] for r in conn.execute("SELECT pgml.transform_stream(task => %s, input => %s)", (task, prompt)).fetchall()]
        conn.commit()
        observed["plain_select"] = rows
        expected = [[p] for p in pieces_of(completion_of(prompt))]
        checks.check(rows == expected, f"all rows {expected!r} (got {rows!r})")

        if trickle:
            step(f"FETCH 1 while the server is still streaming ({trickle})")
            prompt = "psycopg trickle p q r s t"
            rows, times = fetch_one_by_one(
                conn,
                "DECLARE c CURSOR FOR SELECT pgml.transform_stream(task => %s, input => %s)",
                (Jsonb({"task": "text-generation", "model": trickle}), prompt),
            )
            observed["trickle"] = {"rows": rows, "declare_seconds": times[0], "seconds": times[1:]}
            expected = [[p] for p in pieces_of(completion_of(prompt))]
            checks.check(rows == expected, f"the trickled pieces in order (got {rows!r})")
            if times:
                print(f"  seconds from DECLARE to its end, then to each row: {[round(t, 3) for t in times]}")

        # The session is still usable after all of it.
        checks.check(conn.execute("SELECT 1").fetchone()[0] == 1, "the session still answers SELECT 1")

    print("\nPSYCOPG_RESULTS " + json.dumps(observed), flush=True)
    return checks


def main():
    url = os.environ.get("PGML_DATABASE_URL")
    model = os.environ.get("PGML_LLM")
    if not url or not model:
        print("psycopg_transform: set PGML_DATABASE_URL and PGML_LLM", file=sys.stderr)
        return 2
    try:
        checks = run(url, model, os.environ.get("PGML_TRICKLE_LLM"))
    except Exception:
        traceback.print_exc()
        return 1
    if checks.failures:
        print(f"psycopg transform: FAILED ({len(checks.failures)} check(s))", file=sys.stderr)
        for failure in checks.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("psycopg transform: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
