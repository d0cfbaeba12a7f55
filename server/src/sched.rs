//! Sharing the generator fairly, stopping work nobody waits for, and the figures that show it.
//!
//! The real generator runs one sequence at a time (its KV cache lives in the weights), so replies
//! queue for it. [`FairGate`] hands a free slot to the least recently served tenant that is
//! waiting: a team with 30 replies queued and a team with one take turns, so a flood delays
//! another team by at most the reply in progress instead of the whole flood. A waiter checks every few milliseconds whether its client
//! is still there (or its deadline passed) and leaves the queue if not.
//!
//! [`Metrics`] counts what the load tests check: permits in use (and the most ever in use),
//! refusals, dropped and timed-out generations and how long each took to stop; `GET /metrics`
//! serves them in the Prometheus text format.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
            s = self
                .cv
                .wait_timeout(s, POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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

/// Latency samples (milliseconds), the most recent `CAP` kept.
#[derive(Default)]
struct Samples {
    values: VecDeque<f64>,
    count: u64,
}

impl Samples {
    const CAP: usize = 20_000;

    fn push(&mut self, ms: f64) {
        if self.values.len() == Self::CAP {
            self.values.pop_front();
        }
        self.values.push_back(ms);
        self.count += 1;
    }

    fn quantiles(&self) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.values.iter().copied().collect();
        if v.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        (q(0.5), q(0.99), v[v.len() - 1])
    }
}

/// Counters of the reply path.
#[derive(Default)]
pub struct Metrics {
    /// Most reply permits ever in use at once.
    pub max_in_flight: AtomicUsize,
    pub refused: AtomicU64,
    pub turns: AtomicU64,
    /// Turns of a team pressing past its quota, generated in the background.
    pub background: AtomicU64,
    pub deadline_exceeded: AtomicU64,
    /// Time from the client's stream closing to the turn's work stopping; its count is the
    /// number of dropped turns.
    stop_after_drop: Mutex<Samples>,
}

impl Metrics {
    pub fn record_stop(&self, why: Stop, ms: f64) {
        match why {
            Stop::Gone => {
                self.stop_after_drop
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(ms);
            }
            Stop::Deadline => {
                self.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Dropped generations and the p50, p99 and max of their time to stop (ms).
    pub fn stop_after_drop(&self) -> (u64, f64, f64, f64) {
        let s = self
            .stop_after_drop
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (p50, p99, max) = s.quantiles();
        (s.count, p50, p99, max)
    }
}

/// The figures `GET /metrics` serves.
pub struct Snapshot {
    pub in_flight: usize,
    pub limit: usize,
    pub waiting: usize,
}

/// Prometheus text exposition of the reply path's figures.
pub fn prometheus(m: &Metrics, s: &Snapshot) -> String {
    let (n, p50, p99, max) = m.stop_after_drop();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
    let rows: [(&str, &str, &str, String); 9] = [
        (
            "closer_replies_in_flight",
            "gauge",
            "Reply permits in use (generating or queued for the generator).",
            s.in_flight.to_string(),
        ),
        (
            "closer_replies_in_flight_max",
            "gauge",
            "Most reply permits ever in use at once.",
            m.max_in_flight.load(Ordering::Relaxed).to_string(),
        ),
        (
            "closer_replies_limit",
            "gauge",
            "--max-pending-replies.",
            s.limit.to_string(),
        ),
        (
            "closer_generator_waiting",
            "gauge",
            "Replies queued for a generator slot.",
            s.waiting.to_string(),
        ),
        (
            "closer_turns_total",
            "counter",
            "Turns admitted.",
            load(&m.turns),
        ),
        (
            "closer_turns_background_total",
            "counter",
            "Turns admitted while their team pressed past its quota, generated after other teams' work.",
            load(&m.background),
        ),
        (
            "closer_replies_refused_total",
            "counter",
            "Turns refused with RESOURCE_EXHAUSTED.",
            load(&m.refused),
        ),
        (
            "closer_turns_dropped_total",
            "counter",
            "Turns stopped because the client went away.",
            n.to_string(),
        ),
        (
            "closer_turns_deadline_exceeded_total",
            "counter",
            "Turns stopped by the client's deadline.",
            load(&m.deadline_exceeded),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out.push_str("# HELP closer_stop_after_drop_ms Time from a client dropping its stream to the turn's work stopping.\n# TYPE closer_stop_after_drop_ms summary\n");
    out.push_str(&format!(
        "closer_stop_after_drop_ms{{quantile=\"0.5\"}} {p50:.3}\ncloser_stop_after_drop_ms{{quantile=\"0.99\"}} {p99:.3}\ncloser_stop_after_drop_ms{{quantile=\"1\"}} {max:.3}\ncloser_stop_after_drop_ms_count {n}\n"
    ));
    out
}

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`, at most 8 digits).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When `now` passed `deadline`.
pub fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99999999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
        // Found by the `request` fuzz target: a multi-byte last character.
        assert_eq!(parse_grpc_timeout("\u{aeb}"), None);
        assert_eq!(parse_grpc_timeout("1\u{aeb}"), None);
    }

    /// The order in which queued tickets get the one slot.
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
                served.lock().unwrap().push(format!("{t}{i}"));
            }));
            while gate.waiting() < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(first);
        for h in handles {
            h.join().unwrap();
        }
        Arc::try_unwrap(served).unwrap().into_inner().unwrap()
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

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        m.record_stop(Stop::Gone, 2.0);
        m.record_stop(Stop::Gone, 4.0);
        m.record_stop(Stop::Deadline, 0.0);
        let text = prometheus(
            &m,
            &Snapshot {
                in_flight: 3,
                limit: 64,
                waiting: 1,
            },
        );
        assert!(text.contains("closer_replies_in_flight 3\n"));
        assert!(text.contains("closer_turns_dropped_total 2\n"));
        assert!(text.contains("closer_turns_deadline_exceeded_total 1\n"));
        assert!(text.contains("closer_stop_after_drop_ms{quantile=\"1\"} 4.000\n"));
    }
}
