-- pgml-proxy upstream shim: PostgresML's SQL surface on a stock Postgres + pgvector.
-- Installed by the proxy (idempotent: every object is CREATE OR REPLACE / IF NOT EXISTS),
-- inside one transaction serialised by an advisory lock, as pgml-proxy's service role, which
-- owns every object here. The version is recorded in the comment on schema pgml_proxy; the
-- proxy reinstalls when it differs from its own.
--
-- Statements the proxy plans call pgml_proxy.embed / pgml_proxy.chunk with the values it
-- computed spliced into the statement itself (version 8: nothing is left in the session, so a
-- transaction-mode pooler may hand the next transaction to another backend). Everything else
-- reaches pgml.embed, which performs an "upcall": a NOTICE carrying a private marker, answered
-- by the proxy through its service connection.
--
-- Security: the answer table is readable by the service role only; a session reads (and
-- deletes) its own answers through SECURITY DEFINER functions keyed by the request's random
-- uuid, which only that session ever sees. Every function that runs as the service role pins
-- search_path to pg_catalog, pg_temp and names everything schema-qualified.

-- CREATE SCHEMA checks CREATE on the database even when the schema exists: an upgrade by a
-- service role that owns the schemas but may not create new ones must not run it.
DO $$
BEGIN
    IF pg_catalog.to_regnamespace('pgml') IS NULL THEN
        CREATE SCHEMA pgml;
    END IF;
    IF pg_catalog.to_regnamespace('pgml_proxy') IS NULL THEN
        CREATE SCHEMA pgml_proxy;
    END IF;
END
$$;
COMMENT ON SCHEMA pgml_proxy IS 'pgml-proxy internals (upcall answers, shim helpers); shim version @SHIM_VERSION@';
GRANT USAGE ON SCHEMA pgml TO PUBLIC;
GRANT USAGE ON SCHEMA pgml_proxy TO PUBLIC;

-- Upcall answers, written by the proxy's service connection in one transaction per request:
-- ord 1..n carry the embeddings of the request's inputs, ord 0 an error instead.
-- UNLOGGED: answers are transient (the waiting session deletes them as it reads them; the
-- proxy deletes abandoned ones after a few minutes).
CREATE UNLOGGED TABLE IF NOT EXISTS pgml_proxy.upcall_answer (
    request_id uuid NOT NULL,
    ord integer NOT NULL,
    embedding real[],
    error_sqlstate text,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (request_id, ord)
);
-- Version 3 granted SELECT to PUBLIC: nobody but the owner (the service role) may read it.
REVOKE ALL ON pgml_proxy.upcall_answer FROM PUBLIC;
-- Version 6: answers of pgml.chunk (ord = chunk_index, chunk) and pgml.rank (ord = rank,
-- corpus_id, score) share the table. Version 10: pgml.transform's JSON text in chunk.
ALTER TABLE pgml_proxy.upcall_answer ADD COLUMN IF NOT EXISTS chunk text;
ALTER TABLE pgml_proxy.upcall_answer ADD COLUMN IF NOT EXISTS corpus_id bigint;
ALTER TABLE pgml_proxy.upcall_answer ADD COLUMN IF NOT EXISTS score double precision;
-- Version 8: the proxy claims a request (ord -1) as soon as it sees it, with how long the
-- shim should then wait for the answer. No session state says "this session comes through
-- the proxy" any more (a transaction pooler would lose it): an unclaimed request is the sign.
ALTER TABLE pgml_proxy.upcall_answer ADD COLUMN IF NOT EXISTS wait_ms integer;

CREATE OR REPLACE FUNCTION pgml_proxy.shim_version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '@SHIM_VERSION@'::text $$;

-- Versions before 8 checked a startup parameter of the proxy's and read a session temp table.
DROP FUNCTION IF EXISTS pgml_proxy.require_proxy_session();
DROP FUNCTION IF EXISTS pgml_proxy.raise_error(text, text, text, text);
DROP FUNCTION IF EXISTS pgml_proxy.prefetch_lookup(text, text, jsonb);
DROP FUNCTION IF EXISTS pgml_proxy.prefetch_chunks(text, text, jsonb);
DROP FUNCTION IF EXISTS pgml_proxy.prefetch_clear();

