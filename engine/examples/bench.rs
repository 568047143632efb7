//! Engine throughput and latency on a JSON-lines file of texts (see bench/engine.sh):
//! all texts in one call (the prefetch path), then single-text latency and cache-hit latency.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use pgml_engine::{Embedder, Engine, EngineConfig};
use serde_json::Value;

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bench TEXTS.jsonl"))?;
    let texts: Vec<String> = std::fs::read_to_string(path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut config = EngineConfig {
        allow_download: false,
        cache_bytes: 0,
        ..EngineConfig::default()
    };
    if let Ok(v) = std::env::var("BENCH_MAX_BATCH_TOKENS") {
        config.max_batch_tokens = Some(v.parse()?);
    }
    if let Ok(v) = std::env::var("BENCH_MAX_BATCH_TEXTS") {
        config.max_batch_texts = Some(v.parse()?);
    }
    config.spinning = std::env::var("BENCH_SPINNING").is_ok_and(|v| v == "1");
    let engine = Engine::new(config)?;
    engine
        .embed(MODEL, vec!["warm up".into()], &Value::Null)
        .await?;

    let start = Instant::now();
    let vectors = engine.embed(MODEL, texts.clone(), &Value::Null).await?;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(vectors.len(), texts.len());
    let m = engine.metrics();
    println!("engine_texts_per_s={:.1}", texts.len() as f64 / elapsed);
    println!(
        "engine_batches={} mean_batch={:.1} tokenize_s={:.2} inference_s={:.2}",
        m.batches,
        m.batched_texts as f64 / m.batches.max(1) as f64,
        m.tokenize_seconds,
        m.inference_seconds
    );

    let mut single = Vec::new();
    for text in texts.iter().take(200) {
        let t = Instant::now();
        engine
            .embed(MODEL, vec![format!("single {text}")], &Value::Null)
            .await?;
        single.push(t.elapsed());
    }
    single.sort();
    println!(
        "single_text_ms p50={:.2} p99={:.2}",
        percentile(&single, 0.5),
        percentile(&single, 0.99)
    );

    let cached = Engine::new(EngineConfig {
        allow_download: false,
        ..EngineConfig::default()
    })?;
    cached
        .embed(MODEL, vec![texts[0].clone()], &Value::Null)
        .await?;
    let mut hits = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        cached
            .embed(MODEL, vec![texts[0].clone()], &Value::Null)
            .await?;
        hits.push(t.elapsed());
    }
    hits.sort();
    println!(
        "cache_hit_us p50={:.1} p99={:.1}",
        percentile(&hits, 0.5) * 1e3,
        percentile(&hits, 0.99) * 1e3
    );
    Ok(())
}
