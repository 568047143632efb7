//! Table-driven tests: every call shape of the PostgresML article and pgml-api.md, through the
//! public API, checking the plan kind, the classified arguments and the rendered SQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use pgml_rewriter::{plan_query, plan_statement, ArgExpr, PassThroughReason, StatementPlan};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

fn lit(s: &str) -> ArgExpr {
    ArgExpr::Literal(s.to_owned())
}

fn parses(sql: &str) {
    if let Err(e) = Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        panic!("does not parse: {e}\n{sql}");
    }
}

fn constant(sql: &str) -> pgml_rewriter::ConstantPlan {
    match plan_statement(sql, &[]) {
        StatementPlan::Constant(c) => c,
        other => panic!("expected Constant for {sql}, got {other:?}"),
    }
}

fn prefetch(sql: &str) -> String {
    match plan_statement(sql, &[]) {
        StatementPlan::Prefetch(p) => {
            parses(&p.query);
            p.query
        }
        other => panic!("expected Prefetch for {sql}, got {other:?}"),
    }
}

fn pass(sql: &str) -> PassThroughReason {
    match plan_statement(sql, &[]) {
        StatementPlan::PassThrough { reason } => reason,
        other => panic!("expected PassThrough for {sql}, got {other:?}"),
    }
}

#[test]
fn article_constant_statements_splice_literals() {
    let cases: &[(&str, [ArgExpr; 3], &str)] = &[
        (
            "SELECT pgml.embed('intfloat/e5-small', 'passage: hi mom')",
            [lit("intfloat/e5-small"), lit("passage: hi mom"), ArgExpr::Default],
            "SELECT ('{0.5,-1}'::real[]) AS embed",
        ),
        (
            "SELECT pgml.embed(\n    transformer => 'hkunlp/instructor-xl',\n    text => 'The Federal Reserve on Wednesday raised its benchmark interest rate.',\n    kwargs => '{\"instruction\": \"Represent the Financial statement:\"}'\n)",
            [
                lit("hkunlp/instructor-xl"),
                lit("The Federal Reserve on Wednesday raised its benchmark interest rate."),
                lit("{\"instruction\": \"Represent the Financial statement:\"}"),
            ],
            "SELECT ('{0.5,-1}'::real[]) AS embed",
        ),
        (
            "SELECT pgml.embed(\n    transformer => 'hkunlp/instructor-xl',\n    text => 'where is the food stored in a yam plant',\n    kwargs => '{\n        \"instruction\": \"Represent the Wikipedia question for retrieving supporting documents:\"\n    }'\n)",
            [
                lit("hkunlp/instructor-xl"),
                lit("where is the food stored in a yam plant"),
                lit("{\n        \"instruction\": \"Represent the Wikipedia question for retrieving supporting documents:\"\n    }"),
            ],
            "SELECT ('{0.5,-1}'::real[]) AS embed",
        ),
        (
            "SELECT pgml.embed(\n    transformer => 'hkunlp/instructor-xl',\n    text => 'Dynamical Scalar Degree of Freedom in Horava-Lifshitz Gravity\"}',\n    kwargs => '{\"instruction\": \"Represent the Medicine sentence for clustering:\"}'\n)",
            [
                lit("hkunlp/instructor-xl"),
                lit("Dynamical Scalar Degree of Freedom in Horava-Lifshitz Gravity\"}"),
                lit("{\"instruction\": \"Represent the Medicine sentence for clustering:\"}"),
            ],
            "SELECT ('{0.5,-1}'::real[]) AS embed",
        ),
    ];
    for (sql, args, rendered) in cases {
        let plan = constant(sql);
        let call = &plan.calls()[0];
        assert_eq!(
            [&call.transformer, &call.input, &call.kwargs],
            [&args[0], &args[1], &args[2]]
        );
        assert!(!call.batch);
        assert_eq!(&sql[call.span.clone()][..10], "pgml.embed");
        let out = plan.render_literals(sql, &[Some(vec![0.5, -1.0])]);
        assert_eq!(&out, rendered);
        parses(&out);
    }
}

