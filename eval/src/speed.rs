//! `closer-eval speed`: the encoder's latency on single messages (the fast path that serves,
//! and the candle graph it replaced) and its throughput on batches, over a file of texts.
//! With `--ids-out` and `--vectors-out` it also writes what `eval/ort_compare.sh` needs to
//! time ONNX Runtime on exactly the same token ids and to check that the vectors agree.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use closer_models::encoder::TextEncoder;
use serde_json::json;

#[derive(Args, Clone)]
pub struct SpeedArgs {
    /// Texts, one per line; a JSONL line's `text` field is taken.
    #[arg(long, default_value = "eval/data/applinks-intents-test.jsonl")]
    texts: PathBuf,
    /// Timed single-message calls per path (after 20 warm-up calls).
    #[arg(long, default_value_t = 300)]
    runs: usize,
    /// Folder of ready models (`closer models pull`).
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    model_dir: PathBuf,
    /// Write each text's token ids here (JSON list of lists).
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Write each text's embedding (fast path) here (JSON list of lists).
    #[arg(long)]
    vectors_out: Option<PathBuf>,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn read_texts(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = vec![];
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            let t = v["text"]
                .as_str()
                .with_context(|| format!("{}:{}: no \"text\" string", path.display(), i + 1))?;
            out.push(t.to_string());
        } else {
            out.push(line.to_string());
        }
    }
    anyhow::ensure!(!out.is_empty(), "{}: no texts", path.display());
    Ok(out)
}

/// p50, p90, p99 of `v` (ms).
fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    [q(0.5), q(0.9), q(0.99)]
}

pub fn run(args: SpeedArgs) -> anyhow::Result<()> {
    let texts = read_texts(&args.texts)?;
    let enc = TextEncoder::open(
        &closer_models::source::ModelPaths::new(args.model_dir.clone()),
        Default::default(),
    )?;
    let last = [6];
    let time =
        |f: &dyn Fn(&str) -> closer_models::Result<Vec<Vec<f32>>>| -> anyhow::Result<[f64; 3]> {
            for t in texts.iter().cycle().take(20) {
                f(t)?;
            }
            let mut ms = Vec::with_capacity(args.runs);
            for t in texts.iter().cycle().take(args.runs) {
                let s = Instant::now();
                f(t)?;
                ms.push(s.elapsed().as_secs_f64() * 1e3);
            }
            Ok(quantiles(ms))
        };
    let served = time(&|t| enc.pooled_layers(&[t], &last))?;
    let fast = time(&|t| enc.pooled_layers_fast(&[t], &last))?;
    let candle = time(&|t| enc.pooled_layers_candle(&[t], &last))?;
    // Throughput: every text in batches of 32, as the served path routes them.
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let rounds = (1000 / refs.len()).max(1);
    let s = Instant::now();
    for _ in 0..rounds {
        enc.pooled_layers(&refs, &last)?;
    }
    let per_s = (rounds * refs.len()) as f64 / s.elapsed().as_secs_f64();
    let tokens: Vec<usize> = texts
        .iter()
        .map(|t| enc.token_ids(t).map(|v| v.len()))
        .collect::<Result<_, _>>()?;
    let mean_tokens = tokens.iter().sum::<usize>() as f64 / tokens.len() as f64;

    println!(
        "| encoder ({} texts, {mean_tokens:.1} tokens on average) | p50 | p90 | p99 |",
        texts.len()
    );
    println!("|---|---|---|---|");
    let precision = if enc.int8() { "int8" } else { "f32" };
    for (name, q) in [
        (format!("one message, served ({precision})"), served),
        ("one message, f32 fast path".to_string(), fast),
        ("one message, candle graph".to_string(), candle),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms |",
            q[0], q[1], q[2]
        );
    }
    println!("| batches of 32 (served routing) | {per_s:.0} messages/s | | |");
    if let Some(p) = &args.json {
        let j = json!({
            "texts": texts.len(),
            "mean_tokens": mean_tokens,
            "precision": precision,
            "served_ms": {"p50": served[0], "p90": served[1], "p99": served[2]},
            "fast_ms": {"p50": fast[0], "p90": fast[1], "p99": fast[2]},
            "candle_ms": {"p50": candle[0], "p90": candle[1], "p99": candle[2]},
            "batched_messages_per_s": per_s,
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    if let Some(p) = &args.ids_out {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| enc.token_ids(t))
            .collect::<Result<_, _>>()?;
        std::fs::write(p, serde_json::to_string(&ids)?)?;
    }
    if let Some(p) = &args.vectors_out {
        let v = enc.pooled_layers(&refs, &last)?;
        std::fs::write(p, serde_json::to_string(&v)?)?;
    }
    Ok(())
}
