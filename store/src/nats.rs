//! Wake-ups between replicas over NATS: a replica that writes events publishes the tenant's
//! new cursor on the tenant's subject (`closer.outbox.<tenant>`); every replica subscribes to
//! them all and wakes its streams of that tenant only. The outbox in
//! the database stays the truth and every replica still polls it ([`crate::bus::follow_store`]),
//! so a lost message (NATS down, a reconnect) only delays a wake-up; no event is lost.
//!
//! Core publish/subscribe only: it works with the nats-server Debian ships (2.9).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use crate::bus::{Bus, LocalBus};

/// The subjects cursors are published on: this, a dot, and the tenant id (tenant ids are
/// letters, digits, `-` and `_`, valid in a NATS subject token).
pub const SUBJECT_PREFIX: &str = "closer.outbox";

fn subject(tenant: &str) -> String {
    format!("{SUBJECT_PREFIX}.{tenant}")
}

/// A [`LocalBus`] whose publications also go to the other replicas, and theirs come here.
pub struct NatsBus {
    local: Arc<LocalBus>,
    out: mpsc::UnboundedSender<(String, u64)>,
}

impl NatsBus {
    /// Connects to `url` (retrying in the background when the server is not up yet) and
    /// starts relaying. Must be called inside a tokio runtime.
    pub async fn connect(url: &str, last_cursor: u64) -> Result<Self, String> {
        let client = async_nats::ConnectOptions::new()
            .name("closer")
            .retry_on_initial_connect()
            .event_callback(|e| async move {
                tracing::info!(event = %e, "NATS connection");
            })
            .connect(url)
            .await
            .map_err(|e| format!("--nats-url {url}: {e}"))?;
        let local = Arc::new(LocalBus::new(last_cursor));
        let mut sub = client
            .subscribe(format!("{SUBJECT_PREFIX}.*"))
            .await
            .map_err(|e| format!("--nats-url {url}: subscribe: {e}"))?;
        let inbound = local.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let tenant = m
                    .subject
                    .strip_prefix(SUBJECT_PREFIX)
                    .and_then(|t| t.strip_prefix('.'));
                let cursor = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                if let (Some(tenant), Some(cursor)) = (tenant, cursor) {
                    inbound.publish(tenant, cursor);
                }
            }
        });
        let (out, mut rx) = mpsc::unbounded_channel::<(String, u64)>();
        tokio::spawn(async move {
            while let Some((tenant, cursor)) = rx.recv().await {
                // Only each tenant's newest cursor matters: skip those already superseded.
                let mut newest = HashMap::from([(tenant, cursor)]);
                while let Ok((t, c)) = rx.try_recv() {
                    let e = newest.entry(t).or_default();
                    *e = (*e).max(c);
                }
                for (tenant, c) in newest {
                    if let Err(e) = client.publish(subject(&tenant), c.to_string().into()).await {
                        tracing::debug!(error = %e, "NATS publish failed; the other replicas poll");
                    }
                }
            }
        });
        Ok(Self { local, out })
    }
}

impl Bus for NatsBus {
    fn publish(&self, tenant: &str, cursor: u64) {
        self.local.publish(tenant, cursor);
        let _ = self.out.send((tenant.to_string(), cursor));
    }

    fn watch(&self, tenant: &str) -> watch::Receiver<u64> {
        self.local.watch(tenant)
    }

    fn watch_all(&self) -> watch::Receiver<u64> {
        self.local.watch_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Two replicas' buses on the NATS server `scripts/backends.sh` starts (skipped, with the
    /// reason, without it; failing when `CLOSER_TEST_REQUIRE_BACKENDS=1`).
    #[test]
    fn a_tenants_cursor_reaches_the_other_replicas_watchers_of_that_tenant_only() {
        let Ok(url) = std::env::var("CLOSER_TEST_NATS_URL") else {
            assert!(
                std::env::var("CLOSER_TEST_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "CLOSER_TEST_REQUIRE_BACKENDS=1 but CLOSER_TEST_NATS_URL is not set"
            );
            eprintln!("skipped: CLOSER_TEST_NATS_URL is not set (scripts/backends.sh starts NATS)");
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = NatsBus::connect(&url, 0).await.unwrap();
            let b = NatsBus::connect(&url, 0).await.unwrap();
            let (mut t, mut u, all) = (b.watch("tenant-t"), b.watch("tenant-u"), b.watch_all());
            // Subscriptions reach the server before the first publication counts.
            tokio::time::sleep(Duration::from_millis(200)).await;
            a.publish("tenant-t", 41);
            tokio::time::timeout(Duration::from_secs(2), t.changed())
                .await
                .expect("tenant-t's watcher on B woke")
                .unwrap();
            assert_eq!(*t.borrow_and_update(), 41);
            assert!(all.has_changed().unwrap());
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                !u.has_changed().unwrap(),
                "tenant-t's cursor woke tenant-u's watcher"
            );
            a.publish("tenant-u", 42);
            tokio::time::timeout(Duration::from_secs(2), u.changed())
                .await
                .expect("tenant-u's watcher on B woke")
                .unwrap();
        });
    }
}
