//! Embeds lines of text for offline experiments: `cargo run --release -p closer-models --example
//! embed -- minilm|mpnet < texts.txt > vectors.jsonl` (one JSON array per input line).
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
    for chunk in refs.chunks(32) {
        for v in enc.embed(chunk)? {
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
