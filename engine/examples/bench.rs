//! Engine throughput and latency on a JSON-lines file of texts (see bench/engine.sh):
//! all texts in one call (the prefetch path) in fp32 and in int8 (rounds in the order fp32,
//! int8, int8, fp32, best of each, so drift in the machine's load cancels), the int8 vectors'
//! cosine against fp32, then single-text latency and cache-hit latency (fp32).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and tool code: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use pgml_engine::{Embedder, Engine, EngineConfig};
use serde_json::{json, Value};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Texts per second of one call embedding all `texts`, and the vectors.
async fn throughput(
    engine: &Engine,
    texts: &[String],
    kwargs: &Value,
) -> anyhow::Result<(f64, Vec<Vec<f32>>)> {
    let start = Instant::now();
    let vectors = engine.embed(MODEL, texts.to_vec(), kwargs).await?;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(vectors.len(), texts.len());
    Ok((texts.len() as f64 / elapsed, vectors))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
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

    let fp32 = json!({"precision": "fp32"});
    let int8 = json!({"precision": "int8"});
    engine.embed(MODEL, vec!["warm up".into()], &int8).await?;
    let (fp32_a, full) = throughput(&engine, &texts, &fp32).await?;
    let m = engine.metrics();
    let (int8_a, quant) = throughput(&engine, &texts, &int8).await?;
    let (int8_b, _) = throughput(&engine, &texts, &int8).await?;
    let (fp32_b, _) = throughput(&engine, &texts, &fp32).await?;
    let (fp32_tps, int8_tps) = (fp32_a.max(fp32_b), int8_a.max(int8_b));
    println!("engine_texts_per_s={fp32_tps:.1}");
    println!(
        "engine_batches={} mean_batch={:.1} tokenize_s={:.2} inference_s={:.2}",
        m.batches,
        m.batched_texts as f64 / m.batches.max(1) as f64,
        m.tokenize_seconds,
        m.inference_seconds
    );
    println!("engine_int8_texts_per_s={int8_tps:.1} (rounds: fp32 {fp32_a:.1} {fp32_b:.1}, int8 {int8_a:.1} {int8_b:.1})");
    println!(
        "ratio_int8_over_fp32={:.2} (target >= 1.3)",
        int8_tps / fp32_tps
    );
    let cosines: Vec<f64> = full.iter().zip(&quant).map(|(a, b)| cosine(a, b)).collect();
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    println!(
        "int8_cosine_vs_fp32 min={min:.4} mean={mean:.4} over {} texts (targets >= 0.99, >= 0.998)",
        cosines.len()
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