-- Where the proxy's prefetched values are: `keys` maps transformer -> kwargs (as jsonb text)
-- -> input to [first, last], 1-based bounds of the value in the array spliced beside it.
CREATE OR REPLACE FUNCTION pgml_proxy.prefetched_bounds(keys jsonb, transformer text, kwargs jsonb, input text)
RETURNS integer[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY[(b OPERATOR(pg_catalog.->>) 0)::integer, (b OPERATOR(pg_catalog.->>) 1)::integer]
      FROM (SELECT $1 OPERATOR(pg_catalog.->) $2 OPERATOR(pg_catalog.->) $3::text OPERATOR(pg_catalog.->) $4 AS b) x
     WHERE b IS NOT NULL
$$;

-- Where `request` stands: NULL when the proxy has not seen it, 0 once its answer has been
-- committed, else the claim's wait in milliseconds. Runs as the service role, the only reader
-- of the table: the request's random uuid is the capability.
DROP FUNCTION IF EXISTS pgml_proxy.answer_ready(uuid);
CREATE OR REPLACE FUNCTION pgml_proxy.answer_state(request uuid) RETURNS integer
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN pg_catalog.bool_or(a.ord OPERATOR(pg_catalog.>=) 0) THEN 0
                ELSE pg_catalog.max(a.wait_ms) END
      FROM pgml_proxy.upcall_answer a WHERE a.request_id OPERATOR(pg_catalog.=) $1
$$;

-- The answer to `request`, deleted as it is read (kept when the caller's transaction is
-- read-only: the proxy's clean-up removes it then). Version 6 added chunk, corpus_id and score
-- to its result, which CREATE OR REPLACE cannot change.
DROP FUNCTION IF EXISTS pgml_proxy.answer_take(uuid);
CREATE FUNCTION pgml_proxy.answer_take(request uuid)
RETURNS TABLE (ord integer, embedding real[], chunk text, corpus_id bigint, score double precision,
               error_sqlstate text, error_message text)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_read_only') OPERATOR(pg_catalog.=) 'on' THEN
        RETURN QUERY SELECT a.ord, a.embedding, a.chunk, a.corpus_id, a.score, a.error_sqlstate, a.error_message
          FROM pgml_proxy.upcall_answer a
         WHERE a.request_id OPERATOR(pg_catalog.=) $1 AND a.ord OPERATOR(pg_catalog.>=) 0;
    ELSE
        -- The claim (ord -1) goes with the answer; only the answer's rows are returned.
        RETURN QUERY WITH taken AS (
            DELETE FROM pgml_proxy.upcall_answer a WHERE a.request_id OPERATOR(pg_catalog.=) $1
            RETURNING a.ord, a.embedding, a.chunk, a.corpus_id, a.score, a.error_sqlstate, a.error_message)
        SELECT t.* FROM taken t WHERE t.ord OPERATOR(pg_catalog.>=) 0;
    END IF;
END
$$;

-- Whether the proxy can answer an upcall of pgml.`fn` here: its answers are written by another
-- connection, which a standby cannot do and a REPEATABLE READ or SERIALIZABLE snapshot cannot
-- see. Fails now rather than wait for an answer that never comes; `hint_more` ends the hints.
CREATE OR REPLACE FUNCTION pgml_proxy.check_answerable(fn text, hint_more text)
RETURNS void LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'pgml.% cannot compute new values on a read-only standby', $1
            USING ERRCODE = '25006',
                  DETAIL = 'pgml-proxy answers it by writing to pgml_proxy.upcall_answer from another connection, which a standby cannot do.',
                  HINT = 'Run the statement on the primary' OPERATOR(pg_catalog.||) $2 OPERATOR(pg_catalog.||) '.';
    END IF;
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.=) ANY (ARRAY['repeatable read', 'serializable']) THEN
        RAISE EXCEPTION 'pgml.% cannot compute new values under % isolation', $1, pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '0A000',
                  DETAIL = 'The value must be computed by pgml-proxy and committed by another connection, which this transaction''s snapshot cannot see.',
                  HINT = 'Use READ COMMITTED' OPERATOR(pg_catalog.||) $2 OPERATOR(pg_catalog.||) '.';
    END IF;
END
$$;

-- The upcall: ask the proxy to compute `fn` ('embed', 'chunk', 'rank', 'transform' or
-- 'transform_stream') of `model` over `inputs` (rank: the documents, ranked against `query`)
-- and wait for its answer, one row per ord (embed: the input's position; chunk: chunk_index;
-- rank: rank; transform: 1; transform_stream: the piece's position).
-- VOLATILE on purpose: each statement takes a new snapshot, so the answer committed by the
-- proxy's service connection becomes visible (an IMMUTABLE function keeps its caller's snapshot).
CREATE OR REPLACE FUNCTION pgml_proxy.upcall_call(fn text, model text, inputs text[], kwargs jsonb, query text)
RETURNS TABLE (ord integer, embedding real[], chunk text, corpus_id bigint, score double precision)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET client_min_messages = notice
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    request uuid := pg_catalog.gen_random_uuid();
    -- Without a claim by then, nobody is listening: the session does not come through the
    -- proxy (the NOTICE went to the client), or the proxy cannot write (its log says why).
    unclaimed_until timestamptz;
    deadline timestamptz;
    state integer;
    answer record;
BEGIN
    PERFORM pgml_proxy.check_answerable($1, ', or call pgml.embed in a statement pgml-proxy can plan (constant arguments, or SELECT/UPDATE/INSERT ... SELECT with the call in it)');
    RAISE NOTICE USING
        MESSAGE = 'pgml-proxy:upcall:' OPERATOR(pg_catalog.||) request::text,
        DETAIL = pg_catalog.json_build_object('function', $1, 'model', $2, 'inputs', $3, 'kwargs', $4, 'query', $5)::text;
    unclaimed_until := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => @CLAIM_SECONDS@);
    LOOP
        state := pgml_proxy.answer_state(request);
        EXIT WHEN state OPERATOR(pg_catalog.=) 0;
        IF state IS NULL THEN
            IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) unclaimed_until THEN
                RAISE EXCEPTION 'pgml.% is served by pgml-proxy, and this session is not connected through it', $1
                    USING ERRCODE = '55000',
                          DETAIL = 'No pgml-proxy took up the request within @CLAIM_SECONDS@ s.',
                          HINT = 'Connect through pgml-proxy (change the port in the connection string), as the application does. Through the proxy, its log says why it could not answer.';
            END IF;
        ELSIF deadline IS NULL THEN
            deadline := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => state / 1000.0);
        ELSIF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
            RAISE EXCEPTION 'pgml.%: pgml-proxy did not answer within % ms', $1, state
                USING ERRCODE = '57014',
                      HINT = 'The proxy''s log says why (its service connection, or the checks it makes before writing an answer). Raise --upcall-timeout-ms for slow models.';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.0002);
    END LOOP;
    -- Taken once (answer_take deletes what it returns); ord 0 is an error instead of vectors.
    FOR answer IN
        SELECT t.ord, t.embedding, t.chunk, t.corpus_id, t.score, t.error_sqlstate, t.error_message
          FROM pgml_proxy.answer_take(request) t ORDER BY t.ord
    LOOP
        IF answer.ord = 0 THEN
            RAISE EXCEPTION USING ERRCODE = coalesce(answer.error_sqlstate, 'XX000'), MESSAGE = answer.error_message;
        END IF;
        ord := answer.ord;
        embedding := answer.embedding;
        chunk := answer.chunk;
        corpus_id := answer.corpus_id;
        score := answer.score;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The embed upcall: one (input, embedding) row per input, in order.
