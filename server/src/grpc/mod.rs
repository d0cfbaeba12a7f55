//! The gRPC edge: one file per `closer.v1` service, each handler thin (authorise, validate,
//! call `closer-sales` or the store, convert). Shared here: the server's state ([`AppState`]:
//! admission, quotas, draining), request checks, and running blocking work.

pub mod assistant;
pub mod conversations;
pub mod convert;
pub mod events;
pub mod intents;
pub mod knowledge;
pub mod leads;
pub mod playbooks;
pub mod reports;
pub mod reps;
mod shared;

pub use assistant::AssistantService;
pub use conversations::ConversationsService;
pub use events::EventsService;
pub use intents::IntentsService;
pub use knowledge::KnowledgeService;
pub use leads::LeadsService;
pub use playbooks::PlaybooksService;
pub use reports::ReportsService;
pub use reps::RepsService;

/// What every service file uses.
pub(crate) mod prelude {
    pub use std::pin::Pin;
    pub use std::sync::{Arc, OnceLock};
    pub use std::time::{Duration, Instant};

    pub use closer_proto::v1 as pb;
    pub use closer_sales::engine::Engine;
    pub use closer_store::{EventFilter, Lead, LeadFilter, ManualScore, Presence};
    pub use tokio::sync::mpsc;
    pub use tokio_stream::wrappers::ReceiverStream;
    pub use tokio_stream::Stream;
    pub use tonic::{Request, Response, Status, Streaming};

    pub use super::convert::*;
    pub use super::shared::*;
    pub use super::{
        blocking, check_start, check_tenant_field, code_name, oversize, page, AppState,
        RETRY_AFTER_MS,
    };
    pub use crate::error::{Api, Error, Result};
}

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use closer_proto::v1 as pb;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::config::ServeConfig;
use crate::error::{Error, Result};
use closer_sales::engine::Engine;

/// How long a refused visitor's client should wait before retrying (`ConverseError.retry_after_ms`).
pub const RETRY_AFTER_MS: u32 = 1000;

/// A gRPC code's canonical name, e.g. `RESOURCE_EXHAUSTED`.
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// tonic refuses a request message over the size limit with OUT_OF_RANGE; callers expect
/// RESOURCE_EXHAUSTED for that.
pub fn oversize(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "request message too large: {} (--max-request-bytes)",
            status.message().trim_start_matches("Error, ")
        ))
    } else {
        status
    }
}
/// A team that was refused a turn this recently is pressing past its quota: the turns it does
/// get generate in the background (after every other team's forward passes).
pub const PRESSING: Duration = Duration::from_secs(10);

struct TenantQuota {
    permits: Arc<Semaphore>,
    refused_at: Option<Instant>,
}

/// Shared by every service; `engine` is set once models and tenants are loaded.
pub struct AppState {
    pub config: ServeConfig,
    pub engine: OnceLock<Arc<Engine>>,
    pending_replies: Arc<Semaphore>,
    /// Per tenant: at most `tenant_max_pending_replies` of the permits above, and when the
    /// tenant was last refused one.
    tenant_replies: std::sync::Mutex<std::collections::HashMap<String, TenantQuota>>,
    /// The generator's slots, shared round-robin by tenant.
    pub gate: closer_sales::gate::FairGate,
    pub metrics: crate::metrics::Metrics,
    /// True once the server is shutting down: idle streams end, new calls get UNAVAILABLE.
    pub draining: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(config: ServeConfig) -> Arc<Self> {
        let pending = Arc::new(Semaphore::new(config.max_pending_replies.max(1)));
        Arc::new(Self {
            engine: OnceLock::new(),
            pending_replies: pending,
            tenant_replies: Default::default(),
            gate: closer_sales::gate::FairGate::new(config.generator_slots),
            metrics: Default::default(),
            draining: tokio::sync::watch::channel(false).0,
            config,
        })
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The reply path's figures now.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let limit = self.config.max_pending_replies.max(1);
        crate::metrics::Snapshot {
            in_flight: limit - self.pending_replies.available_permits(),
            limit,
            waiting: self.gate.waiting(),
        }
    }

