//! Sharing the generator fairly and stopping work nobody waits for.
//!
//! The real generator runs one sequence at a time (its KV cache lives in the weights), so replies
//! queue for it. [`FairGate`] hands a free slot to the least recently served tenant that is
//! waiting: a team with 30 replies queued and a team with one take turns, so a flood delays
//! another team by at most the reply in progress instead of the whole flood. A waiter checks every few milliseconds whether its client
//! is still there (or its deadline passed) and leaves the queue if not.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Why a turn stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The client went away (dropped the stream or disconnected).
    Gone,
    /// The client's deadline (`grpc-timeout`) passed.
    Deadline,
}

/// How often a queued reply looks at its client.
const POLL: Duration = Duration::from_millis(5);

/// A round-robin-by-tenant queue in front of `slots` generator slots.
pub struct FairGate {
    slots: usize,
    /// Slots one tenant may hold at once (half of them, at least one), so that another tenant
    /// finds one free while a flood runs.
    per_tenant: usize,
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Default)]
struct GateState {
    running: usize,
    next_ticket: u64,
    /// Waiting tickets of each tenant, oldest first.
    queues: HashMap<String, VecDeque<u64>>,
    /// When each tenant was last given a slot (a grant count): the least recently served
    /// tenant goes next.
    last_grant: HashMap<String, u64>,
    grants: u64,
    /// Tickets given a slot whose owners have not woken yet.
    granted: HashSet<u64>,
    /// Slots held, by tenant.
    running_by: HashMap<String, usize>,
}

/// A generator slot; dropping it hands the slot to the next tenant in turn.
pub struct GateSlot<'a> {
    gate: &'a FairGate,
    tenant: String,
}

impl FairGate {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            per_tenant: (slots / 2).max(1),
            state: Mutex::new(GateState::default()),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock()
    }

    /// Replies waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().queues.values().map(VecDeque::len).sum()
    }

    /// Waits for a slot for `tenant` (blocking; call off the async threads). Returns why it gave
    /// up when `stop` says so first.
    pub fn acquire(
        &self,
        tenant: &str,
        stop: &dyn Fn() -> Option<Stop>,
    ) -> Result<GateSlot<'_>, Stop> {
        let mut s = self.lock();
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queues
            .entry(tenant.to_string())
            .or_default()
            .push_back(ticket);
        self.dispatch(&mut s);
        loop {
            if s.granted.remove(&ticket) {
                return Ok(GateSlot {
                    gate: self,
                    tenant: tenant.to_string(),
                });
            }
            if let Some(why) = stop() {
                Self::withdraw(&mut s, tenant, ticket);
                return Err(why);
            }
            self.cv.wait_for(&mut s, POLL);
        }
    }

    /// Gives free slots to the tenants in turn: the least recently served first, then the
    /// oldest ticket.
    fn dispatch(&self, s: &mut GateState) {
        let mut woke = false;
        while s.running < self.slots {
            let next = s
                .queues
                .iter()
                .filter(|(t, _)| s.running_by.get(*t).copied().unwrap_or(0) < self.per_tenant)
                .filter_map(|(t, q)| {
                    Some((s.last_grant.get(t).copied().unwrap_or(0), *q.front()?, t))
                })
                .min()
                .map(|(_, _, t)| t.clone());
            let Some(tenant) = next else {
                break;
            };
            let q = s.queues.get_mut(&tenant).expect("chosen from the queues");
            let ticket = q.pop_front().expect("non-empty");
            if q.is_empty() {
                s.queues.remove(&tenant);
            }
            s.grants += 1;
            let n = s.grants;
            *s.running_by.entry(tenant.clone()).or_default() += 1;
            s.last_grant.insert(tenant, n);
            s.running += 1;
            s.granted.insert(ticket);
            woke = true;
        }
        if woke {
            self.cv.notify_all();
        }
    }

    fn withdraw(s: &mut GateState, tenant: &str, ticket: u64) {
        if let Some(q) = s.queues.get_mut(tenant) {
            q.retain(|t| *t != ticket);
            if q.is_empty() {
                s.queues.remove(tenant);
            }
        }
    }
}

impl Drop for GateSlot<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.running -= 1;
        if let Some(n) = s.running_by.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                s.running_by.remove(&self.tenant);
            }
        }
        self.gate.dispatch(&mut s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    fn service_order(arrivals: &[&str]) -> Vec<String> {
        let gate = Arc::new(FairGate::new(1));
        // Hold the slot while everyone queues, in arrival order.
        let first = gate.acquire("holder", &|| None).map_err(|_| ()).unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut handles = vec![];
        for (i, t) in arrivals.iter().enumerate() {
            let (g, served, t) = (gate.clone(), served.clone(), t.to_string());
            handles.push(std::thread::spawn(move || {
                let _slot = g.acquire(&t, &|| None).map_err(|_| ()).unwrap();
                served.lock().push(format!("{t}{i}"));
            }));
            while gate.waiting() < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(first);
        for h in handles {
            h.join().unwrap();
        }
        Arc::try_unwrap(served).unwrap().into_inner()
    }

    #[test]
    fn tenants_take_turns_however_many_each_queued() {
        // A floods five replies, then B asks once: B goes second, not sixth.
        let order = service_order(&["a", "a", "a", "a", "a", "b", "c"]);
        assert_eq!(order, ["a0", "b5", "c6", "a1", "a2", "a3", "a4"]);
    }

    #[test]
    fn one_tenant_holds_at_most_half_the_slots() {
        let gate = FairGate::new(4);
        let a1 = gate.acquire("a", &|| None).map_err(|_| ()).unwrap();
        let _a2 = gate.acquire("a", &|| None).map_err(|_| ()).unwrap();
        // A third for "a" waits although two slots are free...
        assert_eq!(
            gate.acquire("a", &|| Some(Stop::Gone)).err(),
            Some(Stop::Gone)
        );
        // ...so "b" finds them.
        let _b = gate
            .acquire("b", &|| Some(Stop::Gone))
            .map_err(|_| ())
            .unwrap();
        drop(a1);
        assert!(gate.acquire("a", &|| Some(Stop::Gone)).is_ok());
    }

    #[test]
    fn a_waiter_whose_client_left_gives_up_its_place() {
        let gate = Arc::new(FairGate::new(1));
        let slot = gate.acquire("a", &|| None).map_err(|_| ()).unwrap();
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g2, gone2) = (gate.clone(), gone.clone());
        let waiter = std::thread::spawn(move || {
            g2.acquire("b", &|| gone2.load(Ordering::SeqCst).then_some(Stop::Gone))
                .err()
        });
        while gate.waiting() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        gone.store(true, Ordering::SeqCst);
        assert_eq!(waiter.join().unwrap(), Some(Stop::Gone));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(gate.waiting(), 0);
        drop(slot);
        // The slot is free again: nothing leaked.
        assert!(gate.acquire("c", &|| Some(Stop::Gone)).is_ok());
    }
}
