//! The reply path's figures (`GET /metrics`) and the client's deadline.
//!
//! [`Metrics`] counts what the load tests check: permits in use (and the most ever in use),
//! refusals, dropped and timed-out generations and how long each took to stop; `GET /metrics`
//! serves them in the Prometheus text format.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use closer_sales::gate::Stop;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Latency samples (milliseconds), the most recent `CAP` kept.
#[derive(Default)]
struct Samples {
    values: VecDeque<f64>,
}

impl Samples {
    const CAP: usize = 20_000;

    fn push(&mut self, ms: f64) {
        if self.values.len() == Self::CAP {
            self.values.pop_front();
        }
        self.values.push_back(ms);
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Quantile {
    quantile: &'static str,
}

/// The reply path's figures, registered once in a `prometheus-client` registry (one per
/// server, so several servers in one process do not share counters).
pub struct Metrics {
    registry: Registry,
    in_flight: Gauge,
    /// Most reply permits ever in use at once.
    max_in_flight: Gauge,
    limit: Gauge,
    waiting: Gauge,
    pub refused: Counter,
    pub turns: Counter,
    /// Turns of a team pressing past its quota, generated in the background.
    pub background: Counter,
    deadline_exceeded: Counter,
    dropped: Counter,
    /// Time from the client's stream closing to the turn's work stopping, by quantile; filled
    /// from `samples` when scraped.
    stop_after_drop: Family<Quantile, Gauge<f64, AtomicU64>>,
    samples: Mutex<Samples>,
    /// Turns admitted and refused, by tenant.
    tenant_turns: Family<TenantLabel, Counter>,
    tenant_refused: Family<TenantLabel, Counter>,
    /// The webhook delivery worker's figures (registered here, counted by the worker).
    pub webhooks: closer_webhooks::metrics::Metrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            in_flight: Gauge::default(),
            max_in_flight: Gauge::default(),
            limit: Gauge::default(),
            waiting: Gauge::default(),
            refused: Counter::default(),
            turns: Counter::default(),
            background: Counter::default(),
            deadline_exceeded: Counter::default(),
            dropped: Counter::default(),
            stop_after_drop: Family::default(),
            samples: Mutex::default(),
            tenant_turns: Family::default(),
            tenant_refused: Family::default(),
            webhooks: Default::default(),
            registry: Registry::default(),
        };
        let gauges = [
            (
                "closer_replies_in_flight",
                "Reply permits in use (generating or queued for the generator)",
                &m.in_flight,
            ),
            (
                "closer_replies_in_flight_max",
                "Most reply permits ever in use at once",
                &m.max_in_flight,
            ),
            ("closer_replies_limit", "--max-pending-replies", &m.limit),
            (
                "closer_generator_waiting",
                "Replies queued for a generator slot",
                &m.waiting,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
        let counters = [
            ("closer_turns", "Turns admitted", &m.turns),
            ("closer_turns_background", "Turns admitted while their team pressed past its quota, generated after other teams' work", &m.background),
            ("closer_replies_refused", "Turns refused with RESOURCE_EXHAUSTED", &m.refused),
            ("closer_turns_dropped", "Turns stopped because the client went away", &m.dropped),
            ("closer_turns_deadline_exceeded", "Turns stopped by the client's deadline", &m.deadline_exceeded),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "closer_stop_after_drop_ms",
            "Time from a client dropping its stream to the turn's work stopping (quantiles of the last 20,000)",
            m.stop_after_drop.clone(),
        );
        for (name, help, f) in TENANT_COUNTERS {
            registry.register(name, help, f(&m).clone());
        }
        m.webhooks.register(&mut registry);
        Metrics { registry, ..m }
    }
}

type TenantFamily = fn(&Metrics) -> &Family<TenantLabel, Counter>;

/// The per-tenant series: name, help, which family.
const TENANT_COUNTERS: [(&str, &str, TenantFamily); 2] = [
    ("closer_tenant_turns", "Turns admitted, by tenant", |m| {
        &m.tenant_turns
    }),
    (
        "closer_tenant_replies_refused",
        "Turns refused with RESOURCE_EXHAUSTED, by tenant",
        |m| &m.tenant_refused,
    ),
];

impl Metrics {
    pub fn record_stop(&self, why: Stop, ms: f64) {
        match why {
            Stop::Gone => {
                self.dropped.inc();
                self.samples.lock().push(ms);
            }
            Stop::Deadline => {
                self.deadline_exceeded.inc();
            }
        }
    }

    /// Counts a turn of `tenant`: admitted, or refused.
    pub fn tenant_turn(&self, tenant: &str, admitted: bool) {
        let f = if admitted {
            &self.tenant_turns
        } else {
            &self.tenant_refused
        };
        f.get_or_create(&TenantLabel {
            tenant: tenant.to_string(),
        })
        .inc();
    }

    /// One tenant's series alone (what a tenant's admin key reads on `/metrics`).
    pub fn tenant_text(&self, tenant: &str) -> String {
        let mut r = Registry::default();
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        for (name, help, f) in TENANT_COUNTERS {
            let one: Family<TenantLabel, Counter> = Family::default();
            one.get_or_create(&label)
                .inc_by(f(self).get_or_create(&label).get());
            r.register(name, help, one);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .expect("writing to a String cannot fail");
        out
    }

    /// Notes `in_use` reply permits, keeping the most ever seen.
    pub fn saw_in_flight(&self, in_use: usize) {
        self.max_in_flight
            .inner()
            .fetch_max(i64::try_from(in_use).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

/// The figures `GET /metrics` serves.
pub struct Snapshot {
    pub in_flight: usize,
    pub limit: usize,
    pub waiting: usize,
}

/// The content type of [`prometheus`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The reply path's figures in the OpenMetrics text format (which Prometheus reads).
pub fn prometheus(m: &Metrics, s: &Snapshot) -> String {
    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    m.in_flight.set(n(s.in_flight));
    m.limit.set(n(s.limit));
    m.waiting.set(n(s.waiting));
    let (p50, p99, max) = m.samples.lock().quantiles();
    for (q, v) in [("0.5", p50), ("0.99", p99), ("1", max)] {
        m.stop_after_drop
            .get_or_create(&Quantile { quantile: q })
            .set(v);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry)
        .expect("writing to a String cannot fail");
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
        use closer_webhooks::metrics::Outcome;
        m.webhooks.attempt(Outcome::Failed, false);
        m.webhooks.attempt(Outcome::Dead, true);
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
        assert!(text.contains("closer_stop_after_drop_ms{quantile=\"1\"} 4.0\n"));
        assert!(text.contains("# TYPE closer_turns_dropped counter\n"));
        assert!(text.contains("closer_webhook_attempts_total{outcome=\"dead\"} 1\n"));
        assert!(text.contains("closer_webhook_retries_total 1\n"));
        assert!(text.contains("closer_webhook_dead_letters_total 1\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
