//! Sharing one model's compute between sequences, one forward pass at a time.
//!
//! Every forward pass (a prompt's prefill, then each generated token) asks for the model with a
//! share key (the tenant). When several wait, the key that used the least compute lately goes
//! first (usage decays with a half-life), ties to the oldest request. A team that floods keeps
//! its own sequences busy only while nobody else wants the model: a quieter team's next token
//! waits for at most the one forward pass in progress. A sequence that just finished a pass gets
//! a few milliseconds to ask for its next one (it is decoding and streaming its token) before a
//! busier key may take the model, so a quiet team's reply is not broken up by every flood pass.
//!
//! Least-used-first alone converges to equal shares: a team that floods without pause would
//! still take half the model from a team that chats normally. So a pass can be asked for in the
//! background (the server does this for a team pressing past its quota): background passes go
//! only when no foreground pass waits, whatever the usage.
//!
//! Passes are batched: the sequence that gets the model may take the passes that wait in its
//! class (foreground or background) into its own ([`StepScheduler::absorb`]): one pass over
//! the rows of several sequences costs little more than over one (the weights are read once).
//! Their own `step_or_served` then returns `None`, and the time is charged to every key by its
//! share of the pass. Before taking them, it waits a moment ([`GATHER`]) for the other
//! sequences of the previous pass to ask again, so that decoding sequences stay in one batch
//! instead of alternating between two.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub struct StepScheduler {
    state: Mutex<State>,
    cv: Condvar,
    half_life: Duration,
}

#[derive(Default)]
struct State {
    busy: bool,
    next: u64,
    /// Waiting passes: their sequence's ticket, key and whether they are in the background.
    waiting: Vec<(u64, String, bool)>,
    /// Compute seconds each key used, decayed to `at`.
    usage: HashMap<String, (f64, Instant)>,
    /// The key that just released the model (and whether its pass was in the background), and
    /// until when busier keys wait for it.
    hold: Option<(String, bool, Instant)>,
    /// Tickets whose pass another one took ([`StepScheduler::absorb`]).
    served: HashSet<u64>,
    /// The tickets of the latest pass.
    last_pass: Vec<u64>,
}

/// How long a key that just released the model keeps its place against busier keys.
const HOLD: Duration = Duration::from_millis(5);
/// How long a pass waits for the other sequences of the previous pass before it takes the
/// waiting ones in ([`StepScheduler::absorb`]).
pub const GATHER: Duration = Duration::from_millis(3);

/// The model, for one forward pass; dropping it charges the time to the key.
pub struct Step<'a> {
    sched: &'a StepScheduler,
    key: String,
    ticket: u64,
    background: bool,
    started: Instant,
    /// The tickets of the pass before this one.
    previous: Vec<u64>,
    /// This sequence's share of the pass, and the keys and shares of the passes it took.
    weight: f64,
    riders: Vec<(String, f64)>,
}

impl StepScheduler {
    pub fn new(half_life: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            half_life,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn decayed(&self, s: &State, key: &str, now: Instant) -> f64 {
        s.usage.get(key).map_or(0.0, |(u, at)| {
            let dt = now.saturating_duration_since(*at).as_secs_f64();
            u * 0.5f64.powf(dt / self.half_life.as_secs_f64().max(1e-3))
        })
    }

    /// A new sequence's place in line: among passes of equally used keys, the sequence that
    /// began first goes first (so one team's replies finish one after the other rather than
    /// all slowly together).
    pub fn sequence(&self) -> u64 {
        let mut s = self.lock();
        s.next += 1;
        s.next
    }

    /// Waits for the model for a pass of sequence `ticket` (from [`Self::sequence`]); returns it
    /// for one forward pass. A `background` pass waits while any foreground pass does.
    pub fn step(&self, key: &str, ticket: u64, background: bool) -> Step<'_> {
        loop {
            // Only a pass that asked with `step_or_served` can be taken by another.
            if let Some(step) = self.step_or_served(key, ticket, background) {
                return step;
            }
        }
    }

