//! The generator on the seed question (a ~120-token prompt: the demo tenant's instructions and
//! the facts Converse cites for it): time to first token with nothing cached and with the
//! system prompt's keys and values cached (the same facts asked about again), and decoding
//! speed in tokens per second, with prompt-lookup drafts and without.
//!
//! `cargo bench -p closer-models --bench generator` (needs `closer models pull`).

use std::ops::ControlFlow;
use std::time::Duration;

use closer_models::generator::QwenGenerator;
use closer_models::source::ModelPaths;
use closer_models::{AnswerGenerator, GenerationRequest, GenerationStats};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn seed_request(max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        system: "You are the website chat assistant of Applinks. Answer the visitor in one to \
                 three short sentences using only these facts:\n\
                 - Each seat costs $80 per user per month billed monthly, or $960 per user per \
                 year billed annually.\n\
                 - Applinks holds a SOC 2 Type II report, renewed every year by an independent \
                 auditor; customers can request it under NDA.\n\
                 - Chelsea Ward is the account owner for acme.com.\n"
            .into(),
        user: "How much does each seat cost? Are you SOC II compliant? And who would be our rep?"
            .into(),
        max_tokens,
        ..Default::default()
    }
}

fn run(g: &QwenGenerator, r: &GenerationRequest) -> GenerationStats {
    g.generate(r, &mut |_| ControlFlow::Continue(())).unwrap()
}

fn generator(c: &mut Criterion) {
    let paths = ModelPaths::new(ModelPaths::default_root());
    if let Err(e) = paths.check() {
        eprintln!("skipping the generator benchmarks: {e} (run `closer models pull`)");
        return;
    }
    let g = QwenGenerator::load(&paths.generator_file()).expect("generator loads");
    let first = seed_request(1);
    let s = run(&g, &first);
    eprintln!("seed prompt: {} tokens", s.prompt_tokens);

    let mut grp = c.benchmark_group("generator/time to first token");
    grp.sample_size(10);
    grp.measurement_time(Duration::from_secs(20));
    grp.bench_function("nothing cached", |b| {
        b.iter(|| {
            g.clear_prefix_cache();
            run(&g, &first)
        })
    });
    grp.bench_function("system prompt cached", |b| b.iter(|| run(&g, &first)));
    grp.finish();

    // Decoding only: the time after the first token, per generated token, with prompt-lookup
    // drafts (where on by default) and without.
    let long = seed_request(48);
    let drafting = g.draft_limit();
    let mut g = g;
    for (name, draft) in [("per token", drafting), ("per token, no drafts", 0)] {
        if name != "per token" && drafting == 0 {
            break;
        }
        g = g.with_draft_limit(draft);
        let mut grp = c.benchmark_group("generator/decode");
        grp.sample_size(10);
        grp.measurement_time(Duration::from_secs(30));
        grp.throughput(Throughput::Elements(1));
        grp.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let s = run(&g, &long);
                    let n = s.generated_tokens.saturating_sub(1).max(1) as u64;
                    let per = (s.total_ms - s.time_to_first_token_ms) / n as f64;
                    let take = n.min(iters - done);
                    total += Duration::from_secs_f64(per / 1e3 * take as f64);
                    done += take;
                }
                total
            })
        });
        grp.finish();
    }
}

criterion_group!(benches, generator);
criterion_main!(benches);
