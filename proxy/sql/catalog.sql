-- pgml-proxy catalog fragment: the PostgresML 2.x catalog objects that the korvus SDK
-- (1.1.x) reads and writes, with PostgresML's names, types, defaults and constraints
-- (pgml-extension/sql/schema.sql and src/orm/*.rs of PostgresML 2.10; see docs/korvus-sql.md).
-- Installed inside the shim's install transaction, after schema pgml exists, as the service
-- role, which owns these objects. Idempotent: tables IF NOT EXISTS, enums created when absent
-- and completed with ADD VALUE IF NOT EXISTS, GRANTs repeatable. Every name is
-- schema-qualified; nothing depends on search_path.
--
-- Created by korvus itself, NOT here (CREATE TABLE IF NOT EXISTS, sent by every new
-- collection): pgml.collections, pgml.splitters, and per collection the schemas
-- "<collection>" (documents, pipelines) and "<collection>_<pipeline>" (chunks, embeddings,
-- tsvectors, searches, search_results, search_events). Creating them needs CREATE on schema
-- pgml (even when they already exist: CREATE TABLE IF NOT EXISTS checks it first), CREATE on
-- the database, and REFERENCES on pgml.projects (both tables have a foreign key to it); those
-- are granted per application role by an administrator, not to PUBLIC here (docs/korvus-sql.md).
--
-- Left out (korvus never touches them): pgml.snapshots, pgml.deployments, pgml.files, the
-- views, the updated_at triggers, and the enums algorithm, sampling, search, status, strategy
-- (in PostgresML 2.x pgml.models.algorithm, .status and .search are TEXT columns).

-- pgml.task: a project's task; korvus writes 'embedding'::pgml.task into pgml.projects.
-- pgml.runtime: a model's runtime; korvus writes and filters 'python' / 'openai' in pgml.models.
-- Labels in the order of a fresh PostgresML 2.10 install (src/orm/task.rs, runtime.rs).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                    WHERE n.nspname = 'pgml' AND t.typname = 'task') THEN
        CREATE TYPE pgml.task AS ENUM (
            'regression', 'classification', 'decomposition', 'clustering', 'question_answering',
            'summarization', 'translation', 'text_classification', 'text_generation', 'text2text',
            'embedding', 'text_pair_classification', 'conversation');
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                    WHERE n.nspname = 'pgml' AND t.typname = 'runtime') THEN
        CREATE TYPE pgml.runtime AS ENUM ('python', 'rust', 'openai');
    END IF;
END
$$;
-- A type created by an older fragment gains the labels added since (ADD VALUE IF NOT EXISTS
-- is allowed in a transaction block; the new labels are not used in the same transaction).
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'regression';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'classification';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'decomposition';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'clustering';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'question_answering';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'summarization';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'translation';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'text_classification';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'text_generation';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'text2text';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'embedding';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'text_pair_classification';
ALTER TYPE pgml.task ADD VALUE IF NOT EXISTS 'conversation';
ALTER TYPE pgml.runtime ADD VALUE IF NOT EXISTS 'python';
ALTER TYPE pgml.runtime ADD VALUE IF NOT EXISTS 'rust';
ALTER TYPE pgml.runtime ADD VALUE IF NOT EXISTS 'openai';

-- pgml.projects: one row per korvus collection (name = collection name, task 'embedding').
-- korvus: INSERT ... ON CONFLICT (name) DO UPDATE SET task = EXCLUDED.task RETURNING id,
-- task::TEXT, which needs the unique index on name and a bigint id (sqlx decodes it as i64).
CREATE TABLE IF NOT EXISTS pgml.projects (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    task pgml.task NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
-- The ON CONFLICT (name) arbiter; PostgresML's name for it.
CREATE UNIQUE INDEX IF NOT EXISTS projects_name_idx ON pgml.projects (name);

-- pgml.models: korvus registers each pipeline's embedding model here (algorithm
-- 'transformers', status 'successful', hyperparams = parameters + {"name": model}) and looks
-- it up by (project_id, runtime, hyperparams); it reads id (i64), created_at (timestamp),
-- runtime::TEXT, hyperparams (jsonb). snapshot_id is kept for PostgresML's shape; its foreign
-- key to pgml.snapshots is left out with that table.
CREATE TABLE IF NOT EXISTS pgml.models (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL,
    snapshot_id BIGINT,
    num_features INT NOT NULL,
    algorithm TEXT NOT NULL,
    runtime pgml.runtime DEFAULT 'python'::pgml.runtime,
    hyperparams JSONB NOT NULL,
    status TEXT NOT NULL,
    metrics JSONB,
    search TEXT,
    search_params JSONB NOT NULL,
    search_args JSONB NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT project_id_fk FOREIGN KEY (project_id) REFERENCES pgml.projects (id) ON DELETE CASCADE
);
-- PostgresML's index for lookups by project.
CREATE INDEX IF NOT EXISTS models_project_id_idx ON pgml.models (project_id);

-- What korvus does as an ordinary role, and no more:
-- projects: SELECT (ON CONFLICT arbiter, RETURNING), INSERT, UPDATE of task only (the
--   DO UPDATE SET task = EXCLUDED.task of a collection whose project already exists).
-- models: SELECT and INSERT ... RETURNING; korvus never updates or deletes a model.
-- Sequences: USAGE for the BIGSERIAL defaults (nextval).
-- REFERENCES on projects(id): korvus creates pgml.collections and pgml.splitters with
--   foreign keys to pgml.projects; granting it does not let a role read or change projects.
-- No DELETE/TRUNCATE: rows are removed only by the owner (ON DELETE CASCADE to models).
REVOKE ALL ON pgml.projects, pgml.models FROM PUBLIC;
GRANT SELECT, INSERT ON pgml.projects, pgml.models TO PUBLIC;
GRANT UPDATE (task) ON pgml.projects TO PUBLIC;
GRANT REFERENCES (id) ON pgml.projects TO PUBLIC;
GRANT USAGE ON SEQUENCE pgml.projects_id_seq, pgml.models_id_seq TO PUBLIC;
GRANT USAGE ON TYPE pgml.task, pgml.runtime TO PUBLIC;