    /// As [`Self::step`], but `None` when another sequence's pass took this one in
    /// ([`Self::absorb`]): the caller then collects its result from that pass.
    pub fn step_or_served(&self, key: &str, ticket: u64, background: bool) -> Option<Step<'_>> {
        let mut s = self.lock();
        s.waiting.push((ticket, key.to_string(), background));
        // A pass gathering its batch may be waiting for this one.
        self.cv.notify_all();
        loop {
            if s.served.remove(&ticket) {
                return None;
            }
            if !s.busy {
                let now = Instant::now();
                match self.pick(&s, now) {
                    Pick::Ticket(t) if t == ticket => {
                        s.waiting.retain(|(t, _, _)| *t != ticket);
                        s.busy = true;
                        s.hold = None;
                        let previous = std::mem::replace(&mut s.last_pass, vec![ticket]);
                        return Some(Step {
                            sched: self,
                            key: key.to_string(),
                            ticket,
                            background,
                            started: now,
                            previous,
                            weight: 1.0,
                            riders: vec![],
                        });
                    }
                    Pick::Ticket(_) => {}
                    Pick::WaitUntil(until) => {
                        self.cv
                            .wait_for(&mut s, until.saturating_duration_since(now));
                        continue;
                    }
                }
            }
            self.cv.wait(&mut s);
        }
    }

    /// While `step` holds the model: waits at most [`GATHER`] for the other sequences of the
    /// previous pass to ask again, then offers `take` each waiting pass of the step's class
    /// (foreground, or background), in the order they would get the model. `take` returns the
    /// share of the pass it gives that one (`None`: not this one); `own` is the step's own
    /// share. The passes taken are served by this one: returns their tickets.
    pub fn absorb(
        &self,
        step: &mut Step<'_>,
        own: f64,
        mut take: impl FnMut(u64) -> Option<f64>,
    ) -> Vec<u64> {
        let mut s = self.lock();
        let until = Instant::now() + GATHER;
        loop {
            let now = Instant::now();
            let missing = step
                .previous
                .iter()
                .any(|t| *t != step.ticket && !s.waiting.iter().any(|w| w.0 == *t));
            if !missing || now >= until {
                break;
            }
            self.cv.wait_for(&mut s, until - now);
        }
        let now = Instant::now();
        let mut offers: Vec<(f64, u64, String)> = s
            .waiting
            .iter()
            .filter(|(_, _, bg)| *bg == step.background)
            .map(|(t, k, _)| (self.decayed(&s, k, now), *t, k.clone()))
            .collect();
        offers.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut taken = vec![];
        for (_, t, k) in offers {
            if let Some(share) = take(t) {
                taken.push(t);
                step.riders.push((k, share));
            }
        }
        step.weight = own;
        if !taken.is_empty() {
            s.waiting.retain(|(t, _, _)| !taken.contains(t));
            s.served.extend(taken.iter().copied());
            s.last_pass.extend(taken.iter().copied());
            drop(s);
            self.cv.notify_all();
        }
        taken
    }

    /// Who gets the free model: a foreground pass before any background one, then the least
    /// used waiting key (oldest ticket on a tie); while a hold is on, only the holder's own
    /// passes or strictly better placed ones.
    fn pick(&self, s: &State, now: Instant) -> Pick {
        let rank = |background: bool, key: &str| (background, self.decayed(s, key, now));
        let better = |a: (bool, f64), b: (bool, f64)| (!a.0 && b.0) || (a.0 == b.0 && a.1 < b.1);
        let best = |filter: &dyn Fn((bool, f64)) -> bool| {
            s.waiting
                .iter()
                .map(|(t, k, bg)| (rank(*bg, k), *t))
                .filter(|(r, _)| filter(*r))
                .min_by(|a, b| {
                    (a.0 .0)
                        .cmp(&b.0 .0)
                        .then(a.0 .1.total_cmp(&b.0 .1))
                        .then(a.1.cmp(&b.1))
                })
                .map(|(_, t)| t)
        };
        match &s.hold {
            Some((holder, holder_bg, until)) if now < *until => {
                let hr = rank(*holder_bg, holder);
                let own = s
                    .waiting
                    .iter()
                    .filter(|(_, k, _)| k == holder)
                    .map(|(t, _, _)| *t)
                    .min();
                match best(&|r| better(r, hr)).or(own) {
                    Some(t) => Pick::Ticket(t),
                    None => Pick::WaitUntil(*until),
                }
            }
            _ => best(&|_| true).map_or(Pick::WaitUntil(now + HOLD), Pick::Ticket),
        }
    }
}

