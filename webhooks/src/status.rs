//! Every consumer of a tenant's event outbox, for operators (`Events.ListConsumers`,
//! `closer sync status`): named `Events.Subscribe` consumers with their acknowledged cursor, and
//! webhook endpoints with their scan cursor, backlog, dead letters and last failure.

use std::sync::Arc;

use closer_store::Store;

use crate::error::{Error, Result};

/// What kind of consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    /// A named `Events.Subscribe` consumer (it acks).
    Subscriber,
    /// A webhook endpoint (the delivery worker).
    Webhook,
}

impl ConsumerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Subscriber => "subscriber",
            ConsumerKind::Webhook => "webhook",
        }
    }
}

/// One consumer: how far it got, how far behind it is, what went wrong last.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerStatus {
    pub kind: ConsumerKind,
    /// The consumer's name, or the endpoint's id.
    pub name: String,
    /// Every event up to here is processed (acknowledged; for a webhook, looked at and queued
    /// when it matched).
    pub cursor: u64,
    /// The tenant's events after `cursor`, plus for a webhook the deliveries still waiting.
    pub lag: u64,
    /// Webhooks: deliveries waiting (first try or retry) and dead-lettered.
    pub pending: u64,
    pub dead: u64,
    /// The latest failed attempt of a delivery not yet made: "HTTP 503: busy", "no answer: …".
    pub last_error: Option<String>,
    /// Webhooks: why deliveries stopped.
    pub disabled: Option<String>,
    pub url: Option<String>,
}

/// The tenant's consumers (subscribers by name, then endpoints oldest first) and the outbox's
/// newest cursor.
pub async fn consumers(store: Arc<dyn Store>, tenant: &str) -> Result<(Vec<ConsumerStatus>, u64)> {
    let tenant = tenant.to_string();
    tokio::task::spawn_blocking(move || -> closer_store::Result<_> {
        let mut out = vec![];
        for (name, cursor) in store.consumers(&tenant)? {
            out.push(ConsumerStatus {
                kind: ConsumerKind::Subscriber,
                name,
                cursor,
                lag: store.count_events_after(&tenant, cursor)?,
                pending: 0,
                dead: 0,
                last_error: None,
                disabled: None,
                url: None,
            });
        }
        for e in store.endpoints(Some(&tenant))? {
            let last_error = store.last_failure(&e.id)?.map(|(status, text, _)| match status {
                Some(s) => format!("HTTP {s}: {text}"),
                None => format!("no answer: {text}"),
            });
            out.push(ConsumerStatus {
                kind: ConsumerKind::Webhook,
                lag: store.count_events_after(&tenant, e.scan_cursor)? + e.pending,
                name: e.id,
                cursor: e.scan_cursor,
                pending: e.pending,
                dead: e.dead,
                last_error,
                disabled: e.disabled.map(|(_, why)| why),
                url: Some(e.url),
            });
        }
        Ok((out, store.last_cursor()?))
    })
    .await
    .map_err(|e| Error::Internal(format!("store task: {e}")))?
    .map_err(Error::Store)
}