#[test]
fn article_row_dependent_select_prefetches_with_limit() {
    let sql = "SELECT\n    review_body,\n    pgml.embed('intfloat/e5-small', 'passage: ' || review_body) AS embedding\nFROM pgml.amazon_us_reviews\nLIMIT 1000";
    let q = prefetch(sql);
    assert_eq!(
        q,
        "SELECT DISTINCT f, t, i, k FROM (SELECT x.f, x.t, x.i, x.k FROM (SELECT ('intfloat/e5-small')::text AS pgml_t1, \
         ('passage: ' || review_body)::text AS pgml_i1, ('{}')::jsonb::text AS pgml_k1 FROM pgml.amazon_us_reviews\nLIMIT 1000) \
         AS pgml_s CROSS JOIN LATERAL (SELECT 'e', pgml_s.pgml_t1, pgml_s.pgml_i1, pgml_s.pgml_k1) AS x(f, t, i, k)) \
         AS pgml_prefetch(f, t, i, k) WHERE t IS NOT NULL AND i IS NOT NULL AND k IS NOT NULL"
    );
    let q = prefetch("SELECT\n    reviqew_body,\n    pgml.embed(\n        'intfloat/e5-small',\n        'passage: ' || review_body,\n        '{\"device\": \"cpu\"}'\n    ) AS embedding\nFROM pgml.amazon_us_reviews\nLIMIT 1000");
    assert!(q.contains("('{\"device\": \"cpu\"}')::jsonb::text AS pgml_k1 FROM pgml.amazon_us_reviews\nLIMIT 1000)"), "{q}");
}

#[test]
fn update_prefetch_reads_the_same_rows() {
    let q = prefetch("UPDATE pgml.amazon_us_reviews\n        SET review_embedding_e5_large = pgml.embed(\n                'intfloat/e5-large',\n                'passage: ' || review_body\n            )\n        WHERE id BETWEEN 1 AND 11\n            AND review_embedding_e5_large IS NULL");
    assert!(q.contains("FROM pgml.amazon_us_reviews WHERE id BETWEEN 1 AND 11\n            AND review_embedding_e5_large IS NULL)"), "{q}");
    let q = prefetch("UPDATE docs AS d SET e = pgml.embed('m', d.body || s.suffix) FROM suffixes s WHERE s.id = d.sid RETURNING d.id");
    assert!(
        q.contains("FROM docs AS d, suffixes s WHERE s.id = d.sid)"),
        "{q}"
    );
    assert!(!q.contains("RETURNING"), "{q}");
    // sqlparser cannot parse WHERE CURRENT OF; either way it is passed through.
    pass("UPDATE t SET e = pgml.embed('m', body) WHERE CURRENT OF c");
}

#[test]
fn article_server_side_and_other_statements_pass_through() {
    let do_block = "DO $$\nBEGIN\n    FOR i in 1..(SELECT max(id) FROM pgml.amazon_us_reviews) by 10 LOOP\n        UPDATE pgml.amazon_us_reviews\n        SET review_embedding_e5_large = pgml.embed('intfloat/e5-large', 'passage: ' || review_body)\n        WHERE id BETWEEN i AND i + 10;\n        COMMIT;\n    END LOOP;\nEND;\n$$;";
    let plan = plan_query(do_block);
    assert_eq!(plan.statements.len(), 1);
    assert_eq!(
        plan.statements[0].plan,
        StatementPlan::PassThrough {
            reason: PassThroughReason::ServerSideBody
        }
    );
    for sql in [
        "SELECT *\nFROM pgml.load_dataset('amazon_us_reviews', 'Video_DVD_v1_00')",
        "SELECT *\nFROM pgml.amazon_us_reviews\nLIMIT 5",
        "ALTER TABLE pgml.amazon_us_reviews\nADD COLUMN review_embedding_e5_large vector(1024)",
        "CREATE INDEX CONCURRENTLY index_amazon_us_reviews_on_review_embedding_e5_large\nON pgml.amazon_us_reviews\nUSING ivfflat (review_embedding_e5_large vector_cosine_ops)\nWITH (lists = 2000)",
    ] {
        assert_eq!(plan_statement(sql, &[]), StatementPlan::Unchanged, "{sql}");
    }
    assert_eq!(
        pass("CREATE TABLE t (body text, e real[] GENERATED ALWAYS AS (pgml.embed('m', body)) STORED)"),
        PassThroughReason::UnsupportedStatement
    );
    assert_eq!(
        pass("CREATE VIEW v AS SELECT pgml.embed('m', body) FROM t"),
        PassThroughReason::UnsupportedStatement
    );
    assert_eq!(
        pass("CREATE FUNCTION f(t text) RETURNS real[] LANGUAGE sql AS $$ SELECT pgml.embed('m', t) $$"),
        PassThroughReason::ServerSideBody
    );
}

