//! Regression tests for "One statement kills every session": client-controlled numbers
//! (parameter numbers, call and statement counts, nesting depth, text size) never size an
//! allocation, drive recursion or panic; beyond the limits the plan is PassThrough.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use pgml_rewriter::{
    plan_query, plan_simple_query, plan_statement, BindError, PassThroughReason, PlanOptions,
    QueryPlan, SimpleQueryPlan, StatementPlan, MAX_CALLS, MAX_NESTING, MAX_PARAMS, MAX_STATEMENTS,
    MAX_TOKENS,
};

fn reason(plan: &StatementPlan) -> PassThroughReason {
    match plan {
        StatementPlan::PassThrough { reason } => *reason,
        other => panic!("expected PassThrough, got {other:?}"),
    }
}

/// The plan of a one-statement Query string.
fn query_reason(sql: &str) -> PassThroughReason {
    let plan = plan_query(sql);
    assert_eq!(plan.statements.len(), 1, "{sql:.80}");
    reason(&plan.statements[0].plan)
}

/// Runs `f` on a thread with a small stack, as the proxy's runtime threads would.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no stack overflow or panic")
}

#[test]
fn huge_parameter_number_is_passed_through_not_allocated() {
    let sql = "SELECT pgml.embed('m','b'), $100000000000000";
    assert_eq!(query_reason(sql), PassThroughReason::InvalidParameter);
    assert_eq!(
        reason(&plan_statement(sql, &[])),
        PassThroughReason::InvalidParameter
    );
    let inside = "SELECT pgml.embed('m', $100000000000000)";
    assert_eq!(query_reason(inside), PassThroughReason::InvalidParameter);
    let digits = format!("SELECT pgml.embed('m', 'b'), ${}", "9".repeat(1 << 20));
    assert_eq!(query_reason(&digits), PassThroughReason::InvalidParameter);
}

#[test]
fn parameter_numbers_follow_the_protocol_range() {
    for n in ["$0", "$00", "$65536", "$4294967297"] {
        let sql = format!("SELECT pgml.embed('m', 'b'), {n}");
        assert_eq!(
            query_reason(&sql),
            PassThroughReason::InvalidParameter,
            "{n}"
        );
        assert_eq!(
            reason(&plan_statement(&sql, &[])),
            PassThroughReason::InvalidParameter,
            "{n}"
        );
    }
    // $65535 is a parameter, but a Parse cannot declare it and one more per call.
    let sql = "SELECT pgml.embed('m', 'b'), $65535";
    assert!(matches!(
        plan_query(sql).statements[0].plan,
        StatementPlan::Constant(_)
    ));
    assert_eq!(
        reason(&plan_statement(sql, &[])),
        PassThroughReason::LimitExceeded
    );
    let sql = "SELECT pgml.embed('m', $1), $065534";
    let StatementPlan::Constant(c) = plan_statement(sql, &[]) else {
        panic!("expected Constant");
    };
    let (rendered, types) = c.render_params(sql, &[]);
    assert_eq!(types.len(), MAX_PARAMS);
    assert_eq!(rendered, "SELECT $65535 AS embed, $065534");
}

#[test]
fn simple_query_without_values_reports_the_missing_parameter() {
    let StatementPlan::Constant(c) = &plan_query("SELECT pgml.embed('m', $3)").statements[0].plan
    else {
        panic!("expected Constant");
    };
    let err = c.calls()[0]
        .bind(&|n| Err(BindError::NoParameter(n)))
        .unwrap_err();
    assert_eq!(err.sqlstate(), "42P02");
    assert_eq!(err.to_string(), "there is no parameter $3");
}

