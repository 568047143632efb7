//! Property tests: text without `pgml` round-trips byte for byte, literal texts survive quoting
//! and decoding, splicing never touches text outside the call, and the planner never panics
//! (a proptest-driven fuzz over SQL-ish fragments and arbitrary strings).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use pgml_rewriter::{
    mentions_pgml, plan_query, plan_query_with, plan_simple_query, plan_statement,
    plan_statement_with, quote_literal, ArgExpr, BindError, PlanOptions, SimpleQueryPlan,
    StatementPlan,
};
use proptest::prelude::*;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const FRAGMENTS: &[&str] = &[
    "SELECT ",
    "FROM t ",
    "WHERE ",
    "x",
    " = ",
    "'a''b'",
    "E'\\''",
    "$$;$$",
    "$q$ ' $q$",
    "\"q\"\"\"",
    "/* /* */ */",
    "-- c\n",
    ";",
    "(",
    ")",
    ",",
    "$1",
    "::text",
    "||",
    "pgml.embed(",
    "'m'",
    "body",
    "embed",
    "\"pgml\".\"embed\"(",
    "ORDER BY ",
    "LIMIT 5",
    "UPDATE t SET e = ",
    "WITH w AS (",
    "DO $$",
    " ",
    "\n",
    "'",
    "\"",
    "$",
    "E'",
    "U&'x'",
    "ARRAY[",
    "]",
    "inputs => ",
    "kwargs := ",
    "\\",
    "é",
    "PGML.EMBED('m', $2)",
    "INSERT INTO t SELECT ",
    "1.5e-3",
    "CREATE ",
    "GROUP BY 1",
];

fn sqlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(FRAGMENTS).prop_map(str::to_owned),
            1 => any::<String>(),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

/// Arbitrary bytes and SQL fragments with `pgml` spliced in somewhere.
fn bytes_with_pgml() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            prop_oneof![
                2 => prop::sample::select(FRAGMENTS).prop_map(|f| f.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 0..16),
            ],
            0..24,
        ),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(parts, at)| {
            let mut bytes = parts.concat();
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, b"pgml".iter().copied());
            bytes
        })
}

fn literal_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("'".to_owned()),
            Just("''".to_owned()),
            Just("$$".to_owned()),
            Just("\\".to_owned()),
            Just("\\'".to_owned()),
            Just("\n".to_owned()),
            Just("pgml.embed('x', 'y')".to_owned()),
            Just("*/".to_owned()),
            Just("--".to_owned()),
            "[a-z ]{0,8}",
            any::<char>()
                .prop_filter("no NUL", |c| *c != '\0')
                .prop_map(String::from),
        ],
        0..12,
    )
    .prop_map(|p| p.concat())
}

/// Values as the proxy splices them for row-dependent calls.
fn prefetched() -> pgml_rewriter::Prefetched {
    pgml_rewriter::Prefetched {
        embed_keys: "'{\"m\": {\"{}\": {\"a\": [1, 2]}}}'::pg_catalog.jsonb".into(),
        embed_values: "'{0.5,-1}'::pg_catalog.float4[]".into(),
        chunk_keys: "'{}'::pg_catalog.jsonb".into(),
        chunk_values: "ARRAY['x']::pg_catalog.text[]".into(),
        transform_values: "'{}'::pg_catalog.jsonb".into(),
    }
}

fn parses(sql: &str) -> bool {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).is_ok()
}

