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
        /// The label of out-of-scope rows (CLINC150: `oos`).
        #[arg(long)]
        oos_label: Option<String>,
        /// Below this top probability a message is out of scope (with --oos-label).
        #[arg(long, default_value_t = 0.4)]
        threshold: f32,
        /// Head training: epochs, learning rate, L2.
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        lr: Option<f32>,
        #[arg(long)]
        l2: Option<f32>,
        /// Keep embeddings here, keyed by model and text, so repeated runs skip the encoder.
        #[arg(long, env = "CLOSER_EVAL_CACHE", default_value_os_t = std::env::temp_dir().join("closer-eval-cache"))]
        cache_dir: PathBuf,
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

/// Embeds texts, reusing vectors cached under `dir` for the same model and texts.
fn cached_embed(encoder: &dyn Embedder, texts: &[&str], dir: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(encoder.name().as_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let path = dir.join(format!("{}.f32", hex::encode(h.finalize())));
    let d = encoder.dim();
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == texts.len() * d * 4 {
            let flat: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            return Ok(flat.chunks(d).map(<[f32]>::to_vec).collect());
        }
    }
    let v = encoder.embed(texts)?;
    std::fs::create_dir_all(dir)?;
    let bytes: Vec<u8> = v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&path, bytes)?;
    Ok(v)
}

/// Expected calibration error of the top-class confidence, over equal-width bins.
fn expected_calibration_error(conf: &[f32], correct: &[bool], bins: usize) -> f64 {
    let mut sum_c = vec![0f64; bins];
    let mut sum_a = vec![0f64; bins];
    let mut count = vec![0usize; bins];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = ((c as f64 * bins as f64) as usize).min(bins - 1);
        sum_c[b] += c as f64;
        sum_a[b] += if ok { 1.0 } else { 0.0 };
        count[b] += 1;
    }
    let n = conf.len().max(1) as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (count[b] as f64 / n) * ((sum_a[b] - sum_c[b]) / count[b] as f64).abs())
        .sum()
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
        Command::Intents { train, test, model_dir, limit, oos_label, threshold, epochs, lr, l2, cache_dir } => {
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
            let x = cached_embed(encoder.as_ref(), &texts, &cache_dir)?;
            let y: Vec<usize> = train_rows.iter().map(|r| labels[&r.intent]).collect();
            let mut names = vec![String::new(); labels.len()];
            for (name, &i) in &labels {
                names[i] = name.clone();
            }
            let mut cfg = HeadConfig::default();
            cfg.epochs = epochs.unwrap_or(cfg.epochs);
            cfg.learning_rate = lr.unwrap_or(cfg.learning_rate);
            cfg.l2 = l2.unwrap_or(cfg.l2);
            let head = SoftmaxHead::train(&x, &y, names, &cfg);
            let train_s = t.elapsed().as_secs_f64();
            eprintln!("trained on {} rows, {} intents in {train_s:.1} s", train_rows.len(), labels.len());

            // Latency: the encoder on one message at a time, as the server sees it.
            let mut lat = vec![];
            for r in test_rows.iter().take(200) {
                let t = Instant::now();
                let v = encoder.embed(&[r.text.as_str()])?.pop().unwrap_or_default();
                let _ = head.predict(&v);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let test_texts: Vec<&str> = test_rows.iter().map(|r| r.text.as_str()).collect();
            let tx = cached_embed(encoder.as_ref(), &test_texts, &cache_dir)?;
            let probs: Vec<Vec<f32>> = tx.iter().map(|v| head.predict(v)).collect();
            let oos_idx = oos_label.as_ref().and_then(|l| labels.get(l).copied());
            let is_oos = |r: &Row| oos_label.as_deref() == Some(r.intent.as_str());
            let decide = |p: &[f32], t: f32| -> usize {
                let (best, bp) = p.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
                match oos_idx {
                    Some(o) if bp < t => o,
                    _ => best,
                }
            };
            let (mut gold, mut pred) = (vec![], vec![]);
            let (mut conf, mut correct) = (vec![], vec![]);
            for (r, p) in test_rows.iter().zip(&probs) {
                let Some(&g) = labels.get(&r.intent) else { continue };
                let d = decide(p, if oos_idx.is_some() { threshold } else { 0.0 });
                gold.push(g);
                pred.push(d);
                let top = p.iter().cloned().fold(0f32, f32::max);
                conf.push(top);
                correct.push(p.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a }).0 == g);
            }
            let acc = gold.iter().zip(&pred).filter(|(g, p)| g == p).count() as f64 / gold.len().max(1) as f64;
            let f1 = macro_f1(&gold, &pred, labels.len());
            let ece = expected_calibration_error(&conf, &correct, 10);
            lat.sort_by(f64::total_cmp);
            let pct = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
            println!("| figure | value |\n|---|---|");
            println!("| train rows / intents | {} / {} |", train_rows.len(), labels.len());
            println!("| test rows | {} |", test_rows.len());
            println!("| accuracy | {:.2} % |", acc * 100.0);
            println!("| macro F1 | {:.2} % |", f1 * 100.0);
            println!("| expected calibration error (10 bins, top class) | {:.4} |", ece);
            println!("| training time (embedding + head) | {train_s:.1} s |");
            println!("| latency p50 / p99 (one message) | {:.1} / {:.1} ms |", pct(0.5), pct(0.99));
            if let Some(o) = oos_idx {
                println!("\n| threshold | in-scope accuracy | OOS recall | OOS precision |\n|---|---|---|---|");
                for t in [0.0f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] {
                    let (mut ins, mut ins_ok, mut oos, mut oos_hit, mut flagged) = (0, 0, 0, 0, 0);
                    for (r, p) in test_rows.iter().zip(&probs) {
                        let d = decide(p, t);
                        if d == o {
                            flagged += 1;
                        }
                        if is_oos(r) {
                            oos += 1;
                            oos_hit += usize::from(d == o);
                        } else if let Some(&g) = labels.get(&r.intent) {
                            ins += 1;
                            ins_ok += usize::from(d == g);
                        }
                    }
                    println!(
                        "| {t:.1} | {:.2} % | {:.1} % | {:.1} % |",
                        100.0 * ins_ok as f64 / ins.max(1) as f64,
                        100.0 * oos_hit as f64 / oos.max(1) as f64,
                        100.0 * oos_hit as f64 / flagged.max(1) as f64
                    );
                }
            }
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

    #[test]
    fn ece_matches_a_hand_computed_case() {
        // bin 0.9: conf 0.9, 0.9 with one right -> |0.5 - 0.9| * 2/4; bin 0.6: conf 0.6, 0.6 both right -> |1 - 0.6| * 2/4
        let e = super::expected_calibration_error(&[0.9, 0.9, 0.6, 0.6], &[true, false, true, true], 10);
        assert!((e - (0.4 * 0.5 + 0.4 * 0.5)).abs() < 1e-6, "{e}");
    }
}
