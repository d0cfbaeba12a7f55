//! The generator on the seed question (a ~120-token prompt: the demo tenant's instructions and
//! the facts Converse cites for it): time to first token with nothing cached, with the team's
//! instructions cached (an earlier question cited other facts), and with the whole system
//! prompt's keys and values cached (the same facts asked about again), and decoding
//! speed in tokens per second, with prompt-lookup drafts and without; and the tokens per second
//! four visitors asking at once get in all (their passes batched).
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
    // The common case in serving: the team's instructions were read for an earlier question
    // (the prompt starts the same way), but these facts were not.
    let (instructions, _) = first
        .system
        .split_once("facts:\n")
        .expect("the seed prompt lists facts");
    let earlier = GenerationRequest {
        system: format!(
            "{instructions}facts:\n- Applinks offers a 14-day free trial of every plan.\n"
        ),
        user: "Is there a free trial?".into(),
        ..seed_request(1)
    };
    grp.bench_function("instructions cached, new facts", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                g.clear_prefix_cache();
                run(&g, &earlier);
                let s = run(&g, &first);
                assert!(s.reused_prompt_tokens > 0, "the instructions were reused");
                total += Duration::from_secs_f64(s.time_to_first_token_ms / 1e3);
            }
            total
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

    // Four visitors asking at once (different questions, the same facts): their passes run
    // batched. Time per generated token over all four, prompts included, so the figure is
    // the throughput the model gives concurrent visitors.
    let g = g.with_draft_limit(drafting);
    let questions = [
        "How much does each seat cost?",
        "Are you SOC II compliant?",
        "Who would be our rep? We are acme.com.",
        "Is there a yearly price per seat?",
    ];
    let requests: Vec<GenerationRequest> = questions
        .iter()
        .map(|q| GenerationRequest {
            user: (*q).into(),
            ..seed_request(48)
        })
        .collect();
    let mut grp = c.benchmark_group("generator/4 visitors at once");
    grp.sample_size(10);
    grp.measurement_time(Duration::from_secs(40));
    grp.throughput(Throughput::Elements(1));
    grp.bench_function("per token, all four", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let t = std::time::Instant::now();
                let tokens: usize = std::thread::scope(|s| {
                    let hs: Vec<_> = requests
                        .iter()
                        .map(|r| {
                            let g = &g;
                            s.spawn(move || run(g, r).generated_tokens)
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).sum()
                });
                let per = t.elapsed().as_secs_f64() / tokens.max(1) as f64;
                let take = (tokens as u64).min(iters - done);
                total += Duration::from_secs_f64(per * take as f64);
                done += take;
            }
            total
        })
    });
    grp.finish();
}

criterion_group!(benches, generator);
criterion_main!(benches);
