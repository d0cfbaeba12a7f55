//! Wakes event subscribers when the outbox grows. The outbox in the [`crate::Store`] is the
//! truth; the bus carries only "tenant T's events reach cursor N", so a missed wake-up costs
//! latency, never an event. A stream watches its own tenant, so one tenant's events never stir
//! another's streams. In process by default; [`crate::nats::NatsBus`] carries it between
//! replicas.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

pub trait Bus: Send + Sync {
    /// Announces that `tenant`'s events now reach `cursor`.
    fn publish(&self, tenant: &str, cursor: u64);
    /// A receiver that changes whenever a newer cursor of `tenant` is published.
    fn watch(&self, tenant: &str) -> watch::Receiver<u64>;
    /// A receiver that changes whenever a newer cursor of any tenant is published.
    fn watch_all(&self) -> watch::Receiver<u64>;
}

/// Announces stored events: each tenant's newest cursor among them.
pub fn publish_events(bus: &dyn Bus, events: &[crate::Event]) {
    let mut newest: HashMap<&str, u64> = HashMap::new();
    for e in events {
        let c = newest.entry(e.event.tenant.as_str()).or_default();
        *c = (*c).max(e.cursor);
    }
    for (tenant, cursor) in newest {
        bus.publish(tenant, cursor);
    }
}

/// Moves `tx` to `cursor` when that is newer; whether it moved (and woke its watchers).
fn advance(tx: &watch::Sender<u64>, cursor: u64) -> bool {
    // Only a newer cursor wakes the watchers: the replicas' poll and NATS repeat cursors
    // already seen, and every stream would look at the outbox again for nothing.
    tx.send_if_modified(|c| {
        let newer = cursor > *c;
        *c = (*c).max(cursor);
        newer
    })
}

/// The single-process bus.
pub struct LocalBus {
    all: watch::Sender<u64>,
    /// One channel per tenant watched so far (dropped when nobody watches it any more).
    tenants: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl LocalBus {
    pub fn new(last_cursor: u64) -> Self {
        Self {
            all: watch::Sender::new(last_cursor),
            tenants: Mutex::default(),
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, tenant: &str, cursor: u64) {
        advance(&self.all, cursor);
        let mut tenants = self.tenants.lock();
        if let Some(tx) = tenants.get(tenant) {
            advance(tx, cursor);
            if tx.receiver_count() == 0 {
                tenants.remove(tenant);
            }
        }
    }

    fn watch(&self, tenant: &str) -> watch::Receiver<u64> {
        let start = *self.all.borrow();
        self.tenants
            .lock()
            .entry(tenant.to_string())
            .or_insert_with(|| watch::Sender::new(start))
            .subscribe()
    }

    fn watch_all(&self) -> watch::Receiver<u64> {
        self.all.subscribe()
    }
}

/// For a store that other processes write to (PostgreSQL with several replicas): polls the
/// outbox every `every` for each tenant's newest cursor and publishes them on `bus`, so a stream
/// on this replica wakes for an event another replica wrote, within `every` even when no faster
/// wake-up comes.
pub fn follow_store(
    store: std::sync::Arc<dyn crate::Store>,
    bus: std::sync::Arc<dyn Bus>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: Option<u64> = None;
        loop {
            tick.tick().await;
            let s = store.clone();
            let polled = tokio::task::spawn_blocking(move || -> crate::Result<_> {
                let from = match seen {
                    Some(c) => c,
                    None => s.last_cursor()?,
                };
                Ok((from, s.tenant_cursors_after(from)?))
            })
            .await;
            match polled {
                Ok(Ok((from, cursors))) => {
                    let mut newest = from;
                    for (tenant, cursor) in cursors {
                        bus.publish(&tenant, cursor);
                        newest = newest.max(cursor);
                    }
                    seen = Some(newest);
                }
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
        let mut rx = bus.watch("t");
        bus.publish("t", 5);
        bus.publish("t", 3);
        assert!(
            !rx.has_changed().unwrap(),
            "a cursor already seen wakes nobody"
        );
        bus.publish("t", 7);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 7);
        bus.publish("t", 6);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), 7, "never moves back");
    }

    #[test]
    fn a_tenants_events_wake_its_watchers_and_the_all_watchers_only() {
        let bus = LocalBus::new(0);
        let (mut t, u, mut all) = (bus.watch("t"), bus.watch("u"), bus.watch_all());
        bus.publish("t", 4);
        assert!(t.has_changed().unwrap() && all.has_changed().unwrap());
        assert!(!u.has_changed().unwrap(), "another tenant's event woke u");
        assert_eq!((*t.borrow_and_update(), *all.borrow_and_update()), (4, 4));
        bus.publish("u", 9);
        assert!(u.has_changed().unwrap() && all.has_changed().unwrap());
        assert!(!t.has_changed().unwrap());
        // A tenant nobody watches any more is forgotten.
        drop(u);
        bus.publish("u", 10);
        assert!(!bus.tenants.lock().contains_key("u"));
        let again = bus.watch("u");
        bus.publish("u", 11);
        assert!(again.has_changed().unwrap());
    }
}
