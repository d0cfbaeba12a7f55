//! Embeds lines of text for offline experiments: `cargo run --release -p closer-models --example
//! embed -- minilm|mpnet < texts.txt > vectors.jsonl` (one JSON array per input line).
//! `ONE_BY_ONE=1` embeds each line alone (as a served clause is) and prints the p50/p90 time per
//! line to stderr.
use std::io::{BufRead, Write};

use closer_models::encoder::TextEncoder;
use closer_models::source::{EncoderModel, ModelPaths};
use closer_models::Embedder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "minilm".into());
    let model = if which == "mpnet" {
        EncoderModel::MpNet
    } else {
        EncoderModel::MiniLm
    };
    let paths = ModelPaths::new(ModelPaths::default_root());
    let enc = TextEncoder::open(&paths, model)?;
    let lines: Vec<String> = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let out = std::io::stdout();
    let mut out = out.lock();
    if std::env::var_os("ONE_BY_ONE").is_some() {
        let mut ms = vec![];
        for text in &refs {
            let t = std::time::Instant::now();
            let v = enc.embed(&[text])?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            serde_json::to_writer(&mut out, &v[0])?;
            writeln!(out)?;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "{} lines one by one: p50 {:.1} ms, p90 {:.1} ms",
            ms.len(),
            at(0.5),
            at(0.9)
        );
        return Ok(());
    }
    for chunk in refs.chunks(32) {
        for v in enc.embed(chunk)? {
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
