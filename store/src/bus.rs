//! Wakes event subscribers when the outbox grows. The outbox in the [`crate::Store`] is the
//! truth; the bus carries only "there is something after cursor N", so a missed wake-up costs
//! latency, never an event. In process by default; a NATS JetStream bus can follow for replicas.

use tokio::sync::watch;

pub trait Bus: Send + Sync {
    /// Announces that the outbox now reaches `cursor`.
    fn publish(&self, cursor: u64);
    /// A receiver that changes whenever a newer cursor is published.
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
        // Only a newer cursor wakes the watchers: the replicas' poll and NATS repeat cursors
        // already seen, and every stream would look at the outbox again for nothing.
        self.tx.send_if_modified(|c| {
            let newer = cursor > *c;
            *c = (*c).max(cursor);
            newer
        });
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// For a store that other processes write to (PostgreSQL with several replicas): polls the
/// outbox's newest cursor every `every` and publishes it on `bus`, so a stream on this replica
/// wakes for an event another replica wrote, within `every` even when no faster wake-up comes.
pub fn follow_store(
    store: std::sync::Arc<dyn crate::Store>,
    bus: std::sync::Arc<dyn Bus>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.last_cursor()).await {
                Ok(Ok(cursor)) => bus.publish(cursor),
                Ok(Err(e)) => tracing::warn!(error = %e, "polling the outbox failed; retrying"),
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_newer_cursor_wakes_a_watcher() {
        let bus = LocalBus::new(5);
        let mut rx = bus.watch();
        bus.publish(5);
        bus.publish(3);
        assert!(!rx.has_changed().unwrap(), "a cursor already seen wakes nobody");
        bus.publish(7);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 7);
        bus.publish(6);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), 7, "never moves back");
    }
}
