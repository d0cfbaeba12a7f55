//! The delivery worker's figures, registered in the server's `prometheus-client` registry
//! (`/metrics`): deliveries by outcome, retries, dead letters, and each endpoint's lag.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    tenant: String,
    endpoint: String,
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Non-2xx, timeout or refused: tried again later.
    Failed,
    /// Failed after the last attempt: dead-lettered.
    Dead,
    /// 410 Gone: the endpoint is disabled.
    Gone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
            Outcome::Gone => "gone",
        }
    }
}

/// Cheap to clone: every clone counts into the same figures.
#[derive(Clone, Default)]
pub struct Metrics {
    attempts: Family<OutcomeLabel, Counter>,
    retries: Counter,
    dead_letters: Counter,
    lag: Family<EndpointLabel, Gauge>,
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "closer_webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, failed, dead, gone)",
            self.attempts.clone(),
        );
        r.register(
            "closer_webhook_retries",
            "Webhook delivery attempts after the first",
            self.retries.clone(),
        );
        r.register(
            "closer_webhook_dead_letters",
            "Webhook deliveries dead-lettered after the last retry",
            self.dead_letters.clone(),
        );
        r.register(
            "closer_webhook_lag_events",
            "Per endpoint: the newest event cursor minus the cursor delivered through",
            self.lag.clone(),
        );
    }

    pub fn attempt(&self, outcome: Outcome, retry: bool) {
        self.attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        if retry {
            self.retries.inc();
        }
        if outcome == Outcome::Dead {
            self.dead_letters.inc();
        }
    }

    /// How many attempts came to `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .get()
    }

    pub(crate) fn set_lag(&self, tenant: &str, endpoint: &str, lag: u64) {
        self.lag
            .get_or_create(&EndpointLabel {
                tenant: tenant.to_string(),
                endpoint: endpoint.to_string(),
            })
            .set(lag as i64);
    }

    pub(crate) fn clear_lag(&self) {
        self.lag.clear();
    }
}
