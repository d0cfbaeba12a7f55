//! How many outbox events per second a store takes: writer threads each append small batches
//! of events (their own transaction each, as a turn writes its events) for a while; prints the
//! events per second and the p50/p99 of one append.
//!
//! ```sh
//! cargo run --release -p closer-store --example events_per_second -- [DATABASE_URL] [THREADS] [SECONDS] [BATCH]
//! ```
//! Without a URL (or with `sqlite`), a SQLite file in a temporary folder; defaults 4 threads,
//! 10 s, 2 events a batch.

use std::time::{Duration, Instant};

use closer_store::NewEvent;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().filter(|u| u.as_str() != "sqlite").cloned();
    let threads: usize = args.get(1).map_or(4, |s| s.parse().expect("THREADS"));
    let seconds: u64 = args.get(2).map_or(10, |s| s.parse().expect("SECONDS"));
    let batch: usize = args.get(3).map_or(2, |s| s.parse().expect("BATCH"));
    let dir = tempfile::tempdir().unwrap();
    let store = closer_store::backend::open(url.as_deref(), dir.path()).expect("open the store");
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let store = store.clone();
                scope.spawn(move || {
                    let mut took = vec![];
                    let mut n = 0u64;
                    while Instant::now() < until {
                        let events: Vec<NewEvent> = (0..batch)
                            .map(|k| NewEvent {
                                kind: "cql_scored".into(),
                                tenant: format!("bench-{}", i % 3),
                                conversation_id: Some(format!("c-{i}-{n}")),
                                rep_id: None,
                                team: None,
                                payload: serde_json::json!({"score": 3, "k": k}),
                            })
                            .collect();
                        let t = Instant::now();
                        store.append_events(&events).expect("append");
                        took.push(t.elapsed());
                        n += 1;
                    }
                    took
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let events = latencies.len() * batch;
    println!(
        "{}: {threads} threads, {batch} events a transaction, {elapsed:.1} s: {events} events, {:.0} events/s; one append p50 {:.2} ms, p99 {:.2} ms",
        if url.is_some() { "PostgreSQL" } else { "SQLite" },
        events as f64 / elapsed,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
}