CREATE OR REPLACE FUNCTION pgml_proxy.upcall(transformer text, inputs text[], kwargs jsonb)
RETURNS TABLE (input text, embedding real[])
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT $2[u.ord], u.embedding FROM pgml_proxy.upcall_call('embed', $1, $2, $3, NULL) u ORDER BY u.ord
$$;


-- What the proxy puts in place of pgml.embed in a statement it planned: the same result, read
-- from the values the proxy computed for the statement and spliced into it (`prefetched_keys`
-- says where each one is in `prefetched_values`); a value not there is asked for with an upcall.
-- Named embed so that a select list's column keeps its name.
CREATE OR REPLACE FUNCTION pgml_proxy.embed(transformer text, "text" text, kwargs jsonb, prefetched_keys jsonb, prefetched_values real[])
RETURNS real[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b integer[] := pgml_proxy.prefetched_bounds($4, $1, $3, $2);
BEGIN
    IF b IS NOT NULL THEN
        RETURN $5[b[1]:b[2]];
    END IF;
    RETURN (SELECT u.embedding FROM pgml_proxy.upcall($1, ARRAY[$2], $3) u);
END
$$;

-- The batch form of pgml_proxy.embed.
CREATE OR REPLACE FUNCTION pgml_proxy.embed(transformer text, inputs text[], kwargs jsonb, prefetched_keys jsonb, prefetched_values real[])
RETURNS SETOF real[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text[];
BEGIN
    SELECT array_agg(DISTINCT i) INTO missing
      FROM unnest($2) AS i
     WHERE i IS NOT NULL AND pgml_proxy.prefetched_bounds($4, $1, $3, i) IS NULL;
    RETURN QUERY
        WITH answered AS MATERIALIZED (
            SELECT u.input, u.embedding FROM pgml_proxy.upcall($1, missing, $3) u
             WHERE missing IS NOT NULL
        )
        SELECT CASE WHEN x.input IS NULL THEN NULL
                    WHEN b IS NOT NULL THEN $5[b[1]:b[2]]
                    ELSE a.embedding
               END
          FROM unnest($2) WITH ORDINALITY AS x(input, n)
          LEFT JOIN answered a ON a.input = x.input
          LEFT JOIN LATERAL (SELECT pgml_proxy.prefetched_bounds($4, $1, $3, x.input) AS b) p ON true
         ORDER BY x.n;
END
$$;

-- PostgresML: pgml.embed(transformer text, text text, kwargs jsonb DEFAULT '{}') RETURNS real[],
-- IMMUTABLE STRICT. PARALLEL UNSAFE (PostgresML says SAFE): an upcall deletes its answer as it
-- reads it, which Postgres forbids anywhere in a parallel plan (the leader included).
CREATE OR REPLACE FUNCTION pgml.embed(transformer text, "text" text, kwargs jsonb DEFAULT '{}')
RETURNS real[] LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.embedding FROM pgml_proxy.upcall($1, ARRAY[$2], $3) u
$$;

-- PostgresML: pgml.embed(transformer text, inputs text[], kwargs jsonb DEFAULT '{}')
-- RETURNS SETOF real[]: one row per input, in order (NULL input, NULL row).
-- The answers are joined by hash, not looked up per input: a 10,000-element batch would
-- otherwise spend seconds in SQL after the embeddings arrived.
CREATE OR REPLACE FUNCTION pgml.embed(transformer text, inputs text[], kwargs jsonb DEFAULT '{}')
RETURNS SETOF real[] LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT e FROM pgml_proxy.embed($1, $2, $3, '{}'::jsonb, ARRAY[]::real[]) AS e
$$;

-- PostgresML: pgml.chunk(splitter text, text text, kwargs jsonb DEFAULT '{}')
-- RETURNS TABLE (chunk_index bigint, chunk text): LangChain's text splitters, computed by the
-- proxy (upcall); chunk_index starts at 1.
CREATE OR REPLACE FUNCTION pgml.chunk(splitter text, "text" text, kwargs jsonb DEFAULT '{}')
RETURNS TABLE (chunk_index bigint, chunk text)
LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.ord::bigint, u.chunk FROM pgml_proxy.upcall_call('chunk', $1, ARRAY[$2], $3, NULL) u ORDER BY u.ord
$$;

-- What the proxy puts in place of pgml.chunk in a statement it planned (see pgml_proxy.embed):
-- the chunks are `prefetched_chunks[first:last]`.
CREATE OR REPLACE FUNCTION pgml_proxy.chunk(splitter text, "text" text, kwargs jsonb, prefetched_keys jsonb, prefetched_chunks text[])
RETURNS TABLE (chunk_index bigint, chunk text)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b integer[] := pgml_proxy.prefetched_bounds($4, $1, $3, $2);
BEGIN
    IF b IS NOT NULL THEN
        RETURN QUERY SELECT c.n, c.piece FROM unnest($5[b[1]:b[2]]) WITH ORDINALITY AS c(piece, n) ORDER BY c.n;
        RETURN;
    END IF;
    RETURN QUERY SELECT u.ord::bigint, u.chunk FROM pgml_proxy.upcall_call('chunk', $1, ARRAY[$2], $3, NULL) u ORDER BY u.ord;
END
$$;

-- PostgresML: pgml.rank(transformer text, query text, documents text[], kwargs jsonb DEFAULT '{}')
-- RETURNS TABLE (corpus_id bigint, score double precision, text text): a sentence-transformers
-- CrossEncoder's rank(), best first; corpus_id is 0-based; text is the document only with
-- "return_documents": true (CrossEncoder.rank's default is false).
CREATE OR REPLACE FUNCTION pgml.rank(transformer text, query text, documents text[], kwargs jsonb DEFAULT '{}')
RETURNS TABLE (corpus_id bigint, score double precision, "text" text)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    with_text boolean := coalesce(pg_catalog.jsonb_typeof($4 -> 'return_documents') = 'boolean' AND ($4 ->> 'return_documents')::boolean, false);
BEGIN
    RETURN QUERY SELECT u.corpus_id, u.score, CASE WHEN with_text THEN $3[u.corpus_id + 1] END
      FROM pgml_proxy.upcall_call('rank', $1, $3, $4, $2) u ORDER BY u.ord;
END
$$;

-- PostgresML: pgml.transform / pgml.transform_stream ran Hugging Face pipelines inside
-- Postgres. Here text generation and chat are computed by the OpenAI-compatible server the
-- proxy routes the model to (`--remote-model`), through the upcall: one NOTICE per call, so
-- constant arguments, column arguments (one call per row), prepared statements, functions and
-- DO blocks are served alike. The answer's rows carry JSON text in `chunk`: the whole result
-- (pgml.transform) or one `["piece"]` per streamed piece (pgml.transform_stream), ord 1.. .
-- The upcall's kwargs: {"task": the task object, "args": args, "chat": whether the inputs are
-- one conversation of {"role", "content"} messages, "cache": cache}; its model: the task's
-- "model", else args' "model", else NULL (the proxy's "*" route then).
-- Version 9's stubs failed with 0A000 through this function.
DROP FUNCTION IF EXISTS pgml_proxy.transform_unsupported(text);
-- The request of one pgml.transform call: {"model", "inputs": [...], "kwargs": {"task", "args",
-- "chat", "cache"}}, the upcall's pieces. As jsonb text it is also the key of a prefetched
-- answer (pgml_proxy.transform_key), so the proxy and the shim compute it in one place.
CREATE OR REPLACE FUNCTION pgml_proxy.transform_request(task jsonb, args jsonb, inputs text[], chat boolean, cache boolean)
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.jsonb_build_object(
        'model', coalesce($1 OPERATOR(pg_catalog.->>) 'model', $2 OPERATOR(pg_catalog.->>) 'model'),
        'inputs', pg_catalog.to_jsonb($3),
        'kwargs', pg_catalog.jsonb_build_object(
            'task', $1, 'args', $2,
            'chat', $4 OR coalesce($1 OPERATOR(pg_catalog.->>) 'task' OPERATOR(pg_catalog.=) 'conversational', false),
            'cache', $5))
$$;

CREATE OR REPLACE FUNCTION pgml_proxy.transform_call(fn text, task jsonb, args jsonb, inputs text[], chat boolean, cache boolean)
RETURNS SETOF jsonb LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    request jsonb := pgml_proxy.transform_request($2, $3, $4, $5, $6);
BEGIN
    -- PostgresML failed on a NULL element too; the upcall's request has no place for one.
    IF pg_catalog.array_position($4, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgml.%: inputs must not contain NULL', $1 USING ERRCODE = '22004';
    END IF;
    RETURN QUERY
        SELECT u.chunk::pg_catalog.jsonb
          FROM pgml_proxy.upcall_call($1, request OPERATOR(pg_catalog.->>) 'model', $4, request OPERATOR(pg_catalog.->) 'kwargs', NULL) u
         ORDER BY u.ord;
END
$$;

-- PostgresML: pgml.transform(task jsonb | text, args jsonb DEFAULT '{}', inputs text[] |
-- jsonb[] DEFAULT ARRAY[], cache boolean DEFAULT false) RETURNS jsonb, IMMUTABLE STRICT (pgrx
-- makes a function without nullable arguments STRICT). Both `inputs` have a DEFAULT there too,
-- so a call naming no inputs is ambiguous in PostgresML as here. A text task is {"task": text}.
-- PARALLEL UNSAFE (PostgresML says SAFE): see pgml.embed.
CREATE OR REPLACE FUNCTION pgml.transform(task jsonb, args jsonb DEFAULT '{}', inputs text[] DEFAULT ARRAY[]::text[], cache boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT t FROM pgml_proxy.transform_call('transform', $1, $2, $3, false, $4) t
$$;
CREATE OR REPLACE FUNCTION pgml.transform(task jsonb, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT t FROM pgml_proxy.transform_call('transform', $1, $2, $3::text[], true, $4) t
$$;
CREATE OR REPLACE FUNCTION pgml.transform(task text, args jsonb DEFAULT '{}', inputs text[] DEFAULT ARRAY[]::text[], cache boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT t FROM pgml_proxy.transform_call('transform', pg_catalog.jsonb_build_object('task', $1), $2, $3, false, $4) t
$$;
CREATE OR REPLACE FUNCTION pgml.transform(task text, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT t FROM pgml_proxy.transform_call('transform', pg_catalog.jsonb_build_object('task', $1), $2, $3::text[], true, $4) t
$$;

-- A statement pgml-proxy planned for prefetch (pgml.transform with arguments read from rows:
-- `SELECT id, pgml.transform(..., inputs => ARRAY[body]) FROM t`): its prefetch query reads
-- each row's request with pgml_proxy.transform_key (the same overloads as pgml.transform, so
-- Postgres resolves them alike), the proxy asks the server for every distinct one at once, and
-- the statement runs with each call replaced by pgml_proxy.transform(..., prefetched => map),
-- map: request key -> {"result": jsonb} or {"error": [sqlstate, message]}. A request not in the
-- map (over a bound, or not read by the prefetch) is served by pgml.transform itself.
CREATE OR REPLACE FUNCTION pgml_proxy.transform_key(task jsonb, args jsonb DEFAULT '{}', inputs text[] DEFAULT ARRAY[]::text[], cache boolean DEFAULT false)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_request($1, $2, $3, false, $4)::text
$$;
CREATE OR REPLACE FUNCTION pgml_proxy.transform_key(task jsonb, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_request($1, $2, $3::text[], true, $4)::text
$$;
CREATE OR REPLACE FUNCTION pgml_proxy.transform_key(task text, args jsonb DEFAULT '{}', inputs text[] DEFAULT ARRAY[]::text[], cache boolean DEFAULT false)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_request(pg_catalog.jsonb_build_object('task', $1), $2, $3, false, $4)::text
$$;
CREATE OR REPLACE FUNCTION pgml_proxy.transform_key(task text, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_request(pg_catalog.jsonb_build_object('task', $1), $2, $3::text[], true, $4)::text
$$;

-- The prefetched answer under `key`: its result, its error raised, or NULL when not there.
CREATE OR REPLACE FUNCTION pgml_proxy.prefetched_answer(key text, prefetched jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hit jsonb := $2 OPERATOR(pg_catalog.->) $1;
BEGIN
    IF hit OPERATOR(pg_catalog.?) 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = coalesce(hit OPERATOR(pg_catalog.->) 'error' OPERATOR(pg_catalog.->>) 0, 'XX000'),
            MESSAGE = coalesce(hit OPERATOR(pg_catalog.->) 'error' OPERATOR(pg_catalog.->>) 1, 'pgml.transform failed');
    END IF;
    RETURN hit OPERATOR(pg_catalog.->) 'result';
END
$$;

CREATE OR REPLACE FUNCTION pgml_proxy.transform(task jsonb, args jsonb DEFAULT '{}', inputs text[] DEFAULT ARRAY[]::text[], cache boolean DEFAULT false, prefetched jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pgml_proxy.prefetched_answer(pgml_proxy.transform_key($1, $2, $3, $4), $5), pgml.transform($1, $2, $3, $4))
$$;
CREATE OR REPLACE FUNCTION pgml_proxy.transform(task jsonb, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false, prefetched jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pgml_proxy.prefetched_answer(pgml_proxy.transform_key($1, $2, $3, $4), $5), pgml.transform($1, $2, $3, $4))
$$;
CREATE OR REPLACE FUNCTION pgml_proxy.transform(task text, args jsonb DEFAULT '{}', inputs text[] DEFAULT ARRAY[]::text[], cache boolean DEFAULT false, prefetched jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pgml_proxy.prefetched_answer(pgml_proxy.transform_key($1, $2, $3, $4), $5), pgml.transform($1, $2, $3, $4))
$$;
CREATE OR REPLACE FUNCTION pgml_proxy.transform(task text, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false, prefetched jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pgml_proxy.prefetched_answer(pgml_proxy.transform_key($1, $2, $3, $4), $5), pgml.transform($1, $2, $3, $4))
$$;

-- A stream (pgml.transform_stream): the rows reach the caller while the server is still
-- streaming. stream_open raises the upcall NOTICE and returns once the proxy has claimed the
-- request; the proxy then writes the pieces as they come, ord 1.. (chunk = '["piece"]'), and
-- after the last one an end row (the next ord, chunk NULL), or an error at ord 0. stream_next
-- takes piece n. Neither waits for the whole answer, and a SQL function whose last statement
-- is a SELECT, called in a select list, is evaluated lazily (one row per call): with the
-- recursive CTE below, a cursor's FETCH 2 waits for two pieces, not for the stream's end.
CREATE OR REPLACE FUNCTION pgml_proxy.stream_open(fn text, task jsonb, args jsonb, inputs text[], chat boolean, cache boolean)
RETURNS TABLE (request uuid, wait_ms integer)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET client_min_messages = notice
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id uuid := pg_catalog.gen_random_uuid();
    unclaimed_until timestamptz;
    state integer;
BEGIN
    IF pg_catalog.array_position($4, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgml.%: inputs must not contain NULL', $1 USING ERRCODE = '22004';
    END IF;
    PERFORM pgml_proxy.check_answerable($1, '');
    RAISE NOTICE USING
        MESSAGE = 'pgml-proxy:upcall:' OPERATOR(pg_catalog.||) id::text,
        DETAIL = pg_catalog.json_build_object(
            'function', $1,
            'model', coalesce($2 OPERATOR(pg_catalog.->>) 'model', $3 OPERATOR(pg_catalog.->>) 'model'),
            'inputs', $4,
            'kwargs', pg_catalog.jsonb_build_object(
                'task', $2, 'args', $3,
                'chat', $5 OR coalesce($2 OPERATOR(pg_catalog.->>) 'task' OPERATOR(pg_catalog.=) 'conversational', false),
                'cache', $6,
                -- The proxy stops the server's stream once this backend is gone, once its
                -- session ends this transaction (no cursor outlives it: the proxy relays the
                -- session and sees that), or (unless the transaction is read-only:
                -- stream_take cannot delete) once it stops taking pieces.
                'backend_pid', pg_catalog.pg_backend_pid(),
                'read_only', pg_catalog.current_setting('transaction_read_only') OPERATOR(pg_catalog.=) 'on'),
            'query', NULL)::text;
    unclaimed_until := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => @CLAIM_SECONDS@);
    LOOP
        SELECT t.wait_ms INTO state FROM pgml_proxy.stream_take(id, 0) t WHERE t.ord OPERATOR(pg_catalog.=) -1;
        EXIT WHEN state IS NOT NULL;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) unclaimed_until THEN
            RAISE EXCEPTION 'pgml.% is served by pgml-proxy, and this session is not connected through it', $1
                USING ERRCODE = '55000',
                      DETAIL = 'No pgml-proxy took up the request within @CLAIM_SECONDS@ s.',
                      HINT = 'Connect through pgml-proxy (change the port in the connection string), as the application does. Through the proxy, its log says why it could not answer.';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.0002);
    END LOOP;
    request := id;
    wait_ms := state;
    RETURN NEXT;
END
$$;

-- The claim of stream `request` (ord -1: how long to wait for each piece) and its rows 0 (an
-- error) and `n` (piece n, or the end), the latter two deleted as they are read (kept in a
-- read-only transaction: the proxy's clean-up removes them then). Runs as the service role,
-- the only reader of the table: the request's random uuid is the capability.
CREATE OR REPLACE FUNCTION pgml_proxy.stream_take(request uuid, n integer)
RETURNS TABLE (ord integer, chunk text, error_sqlstate text, error_message text, wait_ms integer)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_read_only') OPERATOR(pg_catalog.=) 'on' OR $2 OPERATOR(pg_catalog.<) 1 THEN
        RETURN QUERY SELECT a.ord, a.chunk, a.error_sqlstate, a.error_message, a.wait_ms
          FROM pgml_proxy.upcall_answer a
         WHERE a.request_id OPERATOR(pg_catalog.=) $1 AND a.ord OPERATOR(pg_catalog.=) ANY (ARRAY[-1, 0, $2])
         ORDER BY a.ord;
    ELSE
        RETURN QUERY WITH taken AS (
            DELETE FROM pgml_proxy.upcall_answer a
             WHERE a.request_id OPERATOR(pg_catalog.=) $1 AND a.ord OPERATOR(pg_catalog.=) ANY (ARRAY[0, $2])
            RETURNING a.ord, a.chunk, a.error_sqlstate, a.error_message, a.wait_ms)
        SELECT t.* FROM taken t
        UNION ALL
        SELECT a.ord, a.chunk, a.error_sqlstate, a.error_message, a.wait_ms
          FROM pgml_proxy.upcall_answer a
         WHERE a.request_id OPERATOR(pg_catalog.=) $1 AND a.ord OPERATOR(pg_catalog.=) -1
         ORDER BY 1;
    END IF;
END
$$;

-- Piece `n` of stream `request` as jsonb, or NULL at the end; waits up to `wait_ms` for it.
-- Before it waits, a NOTICE (dropped by the proxy) flushes the server's output buffer, where
-- the rows made so far would otherwise stay until it fills or the statement ends: a plain
-- SELECT's rows then reach the client as the pieces come, as a cursor's FETCH does.
CREATE OR REPLACE FUNCTION pgml_proxy.stream_next(request uuid, n integer, wait_ms integer)
RETURNS jsonb LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET client_min_messages = notice
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $3 / 1000.0);
    pause double precision := 0.0002;
    flushed boolean := false;
    answer record;
BEGIN
    LOOP
        FOR answer IN SELECT t.ord, t.chunk, t.error_sqlstate, t.error_message FROM pgml_proxy.stream_take($1, $2) t LOOP
            IF answer.ord OPERATOR(pg_catalog.=) 0 THEN
                RAISE EXCEPTION USING ERRCODE = coalesce(answer.error_sqlstate, 'XX000'), MESSAGE = answer.error_message;
            END IF;
            IF answer.ord OPERATOR(pg_catalog.=) $2 THEN
                -- The end row: the claim goes with it.
                IF answer.chunk IS NULL AND pg_catalog.current_setting('transaction_read_only') OPERATOR(pg_catalog.<>) 'on' THEN
                    PERFORM pgml_proxy.stream_close($1);
                END IF;
                RETURN answer.chunk::pg_catalog.jsonb;
            END IF;
        END LOOP;
        IF NOT flushed THEN
            RAISE NOTICE 'pgml-proxy:flush';
            flushed := true;
        END IF;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
            RAISE EXCEPTION 'pgml.transform_stream: pgml-proxy sent no piece within % ms', $3
                USING ERRCODE = '57014',
                      HINT = 'The proxy''s log says why. Raise --upcall-timeout-ms for slow models.';
        END IF;
        -- Pieces come tens of milliseconds apart: poll often at first, then every 2 ms.
        PERFORM pg_catalog.pg_sleep(pause);
        IF pause OPERATOR(pg_catalog.<) 0.002::pg_catalog.float8 THEN
            pause := pause OPERATOR(pg_catalog.*) 2::pg_catalog.float8;
        END IF;
    END LOOP;
END
$$;

-- Removes the claim of a stream that has ended (SECURITY DEFINER: see stream_take).
CREATE OR REPLACE FUNCTION pgml_proxy.stream_close(request uuid) RETURNS void
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM pgml_proxy.upcall_answer a WHERE a.request_id OPERATOR(pg_catalog.=) $1
$$;

-- The stream's rows, lazily (see above). Called in the select list of pgml.transform_stream
-- (a FROM would collect them first).
CREATE OR REPLACE FUNCTION pgml_proxy.transform_stream(task jsonb, args jsonb, inputs text[], chat boolean, cache boolean)
RETURNS SETOF jsonb LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE s(n, request, wait_ms, piece) AS (
        SELECT 0, o.request, o.wait_ms, '[]'::pg_catalog.jsonb
          FROM pgml_proxy.stream_open('transform_stream', $1, $2, $3, $4, $5) o
      UNION ALL
        SELECT s.n OPERATOR(pg_catalog.+) 1, s.request, s.wait_ms,
               pgml_proxy.stream_next(s.request, s.n OPERATOR(pg_catalog.+) 1, s.wait_ms)
          FROM s WHERE s.piece IS NOT NULL
    )
    SELECT s.piece FROM s WHERE s.n OPERATOR(pg_catalog.>) 0 AND s.piece IS NOT NULL
$$;

-- PostgresML: pgml.transform_stream(task jsonb | text, args jsonb DEFAULT '{}', input text
-- DEFAULT '' | inputs jsonb[] DEFAULT ARRAY[], cache boolean DEFAULT false) RETURNS SETOF
-- jsonb: one `["piece"]` row per piece the server streamed, in order, as they come.
CREATE OR REPLACE FUNCTION pgml.transform_stream(task jsonb, args jsonb DEFAULT '{}', input text DEFAULT '', cache boolean DEFAULT false)
RETURNS SETOF jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_stream($1, $2, ARRAY[$3], false, $4)
$$;
CREATE OR REPLACE FUNCTION pgml.transform_stream(task jsonb, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false)
RETURNS SETOF jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_stream($1, $2, $3::text[], true, $4)
$$;
CREATE OR REPLACE FUNCTION pgml.transform_stream(task text, args jsonb DEFAULT '{}', input text DEFAULT '', cache boolean DEFAULT false)
RETURNS SETOF jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_stream(pg_catalog.jsonb_build_object('task', $1), $2, ARRAY[$3], false, $4)
$$;
CREATE OR REPLACE FUNCTION pgml.transform_stream(task text, args jsonb DEFAULT '{}', inputs jsonb[] DEFAULT ARRAY[]::jsonb[], cache boolean DEFAULT false)
RETURNS SETOF jsonb LANGUAGE sql IMMUTABLE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgml_proxy.transform_stream(pg_catalog.jsonb_build_object('task', $1), $2, $3::text[], true, $4)
$$;

-- PostgresML: pgml.version() is the extension's version. pgml-proxy answers with the
-- PostgresML release whose SQL API it implements, then its own shim version after a '+'.
CREATE OR REPLACE FUNCTION pgml.version() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '2.10.0+pgml-proxy.shim@SHIM_VERSION@'::text $$;

-- PostgresML's pure vector helpers, as plain SQL over real[] and double precision[].
CREATE OR REPLACE FUNCTION pgml.add(vector real[], addend real[]) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.array_agg(a OPERATOR(pg_catalog.+) b ORDER BY n) FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) WITH ORDINALITY AS t(a, b, n) $$;
CREATE OR REPLACE FUNCTION pgml.subtract(minuend real[], subtrahend real[]) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.array_agg(a OPERATOR(pg_catalog.-) b ORDER BY n) FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) WITH ORDINALITY AS t(a, b, n) $$;
CREATE OR REPLACE FUNCTION pgml.multiply(vector real[], multiplicand real) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.array_agg(a OPERATOR(pg_catalog.*) $2 ORDER BY n) FROM pg_catalog.unnest($1) WITH ORDINALITY AS t(a, n) $$;
CREATE OR REPLACE FUNCTION pgml.divide(vector real[], dividend real) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.array_agg(a OPERATOR(pg_catalog./) $2 ORDER BY n) FROM pg_catalog.unnest($1) WITH ORDINALITY AS t(a, n) $$;
CREATE OR REPLACE FUNCTION pgml.dot_product(vector real[], other real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sum(a OPERATOR(pg_catalog.*) b)::real FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;
CREATE OR REPLACE FUNCTION pgml.norm_l0(vector real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.count(*) FILTER (WHERE a OPERATOR(pg_catalog.<>) 0)::real FROM pg_catalog.unnest($1) AS a $$;
CREATE OR REPLACE FUNCTION pgml.norm_l1(vector real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sum(pg_catalog.abs(a))::real FROM pg_catalog.unnest($1) AS a $$;
CREATE OR REPLACE FUNCTION pgml.norm_l2(vector real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sqrt(pg_catalog.sum(a::double precision OPERATOR(pg_catalog.*) a))::real FROM pg_catalog.unnest($1) AS a $$;
CREATE OR REPLACE FUNCTION pgml.norm_max(vector real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.max(pg_catalog.abs(a))::real FROM pg_catalog.unnest($1) AS a $$;
CREATE OR REPLACE FUNCTION pgml.normalize_l1(vector real[]) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pgml.divide($1, pgml.norm_l1($1)) $$;
CREATE OR REPLACE FUNCTION pgml.normalize_l2(vector real[]) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pgml.divide($1, pgml.norm_l2($1)) $$;
CREATE OR REPLACE FUNCTION pgml.normalize_max(vector real[]) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pgml.divide($1, pgml.norm_max($1)) $$;
CREATE OR REPLACE FUNCTION pgml.distance_l1(vector real[], other real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sum(pg_catalog.abs(a OPERATOR(pg_catalog.-) b))::real FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;
CREATE OR REPLACE FUNCTION pgml.distance_l2(vector real[], other real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sqrt(pg_catalog.sum((a OPERATOR(pg_catalog.-) b)::double precision OPERATOR(pg_catalog.*) (a OPERATOR(pg_catalog.-) b)))::real FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;
CREATE OR REPLACE FUNCTION pgml.cosine_similarity(vector real[], other real[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT (pg_catalog.sum(a::double precision OPERATOR(pg_catalog.*) b) OPERATOR(pg_catalog./) (pg_catalog.sqrt(pg_catalog.sum(a::double precision OPERATOR(pg_catalog.*) a)) OPERATOR(pg_catalog.*) pg_catalog.sqrt(pg_catalog.sum(b::double precision OPERATOR(pg_catalog.*) b))))::real
     FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;

-- double precision[] variants.
CREATE OR REPLACE FUNCTION pgml.dot_product(vector double precision[], other double precision[]) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sum(a OPERATOR(pg_catalog.*) b) FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;
CREATE OR REPLACE FUNCTION pgml.norm_l2(vector double precision[]) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sqrt(pg_catalog.sum(a OPERATOR(pg_catalog.*) a)) FROM pg_catalog.unnest($1) AS a $$;
CREATE OR REPLACE FUNCTION pgml.normalize_l2(vector double precision[]) RETURNS double precision[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.array_agg(a OPERATOR(pg_catalog./) pgml.norm_l2($1) ORDER BY n) FROM pg_catalog.unnest($1) WITH ORDINALITY AS t(a, n) $$;
CREATE OR REPLACE FUNCTION pgml.distance_l2(vector double precision[], other double precision[]) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sqrt(pg_catalog.sum((a OPERATOR(pg_catalog.-) b) OPERATOR(pg_catalog.*) (a OPERATOR(pg_catalog.-) b))) FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;
CREATE OR REPLACE FUNCTION pgml.cosine_similarity(vector double precision[], other double precision[]) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT pg_catalog.sum(a OPERATOR(pg_catalog.*) b) OPERATOR(pg_catalog./) (pg_catalog.sqrt(pg_catalog.sum(a OPERATOR(pg_catalog.*) a)) OPERATOR(pg_catalog.*) pg_catalog.sqrt(pg_catalog.sum(b OPERATOR(pg_catalog.*) b))) FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS t(a, b) $$;

GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgml TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgml_proxy TO PUBLIC;
