//! `closer-eval augment`: more training text per intent, written by the local generator
//! (ICDA-style augmentation). For each intent the generator reads its name and examples and
//! writes new messages with the same intent; they are parsed one per line, cleaned and
//! deduplicated, and written as JSONL rows for `closer-eval intents --extra`.

use std::collections::BTreeSet;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::Args;
use closer_models::generator::QwenGenerator;
use closer_models::{AnswerGenerator, GenerationRequest};

use crate::data::{self, Row};

#[derive(Args, Clone)]
pub struct AugmentArgs {
    /// Training rows (JSONL `{"text","intent"}` or a tenant intent file).
    #[arg(long)]
    train: PathBuf,
    /// Sample N rows per intent first (seeded), exactly as `intents --shots N --seed S` does.
    #[arg(long)]
    shots: Option<usize>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Rewrites kept per example at most.
    #[arg(long, default_value_t = 4)]
    per_example: usize,
    /// Run part I of N (`I/N`, from 1): every N-th intent, so N processes can share the work.
    #[arg(long, default_value = "1/1")]
    part: String,
    /// Where the rows go (JSONL).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    model_dir: PathBuf,
}

/// The 0.5B generator copies a list it is shown instead of extending it, and repeats a message
/// it is asked to paraphrase; one worked example of rewriting (in the system part, so its
/// cache is kept between messages) makes it write rewrites.
const SYSTEM: &str = "You rewrite customer messages using different words. Keep the meaning.

Message: \"How do I reset my password?\"
Rewrites:
- I forgot my password, how can I change it?
- Can you help me get a new password?
- What are the steps to reset my login password?
- My password does not work anymore, what should I do?";

fn prompt(message: &str) -> String {
    format!("Message: \"{message}\"\nRewrites:")
}

/// The messages of a generated list: the lines that start with a list marker (`-`, `*`, `•`
/// or `1.`), up to the first that does not (the model may go on with another "Message:"),
/// markers and quotes stripped, between 3 and 200 characters.
pub fn parse_lines(text: &str) -> Vec<String> {
    let mut out = vec![];
    for l in text.lines().map(str::trim).skip_while(|l| l.is_empty()) {
        let rest = if let Some(r) = l.strip_prefix(['-', '*', '•']) {
            r
        } else {
            let digits = l.len() - l.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            match l[digits..].strip_prefix(['.', ')']) {
                Some(r) if digits > 0 => r,
                _ => break,
            }
        };
        let m = rest.trim().trim_matches('"').trim();
        if (3..=200).contains(&m.chars().count()) {
            out.push(m.to_string());
        }
    }
    out
}

fn key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

pub fn run(args: AugmentArgs) -> anyhow::Result<()> {
    let mut rows = data::read_rows(&args.train)?;
    if let Some(n) = args.shots {
        rows = data::shots(&rows, n, args.seed);
    }
    let (part, parts) = args
        .part
        .split_once('/')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .filter(|&(a, b)| a >= 1 && a <= b)
        .ok_or_else(|| {
            anyhow::anyhow!("--part: expected I/N with 1 <= I <= N, got {}", args.part)
        })?;
    let by = data::by_label(&rows);
    let mine: Vec<(&str, Vec<&str>)> = by
        .iter()
        .enumerate()
        .filter(|(i, _)| i % parts == part - 1)
        .map(|(_, (k, idx))| (*k, idx.iter().map(|&i| rows[i].text.as_str()).collect()))
        .collect();
    let paths = closer_models::source::ModelPaths::new(args.model_dir.clone());
    let g = QwenGenerator::load(&paths.generator_file())?;
    let pb = crate::ui::bar(mine.iter().map(|(_, v)| v.len()).sum(), "rewriting");
    let mut out = std::fs::File::create(&args.out)?;
    let (mut kept, mut tokens, t0) = (0usize, 0usize, std::time::Instant::now());
    for (intent, examples) in mine {
        let mut seen: BTreeSet<String> = examples.iter().map(|e| key(e)).collect();
        for example in &examples {
            let req = GenerationRequest {
                system: SYSTEM.to_string(),
                user: prompt(example),
                max_tokens: args.per_example * 25,
                share: "augment".into(),
                background: false,
            };
            let mut text = String::new();
            let stats = g.generate(&req, &mut |t| {
                text.push_str(t);
                ControlFlow::Continue(())
            })?;
            tokens += stats.generated_tokens;
            for line in parse_lines(&text).into_iter().take(args.per_example) {
                if seen.insert(key(&line)) {
                    let row = Row {
                        text: line,
                        intent: intent.to_string(),
                    };
                    writeln!(out, "{}", serde_json::to_string(&row)?)?;
                    kept += 1;
                }
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    eprintln!(
        "wrote {kept} rows for part {part}/{parts} of {} intents ({tokens} tokens, {:.0} s) to {}",
        by.len(),
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_lists_become_clean_lines() {
        let t = "\n- How do I top up?\n2. \"Can I add money by card?\"\n* ok\n-   Where is my top-up?\nMessage: \"x\"\n- not this";
        assert_eq!(
            parse_lines(t),
            vec![
                "How do I top up?",
                "Can I add money by card?",
                "Where is my top-up?"
            ]
        );
    }
}
