//! Every consumer of a tenant's event outbox, for operators (`Events.ListConsumers`,
//! `closer sync status`): named `Events.Subscribe` consumers with their acknowledged cursor, and
//! webhook endpoints with their scan cursor, backlog, dead letters and last failure; connectors
//! likewise, with the cursor every event up to which the remote acknowledged (or was
//! dead-lettered).

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
    /// A connector (HubSpot…), driven by the same worker.
    Connector,
}

impl ConsumerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Subscriber => "subscriber",
            ConsumerKind::Webhook => "webhook",
            ConsumerKind::Connector => "connector",
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
            let last_error = store
                .last_failure(&e.id)?
                .map(|(status, text, _)| match status {
                    Some(s) => format!("HTTP {s}: {text}"),
                    None => format!("no answer: {text}"),
                });
            let connector = crate::connector::is_connector(&e);
            // A connector's cursor: every event up to it was acknowledged by the remote (or
            // dead-lettered); its lag counts the events after it.
            let (kind, cursor, lag) = if connector {
                let through = e
                    .oldest_pending
                    .map_or(e.scan_cursor, |c| c.saturating_sub(1).min(e.scan_cursor));
                let lag = store.count_events_after(&tenant, through)?;
                (ConsumerKind::Connector, through, lag)
            } else {
                let lag = store.count_events_after(&tenant, e.scan_cursor)? + e.pending;
                (ConsumerKind::Webhook, e.scan_cursor, lag)
            };
            let url = match e.url.strip_prefix(crate::connector::URL_PREFIX) {
                Some(u) => u.to_string(),
                None => e.url,
            };
            out.push(ConsumerStatus {
                kind,
                lag,
                name: e.id,
                cursor,
                pending: e.pending,
                dead: e.dead,
                last_error,
                disabled: e.disabled.map(|(_, why)| why),
                url: Some(url),
            });
        }
        Ok((out, store.last_cursor()?))
    })
    .await
    .map_err(|e| Error::Internal(format!("store task: {e}")))?
    .map_err(Error::Store)
}
