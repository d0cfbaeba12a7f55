//! Outbox consumers that are not signed webhooks (the HubSpot connector, `closer-connectors`),
//! driven by the same worker and stored as the same rows: an endpoint row (its scan cursor over
//! the outbox) and one delivery per event (attempts, the retry schedule, dead letters, the last
//! answer). A connector's row has an `connector:` URL; a replica without the connector's
//! configuration leaves the row alone, and webhook management never lists it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use closer_store::{Delivery, WebhookEndpoint};

/// The URL prefix of a connector's endpoint row (`connector:hubspot https://…`).
pub const URL_PREFIX: &str = "connector:";

/// Whether an endpoint row belongs to a connector rather than a webhook receiver.
pub fn is_connector(e: &WebhookEndpoint) -> bool {
    e.url.starts_with(URL_PREFIX)
}

/// What one attempt came to: the remote answer's HTTP status (none: no answer), the start of
/// its body or the error, how long the remote asked us to wait (`Retry-After`), and whether no
/// retry can help (`dead`: the event is dead-lettered now instead of tried on the schedule).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub excerpt: String,
    pub retry_after: Option<Duration>,
    pub dead: bool,
}

impl Answer {
    pub fn ok(excerpt: impl Into<String>) -> Self {
        Answer {
            status: Some(200),
            excerpt: excerpt.into(),
            retry_after: None,
            dead: false,
        }
    }

    /// No answer at all (connection refused or dropped, timeout).
    pub fn none(excerpt: impl Into<String>) -> Self {
        Answer {
            status: None,
            excerpt: excerpt.into(),
            retry_after: None,
            dead: false,
        }
    }
}

pub type Sending<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// A connector: one tenant's consumer of the outbox with its own endpoint row.
pub trait Connector: Send + Sync {
    /// The endpoint row's id (also the consumer's name in `closer sync status`).
    fn id(&self) -> &str;
    fn tenant(&self) -> &str;
    /// The row's URL: [`URL_PREFIX`] + what it is and where it writes (no secret).
    fn url(&self) -> String;
    /// The longest one attempt may take: the worker holds the delivery this long (plus a
    /// second) before any replica, or this one after a restart, tries it again.
    fn hold(&self) -> Duration;
    /// Its deliveries in flight at once; `None`: the worker's limit per endpoint
    /// ([`crate::worker::WorkerConfig::per_endpoint`]). A connector that batches events into
    /// one remote call lets a batch's worth wait together.
    fn in_flight(&self) -> Option<usize> {
        None
    }
    /// Applies one event; a 2xx answer means the remote acknowledged every write.
    fn deliver<'a>(&'a self, d: &'a Delivery) -> Sending<'a>;
}
