//! `closer-eval`: evaluation suites for Closer.
//!
//! `closer-eval intents --train TRAIN.jsonl --test TEST.jsonl` trains the intent head exactly as
//! the server does (MiniLM embeddings + softmax head) and reports accuracy, macro F1, training
//! time and per-message latency. JSONL rows are `{"text": "...", "intent": "..."}`. The full
//! suite (OOS calibration, multi-intent sets, plots, `--server`) arrives with the intent issue.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use closer_models::intent::{HeadConfig, SoftmaxHead};
use closer_models::Embedder;

#[derive(Parser)]
#[command(name = "closer-eval", about = "Closer's evaluation suites")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train on one labelled file, evaluate on another.
    Intents {
        #[arg(long)]
        train: PathBuf,
        #[arg(long)]
        test: PathBuf,
        /// Folder of ready models (`closer models pull`).
        #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
        model_dir: PathBuf,
        /// Evaluate at most this many test rows (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
}

#[derive(serde::Deserialize)]
struct Row {
    text: String,
    intent: String,
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut rows = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

/// Macro F1 over the labels that occur in `gold`.
fn macro_f1(gold: &[usize], pred: &[usize], k: usize) -> f64 {
    let (mut tp, mut fp, mut fneg) = (vec![0f64; k], vec![0f64; k], vec![0f64; k]);
    for (&g, &p) in gold.iter().zip(pred) {
        if g == p {
            tp[g] += 1.0;
        } else {
            fp[p] += 1.0;
            fneg[g] += 1.0;
        }
    }
    let present: Vec<usize> = (0..k).filter(|&c| tp[c] + fneg[c] > 0.0).collect();
    let sum: f64 = present
        .iter()
        .map(|&c| {
            let denom = 2.0 * tp[c] + fp[c] + fneg[c];
            if denom == 0.0 { 0.0 } else { 2.0 * tp[c] / denom }
        })
        .sum();
    sum / present.len().max(1) as f64
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Intents { train, test, model_dir, limit } => {
            let paths = closer_models::source::ModelPaths::new(model_dir);
            let encoder: Arc<dyn Embedder> = Arc::new(closer_models::encoder::MiniLmEncoder::load(&paths.encoder_dir())?);
            let train_rows = read_rows(&train)?;
            let mut test_rows = read_rows(&test)?;
            if limit > 0 {
                test_rows.truncate(limit);
            }
            let mut labels: BTreeMap<String, usize> = BTreeMap::new();
            for r in &train_rows {
                let n = labels.len();
                labels.entry(r.intent.clone()).or_insert(n);
            }
            let t = Instant::now();
            let texts: Vec<&str> = train_rows.iter().map(|r| r.text.as_str()).collect();
            let x = encoder.embed(&texts)?;
            let y: Vec<usize> = train_rows.iter().map(|r| labels[&r.intent]).collect();
            let mut names = vec![String::new(); labels.len()];
            for (name, &i) in &labels {
                names[i] = name.clone();
            }
            let head = SoftmaxHead::train(&x, &y, names, &HeadConfig::default());
            let train_s = t.elapsed().as_secs_f64();
            eprintln!("trained on {} rows, {} intents in {train_s:.1} s", train_rows.len(), labels.len());

            let (mut gold, mut pred, mut lat) = (vec![], vec![], vec![]);
            for r in &test_rows {
                let t = Instant::now();
                let v = encoder.embed(&[r.text.as_str()])?.pop().unwrap_or_default();
                let p = head.predict(&v);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                gold.push(labels.get(&r.intent).copied().unwrap_or(usize::MAX));
                pred.push(best);
            }
            let known: Vec<(usize, usize)> = gold.iter().zip(&pred).filter(|(g, _)| **g != usize::MAX).map(|(g, p)| (*g, *p)).collect();
            let acc = known.iter().filter(|(g, p)| g == p).count() as f64 / known.len().max(1) as f64;
            let (g, p): (Vec<usize>, Vec<usize>) = known.into_iter().unzip();
            let f1 = macro_f1(&g, &p, labels.len());
            lat.sort_by(f64::total_cmp);
            let pct = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
            println!("| figure | value |\n|---|---|");
            println!("| test rows | {} |", test_rows.len());
            println!("| accuracy (labels seen in training) | {:.2} % |", acc * 100.0);
            println!("| macro F1 | {:.2} % |", f1 * 100.0);
            println!("| training time | {train_s:.1} s |");
            println!("| latency p50 / p99 | {:.1} / {:.1} ms |", pct(0.5), pct(0.99));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn macro_f1_matches_a_hand_computed_case() {
        // class 0: tp 1, fn 1 -> F1 2/3; class 1: tp 1, fp 1 -> F1 2/3
        let f = super::macro_f1(&[0, 0, 1], &[0, 1, 1], 2);
        assert!((f - 2.0 / 3.0).abs() < 1e-9);
    }
}
