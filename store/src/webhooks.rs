//! Webhook endpoints and their deliveries, as stored: per endpoint a scan cursor over the event
//! outbox, and one delivery row per (endpoint, event) with its attempts, when it is next due,
//! its state (`pending`, `delivered`, `dead`) and the receiver's last answer. The delivery
//! worker (`closer-webhooks`) drives them; the rows make it durable (a `kill -9` mid-delivery
//! leaves a pending row that is sent again, with the same webhook id).

use serde::{Deserialize, Serialize};

use crate::{Event, Result};

/// A signing secret (`whsec_` + base64 of 32 random bytes). Stored as it is, since it must sign;
/// its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself: for signing, and to show once when it is made.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// A receiver of a tenant's events.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEndpoint {
    /// `wh_` + random hex.
    pub id: String,
    pub tenant: String,
    pub url: String,
    /// Event kinds sent; empty = every kind.
    pub kinds: Vec<String>,
    pub description: String,
    pub secret: Secret,
    /// The secret before the last rotation, still signing (beside `secret`) until
    /// `previous_until_ms`.
    pub previous: Option<(Secret, i64)>,
    pub created_ms: i64,
    /// When deliveries stopped (the receiver answered 410 Gone), and why.
    pub disabled: Option<(i64, String)>,
    /// Every event up to this cursor has been looked at (queued when it matched).
    pub scan_cursor: u64,
    /// Deliveries waiting (first or retry), and the oldest one's cursor.
    pub pending: u64,
    pub oldest_pending: Option<u64>,
    /// Deliveries given up after the last retry.
    pub dead: u64,
}

impl WebhookEndpoint {
    /// Whether an event of `kind` goes to this endpoint.
    pub fn wants(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "delivered" => DeliveryStatus::Delivered,
            "dead" => DeliveryStatus::Dead,
            _ => DeliveryStatus::Pending,
        }
    }
}

/// One event for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub endpoint_id: String,
    pub tenant: String,
    /// The event's cursor: with the endpoint, the delivery's key; the webhook id derives from it.
    pub cursor: u64,
    pub kind: String,
    pub conversation_id: Option<String>,
    /// The request body, fixed when the event was queued (so every attempt and a replay send
    /// the same bytes).
    pub body: String,
    pub status: DeliveryStatus,
    /// Attempts started so far.
    pub attempts: u32,
    pub next_attempt_ms: i64,
    /// The receiver's last HTTP status (none: no answer) and the start of its body or the error.
    pub last_status: Option<u16>,
    pub last_response: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub status: DeliveryStatus,
    /// When a pending delivery is tried next.
    pub next_attempt_ms: i64,
    pub response_status: Option<u16>,
    pub response_excerpt: String,
}

/// Which deliveries `Replay` queues again.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplaySelection {
    /// The dead-lettered ones.
    Dead,
    /// Every event of the endpoint's kinds with a cursor in `from..=to` (delivered or not, or
    /// never queued because it came before the endpoint).
    Range { from: u64, to: u64 },
}

/// Webhook state; part of [`crate::Store`].
pub trait WebhookStore {
    /// Stores a new endpoint; it receives events written from now on (its scan cursor starts at
    /// the newest cursor). `Conflict` when the id exists.
    fn create_endpoint(&self, e: &WebhookEndpoint) -> Result<WebhookEndpoint>;
    /// Endpoints of a tenant (or of every tenant), oldest first, with their backlog.
    fn endpoints(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>>;
    fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>>;
    /// Removes an endpoint and its deliveries; `NotFound` when the tenant has none by that id.
    fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<()>;
    /// Changes where an endpoint points (a connector's base URL changed in its configuration),
    /// keeping its cursor and deliveries; `NotFound` when the tenant has none by that id.
    fn set_endpoint_url(&self, tenant: &str, id: &str, url: &str) -> Result<()>;
    /// Makes `secret` the signing secret; the one before keeps signing until `previous_until_ms`.
    fn rotate_endpoint_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &Secret,
        previous_until_ms: i64,
    ) -> Result<WebhookEndpoint>;
    /// Stops deliveries to an endpoint (its receiver said 410 Gone).
    fn disable_endpoint(&self, id: &str, reason: &str, at_ms: i64) -> Result<()>;
    /// Queues the endpoint's deliveries for up to `limit` events after its scan cursor (each
    /// body made by `body`), and moves the cursor past what it looked at, in one transaction.
    /// Returns how many were queued and whether the scan reached the newest event.
    fn scan_events(
        &self,
        endpoint_id: &str,
        limit: usize,
        body: &(dyn Fn(&Event) -> String + Sync),
    ) -> Result<(usize, bool)>;
    /// Pending deliveries of the endpoint (none when it is disabled) due at `now_ms`, oldest
    /// first, at most one per
    /// conversation: a conversation's later event waits until the earlier one is delivered or
    /// dead. Events without a conversation are independent.
    fn due_deliveries(&self, endpoint_id: &str, now_ms: i64, limit: usize)
        -> Result<Vec<Delivery>>;
    /// When the earliest pending delivery of an enabled endpoint falls due after `after_ms`
    /// (those due already wait for a slot or for their conversation's earlier event).
    fn next_due_ms(&self, after_ms: i64) -> Result<Option<i64>>;
    /// Records that an attempt starts: attempts + 1, and `retry_at_ms` as the next due time
    /// (what stands if the process dies before [`WebhookStore::finish_attempt`]). Returns the
    /// attempt's number; `None` when the delivery is no longer pending and due, or its endpoint
    /// is disabled.
    fn begin_attempt(
        &self,
        endpoint_id: &str,
        cursor: u64,
        retry_at_ms: i64,
    ) -> Result<Option<u32>>;
    fn finish_attempt(&self, endpoint_id: &str, cursor: u64, r: &AttemptResult) -> Result<()>;
    /// Dead-lettered deliveries of a tenant (of one endpoint when given), oldest first.
    fn dead_letters(&self, tenant: &str, endpoint_id: Option<&str>) -> Result<Vec<Delivery>>;
    /// Queues deliveries again (pending, attempts 0, due now), keeping their cursor and so
    /// their webhook id; events never queued for the endpoint get a body from `body`. Returns
    /// how many were queued.
    fn replay(
        &self,
        tenant: &str,
        endpoint_id: &str,
        which: &ReplaySelection,
        body: &(dyn Fn(&Event) -> String + Sync),
    ) -> Result<u64>;
    /// Removes delivered and dead deliveries last touched before `before_ms` (retention);
    /// how many went.
    fn prune_deliveries(&self, before_ms: i64) -> Result<u64>;
    /// The endpoint's latest failed attempt among deliveries not yet delivered: the receiver's
    /// status (none: no answer), the start of its answer or the error, and when. A first attempt
    /// still in flight has no answer yet and is not a failure.
    fn last_failure(&self, endpoint_id: &str) -> Result<Option<(Option<u16>, String, i64)>>;
    /// One delivery (tests, tools).
    fn delivery(&self, endpoint_id: &str, cursor: u64) -> Result<Option<Delivery>>;
}
