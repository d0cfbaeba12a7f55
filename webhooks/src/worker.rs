//! The delivery worker: one tokio task started by `closer serve`. Each round it queues every
//! enabled endpoint's new events (`WebhookStore::scan_events`) and starts the due deliveries,
//! each in its own task, at most [`WorkerConfig::per_endpoint`] at once per endpoint (or what
//! the connector asks, [`Connector::in_flight`]), so a
//! slow or failing endpoint never delays another, and a conversation's later event waits for
//! its earlier one (the store's due query) while other conversations go on. It wakes on the
//! bus (new events), when a delivery ends, when the next retry falls due, and every
//! [`WorkerConfig::poll`].
//!
//! Connectors ([`crate::connector`]) ride on the same machinery: their endpoint rows are
//! scanned and their deliveries scheduled, held, retried and dead-lettered alike; only the
//! sending differs ([`Connector::deliver`] instead of the signed POST), and a connector's
//! answer marked [`Answer::dead`] (no retry can change it) is dead-lettered at once. A connector
//! row this process has no configuration for is left alone.
//!
//! An attempt is recorded before the request is sent (attempts + 1, and the time of the retry
//! that stands if it fails), and its result after: a process killed mid-delivery finds the row
//! pending at restart and sends it again with the same webhook id (at least once).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use closer_store::bus::Bus;
use closer_store::{
    now_ms, AttemptResult, Delivery, DeliveryStatus, Secret, Store, WebhookEndpoint,
};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::connector::{is_connector, Answer, Connector};
use crate::metrics::{Metrics, Outcome};
use crate::schedule::RetrySchedule;
use crate::{payload, secret, target};

/// Bytes of a receiver's answer kept with the delivery.
const EXCERPT_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `http://` and `https://` to loopback addresses (`--webhooks-allow-loopback`).
    pub allow_loopback: bool,
    pub schedule: RetrySchedule,
    /// A receiver has this long to answer 2xx (15 s).
    pub timeout: Duration,
    /// The longest the worker sleeps between rounds (1 s).
    pub poll: Duration,
    /// Deliveries in flight at once per endpoint.
    pub per_endpoint: usize,
    /// Delivered and dead deliveries are removed this long after their last attempt (hourly);
    /// `None` keeps them.
    pub retention: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            schedule: RetrySchedule::default(),
            timeout: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            per_endpoint: 8,
            retention: Some(Duration::from_secs(30 * 86_400)),
        }
    }
}

/// What every delivery task shares.
struct Shared {
    store: Arc<dyn Store>,
    config: WorkerConfig,
    metrics: Metrics,
    client: reqwest::Client,
    /// (endpoint, cursor) being sent now.
    in_flight: Mutex<HashSet<(String, u64)>>,
    /// A delivery ended: look again.
    done: Notify,
    /// The connectors this process runs, by endpoint id.
    connectors: HashMap<String, Arc<dyn Connector>>,
}

/// Starts the worker (webhooks and `connectors`); it stops when `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: WorkerConfig,
    metrics: Metrics,
    connectors: Vec<Arc<dyn Connector>>,
    stop: watch::Receiver<bool>,
) -> crate::Result<tokio::task::JoinHandle<()>> {
    let client = client(&config)?;
    let shared = Arc::new(Shared {
        store,
        config,
        metrics,
        client,
        in_flight: Mutex::default(),
        done: Notify::new(),
        connectors: connectors
            .into_iter()
            .map(|c| (c.id().to_string(), c))
            .collect(),
    });
    Ok(tokio::spawn(async move {
        register(&shared).await;
        run(shared, bus.watch_all(), stop).await
    }))
}

/// Makes sure every connector has its endpoint row (a new row reads events written from now
/// on; an existing one keeps its cursor and deliveries).
async fn register(shared: &Arc<Shared>) {
    for c in shared.connectors.values() {
        let row = WebhookEndpoint {
            id: c.id().to_string(),
            tenant: c.tenant().to_string(),
            url: c.url(),
            kinds: vec![],
            description: "connector".into(),
            secret: Secret::new(""),
            previous: None,
            created_ms: now_ms(),
            disabled: None,
            scan_cursor: 0,
            pending: 0,
            oldest_pending: None,
            dead: 0,
        };
        let s = shared.clone();
        match blocking(move || s.store.create_endpoint(&row)).await {
            Ok(_) => {
                tracing::info!(connector = %c.id(), tenant = %c.tenant(), "connector registered")
            }
            // Registered before: its cursor and deliveries stay; where it writes may have moved
            // (a changed `base_url`), which `closer sync status` shows.
            Err(crate::Error::Store(closer_store::Error::Conflict(_))) => {
                let (s, url) = (shared.clone(), c.url());
                let (tenant, id) = (c.tenant().to_string(), c.id().to_string());
                let moved = blocking(move || {
                    let stored = s.store.endpoint(&tenant, &id)?;
                    match stored {
                        Some(e) if e.url != url => {
                            s.store.set_endpoint_url(&tenant, &id, &url)?;
                            Ok(Some(e.url))
                        }
                        _ => Ok(None),
                    }
                })
                .await;
                match moved {
                    Ok(Some(before)) => tracing::info!(
                        connector = %c.id(), before = %before, now = %c.url(),
                        "connector now writes elsewhere"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(connector = %c.id(), error = %e, "connector row not read")
                    }
                }
            }
            Err(e) => tracing::error!(connector = %c.id(), error = %e, "connector not registered"),
        }
    }
}