enum Pick {
    Ticket(u64),
    WaitUntil(Instant),
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut s = self.sched.lock();
        let spent = (now - self.started).as_secs_f64();
        let total = self.weight + self.riders.iter().map(|r| r.1).sum::<f64>();
        let mut charge = |key: String, share: f64| {
            let used = self.sched.decayed(&s, &key, now) + spent * share / total.max(1e-9);
            s.usage.insert(key, (used, now));
        };
        for (key, share) in std::mem::take(&mut self.riders) {
            charge(key, share);
        }
        charge(self.key.clone(), self.weight);
        s.hold = Some((std::mem::take(&mut self.key), self.background, now + HOLD));
        if s.usage.len() > 10_000 {
            // Forget keys whose usage has decayed to nothing.
            let hl = self.sched.half_life.as_secs_f64() * 20.0;
            s.usage
                .retain(|_, (_, at)| now.saturating_duration_since(*at).as_secs_f64() < hl);
        }
        s.busy = false;
        drop(s);
        self.sched.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// "busy" has used the model for a while.
    fn with_busy_key() -> Arc<StepScheduler> {
        let sched = Arc::new(StepScheduler::new(Duration::from_secs(10)));
        for _ in 0..3 {
            let _s = sched.step("busy", sched.sequence(), false);
            std::thread::sleep(Duration::from_millis(20));
        }
        sched
    }

    /// While a pass of `holder` runs, `asks` (key, background) queue up in this order; then the
    /// model is free: the order they got it in.
    fn served(
        sched: &Arc<StepScheduler>,
        holder: (&str, bool),
        asks: &[(&'static str, bool)],
    ) -> Vec<&'static str> {
        let order = Arc::new(Mutex::new(vec![]));
        let held = sched.step(holder.0, sched.sequence(), holder.1);
        let mut hs = vec![];
        for (i, &(k, bg)) in asks.iter().enumerate() {
            let (sc, order) = (sched.clone(), order.clone());
            hs.push(std::thread::spawn(move || {
                let _s = sc.step(k, sc.sequence(), bg);
                order.lock().push(k);
            }));
            while sched.lock().waiting.len() < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(held);
        for h in hs {
            h.join().unwrap();
        }
        let order = order.lock().clone();
        order
    }

    #[test]
    fn a_quiet_key_goes_before_a_busy_one() {
        let sched = with_busy_key();
        // "busy" asks first.
        let order = served(
            &sched,
            ("holder", false),
            &[("busy", false), ("quiet", false)],
        );
        assert_eq!(order, ["quiet", "busy"]);
    }

    #[test]
    fn a_background_pass_waits_for_every_foreground_one() {
        let sched = with_busy_key();
        // The unused key asks first, but in the background; then the busy key, twice.
        let order = served(
            &sched,
            ("holder", true),
            &[("flood", true), ("busy", false), ("busy", false)],
        );
        assert_eq!(order, ["busy", "busy", "flood"]);
    }

    #[test]
    fn equal_keys_go_in_order_of_asking() {
        let sched = Arc::new(StepScheduler::new(Duration::from_secs(10)));
        let order = served(
            &sched,
            ("x", false),
            &[("a", false), ("b", false), ("c", false)],
        );
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn a_pass_takes_in_the_waiting_passes_of_its_class() {
        let sched = Arc::new(StepScheduler::new(Duration::from_secs(10)));
        let mut held = sched.step("a", sched.sequence(), false);
        // Two foreground passes and a background one queue behind it.
        let served = Arc::new(Mutex::new(vec![]));
        let mut hs = vec![];
        let mut tickets = vec![];
        for (i, (key, bg)) in [("b", false), ("c", false), ("d", true)]
            .into_iter()
            .enumerate()
        {
            let t = sched.sequence();
            tickets.push(t);
            let (sc, served) = (sched.clone(), served.clone());
            hs.push(std::thread::spawn(move || {
                let step = sc.step_or_served(key, t, bg);
                served.lock().push((key, step.is_none()));
            }));
            while sched.lock().waiting.len() < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // It takes the foreground ones it accepts ("c" is refused), never the background one.
        let mut offered = vec![];
        let taken = sched.absorb(&mut held, 1.0, |t| {
            offered.push(t);
            (t == tickets[0]).then_some(3.0)
        });
        assert_eq!(taken, vec![tickets[0]]);
        assert_eq!(offered, vec![tickets[0], tickets[1]]);
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        for h in hs {
            h.join().unwrap();
        }
        let mut served = served.lock().clone();
        served.sort();
        assert_eq!(served, [("b", true), ("c", false), ("d", false)]);
        // The pass's time went to "a" and "b" by their shares (1 : 3).
        let s = sched.lock();
        let (ua, ub) = (s.usage["a"].0, s.usage["b"].0);
        assert!(ub > 2.0 * ua && ub < 4.0 * ua, "{ua} {ub}");
    }
}
