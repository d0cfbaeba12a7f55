//! `closer-eval`: Closer's evaluation suites.
//!
//! `closer-eval intents` trains the intent classifier exactly as the server does (MiniLM
//! embeddings + n-gram TF-IDF, linear head, held-out calibration of temperature and the
//! out-of-scope threshold) and evaluates it; or, with `--server`, sends the test set through a
//! running server's Classify RPC. See README.md, "Evaluating intents".

mod answerability;
mod answers;
mod attacks;
mod augment;
mod data;
mod grounding;
mod intents;
mod metrics;
mod oracle;
mod report;
mod speed;
mod ui;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use intents::{cached_embed, open_encoder, run_local, run_server, IntentArgs};

#[derive(Parser)]
#[command(name = "closer-eval", about = "Closer's evaluation suites")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train and evaluate the intent classifier (or evaluate a running server's).
    Intents(Box<IntentArgs>),
    /// Run a grounding question set through a running server: retrieval recall, answer
    /// correctness, invented spans, refusals.
    Grounding(grounding::GroundingArgs),
    /// The evaluation tenants' visitor messages through a running server, scored on the reply
    /// text: answered correctly, false refusals, unanswerable refused, unbacked claims.
    Answers(answers::AnswersArgs),
    /// Train the answerability judgement on tuning tenants through a running server.
    Answerability(answerability::AnswerabilityArgs),
    /// Prompt-injection corpora through the real models: attack success before and after the guards.
    Attacks(attacks::AttacksArgs),
    /// The encoder's single-message latency (fast path and candle graph) and batch throughput.
    Speed(speed::SpeedArgs),
    /// Write more training messages per intent with the local generator (an experiment; see
    /// `intents --extra`).
    Augment(augment::AugmentArgs),
    /// Write the intent encoder's vectors of a file's texts (raw little-endian f32, one row
    /// per text), for measurements outside Closer (eval/experiments).
    Embed(EmbedArgs),
}

#[derive(Args, Clone)]
struct EmbedArgs {
    /// Rows: JSONL `{"text","intent"}`, or a tenant intent file (.yaml).
    #[arg(long)]
    input: PathBuf,
    /// Where the vectors go.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
    encoder: closer_models::source::IntentEncoder,
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    model_dir: PathBuf,
    #[arg(long, env = "CLOSER_EVAL_CACHE", default_value_os_t = std::env::temp_dir().join("closer-eval-cache"))]
    cache_dir: PathBuf,
}

fn run_embed(args: EmbedArgs) -> anyhow::Result<()> {
    let rows = data::read_rows(&args.input)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let (_, encoder) = open_encoder(&args.model_dir, &args.encoder)?;
    let t = Instant::now();
    let v = cached_embed(encoder.as_ref(), &texts, &args.cache_dir)?;
    let bytes: Vec<u8> = v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes).with_context(|| args.out.display().to_string())?;
    eprintln!(
        "{} rows × {} ({}) in {:.1} s -> {}",
        v.len(),
        encoder.dim(),
        encoder.name(),
        t.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Intents(args) => {
            let out = args.out.clone();
            let report = match args.server.clone() {
                Some(_) if args.extra.is_some() => {
                    anyhow::bail!("--extra trains here; a --server is evaluated as deployed")
                }
                Some(addr) => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(run_server(*args, addr))?,
                None => run_local(*args)?,
            };
            report.write(&out)?;
            println!("{}", report.summary());
            eprintln!(
                "report written to {}/report.{{json,md}}, confusion.svg, confidence.svg",
                out.display()
            );
            Ok(())
        }
        Command::Grounding(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(grounding::run(args)),
        Command::Answers(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(answers::run(args)),
        Command::Answerability(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(answerability::run(args)),
        Command::Attacks(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(attacks::run(args)),
        Command::Speed(args) => speed::run(args),
        Command::Augment(args) => augment::run(args),
        Command::Embed(args) => run_embed(args),
    }
}