/// The delivery client: no redirects, no system proxy, the timeout, the guarded resolver.
fn client(config: &WorkerConfig) -> crate::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .dns_resolver(Arc::new(target::GuardedResolver {
            allow_loopback: config.allow_loopback,
        }))
        .user_agent(concat!("closer-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| crate::Error::Internal(format!("webhook client: {e}")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> closer_store::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::Error::Internal(format!("store task: {e}")))?
        .map_err(crate::Error::from)
}

async fn run(shared: Arc<Shared>, mut wake: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
    let mut limits: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if pruned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            pruned_at = Some(std::time::Instant::now());
            prune(&shared).await;
        }
        if let Err(e) = round(&shared, &mut limits).await {
            tracing::warn!(error = %e, "webhook round failed");
        }
        let now = now_ms();
        let s = shared.clone();
        let next = blocking(move || s.store.next_due_ms(now))
            .await
            .ok()
            .flatten();
        let sleep = next
            .map(|t| Duration::from_millis((t - now).max(1) as u64))
            .unwrap_or(shared.config.poll)
            .min(shared.config.poll);
        tokio::select! {
            // The engine (and its bus) or the server is gone: nothing more to deliver for.
            r = wake.changed() => if r.is_err() { return },
            r = stop.changed() => if r.is_err() { return },
            _ = shared.done.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Removes finished deliveries older than the retention.
async fn prune(shared: &Arc<Shared>) {
    let Some(keep) = shared.config.retention else {
        return;
    };
    let before = now_ms() - keep.as_millis() as i64;
    let s = shared.clone();
    match blocking(move || s.store.prune_deliveries(before)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "webhook delivery retention"),
        Err(e) => tracing::warn!(error = %e, "webhook delivery retention failed"),
    }
}

/// Queues new events for every enabled endpoint and starts its due deliveries.
async fn round(
    shared: &Arc<Shared>,
    limits: &mut HashMap<String, Arc<Semaphore>>,
) -> crate::Result<()> {
    let s = shared.clone();
    let (endpoints, newest) =
        blocking(move || Ok((s.store.endpoints(None)?, s.store.last_cursor()?))).await?;
    shared.metrics.clear_lag();
    limits.retain(|id, _| endpoints.iter().any(|e| &e.id == id));
    let mine = |e: &WebhookEndpoint| !is_connector(e) || shared.connectors.contains_key(&e.id);
    for ep in endpoints
        .into_iter()
        .filter(|e| e.disabled.is_none() && mine(e))
    {
        loop {
            let (s, id) = (shared.clone(), ep.id.clone());
            let (_, reached_end) =
                blocking(move || s.store.scan_events(&id, 500, &payload::body)).await?;
            if reached_end {
                break;
            }
        }
        let through = ep
            .oldest_pending
            .map_or(ep.scan_cursor, |c| c.saturating_sub(1));
        shared
            .metrics
            .set_lag(&ep.tenant, &ep.id, newest.saturating_sub(through));
        let slots = shared
            .connectors
            .get(&ep.id)
            .and_then(|c| c.in_flight())
            .unwrap_or(shared.config.per_endpoint);
        let limit = limits
            .entry(ep.id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(slots.max(1))))
            .clone();
        dispatch(shared, ep, limit).await?;
    }
    Ok(())
}

/// Starts the endpoint's due deliveries that are not in flight, while it has free slots.
async fn dispatch(
    shared: &Arc<Shared>,
    ep: WebhookEndpoint,
    limit: Arc<Semaphore>,
) -> crate::Result<()> {
    if limit.available_permits() == 0 {
        return Ok(());
    }
    let (s, id) = (shared.clone(), ep.id.clone());
    let take = limit.available_permits().max(64);
    let due = blocking(move || s.store.due_deliveries(&id, now_ms(), take)).await?;
    let ep = Arc::new(ep);
    for d in due {
        let key = (ep.id.clone(), d.cursor);
        if shared.in_flight.lock().contains(&key) {
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            break;
        };
        shared.in_flight.lock().insert(key.clone());
        let (shared, ep) = (shared.clone(), ep.clone());
        tokio::spawn(async move {
            if let Err(e) = deliver(&shared, &ep, &d, permit).await {
                tracing::warn!(endpoint = %ep.id, cursor = d.cursor, error = %e, "webhook delivery failed to record");
            }
            shared.in_flight.lock().remove(&key);
            shared.done.notify_one();
        });
    }
    Ok(())
}

