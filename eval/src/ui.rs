//! Helpers the evaluation commands share: progress bars and waiting for a server.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Waits (up to two minutes) until the server's health says SERVING: it may still be loading.
pub(crate) async fn wait_serving(
    channel: tonic::transport::Channel,
    addr: &str,
) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    // A server trains every tenant whose stored model is out of date before it serves: minutes
    // for sets the size of CLINC150 on 2 cores.
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let req = tonic_health::pb::HealthCheckRequest {
            service: "closer.v1.Assistant".into(),
        };
        let status = health.check(req).await.map(|r| r.into_inner().status);
        if status
            .as_ref()
            .is_ok_and(|s| *s == ServingStatus::Serving as i32)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{addr} is not SERVING after 10 minutes ({status:?})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Writes `report.json` and `report.md` into `out` and says where.
pub(crate) fn write_report(
    out: &std::path::Path,
    json: &impl serde::Serialize,
    md: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(json)?)?;
    std::fs::write(out.join("report.md"), md)?;
    eprintln!("report written to {}/report.{{json,md}}", out.display());
    Ok(())
}
