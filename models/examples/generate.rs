//! Runs the generator once: `cargo run --release -p closer-models --example generate -- SYSTEM USER`.
//! `DRAFT=N` sets the most tokens drafted per pass by prompt lookup (0: plain decoding).
use std::io::Write;
use std::ops::ControlFlow;

use closer_models::generator::QwenGenerator;
use closer_models::source::ModelPaths;
use closer_models::{AnswerGenerator, GenerationRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (system, user) = (
        args.get(1).cloned().unwrap_or_default(),
        args.get(2).cloned().unwrap_or_default(),
    );
    let paths = ModelPaths::new(ModelPaths::default_root());
    let mut g = QwenGenerator::load(&paths.generator_file())?;
    if let Ok(n) = std::env::var("DRAFT") {
        g = g.with_draft_limit(n.parse()?);
    }
    let req = GenerationRequest {
        system,
        user,
        max_tokens: 160,
        ..Default::default()
    };
    let stats = g.generate(&req, &mut |t| {
        print!("{t}");
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    println!("\n{stats:?}");
    Ok(())
}