/// The real[] literal bodies spliced into `out`, decoded back to floats.
fn spliced_values(out: &str) -> Vec<Vec<f32>> {
    out.match_indices("('{")
        .map(|(at, _)| {
            let body = &out[at + 3..];
            let end = body.find("}'::real[])").expect("closed literal");
            if end == 0 {
                return Vec::new();
            }
            body[..end]
                .split(',')
                .map(|s| s.parse::<f32>().expect("float"))
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { max_global_rejects: 1 << 20, ..ProptestConfig::with_cases(512) })]

    #[test]
    fn text_without_pgml_comes_back_byte_identical(sql in sqlish()) {
        prop_assume!(!sql.to_ascii_lowercase().contains("pgml"));
        let plan = plan_query(&sql);
        prop_assert!(plan.statements.is_empty());
        prop_assert_eq!(plan.render_literals(&sql, &[] as &[Option<Vec<f32>>]), sql.clone());
        prop_assert_eq!(plan_statement(&sql, &[]), StatementPlan::Unchanged);
    }

    #[test]
    fn literal_texts_decode_and_splice_to_parseable_sql(
        text in literal_text(),
        model in literal_text(),
        values in prop::collection::vec(prop::num::f32::ANY, 0..8),
        standard in any::<bool>(),
    ) {
        let q = quote_literal(&text).expect("no NUL");
        let m = quote_literal(&model).expect("no NUL");
        let sql = format!("SELECT id, pgml.embed({m}, {q}, '{{}}') AS e FROM t WHERE note = {q} ORDER BY 1");
        let plan = plan_query_with(&sql, PlanOptions { standard_conforming_strings: standard });
        prop_assert_eq!(plan.statements.len(), 1);
        let StatementPlan::Constant(c) = &plan.statements[0].plan else {
            return Err(TestCaseError::fail(format!("not constant: {:?}", plan.statements[0].plan)));
        };
        prop_assert_eq!(&c.calls()[0].input, &ArgExpr::Literal(text.clone()));
        prop_assert_eq!(&c.calls()[0].transformer, &ArgExpr::Literal(model.clone()));
        let out = plan.render_literals(&sql, &[Some(values.clone())]);
        prop_assert!(parses(&out), "does not parse: {}", out);
        let back = spliced_values(&out);
        prop_assert_eq!(back.len(), 1);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // NaN payloads are not preserved by text; compare NaN-ness for those.
        let expect: Vec<u32> = values.iter().map(|x| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() }).collect();
        let got: Vec<u32> = back[0].iter().map(|x| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() }).collect();
        prop_assert_eq!(got, expect, "{:?}", bits(&back[0]));
    }

    #[test]
    fn splicing_never_changes_text_outside_the_call(
        text in literal_text(),
        before in "[a-z0-9 ,=<>()']{0,20}",
        after in "[a-z0-9 ,=<>()]{0,20}",
    ) {
        let q = quote_literal(&text).expect("no NUL");
        let head = format!("SELECT * FROM t WHERE note = '{}' AND e <=> ", before.replace('\'', "''"));
        let tail = format!("::vector < 0.5 /* {after} */");
        let sql = format!("{head}pgml.embed('m', {q}){tail}");
        let plan = plan_query(&sql);
        let out = plan.render_literals(&sql, &[Some(vec![1.0, 2.0])]);
        prop_assert_eq!(out, format!("{head}('{{1,2}}'::real[]){tail}"));
    }

    #[test]
    fn planner_never_panics(sql in sqlish(), types in prop::collection::vec(prop::sample::select(&[0u32, 25, 1009, 3802, 23][..]), 0..4)) {
        let plan = plan_query(&sql);
        let values: Vec<Option<Vec<f32>>> = plan.constant_calls().map(|_| Some(vec![0.5])).collect();
        let out = plan.render_literals(&sql, &values);
        for s in &plan.statements {
            prop_assert!(s.span.end <= sql.len());
            if let StatementPlan::Constant(_) = s.plan {
                prop_assert!(parses(&sql[s.span.clone()]));
            }
        }
        if !plan.is_unchanged_text() {
            prop_assert!(!out.is_empty());
        }
        if let StatementPlan::Prefetch(p) = plan_statement(&sql, &types) {
            // The stand-ins with their values beside the same arguments still parse.
            let rendered = p.render_prefetched(&sql, &prefetched());
            prop_assert!(parses(&rendered), "does not parse: {}", rendered);
            prop_assert!(rendered.contains("pgml_proxy."), "{}", rendered);
        }
        if let StatementPlan::Constant(c) = plan_statement(&sql, &types) {
            let (rendered, declared) = c.render_params(&sql, &types);
            prop_assert!(parses(&rendered), "does not parse: {}", rendered);
            prop_assert!(declared.len() >= types.len() + c.calls().len());
            let lit = c.render_literals(&sql, &[] as &[Option<Vec<f32>>]);
            prop_assert!(parses(&lit), "does not parse: {}", lit);
        }
    }

    #[test]
    fn mentions_pgml_finds_exactly_the_texts_with_pgml_in_any_case(
        bytes in prop::collection::vec(prop::sample::select(&b"pPgGmMlL \0\xd0"[..]), 0..40),
    ) {
        let naive = bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"pgml"));
        prop_assert_eq!(mentions_pgml(&bytes), naive);
    }

    #[test]
    fn random_bytes_with_pgml_never_panic_the_planner_or_renderers(
        bytes in bytes_with_pgml(),
        other in sqlish(),
        types in prop::collection::vec(prop::sample::select(&[0u32, 25, 1009, 3802, 23][..]), 0..4),
        n_values in 0usize..4,
        standard in any::<bool>(),
    ) {
        prop_assert!(mentions_pgml(&bytes));
        let sql = String::from_utf8_lossy(&bytes).into_owned();
        let opts = PlanOptions { standard_conforming_strings: standard };
        let values: Vec<Option<Vec<f32>>> =
            (0..n_values).map(|i| (i % 2 == 0).then(|| vec![0.5, -1.0])).collect();
        let param = |n: usize| -> Result<Option<String>, BindError> {
            match n % 3 {
                0 => Err(BindError::InvalidUtf8 { param: n }),
                _ => Ok(Some(format!("v{n}"))),
            }
        };
        match plan_simple_query(&sql, opts) {
            SimpleQueryPlan::NoPgml => prop_assert!(false, "pgml not seen"),
            SimpleQueryPlan::LoadDataset(_) => {}
            SimpleQueryPlan::Query(plan) => {
                for s in &plan.statements {
                    prop_assert!(s.span.end <= sql.len());
                }
                let _ = plan.render_literals(&sql, &values);
                let _ = plan.render_literals(&other, &values);
                let _ = plan.render(&sql, &values, Some(&prefetched()));
                let _ = plan.render(&other, &values, Some(&prefetched()));
                for call in plan.constant_calls() {
                    let _ = call.bind(&param);
                }
            }
        }
        if let StatementPlan::Constant(c) = plan_statement_with(&sql, &types, opts) {
            let (_, declared) = c.render_params(&sql, &types);
            prop_assert!(declared.len() >= types.len() + c.calls().len());
            let (_, declared) = c.render_params(&other, &types);
            prop_assert!(declared.len() >= types.len() + c.calls().len());
            let _ = c.render_literals(&sql, &values);
            let _ = c.render_literals(&other, &values);
        }
    }
}