#[test]
fn spellings_postgres_accepts_are_recognised() {
    for sql in [
        "SELECT PGML.EMBED('m', 'x')",
        "SELECT \"pgml\".\"embed\"('m', 'x')",
        "SELECT pgml /* c */ . -- c\n embed ( 'm' , 'x' )",
        "SELECT pgml.embed(transformer := 'm', text := 'x')",
        "SELECT pgml.embed(text => 'x', transformer => 'm')",
        "SELECT pgml.embed('m', text => 'x')",
        "SELECT pgml.embed('m'::text, ('x')::varchar)",
        "SELECT pgml.embed(E'm', $q$x$q$)",
    ] {
        let plan = constant(sql);
        let c = &plan.calls()[0];
        assert_eq!(
            (&c.transformer, &c.input, &c.kwargs),
            (&lit("m"), &lit("x"), &ArgExpr::Default),
            "{sql}"
        );
    }
}

#[test]
fn look_alikes_are_not_calls() {
    for sql in [
        "SELECT 'pgml.embed(''m'', ''x'')'",
        "SELECT 1 -- pgml.embed('m', 'x')",
        "SELECT embed FROM pgml.docs",
        "SELECT pgml.normalize_l2(e) FROM t",
        "SELECT \"PGML\".embed('m', 'x')",
        "SELECT x.pgml.embed('m', 'x')",
    ] {
        assert_eq!(plan_statement(sql, &[]), StatementPlan::Unchanged, "{sql}");
    }
}

#[test]
fn casts_operators_and_order_by_keep_every_other_token() {
    let sql = "SELECT * FROM t ORDER BY emb <=> pgml.embed('m', 'query: q')::vector(384) LIMIT 5";
    let out = constant(sql).render_literals(sql, &[Some(vec![1.0, 2.5e-7])]);
    assert_eq!(
        out,
        "SELECT * FROM t ORDER BY emb <=> ('{1,2.5e-7}'::real[])::vector(384) LIMIT 5"
    );
    parses(&out);
    let sql = "SELECT 1 - (pgml.embed('m', 'a')::vector <=> CAST(pgml.embed('m', 'b') AS vector)) AS sim, pgml.embed('m', NULL)::vector";
    let plan = constant(sql);
    assert_eq!(plan.calls()[2].input, ArgExpr::Null);
    let out = plan.render_literals(sql, &[Some(vec![1.0]), Some(vec![2.0]), None]);
    assert_eq!(out, "SELECT 1 - (('{1}'::real[])::vector <=> CAST(('{2}'::real[]) AS vector)) AS sim, (NULL::real[])::vector AS embed");
    parses(&out);
}

#[test]
fn cte_insert_values_and_function_arguments_are_constant() {
    for sql in [
        "WITH e AS (SELECT pgml.embed('m', 'q') AS embedding) SELECT p.id FROM p, e ORDER BY p.embedding <=> e.embedding::vector LIMIT 5",
        "INSERT INTO t (body, e) VALUES ('hi', pgml.embed('m', 'hi')), ('yo', pgml.embed('m', 'yo'))",
        "SELECT pgml.cosine_similarity(pgml.embed('m', 'a'), e) FROM t",
        "DELETE FROM t WHERE e <=> pgml.embed('m', 'x')::vector > 0.5",
        "SELECT * FROM t, LATERAL (SELECT pgml.embed('m', 'x') AS q) l",
    ] {
        let plan = constant(sql);
        let vals: Vec<_> = plan.calls().iter().map(|_| Some(vec![0.25f32])).collect();
        let out = plan.render_literals(sql, &vals);
        parses(&out);
        assert!(!out.to_ascii_lowercase().contains("pgml.embed"), "{out}");
    }
}

