//! The reply path's figures (`GET /metrics`) and the client's deadline.
//!
//! [`Metrics`] counts what the load tests check: permits in use (and the most ever in use),
//! refusals, dropped and timed-out generations and how long each took to stop; `GET /metrics`
//! serves them in the Prometheus text format.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use closer_sales::gate::Stop;

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
