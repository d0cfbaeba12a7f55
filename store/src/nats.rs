//! Wake-ups between replicas over NATS: a replica that writes events publishes the outbox's
//! new cursor on a subject; every replica subscribes and wakes its own streams. The outbox in
//! the database stays the truth and every replica still polls it ([`crate::bus::follow_store`]),
//! so a lost message (NATS down, a reconnect) only delays a wake-up; no event is lost.
//!
//! Core publish/subscribe only: it works with the nats-server Debian ships (2.9).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

use crate::bus::{Bus, LocalBus};

/// The subject cursors are published on.
pub const SUBJECT: &str = "closer.outbox.cursor";

/// A [`LocalBus`] whose publications also go to the other replicas, and theirs come here.
pub struct NatsBus {
    local: Arc<LocalBus>,
    out: mpsc::UnboundedSender<u64>,
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
            .subscribe(SUBJECT)
            .await
            .map_err(|e| format!("--nats-url {url}: subscribe: {e}"))?;
        let inbound = local.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(c) = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    inbound.publish(c);
                }
            }
        });
        let (out, mut rx) = mpsc::unbounded_channel::<u64>();
        tokio::spawn(async move {
            while let Some(mut c) = rx.recv().await {
                // Only the newest cursor matters: skip those already superseded.
                while let Ok(next) = rx.try_recv() {
                    c = c.max(next);
                }
                if let Err(e) = client.publish(SUBJECT, c.to_string().into()).await {
                    tracing::debug!(error = %e, "NATS publish failed; the other replicas poll");
                }
            }
        });
        Ok(Self { local, out })
    }
}

impl Bus for NatsBus {
    fn publish(&self, cursor: u64) {
        self.local.publish(cursor);
        let _ = self.out.send(cursor);
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.local.watch()
    }
}