#[test]
fn parameters_become_new_parameters_with_declared_types() {
    let sql =
        "SELECT id FROM t WHERE cat = $1 ORDER BY e <=> pgml.embed($2, $3, $4)::vector LIMIT 5";
    let plan = constant(sql);
    let c = &plan.calls()[0];
    assert_eq!(
        (&c.transformer, &c.input, &c.kwargs),
        (&ArgExpr::Param(2), &ArgExpr::Param(3), &ArgExpr::Param(4))
    );
    let (out, types) = plan.render_params(sql, &[0, 25]);
    assert_eq!(
        out,
        "SELECT id FROM t WHERE cat = $1 ORDER BY e <=> $5::vector LIMIT 5"
    );
    assert_eq!(types, vec![0, 25, 25, 3802, 1021]);
    parses(&out);

    let sql = "SELECT pgml.embed(text => $1::text, transformer => 'm', kwargs => $2::json)";
    let (out, types) = constant(sql).render_params(sql, &[]);
    assert_eq!(out, "SELECT $3 AS embed");
    assert_eq!(types, vec![25, 114, 1021]);

    let sql = "SELECT pgml.embed('m', 'query: ' || $1) AS q";
    let plan = constant(sql);
    assert_eq!(
        plan.calls()[0].input,
        ArgExpr::Concat(vec![lit("query: "), ArgExpr::Param(1)])
    );
    assert_eq!(
        plan.render_params(sql, &[]),
        ("SELECT $2 AS q".to_owned(), vec![25, 1021])
    );
}

#[test]
fn batch_form_is_prefetched_one_row_per_element() {
    let q = prefetch("SELECT embed FROM pgml.embed('m', ARRAY['a', 'b'])");
    assert!(
        q.contains(
            "SELECT 'e', ('m')::text, unnest((ARRAY['a', 'b'])::text[]), ('{}')::jsonb::text"
        ),
        "{q}"
    );
    let sql = "SELECT unnest(array_agg(id)), pgml.embed(inputs => array_agg(chunk), transformer => $1, kwargs => $2) FROM chunks WHERE doc = $3";
    let plan = plan_statement(sql, &[]);
    let StatementPlan::Prefetch(p) = plan else {
        panic!("{plan:?}")
    };
    assert!(p.calls[0].batch);
    assert!(p.query.contains("($1)::text AS pgml_t1, (array_agg(chunk))::text[] AS pgml_i1, ($2)::jsonb::text AS pgml_k1 FROM chunks WHERE doc = $3"), "{}", p.query);
    assert!(p.query.contains("unnest(pgml_s.pgml_i1)"));
    parses(&p.query);
    match plan_statement("SELECT pgml.embed('m', $1)", &[1009]) {
        StatementPlan::Prefetch(p) => assert!(p.calls[0].batch),
        other => panic!("{other:?}"),
    }
    assert!(!constant("SELECT pgml.embed('m', $1)").calls()[0].batch);
}

#[test]
fn model_from_subquery_is_prefetched_without_from() {
    let q = prefetch("SELECT pgml.embed(transformer => (SELECT schema #>> '{key,semantic_search,model}' FROM pipeline), text => $1, kwargs => '{}')::vector");
    assert!(q.starts_with("SELECT DISTINCT f, t, i, k FROM (SELECT 'e', ((SELECT schema #>> '{key,semantic_search,model}' FROM pipeline))::text, ($1)::text"), "{q}");
}

#[test]
fn insert_select_and_cte_bodies_prefetch() {
    let q = prefetch(
        "INSERT INTO t SELECT text, pgml.embed('m', text)::vector FROM pgml.ag_news LIMIT 10000",
    );
    assert!(q.contains("(SELECT ('m')::text AS pgml_t1, (text)::text AS pgml_i1, ('{}')::jsonb::text AS pgml_k1 FROM pgml.ag_news LIMIT 10000)"), "{q}");
    let q = prefetch(
        "WITH x AS (SELECT id, pgml.embed('m', body) AS e FROM docs WHERE id < 10) SELECT * FROM x",
    );
    assert!(q.contains("(WITH x AS (SELECT id, pgml.embed('m', body) AS e FROM docs WHERE id < 10) SELECT ('m')::text AS pgml_t1, (body)::text AS pgml_i1, ('{}')::jsonb::text AS pgml_k1 FROM docs WHERE id < 10)"), "{q}");
    assert_eq!(
        pass("WITH d AS (DELETE FROM t RETURNING body) SELECT pgml.embed('m', body) FROM d"),
        PassThroughReason::DataModifyingCte
    );
}

