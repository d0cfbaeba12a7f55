//! `closer load`: drives a running server with N concurrent visitors for a bounded time and
//! reports latencies, throughput and errors by code (table and JSON). Loopback only: it refuses
//! any other address, so it cannot be pointed at someone else's service.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use closer_proto::v1 as pb;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::bench::{percentiles, Percentiles};

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Server to drive (loopback only).
    #[arg(long, env = "CLOSER_URL", default_value = "http://127.0.0.1:50051")]
    pub url: String,
    #[arg(long, default_value = "applinks")]
    pub tenant: String,
    /// The visitors' company domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Concurrent conversations.
    #[arg(long, default_value_t = 48)]
    pub concurrency: usize,
    /// How long to drive, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Turns per conversation before a visitor starts a new one.
    #[arg(long, default_value_t = 3)]
    pub turns: usize,
    /// What the visitors say (repeat for several; used in turn).
    #[arg(long = "message", short = 'm', default_values_t = ["How much does each seat cost?".to_string()])]
    pub messages: Vec<String>,
    /// Stop after this many conversations in all (0: only `--seconds` bounds the run).
    #[arg(long, default_value_t = 0)]
    pub conversations: usize,
    /// Fraction of conversations the visitor drops mid-answer (`--drop-after-ms` after sending
    /// its first message), to check that the server stops generating for nobody.
    #[arg(long, default_value_t = 0.0)]
    pub drop_fraction: f64,
    /// When a dropping visitor leaves, in milliseconds after its message.
    #[arg(long, default_value_t = 500)]
    pub drop_after_ms: u64,
    /// A deadline for each conversation (`grpc-timeout`), in milliseconds.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// A visitor's pause between getting a reply and sending the next message, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub think_ms: u64,
    /// Makes every message unique (a signature in letters), so that no cache answers for the
    /// encoder.
    #[arg(long)]
    pub unique: bool,
    /// A publishable key when the server requires keys.
    #[arg(long, env = "CLOSER_API_KEY")]
    pub api_key: Option<String>,
    /// An admin key to read the server's `/metrics` when it requires keys.
    #[arg(long, env = "CLOSER_ADMIN_KEY")]
    pub admin_key: Option<String>,
    /// The server's process id, to sample its memory each second.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Also write the figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub concurrency: usize,
    pub seconds: f64,
    pub turns_ok: usize,
    pub turns_per_s: f64,
    /// Errors by code (stream statuses and error events).
    pub errors: BTreeMap<String, usize>,
    /// One message for each error code.
    pub error_samples: BTreeMap<String, String>,
    pub first_delta: Percentiles,
    pub complete: Percentiles,
    /// Time until a refusal (RESOURCE_EXHAUSTED) arrived.
    pub refusal: Percentiles,
    /// Server RSS each minute (MiB), when `--pid` was given.
    pub rss_mib_by_minute: Vec<f64>,
    /// Conversations started, and dropped on purpose mid-answer.
    pub conversations: usize,
    pub dropped: usize,
    /// Turns sent whose stream failed or ended before the reply was complete.
    pub turns_lost: usize,
    /// The server's `/metrics` after the run (when it could be read), name → value.
    pub server: BTreeMap<String, f64>,
}

#[derive(Default)]
struct Tally {
    /// Turns sent whose stream failed or ended before their final event.
    lost: usize,
    conversations: usize,
    dropped: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    first: Vec<f64>,
    complete: Vec<f64>,
    refusal: Vec<f64>,
    samples: BTreeMap<String, String>,
}

impl Tally {
    fn status(&mut self, e: &tonic::Status) {
        let code = closer_server::grpc::code_name(e.code());
        self.samples
            .entry(code.clone())
            .or_insert_with(|| e.message().to_string());
        *self.errors.entry(code).or_default() += 1;
    }
}

fn loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| anyhow::anyhow!("--url: must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        ok,
        "--url: the load tool only drives a server on this machine (loopback), not {host}"
    );
    Ok(())
}

