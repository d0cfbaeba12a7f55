//! The server's shared state: the engine once loaded, reply admission (per-tenant and global
//! quotas), the generator gate, metrics and draining; and running blocking work off the async
//! threads.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use closer_sales::engine::Engine;
use tokio::sync::Semaphore;

use crate::config::ServeConfig;
use crate::error::{Error, Result};

/// A team that was refused a turn this recently is pressing past its quota: the turns it does
/// get generate in the background (after every other team's forward passes).
pub const PRESSING: Duration = Duration::from_secs(10);

struct TenantQuota {
    permits: Arc<Semaphore>,
    refused_at: Option<Instant>,
}

/// A reply's permits: its tenant's and the server's.
pub type Permits = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

/// Shared by every service; `engine` is set once models and tenants are loaded.
pub struct AppState {
    pub config: ServeConfig,
    pub engine: OnceLock<Arc<Engine>>,
    pending_replies: Arc<Semaphore>,
    /// Per tenant: at most `tenant_max_pending_replies` of the permits above, and when the
    /// tenant was last refused one.
    tenant_replies: parking_lot::Mutex<std::collections::HashMap<String, TenantQuota>>,
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
    pub fn admit(&self, tenant: &str) -> std::result::Result<Permits, &'static str> {
        let own = {
            let mut m = self.tenant_replies.lock();
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
            self.metrics.refused.inc();
            self.metrics.tenant_turn(tenant, false);
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
        self.metrics.saw_in_flight(in_use);
        self.metrics.turns.inc();
        self.metrics.tenant_turn(tenant, true);
        Ok((own, global))
    }

    /// Whether `tenant` was refused a turn by its own quota within [`PRESSING`].
    pub fn pressing(&self, tenant: &str) -> bool {
        let m = self.tenant_replies.lock();
        m.get(tenant)
            .and_then(|q| q.refused_at)
            .is_some_and(|at| at.elapsed() < PRESSING)
    }

    pub(crate) fn engine(&self) -> Result<Arc<Engine>> {
        self.engine.get().cloned().ok_or(Error::NotReady)
    }
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
