//! Planning time: a pass-through statement (fast path, no parse), a constant-embed SELECT,
//! and a 50-statement script; prints µs per statement after criterion's own report.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use pgml_rewriter::{plan_query, plan_statement};

const PASS: &str = "SELECT id, title, body FROM documents WHERE id = $1 AND deleted_at IS NULL";
const CONSTANT: &str =
    "SELECT id FROM documents ORDER BY embedding <=> pgml.embed('intfloat/e5-small', 'query: hi mom')::vector LIMIT 5";

fn script() -> String {
    let stmts = [
        "INSERT INTO t (id, body) VALUES (1, 'some text; with a semicolon')",
        "SELECT id FROM t ORDER BY e <=> pgml.embed('m', 'query: q')::vector LIMIT 5",
        "UPDATE t SET e = pgml.embed('m', 'passage: ' || body) WHERE id BETWEEN 1 AND 10",
        "SELECT count(*) FROM t",
        "SELECT body, pgml.embed('m', body) FROM t LIMIT 100",
    ];
    (0..50)
        .map(|i| stmts[i % stmts.len()])
        .collect::<Vec<_>>()
        .join(";\n")
}

fn per_statement_us(f: impl Fn(), statements: usize) -> f64 {
    let iters = 2000;
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / (iters * statements) as f64
}

fn bench(c: &mut Criterion) {
    let script = script();
    c.bench_function("pass_through_statement", |b| {
        b.iter(|| plan_statement(black_box(PASS), &[]))
    });
    c.bench_function("constant_embed_select", |b| {
        b.iter(|| plan_statement(black_box(CONSTANT), &[]))
    });
    c.bench_function("script_50_statements", |b| {
        b.iter(|| plan_query(black_box(&script)))
    });
    eprintln!(
        "µs/statement: pass-through {:.3}, constant SELECT {:.2}, 50-statement script {:.2}",
        per_statement_us(|| drop(black_box(plan_statement(black_box(PASS), &[]))), 1),
        per_statement_us(
            || drop(black_box(plan_statement(black_box(CONSTANT), &[]))),
            1
        ),
        per_statement_us(|| drop(black_box(plan_query(black_box(&script)))), 50),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
