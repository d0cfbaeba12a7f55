//! `closer bench`: starts `closer serve` as a child process on loopback, measures start-up time,
//! Classify latency, Converse time to first delta and to final for the seed question, and the
//! server's peak RSS; prints a table and writes JSON. It only ever targets loopback.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use closer_proto::v1 as pb;
use pb::converse_response::Event;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub const SEED_QUESTION: &str =
    "How much does each seat cost? Are you SOC II compliant? And who would be our rep?";

/// Options of `closer bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Folder of tenants (as for `closer serve`).
    #[arg(long, env = "CLOSER_DATA_DIR", default_value_os_t = closer_server::config::default_data_dir())]
    pub data_dir: PathBuf,
    /// Folder of ready models.
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    pub model_dir: PathBuf,
    /// Classify calls to time.
    #[arg(long, default_value_t = 200)]
    pub classify_runs: usize,
    /// Converse turns to time.
    #[arg(long, default_value_t = 10)]
    pub converse_runs: usize,
    /// Tenant and visitor domain of the seed question.
    #[arg(long, default_value = "applinks")]
    pub tenant: String,
    #[arg(long, default_value = "acme.com")]
    pub domain: String,
    /// Also write the figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    };
    Percentiles {
        n: v.len(),
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub server_start_s: f64,
    pub classify: Percentiles,
    pub converse_first_delta: Percentiles,
    pub converse_final: Percentiles,
    pub reply_chars_mean: f64,
    pub server_peak_rss_mib: f64,
    pub server_rss_mib: f64,
}

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // A free loopback port for the child.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .args(["--addr", &addr])
        .arg("--data-dir")
        .arg(&args.data_dir)
        .arg("--model-dir")
        .arg(&args.model_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let url = format!("http://{addr}");
    let channel = loop {
        if t0.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("server did not start within 300 s");
        }
        if let Ok(c) = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "closer.v1.Assistant".into(),
            })
            .await?;
        if r.into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("server exited during start-up: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_start_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "server SERVING after {server_start_s:.2} s; timing Classify ×{}",
        args.classify_runs
    );

    let mut assistant = pb::assistant_client::AssistantClient::new(channel.clone());
    let mut classify = vec![];
    for _ in 0..args.classify_runs {
        let t = Instant::now();
        assistant
            .classify(pb::ClassifyRequest {
                tenant: args.tenant.clone(),
                text: SEED_QUESTION.into(),
            })
            .await?;
        classify.push(t.elapsed().as_secs_f64() * 1e3);
    }

    eprintln!("timing Converse ×{} (seed question)", args.converse_runs);
    let (mut first, mut last, mut chars) = (vec![], vec![], vec![]);
    for i in 0..args.converse_runs {
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::ConverseRequest {
            event: Some(pb::converse_request::Event::Start(pb::Start {
                tenant: args.tenant.clone(),
                conversation_id: format!("bench-{i}"),
                resume_token: None,
                visitor: Some(pb::VisitorContext {
                    company_domain: Some(args.domain.clone()),
                    ..Default::default()
                }),
            })),
        })
        .await?;
        let t = Instant::now();
        let mut stream = assistant
            .converse(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tx.send(pb::ConverseRequest {
            event: Some(pb::converse_request::Event::Message(pb::VisitorMessage {
                text: SEED_QUESTION.into(),
            })),
        })
        .await?;
        let mut got_first = false;
        while let Some(resp) = stream.message().await? {
            match resp.event {
                Some(Event::Delta(_)) if !got_first => {
                    got_first = true;
                    first.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Some(Event::Final(f)) => {
                    last.push(t.elapsed().as_secs_f64() * 1e3);
                    chars.push(f.text.chars().count() as f64);
                    break;
                }
                Some(Event::Error(e)) => anyhow::bail!("converse error: {} {}", e.code, e.message),
                _ => {}
            }
        }
        drop(tx);
    }
    let report = BenchReport {
        server_start_s,
        classify: percentiles(classify),
        converse_first_delta: percentiles(first),
        converse_final: percentiles(last),
        reply_chars_mean: chars.iter().sum::<f64>() / chars.len().max(1) as f64,
        server_peak_rss_mib: proc_status_kib(pid, "VmHWM:").unwrap_or(f64::NAN) / 1024.0,
        server_rss_mib: proc_status_kib(pid, "VmRSS:").unwrap_or(f64::NAN) / 1024.0,
    };
    let _ = child.start_kill();
    println!("| figure | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (name, p) in [
        ("Classify (seed question), ms", &report.classify),
        ("Converse first delta, ms", &report.converse_first_delta),
        ("Converse final, ms", &report.converse_final),
    ] {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.n, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
        );
    }
    println!(
        "| server start to SERVING | 1 | {:.2} s | | | |",
        report.server_start_s
    );
    println!(
        "| server peak RSS (VmHWM) | 1 | {:.0} MiB | | | |",
        report.server_peak_rss_mib
    );
    println!(
        "| server RSS at end | 1 | {:.0} MiB | | | |",
        report.server_rss_mib
    );
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