#[test]
fn order_by_calls_drop_the_limit_and_where_calls_pass_through() {
    let q = prefetch(
        "SELECT id FROM t WHERE id > 3 ORDER BY pgml.embed('m', body)::vector <=> '[1,2]' LIMIT 5",
    );
    assert!(q.contains("FROM t WHERE id > 3)"), "{q}");
    assert!(!q.contains("LIMIT"), "{q}");
    let q = prefetch("SELECT id, pgml.embed('m', body) AS e FROM t ORDER BY e LIMIT 5");
    assert!(!q.contains("LIMIT"), "{q}");
    let q = prefetch("SELECT id, pgml.embed('m', body) AS e FROM t ORDER BY id LIMIT 5");
    assert!(q.contains("ORDER BY id LIMIT 5)"), "{q}");
    assert_eq!(
        pass("SELECT id FROM t WHERE pgml.embed('m', body) IS NOT NULL"),
        PassThroughReason::UnsupportedPosition
    );
    assert_eq!(
        pass("SELECT pgml.embed('m', body) FROM a UNION SELECT e FROM b"),
        PassThroughReason::UnsupportedPosition
    );
}

#[test]
fn calls_in_derived_tables_prefetch_over_their_own_rows() {
    for (sql, inner) in [
        (
            "SELECT * FROM (SELECT pgml.embed('m', body) FROM t) s",
            "FROM t) AS pgml_s",
        ),
        (
            "SELECT e FROM (SELECT pgml.embed('m', x) AS e FROM unnest($1::text[]) AS x) AS s LIMIT 3",
            "FROM unnest($1::text[]) AS x) AS pgml_s",
        ),
        (
            "SELECT * FROM a JOIN (SELECT id, pgml.embed('m', body) FROM t WHERE id < 5) s USING (id)",
            "FROM t WHERE id < 5) AS pgml_s",
        ),
        (
            "SELECT * FROM a, b JOIN c ON b.x = c.x, (SELECT pgml.embed('m', body) FROM t) s",
            "FROM t) AS pgml_s",
        ),
        (
            "SELECT * FROM (SELECT * FROM (SELECT pgml.embed('m', body) FROM t) i) o",
            "FROM t) AS pgml_s",
        ),
        (
            "WITH w AS (SELECT * FROM (SELECT pgml.embed('m', body) FROM t) i) SELECT * FROM w",
            "FROM t) AS pgml_s",
        ),
    ] {
        let q = prefetch(sql);
        assert!(q.contains(inner), "{sql}\n{q}");
    }
    // Subqueries that may read an outer row: the upcall serves them.
    for sql in [
        "SELECT * FROM a, LATERAL (SELECT pgml.embed('m', a.body)) s",
        "SELECT (SELECT pgml.embed('m', body) FROM t WHERE t.id = a.id) FROM a",
        "SELECT * FROM a WHERE id IN (SELECT pgml.embed('m', body)::text FROM t)",
        "SELECT (SELECT e FROM (SELECT pgml.embed('m', a.body) AS e) i) FROM a",
        "SELECT a, (SELECT pgml.embed('m', body) FROM t) FROM a",
    ] {
        assert_eq!(pass(sql), PassThroughReason::UnsupportedPosition, "{sql}");
    }
}

