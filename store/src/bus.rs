//! Wakes event subscribers when the outbox grows. The outbox in the [`crate::Store`] is the
//! truth; the bus carries only "there is something after cursor N", so a missed wake-up costs
//! latency, never an event. In process by default; a NATS JetStream bus can follow for replicas.

use tokio::sync::watch;

pub trait Bus: Send + Sync {
    /// Announces that the outbox now reaches `cursor`.
    fn publish(&self, cursor: u64);
    /// A receiver that changes whenever something is published.
    fn watch(&self) -> watch::Receiver<u64>;
}

/// The single-process bus.
pub struct LocalBus {
    tx: watch::Sender<u64>,
}

impl LocalBus {
    pub fn new(last_cursor: u64) -> Self {
        Self {
            tx: watch::Sender::new(last_cursor),
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, cursor: u64) {
        self.tx.send_modify(|c| *c = (*c).max(cursor));
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}