/// One attempt: recorded, sent, its result recorded.
async fn deliver(
    shared: &Arc<Shared>,
    ep: &WebhookEndpoint,
    d: &Delivery,
    _permit: OwnedSemaphorePermit,
) -> crate::Result<()> {
    let attempt = d.attempts + 1;
    let retry_in = shared
        .config
        .schedule
        .after(attempt, &mut rand::thread_rng());
    let started = now_ms();
    // The attempt holds the delivery until its answer is due (the timeout, and a second): no
    // replica, nor this worker after a restart, tries it again while it may be in flight. A
    // crash leaves it due at the later of that and the schedule's next retry.
    let connector = shared.connectors.get(&ep.id);
    let timeout = connector.map_or(shared.config.timeout, |c| c.hold());
    let lease = retry_in
        .unwrap_or_default()
        .max(timeout + Duration::from_secs(1));
    let retry_at = started + lease.as_millis() as i64;
    let (s, id, cursor) = (shared.clone(), ep.id.clone(), d.cursor);
    let Some(attempt) = blocking(move || s.store.begin_attempt(&id, cursor, retry_at)).await?
    else {
        return Ok(());
    };
    let answer = match connector {
        Some(c) => c.deliver(d).await,
        None => send(shared, ep, d, started).await,
    };
    let ok = answer.status.is_some_and(|s| (200..300).contains(&s));
    let gone = answer.status == Some(410) && connector.is_none();
    // The retry after this attempt, by the attempt number the store counted.
    let retry_in = shared
        .config
        .schedule
        .after(attempt, &mut rand::thread_rng());
    let (status, next, outcome) = if ok {
        (DeliveryStatus::Delivered, retry_at, Outcome::Delivered)
    } else if gone {
        (DeliveryStatus::Pending, retry_at, Outcome::Gone)
    } else if answer.dead && connector.is_some() {
        (DeliveryStatus::Dead, now_ms(), Outcome::Dead)
    } else if let Some(wait) = retry_in {
        let wait = answer.retry_after.map_or(wait, |r| r.max(wait));
        (
            DeliveryStatus::Pending,
            now_ms() + wait.as_millis() as i64,
            Outcome::Failed,
        )
    } else {
        (DeliveryStatus::Dead, now_ms(), Outcome::Dead)
    };
    if gone {
        let (s, id) = (shared.clone(), ep.id.clone());
        blocking(move || {
            s.store
                .disable_endpoint(&id, "the receiver answered 410 Gone", now_ms())
        })
        .await?;
        tracing::warn!(endpoint = %ep.id, tenant = %ep.tenant, "webhook endpoint disabled: 410 Gone");
    }
    let result = AttemptResult {
        status,
        next_attempt_ms: next,
        response_status: answer.status,
        response_excerpt: answer.excerpt,
    };
    tracing::debug!(endpoint = %ep.id, cursor = d.cursor, attempt, status = ?answer.status, outcome = outcome.as_str(), "webhook attempt");
    let (s, id, cursor) = (shared.clone(), ep.id.clone(), d.cursor);
    blocking(move || s.store.finish_attempt(&id, cursor, &result)).await?;
    shared.metrics.attempt(outcome, attempt > 1);
    Ok(())
}

/// The signed POST; the URL is checked again first (an IP literal here, a name by the
/// client's resolver).
async fn send(shared: &Shared, ep: &WebhookEndpoint, d: &Delivery, now: i64) -> Answer {
    let url = match target::check_form(&ep.url, shared.config.allow_loopback) {
        Ok(u) => u,
        Err(e) => return Answer::none(format!("refused: {e}")),
    };
    let id = payload::webhook_id(d.cursor);
    let timestamp = now / 1000;
    let signature = match secret::signature_header(ep, &id, timestamp, d.body.as_bytes(), now) {
        Ok(s) => s,
        Err(e) => return Answer::none(e.to_string()),
    };
    let sent = shared
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(d.body.clone())
        .send()
        .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Answer::none(format!("no answer within {:?}", shared.config.timeout))
        }
        Err(e) => return Answer::none(format!("{e}: {}", source_chain(&e))),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::schedule::retry_after(v, now_ms()));
    let mut body = Vec::new();
    while body.len() < EXCERPT_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(EXCERPT_BYTES);
    Answer {
        status: Some(status),
        excerpt: String::from_utf8_lossy(&body).into_owned(),
        retry_after,
        dead: false,
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = vec![];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