#[test]
fn multi_statement_strings_plan_each_statement() {
    let sql = "SET x = 1; SELECT pgml.embed('m', 'a;b'); UPDATE t SET e = pgml.embed('m', body); DO $$ BEGIN PERFORM pgml.embed('m', 'x'); END $$; SELECT ';pgml'";
    let plan = plan_query(sql);
    let kinds: Vec<&str> = plan
        .statements
        .iter()
        .map(|s| match s.plan {
            StatementPlan::Unchanged => "unchanged",
            StatementPlan::Constant(_) => "constant",
            StatementPlan::Prefetch(_) => "prefetch",
            StatementPlan::PassThrough { .. } => "pass",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["unchanged", "constant", "prefetch", "pass", "unchanged"]
    );
    assert_eq!(
        &sql[plan.statements[1].span.clone()],
        "SELECT pgml.embed('m', 'a;b')"
    );
    let out = plan.render_literals(sql, &[Some(vec![3.0])]);
    assert_eq!(
        out,
        sql.replace("pgml.embed('m', 'a;b')", "('{3}'::real[]) AS embed")
    );
    assert_eq!(plan.prefetch_queries().count(), 1);
}

#[test]
fn text_without_pgml_is_the_fast_path() {
    let plan = plan_query("SELECT 1; SELECT 'embed'");
    assert!(plan.statements.is_empty());
    assert_eq!(plan.statements.capacity(), 0);
    assert_eq!(plan_statement("select 1", &[]), StatementPlan::Unchanged);
}

#[test]
fn malformed_calls_pass_through() {
    for (sql, reason) in [
        ("SELECT pgml.embed('m')", PassThroughReason::UnsupportedCall),
        (
            "SELECT pgml.embed('m', 'x', '{}', 4)",
            PassThroughReason::UnsupportedCall,
        ),
        (
            "SELECT pgml.embed(model => 'm', text => 'x')",
            PassThroughReason::UnsupportedCall,
        ),
        (
            "SELECT pgml.embed('m', pgml.embed('m', 'x')::text)",
            PassThroughReason::NestedCall,
        ),
        ("SELECT pgml.embed('m', 'x'", PassThroughReason::Unparseable),
        (
            "SELECT pgml.embed('m', 'x') ; SELECT 1",
            PassThroughReason::MultipleStatements,
        ),
        (
            "PREPARE p AS SELECT pgml.embed('m', $1)",
            PassThroughReason::UnsupportedStatement,
        ),
    ] {
        assert_eq!(pass(sql), reason, "{sql}");
    }
}

#[test]
fn fuzz_findings_keep_rendered_sql_valid() {
    // `...)FROM` without a space: the kept column name must not run into the next keyword.
    let sql = "SELECT PGML.EMBED('m', $2)FROM t";
    let (rendered, _) = constant(sql).render_params(sql, &[]);
    assert_eq!(rendered, "SELECT $3 AS embed FROM t");
    parses(&rendered);
    // Text Postgres' lexer would reject (`$1pgml`) is left to Postgres.
    assert!(!matches!(
        plan_statement("SELECT $1PGML.EMBED('m', $2)", &[]),
        StatementPlan::Constant(_)
    ));
}

#[test]
fn simple_query_entry_point_recognises_load_dataset_and_plans_the_rest() {
    use pgml_rewriter::{plan_simple_query, PlanOptions, SimpleQueryPlan};
    let opts = PlanOptions::default();
    assert_eq!(plan_simple_query("SELECT 1", opts), SimpleQueryPlan::NoPgml);
    let SimpleQueryPlan::LoadDataset(call) = plan_simple_query(
        "SELECT * FROM pgml.load_dataset('amazon_us_reviews', 'Video_DVD_v1_00');",
        opts,
    ) else {
        panic!("load_dataset not recognised");
    };
    assert_eq!(call.source, "amazon_us_reviews");
    assert!(call.star);
    let SimpleQueryPlan::Query(plan) =
        plan_simple_query("SELECT pgml.embed('m', 'x'); SELECT 2", opts)
    else {
        panic!("expected a query plan");
    };
    assert_eq!(plan.statements.len(), 2);
    assert!(matches!(
        plan.statements[0].plan,
        StatementPlan::Constant(_)
    ));
    // Not the exact shape the proxy executes: planned like any other statement.
    let SimpleQueryPlan::Query(plan) =
        plan_simple_query("SELECT * FROM pgml.load_dataset('a') WHERE true", opts)
    else {
        panic!("expected a query plan");
    };
    assert_eq!(plan.statements[0].plan, StatementPlan::Unchanged);
    // Unterminated text is never a load_dataset call.
    assert!(matches!(
        plan_simple_query("SELECT * FROM pgml.load_dataset('a", opts),
        SimpleQueryPlan::Query(_)
    ));
}

#[test]
fn mentions_pgml_is_a_case_insensitive_byte_search() {
    use pgml_rewriter::mentions_pgml;
    assert!(mentions_pgml(b"select PgMl.embed"));
    assert!(mentions_pgml(b"\xff\xfepgml"));
    assert!(!mentions_pgml(b"select pgm l"));
    assert!(!mentions_pgml(b""));
    assert!(mentions_pgml(b"PGML"));
    // Bytes that fold onto `p` only with other bits set are not a `p`.
    assert!(!mentions_pgml(b"\xd0gml \xf0gml 0gml"));
    assert!(!mentions_pgml(b"pgm"));
}

fn values() -> pgml_rewriter::Prefetched {
    pgml_rewriter::Prefetched {
        embed_keys: "'{}'::jsonb".into(),
        embed_values: "'{}'::real[]".into(),
        chunk_keys: "'{\"c\":1}'::jsonb".into(),
        chunk_values: "ARRAY[]::text[]".into(),
        transform_values: "'{}'::jsonb".into(),
    }
}

#[test]
fn prefetched_calls_become_stand_ins_with_the_values_beside_their_arguments() {
    let sql = "SELECT review_body, pgml.embed('intfloat/e5-small', 'passage: ' || review_body) AS embedding FROM reviews LIMIT 1000";
    let StatementPlan::Prefetch(p) = plan_statement(sql, &[]) else {
        panic!()
    };
    let out = p.render_prefetched(sql, &values());
    assert_eq!(
        out,
        "SELECT review_body, pgml_proxy.embed('intfloat/e5-small', 'passage: ' || review_body, '{}', '{}'::jsonb, '{}'::real[]) AS embedding FROM reviews LIMIT 1000"
    );
    parses(&out);

    // Named arguments in any order come out positional, in the declared order.
    let sql = "UPDATE t SET e = pgml.embed(kwargs => '{\"normalize\": true}', text => body, transformer => $1)::vector WHERE id < 10";
    let StatementPlan::Prefetch(p) = plan_statement(sql, &[]) else {
        panic!()
    };
    let out = p.render_prefetched(sql, &values());
    assert_eq!(
        out,
        "UPDATE t SET e = pgml_proxy.embed($1, body, '{\"normalize\": true}', '{}'::jsonb, '{}'::real[])::vector WHERE id < 10"
    );
    parses(&out);

    // The batch form and pgml.chunk keep their shape; chunk reads the chunk values.
    let sql = "SELECT pgml.embed('m', array_agg(body)) FROM t";
    let StatementPlan::Prefetch(p) = plan_statement(sql, &[]) else {
        panic!()
    };
    assert!(p
        .render_prefetched(sql, &values())
        .starts_with("SELECT pgml_proxy.embed('m', array_agg(body), '{}', "));
    let sql = "SELECT id, (pgml.chunk('recursive_character', body)).chunk FROM docs";
    let StatementPlan::Prefetch(p) = plan_statement(sql, &[]) else {
        panic!()
    };
    let out = p.render_prefetched(sql, &values());
    assert_eq!(
        out,
        "SELECT id, (pgml_proxy.chunk('recursive_character', body, '{}', '{\"c\":1}'::jsonb, ARRAY[]::text[])).chunk FROM docs"
    );
    parses(&out);

    // Another text than the planned one comes back unchanged.
    assert_eq!(p.render_prefetched("SELECT 1", &values()), "SELECT 1");
}

#[test]
fn query_strings_render_constant_and_prefetched_statements_together() {
    let sql = "SELECT pgml.embed('m', 'q'); UPDATE t SET e = pgml.embed('m', body); SELECT 1";
    let plan = plan_query(sql);
    let out = plan.render(sql, &[Some(vec![0.5f32])], Some(&values()));
    assert_eq!(
        out,
        "SELECT ('{0.5}'::real[]) AS embed; UPDATE t SET e = pgml_proxy.embed('m', body, '{}', '{}'::jsonb, '{}'::real[]); SELECT 1"
    );
    // Without values, Prefetch statements stay as they are.
    assert_eq!(
        plan.render(sql, &[Some(vec![0.5f32])], None),
        "SELECT ('{0.5}'::real[]) AS embed; UPDATE t SET e = pgml.embed('m', body); SELECT 1"
    );
}

#[test]
fn transform_calls_that_read_rows_are_prefetched_and_constant_ones_left_to_the_upcall() {
    // Constant arguments (korvus's `$n`, the docs' literals): one request, the upcall's.
    for sql in [
        "SELECT pgml.transform(task => $1, inputs => $2, args => $3)",
        "SELECT pgml.transform(task => '{\"task\": \"text-generation\", \"model\": \"m\"}'::jsonb, inputs => ARRAY['a', 'b'], args => '{\"max_new_tokens\": 5}'::jsonb)",
        "SELECT * FROM pgml.transform('text-generation', '{}', ARRAY['x'])",
        "SELECT pgml.transform_stream(task => $1, inputs => $2, args => $3)",
    ] {
        assert_eq!(plan_statement(sql, &[]), StatementPlan::Unchanged, "{sql}");
    }
    // A column argument: the prefetch reads each row's request key, over the same rows.
    let sql = "SELECT id, pgml.transform(task => '{\"model\": \"m\"}'::jsonb, inputs => ARRAY[body], args => '{\"max_tokens\": 5}'::jsonb) AS answer FROM reviews WHERE id < 10 ORDER BY id";
    let q = prefetch(sql);
    assert!(
        q.contains("pgml_proxy.transform_key(task => '{\"model\": \"m\"}'::jsonb, inputs => ARRAY[body], args => '{\"max_tokens\": 5}'::jsonb)"),
        "{q}"
    );
    assert!(
        q.contains("SELECT 't'") && q.contains("FROM reviews WHERE id < 10"),
        "{q}"
    );
    let StatementPlan::Prefetch(p) = plan_statement(sql, &[]) else {
        panic!()
    };
    let out = p.render_prefetched(sql, &values());
    assert_eq!(
        out,
        "SELECT id, pgml_proxy.transform(task => '{\"model\": \"m\"}'::jsonb, inputs => ARRAY[body], args => '{\"max_tokens\": 5}'::jsonb, prefetched => '{}'::jsonb) AS answer FROM reviews WHERE id < 10 ORDER BY id"
    );
    parses(&out);
    // Positional arguments stay positional; the answers follow by name.
    let sql = "UPDATE t SET answer = pgml.transform('text-generation', '{}', ARRAY[question])";
    let StatementPlan::Prefetch(p) = plan_statement(sql, &[]) else {
        panic!()
    };
    assert_eq!(
        p.render_prefetched(sql, &values()),
        "UPDATE t SET answer = pgml_proxy.transform('text-generation', '{}', ARRAY[question], prefetched => '{}'::jsonb)"
    );
    // With an embed call of the same statement: each reads its own values.
    let sql = "SELECT pgml.embed('m', body), pgml.transform(task => 'text-generation', inputs => ARRAY[body]) FROM t";
    let q = prefetch(sql);
    assert!(q.contains("SELECT 'e'") && q.contains("SELECT 't'"), "{q}");
    // PostgresML's argument names only, at most four, the task required, no name twice.
    for sql in [
        "SELECT pgml.transform(inputs => ARRAY[body]) FROM t",
        "SELECT pgml.transform(task => 'x', prefetched => '{}', inputs => ARRAY[body]) FROM t",
        "SELECT pgml.transform('x', '{}', ARRAY[body], false, 1) FROM t",
        "SELECT pgml.transform(task => 'x', ARRAY[body]) FROM t",
        "SELECT pgml.transform(task => 'x', task => 'y', inputs => ARRAY[body]) FROM t",
    ] {
        assert_eq!(
            plan_statement(sql, &[]),
            StatementPlan::PassThrough {
                reason: PassThroughReason::UnsupportedCall
            },
            "{sql}"
        );
    }
    // In FROM, a row-dependent call is not a position the prefetch covers.
    assert!(matches!(
        plan_statement(
            "SELECT a.* FROM t, LATERAL (SELECT pgml.transform('x', '{}', ARRAY[t.body])) a",
            &[]
        ),
        StatementPlan::PassThrough { .. }
    ));
}