#[test]
fn deep_parentheses_are_passed_through_without_recursion() {
    let plan = on_small_stack(|| {
        let depth = 100_000;
        let sql = format!(
            "SELECT {}pgml.embed('m', 'b'){}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        plan_query(&sql)
    });
    assert_eq!(
        reason(&plan.statements[0].plan),
        PassThroughReason::LimitExceeded
    );
    // Deep inside the call's argument, and unbalanced.
    let plan = on_small_stack(|| {
        let sql = format!("SELECT pgml.embed('m', {}'b')", "(".repeat(100_000));
        (plan_query(&sql), plan_statement(&sql, &[]))
    });
    assert!(matches!(
        plan.0.statements[0].plan,
        StatementPlan::PassThrough { .. }
    ));
    assert!(matches!(plan.1, StatementPlan::PassThrough { .. }));
}

#[test]
fn nesting_up_to_the_limit_reaches_the_parser_on_a_small_stack() {
    for depth in [10, 30, 49, 50, 63, MAX_NESTING, MAX_NESTING + 1] {
        let (constant, limit) = on_small_stack(move || {
            let sql = format!(
                "SELECT {}1{}, pgml.embed('m', 'a' || $1)",
                "(".repeat(depth),
                ")".repeat(depth)
            );
            let simple = plan_query(&sql);
            let parse = plan_statement(&sql, &[]);
            assert_eq!(simple.statements[0].plan, parse);
            (
                matches!(parse, StatementPlan::Constant(_)),
                parse
                    == StatementPlan::PassThrough {
                        reason: PassThroughReason::LimitExceeded,
                    },
            )
        });
        // sqlparser refuses deep input itself (Unparseable); beyond MAX_NESTING it never sees it.
        assert_eq!(limit, depth > MAX_NESTING, "depth {depth}");
        if depth <= 30 {
            assert!(constant, "depth {depth}");
        }
    }
}

#[test]
fn a_flood_of_statements_is_one_pass_through_entry() {
    let sql = "SELECT pgml.embed('m', 'x');".repeat(100_000);
    let plan = on_small_stack(move || (plan_query(&sql), sql.len()));
    assert_eq!(
        plan.0.statements.len(),
        1,
        "more than {MAX_STATEMENTS} statements"
    );
    assert_eq!(plan.0.statements[0].span, 0..plan.1);
    assert_eq!(
        reason(&plan.0.statements[0].plan),
        PassThroughReason::LimitExceeded
    );
    // Over MAX_STATEMENTS but well under MAX_TOKENS.
    let many = format!(
        "{}SELECT pgml.embed('m', 'x')",
        "SELECT 1;".repeat(MAX_STATEMENTS)
    );
    let plan = plan_query(&many);
    assert_eq!(plan.statements.len(), 1);
    assert_eq!(plan.statements[0].span, 0..many.len());
    assert_eq!(
        reason(&plan.statements[0].plan),
        PassThroughReason::LimitExceeded
    );
    let within = format!(
        "{}SELECT pgml.embed('m', 'x')",
        "SELECT 1;".repeat(MAX_STATEMENTS - 1)
    );
    let plan = plan_query(&within);
    assert_eq!(plan.statements.len(), MAX_STATEMENTS);
    assert!(matches!(
        plan.statements[MAX_STATEMENTS - 1].plan,
        StatementPlan::Constant(_)
    ));
    let plain = format!("{}SELECT pgml.embed('m', 'x')", "SELECT 1;".repeat(100_000));
    let SimpleQueryPlan::Query(plan) = plan_simple_query(&plain, PlanOptions::default()) else {
        panic!("expected a query plan");
    };
    assert!(plan.is_unchanged_text());
    assert_eq!(
        plan.render_literals(&plain, &[] as &[Option<Vec<f32>>]),
        plain
    );
}

#[test]
fn too_many_calls_pass_through_every_statement_with_calls() {
    let rows = vec!["(pgml.embed('m', 'x'))"; MAX_CALLS + 1].join(", ");
    let sql = format!("SELECT 1; INSERT INTO t VALUES {rows}");
    let plan = plan_query(&sql);
    assert_eq!(plan.statements[0].plan, StatementPlan::Unchanged);
    assert_eq!(
        reason(&plan.statements[1].plan),
        PassThroughReason::LimitExceeded
    );
    assert_eq!(
        reason(&plan_statement(
            &format!("INSERT INTO t VALUES {rows}"),
            &[]
        )),
        PassThroughReason::LimitExceeded
    );
    // Spread over statements, the budget is per query string.
    let spread = "SELECT pgml.embed('m', 'x'), pgml.embed('m', 'y');".repeat(MAX_CALLS / 2 + 1);
    let plan = plan_query(&spread);
    assert!(plan
        .statements
        .iter()
        .all(|s| reason(&s.plan) == PassThroughReason::LimitExceeded));
}

#[test]
fn many_calls_within_the_limit_plan_in_reasonable_time() {
    let items = vec!["pgml.embed('m', 'x')"; MAX_CALLS].join(", ");
    let sql = format!("SELECT {items} FROM t WHERE x = $1");
    let start = std::time::Instant::now();
    let plan = plan_query(&sql);
    let StatementPlan::Constant(c) = &plan.statements[0].plan else {
        panic!("expected Constant");
    };
    assert_eq!(c.calls().len(), MAX_CALLS);
    let out = plan.render_literals(&sql, &[] as &[Option<Vec<f32>>]);
    assert!(out.starts_with("SELECT (NULL::real[]) AS embed, "));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn text_over_the_token_limit_is_one_pass_through_entry() {
    let sql = format!("SELECT pgml.embed('m', 'x'), {}", "1,".repeat(MAX_TOKENS));
    let plan = plan_query(&sql);
    assert_eq!(plan.statements.len(), 1);
    assert_eq!(plan.statements[0].span, 0..sql.len());
    assert_eq!(
        reason(&plan.statements[0].plan),
        PassThroughReason::LimitExceeded
    );
    assert_eq!(
        reason(&plan_statement(&sql, &[])),
        PassThroughReason::LimitExceeded
    );
    assert!(matches!(
        plan_simple_query(&sql, PlanOptions::default()),
        SimpleQueryPlan::Query(_)
    ));
}

#[test]
fn huge_literals_are_planned_as_constants() {
    let text = "x'".repeat(4 << 20);
    let quoted = text.replace('\'', "''");
    let sql = format!("SELECT pgml.embed('m', '{quoted}')");
    let plan = plan_query(&sql);
    let StatementPlan::Constant(c) = &plan.statements[0].plan else {
        panic!("expected Constant");
    };
    let bound = c.calls()[0]
        .bind(&|n| Err(BindError::NoParameter(n)))
        .unwrap()
        .unwrap();
    assert_eq!(bound.text, text);
    assert_eq!(
        plan.render_literals(&sql, &[Some(vec![1.0])]),
        "SELECT ('{1}'::real[]) AS embed"
    );
}

#[test]
fn rendering_never_panics_on_values_or_text_it_was_not_planned_for() {
    let sql = "SELECT pgml.embed('m', 'é'), pgml.embed('m', $1) FROM t";
    let plan: QueryPlan = plan_query(sql);
    let StatementPlan::Constant(c) = &plan.statements[0].plan else {
        panic!("expected Constant");
    };
    // Fewer values than calls: NULL; more: ignored.
    assert_eq!(
        plan.render_literals(sql, &[Some(vec![1.0])]),
        "SELECT ('{1}'::real[]) AS embed, (NULL::real[]) AS embed FROM t"
    );
    let many = vec![Some(vec![2.0]); 5];
    assert_eq!(
        c.render_literals(sql, &many),
        "SELECT ('{2}'::real[]) AS embed, ('{2}'::real[]) AS embed FROM t"
    );
    // Other text: shorter, or cutting inside a character: returned unchanged.
    for other in [
        "",
        "SELECT 1",
        "SELECT pgml.embed('m', 'ééééééééééééééééééééé')",
    ] {
        assert_eq!(plan.render_literals(other, &many), other);
        assert_eq!(c.render_literals(other, &[] as &[Option<Vec<f32>>]), other);
        let (text, types) = c.render_params(other, &[25, 25, 25]);
        assert_eq!(text, other);
        assert_eq!(types, vec![25, 25, 25, 1021, 1021]);
    }
    let (text, types) = c.render_params(sql, &[]);
    assert_eq!(text, "SELECT $2 AS embed, $3 AS embed FROM t");
    assert_eq!(types, vec![25, 1021, 1021]);
}

#[test]
fn many_row_dependent_calls_prefetch_in_reasonable_time() {
    let items = vec!["pgml.embed('m', body)"; MAX_CALLS].join(", ");
    let aliases: Vec<String> = (0..MAX_CALLS).map(|i| format!("c{i} AS a{i}")).collect();
    let order: Vec<String> = (0..MAX_CALLS).map(|i| format!("b{i}")).collect();
    let sql = format!(
        "SELECT {items}, {} FROM t ORDER BY {}",
        aliases.join(", "),
        order.join(", ")
    );
    let start = std::time::Instant::now();
    let plan = plan_query(&sql);
    let StatementPlan::Prefetch(p) = &plan.statements[0].plan else {
        panic!("expected Prefetch, got {:?}", plan.statements[0].plan);
    };
    assert_eq!(p.calls.len(), MAX_CALLS);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

/// Found by `make fuzz`: an unterminated quoted identifier ending in a multi-byte character
/// once sliced inside that character.
#[test]
fn quoted_identifier_ending_in_a_multibyte_character_does_not_panic() {
    for sql in [
        "'\"pgml\".\"embed\"('\"0\u{10a60}",
        "SELECT \"pgml\".\"embed\"(\"\u{e9}",
        "SELECT \"pgml\u{e9}\".embed('m', 'x')",
    ] {
        let _ = plan_query(sql);
        let _ = plan_statement(sql, &[]);
    }
}
