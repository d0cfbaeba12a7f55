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

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
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
}

/// How long a key that just released the model keeps its place against busier keys.
const HOLD: Duration = Duration::from_millis(5);

/// The model, for one forward pass; dropping it charges the time to the key.
pub struct Step<'a> {
    sched: &'a StepScheduler,
    key: String,
    background: bool,
    started: Instant,
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
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut s = self.lock();
        s.waiting.push((ticket, key.to_string(), background));
        loop {
            if !s.busy {
                let now = Instant::now();
                match self.pick(&s, now) {
                    Pick::Ticket(t) if t == ticket => {
                        s.waiting.retain(|(t, _, _)| *t != ticket);
                        s.busy = true;
                        s.hold = None;
                        return Step {
                            sched: self,
                            key: key.to_string(),
                            background,
                            started: now,
                        };
                    }
                    Pick::Ticket(_) => {}
                    Pick::WaitUntil(until) => {
                        s = self
                            .cv
                            .wait_timeout(s, until.saturating_duration_since(now))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        continue;
                    }
                }
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Who gets the free model: a foreground pass before any background one, then the least
    /// used waiting key (oldest ticket on a tie); while a hold is on, only the holder's own
    /// passes or strictly better placed ones.
    fn pick(&self, s: &State, now: Instant) -> Pick {
        let rank = |background: bool, key: &str| (background, self.decayed(s, key, now));
        let better = |a: (bool, f64), b: (bool, f64)| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1);
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
        let used = self.sched.decayed(&s, &self.key, now) + (now - self.started).as_secs_f64();
        s.hold = Some((self.key.clone(), self.background, now + HOLD));
        s.usage.insert(std::mem::take(&mut self.key), (used, now));
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
                order.lock().unwrap().push(k);
            }));
            while sched.lock().waiting.len() < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(held);
        for h in hs {
            h.join().unwrap();
        }
        let order = order.lock().unwrap().clone();
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
}