    /// A reply permit for `tenant`: its own quota first, then the server's; `Err` says which is
    /// exhausted.
    fn admit(
        &self,
        tenant: &str,
    ) -> std::result::Result<
        (
            tokio::sync::OwnedSemaphorePermit,
            tokio::sync::OwnedSemaphorePermit,
        ),
        &'static str,
    > {
        let own = {
            let mut m = self
                .tenant_replies
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let q = m.entry(tenant.to_string()).or_insert_with(|| TenantQuota {
                permits: Arc::new(Semaphore::new(
                    self.config.tenant_max_pending_replies.max(1),
                )),
                refused_at: None,
            });
            let own = q.permits.clone().try_acquire_owned();
            if own.is_err() {
                q.refused_at = Some(Instant::now());
            }
            own
        };
        let refused = |why| {
            self.metrics.refused.fetch_add(1, Ordering::Relaxed);
            why
        };
        let own = own.map_err(|_| {
            refused("this team has too many replies in progress; retry in a few seconds")
        })?;
        let global = self
            .pending_replies
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused("too many replies in progress; retry in a few seconds"))?;
        let in_use =
            self.config.max_pending_replies.max(1) - self.pending_replies.available_permits();
        self.metrics
            .max_in_flight
            .fetch_max(in_use, Ordering::Relaxed);
        self.metrics.turns.fetch_add(1, Ordering::Relaxed);
        Ok((own, global))
    }

    /// Whether `tenant` was refused a turn by its own quota within [`PRESSING`].
    pub fn pressing(&self, tenant: &str) -> bool {
        let m = self
            .tenant_replies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.get(tenant)
            .and_then(|q| q.refused_at)
            .is_some_and(|at| at.elapsed() < PRESSING)
    }

    pub(crate) fn engine(&self) -> Result<Arc<Engine>> {
        self.engine.get().cloned().ok_or(Error::NotReady)
    }

    pub(crate) fn check_text(&self, field: &str, text: &str) -> Result<()> {
        check_text(self.config.max_message_chars, field, text)
    }
}

/// A visitor's text: not blank, at most `max_chars` characters (after invisible characters are
/// stripped, which callers do first).
pub fn check_text(max_chars: usize, field: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let n = text.chars().count();
    if n > max_chars {
        return Err(Error::invalid(
            field,
            format!("{n} characters, more than the limit of {max_chars}"),
        ));
    }
    Ok(())
}

/// The checks on a conversation's `start` event that need no state: the tenant id's form and
/// the conversation id's length.
pub fn check_start(start: &pb::Start) -> Result<()> {
    if start.tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(&start.tenant).map_err(|m| Error::invalid("tenant", m))?;
    if start.conversation_id.is_empty() || start.conversation_id.chars().count() > 128 {
        return Err(Error::invalid(
            "start.conversation_id",
            "must be 1 to 128 characters",
        ));
    }
    Ok(())
}

pub fn check_tenant_field(tenant: &str) -> Result<()> {
    if tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(tenant).map_err(|m| Error::invalid("tenant", m))?;
    // With keys required, the caller's key must belong to this tenant.
    crate::auth::check_tenant(tenant)
}

/// Runs model or index work off the async threads.
pub async fn blocking<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
        .map_err(Into::into)
}

/// Rep events of a conversation after `cursor`, as stream events; updates who has it.

/// Offset-based page tokens: the decimal offset of the next item.
pub fn page(token: &str, size: u32, total: usize) -> Result<(usize, usize, String)> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Error::invalid("page_token", "not a token from a previous response"))?
    };
    if size > 1000 {
        return Err(Error::invalid("page_size", "must be 0 to 1000"));
    }
    let size = if size == 0 { 100 } else { size as usize };
    let end = (start + size).min(total);
    let next = if end < total {
        end.to_string()
    } else {
        String::new()
    };
    Ok((start.min(total), end, next))
}
