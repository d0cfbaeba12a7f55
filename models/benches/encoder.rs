//! The encoder behind intents and retrieval: one short visitor message (what Classify embeds),
//! and a batch of 32 (what a burst of conversations or a knowledge-base load embeds), through
//! the int8 path that serves where the CPU has VNNI, the f32 fast path that serves elsewhere,
//! and the candle graph they replaced.
//!
//! `cargo bench -p closer-models --bench encoder` (needs `closer models pull`).

use closer_models::encoder::TextEncoder;
use closer_models::source::ModelPaths;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const ONE: &str = "How much does each seat cost for a team of 200?";

fn batch() -> Vec<String> {
    let base = [
        "How much does each seat cost?",
        "Are you SOC II compliant?",
        "Who would be our rep?",
        "Can I book a demo for next Tuesday afternoon?",
        "I'd like to talk to a human please",
        "Are you hiring backend engineers in Berlin?",
        "Just looking around for now, thanks",
        "My dashboard stopped loading after the last update",
    ];
    (0..32)
        .map(|i| format!("{} ({i})", base[i % base.len()]))
        .collect()
}

fn encoder(c: &mut Criterion) {
    let paths = ModelPaths::new(ModelPaths::default_root());
    if let Err(e) = paths.check() {
        eprintln!("skipping the encoder benchmarks: {e} (run `closer models pull`)");
        return;
    }
    let enc = TextEncoder::open(&paths, Default::default()).expect("encoder loads");
    let last = [6];
    let mut g = c.benchmark_group("encoder/one message");
    g.throughput(Throughput::Elements(1));
    if enc.int8() {
        g.bench_function("int8", |b| {
            b.iter(|| enc.pooled_layers_int8(&[ONE], &last).unwrap())
        });
    }
    g.bench_function("fast", |b| {
        b.iter(|| enc.pooled_layers_fast(&[ONE], &last).unwrap())
    });
    g.bench_function("candle", |b| {
        b.iter(|| enc.pooled_layers_candle(&[ONE], &last).unwrap())
    });
    g.finish();

    let texts = batch();
    compare(c, &enc, "encoder/batch", &texts, 20);
    // Knowledge-base facts: longer texts of mixed lengths (a padded batch pays for the longest).
    let facts: Vec<String> = (0..32)
        .map(|i| {
            let answer = "Each seat costs $80 per user per month billed monthly, or $960 per user \
                          per year billed annually; volume discounts start at 50 seats and SSO, \
                          audit logs and a dedicated success manager come with Enterprise.";
            answer
                .split(' ')
                .take(8 + (i * 7) % 40)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    compare(c, &enc, "encoder/facts", &facts, 10);
}

/// One batch of `texts` through each path (int8 where this CPU has VNNI).
fn compare(c: &mut Criterion, enc: &TextEncoder, group: &str, texts: &[String], samples: usize) {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.sample_size(samples);
    for name in ["int8", "fast", "candle"] {
        if name == "int8" && !enc.int8() {
            continue;
        }
        g.bench_with_input(BenchmarkId::new(name, refs.len()), &refs, |b, refs| {
            b.iter(|| match name {
                "int8" => enc.pooled_layers_int8(refs, &[6]).unwrap(),
                "fast" => enc.pooled_layers_fast(refs, &[6]).unwrap(),
                _ => enc.pooled_layers_candle(refs, &[6]).unwrap(),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encoder);
criterion_main!(benches);