/// `n` written in lower-case letters (a, b, …, z, ba, bb, …).
fn letters(mut n: usize) -> String {
    let mut out = vec![];
    loop {
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Whether conversation `n` (0-based) is one to drop: spreads `fraction` of them evenly.
fn drops(n: usize, fraction: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    ((n + 1) as f64 * f).floor() > (n as f64 * f).floor()
}

async fn visitor(
    args: Arc<LoadArgs>,
    client: pb::assistant_client::AssistantClient<tonic::transport::Channel>,
    id: usize,
    until: Instant,
    counter: Arc<std::sync::atomic::AtomicUsize>,
) -> Tally {
    let mut t = Tally::default();
    let mut client = client;
    // Different in every run, so no server cache remembers an earlier run's messages.
    static SALT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d.as_millis() % 1_000_000) as usize)
            * 1_000_000
    });
    'conversations: while Instant::now() < until {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if args.conversations > 0 && n >= args.conversations {
            break;
        }
        t.conversations += 1;
        let drop_it = drops(n, args.drop_fraction);
        let (tx, rx) = mpsc::channel(4);
        let start = pb::ConverseRequest {
            event: Some(pb::converse_request::Event::Start(pb::Start {
                tenant: args.tenant.clone(),
                conversation_id: format!("load-{}-{id}-{n}", std::process::id()),
                resume_token: None,
                visitor: Some(pb::VisitorContext {
                    company_domain: args.domain.clone(),
                    ..Default::default()
                }),
            })),
        };
        if tx.send(start).await.is_err() {
            break;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        closer_server::auth::authorize(&mut request, args.api_key.as_deref())
            .expect("checked before the run");
        if let Some(ms) = args.deadline_ms {
            request.set_timeout(Duration::from_millis(ms));
        }
        let mut stream = match client.converse(request).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                t.status(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        'turns: for k in 0..args.turns {
            if Instant::now() >= until {
                break;
            }
            if k > 0 && args.think_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.think_ms)).await;
            }
            let mut text = args.messages[(n + k) % args.messages.len()].clone();
            if args.unique {
                text.push_str(&format!(
                    " Thanks, from {}.",
                    letters(salt + n * args.turns + k)
                ));
            }
            let sent = Instant::now();
            let msg = pb::ConverseRequest {
                event: Some(pb::converse_request::Event::Message(pb::VisitorMessage {
                    text,
                })),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            let mut first = None;
            let drop_at = tokio::time::sleep(Duration::from_millis(if drop_it {
                args.drop_after_ms
            } else {
                u64::MAX / 4
            }));
            tokio::pin!(drop_at);
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = &mut drop_at => {
                        // The visitor closes the tab mid-answer.
                        t.dropped += 1;
                        drop(stream);
                        continue 'conversations;
                    }
                };
                match next {
                    Ok(Some(r)) => match r.event {
                        Some(pb::converse_response::Event::Delta(_)) if first.is_none() => {
                            first = Some(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        Some(pb::converse_response::Event::Final(_)) => {
                            t.ok += 1;
                            let done = sent.elapsed().as_secs_f64() * 1e3;
                            t.first.push(first.unwrap_or(done));
                            t.complete.push(done);
                            break;
                        }
                        Some(pb::converse_response::Event::Error(e)) => {
                            if e.code == "RESOURCE_EXHAUSTED" {
                                t.refusal.push(sent.elapsed().as_secs_f64() * 1e3);
                            }
                            t.samples.entry(e.code.clone()).or_insert(e.message);
                            *t.errors.entry(e.code).or_default() += 1;
                            // Back off a little, as a client told to retry would.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                        _ => {}
                    },
                    Ok(None) => {
                        t.lost += 1;
                        break 'turns;
                    }
                    Err(e) => {
                        t.lost += 1;
                        t.status(&e);
                        break 'turns;
                    }
                }
            }
        }
        // The visitor is done: close its side and let the server end the stream.
        drop(tx);
        if tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = stream.message().await {}
        })
        .await
        .is_err()
        {
            *t.errors.entry("STREAM_NOT_CLOSED".into()).or_default() += 1;
        }
    }
    t
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    loopback(&args.url)?;
    anyhow::ensure!(args.concurrency >= 1, "--concurrency: at least 1");
    anyhow::ensure!(!args.messages.is_empty(), "--message: at least one");
    // A key that cannot be a header fails here, not in every visitor.
    closer_server::auth::authorize(&mut tonic::Request::new(()), args.api_key.as_deref())?;
    let channel = tonic::transport::Endpoint::from_shared(args.url.clone())?
        .connect()
        .await?;
    wait_serving(&channel).await?;
    let args = Arc::new(args);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut rss = vec![];
    let sampler = args.pid.map(|pid| {
        tokio::spawn(async move {
            let mut by_minute = vec![];
            let mut last = 0.0;
            let mut elapsed = 0u64;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                elapsed += 1;
                if let Some(kib) = crate::bench::proc_status_kib(pid, "VmRSS:") {
                    last = kib / 1024.0;
                }
                if elapsed.is_multiple_of(60) {
                    by_minute.push(last);
                }
            }
            by_minute.push(last);
            by_minute
        })
    });
    eprintln!(
        "driving {} with {} visitors for {} s…",
        args.url, args.concurrency, args.seconds
    );
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            tokio::spawn(visitor(
                args.clone(),
                pb::assistant_client::AssistantClient::new(channel.clone()),
                i,
                until,
                counter.clone(),
            ))
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.ok += t.ok;
        all.conversations += t.conversations;
        all.dropped += t.dropped;
        all.lost += t.lost;
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
        for (k, v) in t.samples {
            all.samples.entry(k).or_insert(v);
        }
        all.first.extend(t.first);
        all.complete.extend(t.complete);
        all.refusal.extend(t.refusal);
    }
    if let Some(s) = sampler {
        rss = s.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let dropped turns wind down, then read what the server says of itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = match server_metrics(&args.url, args.admin_key.as_deref()).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("(could not read the server's /metrics: {e})");
            BTreeMap::new()
        }
    };
    let report = LoadReport {
        concurrency: args.concurrency,
        seconds: secs,
        turns_ok: all.ok,
        turns_per_s: all.ok as f64 / secs,
        errors: all.errors,
        error_samples: all.samples,
        first_delta: percentiles(all.first),
        complete: percentiles(all.complete),
        refusal: percentiles(all.refusal),
        rss_mib_by_minute: rss,
        conversations: all.conversations,
        dropped: all.dropped,
        turns_lost: all.lost,
        server,
    };
    let p = |x: &Percentiles| {
        format!(
            "{:.0} / {:.0} / {:.0} ms (n={})",
            x.p50_ms, x.p90_ms, x.p99_ms, x.n
        )
    };
    println!("| measure | value |\n|---|---|");
    println!(
        "| visitors × seconds | {} × {:.0} |",
        report.concurrency, report.seconds
    );
    println!(
        "| conversations (dropped mid-answer) | {} ({}) |",
        report.conversations, report.dropped
    );
    println!(
        "| turns answered | {} ({:.2}/s) |",
        report.turns_ok, report.turns_per_s
    );
    println!(
        "| turns lost mid-reply (stream failed before the final) | {} |",
        report.turns_lost
    );
    println!(
        "| first delta p50 / p90 / p99 | {} |",
        p(&report.first_delta)
    );
    println!(
        "| complete reply p50 / p90 / p99 | {} |",
        p(&report.complete)
    );
    println!("| refusals p50 / p90 / p99 | {} |", p(&report.refusal));
    let errs: Vec<String> = report
        .errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "| errors | {} |",
        if errs.is_empty() {
            "0".to_string()
        } else {
            errs.join(", ")
        }
    );
    for (code, message) in &report.error_samples {
        println!("| e.g. {code} | {} |", message.replace('|', "/"));
    }
    if !report.rss_mib_by_minute.is_empty() {
        let r: Vec<String> = report
            .rss_mib_by_minute
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect();
        println!("| server RSS by minute (MiB) | {} |", r.join(" → "));
    }
    let m = |k: &str| report.server.get(k).copied();
    if let (Some(now), Some(max), Some(limit)) = (
        m("closer_replies_in_flight"),
        m("closer_replies_in_flight_max"),
        m("closer_replies_limit"),
    ) {
        println!(
            "| server: reply permits in use after the run / most ever / limit | {now} / {max} / {limit} |"
        );
    }
    if let Some(n) = m("closer_turns_dropped_total") {
        println!(
            "| server: dropped turns, time to stop p50 / p99 / max | {n} turns, {:.1} / {:.1} / {:.1} ms |",
            m("closer_stop_after_drop_ms{quantile=\"0.5\"}").unwrap_or(0.0),
            m("closer_stop_after_drop_ms{quantile=\"0.99\"}").unwrap_or(0.0),
            m("closer_stop_after_drop_ms{quantile=\"1\"}").unwrap_or(0.0),
        );
    }
    if let Some(n) = m("closer_turns_deadline_exceeded_total") {
        println!("| server: turns stopped by a deadline | {n} |");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// Waits (up to a minute) until the server's health says SERVING: a server still loading its
/// models would only answer UNAVAILABLE.
async fn wait_serving(channel: &tonic::transport::Channel) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "closer.v1.Assistant".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the server is not SERVING after a minute ({status:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /metrics` over plain HTTP/1.1 on the server's port, parsed into name → value.
async fn server_metrics(url: &str, key: Option<&str>) -> anyhow::Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only over plain http"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let mut conn = tokio::net::TcpStream::connect(host).await?;
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {host}\r\n{auth}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut body)).await??;
    let status = body.lines().next().unwrap_or_default().to_string();
    anyhow::ensure!(status.contains(" 200 "), "{status}");
    Ok(parse_metrics(&body))
}

/// Prometheus text lines `name{labels} value` → map (comments and other lines skipped).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("closer_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_distinct_letters() {
        assert_eq!(letters(0), "a");
        assert_eq!(letters(25), "z");
        assert_eq!(letters(26), "ba");
        let all: std::collections::HashSet<String> = (0..10_000).map(letters).collect();
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn drops_are_spread_evenly() {
        let n = (0..2000).filter(|&i| drops(i, 0.5)).count();
        assert_eq!(n, 1000);
        assert_eq!((0..100).filter(|&i| drops(i, 0.0)).count(), 0);
        assert_eq!((0..100).filter(|&i| drops(i, 1.0)).count(), 100);
        assert_eq!((0..10).filter(|&i| drops(i, 0.25)).count(), 2);
    }

    #[test]
    fn metrics_text_is_read_back() {
        let m = closer_server::metrics::Metrics::default();
        m.record_stop(closer_sales::gate::Stop::Gone, 3.0);
        let text = closer_server::metrics::prometheus(
            &m,
            &closer_server::metrics::Snapshot {
                in_flight: 0,
                limit: 8,
                waiting: 0,
            },
        );
        let parsed = parse_metrics(&text);
        assert_eq!(parsed["closer_replies_limit"], 8.0);
        assert_eq!(parsed["closer_turns_dropped_total"], 1.0);
        assert_eq!(parsed["closer_stop_after_drop_ms{quantile=\"1\"}"], 3.0);
    }

    #[test]
    fn only_loopback_is_driven() {
        for ok in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "https://[::1]:443/x",
        ] {
            assert!(loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:50051",
            "http://example.com",
            "127.0.0.1:50051",
        ] {
            assert!(loopback(bad).is_err(), "{bad}");
        }
    }
}
