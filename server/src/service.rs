//! The gRPC services: `closer.v1.Assistant` and `closer.v1.Knowledge`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use closer_proto::v1 as pb;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::answer::{run_turn, to_pb_intent, to_pb_slots, AnswerConfig, TurnControl, Visitor};
use crate::sched::Stop;

/// While shutting down, how long an idle stream waits for a message already on its way.
const DRAIN_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a refused visitor's client should wait before retrying (`ConverseError.retry_after_ms`).
pub const RETRY_AFTER_MS: u32 = 1000;

/// A gRPC code's canonical name, e.g. `RESOURCE_EXHAUSTED`.
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// tonic refuses a request message over the size limit with OUT_OF_RANGE; callers expect
/// RESOURCE_EXHAUSTED for that.
pub(crate) fn oversize(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "request message too large: {} (--max-request-bytes)",
            status.message().trim_start_matches("Error, ")
        ))
    } else {
        status
    }
}
use crate::config::ServeConfig;
use crate::error::{Error, Result};
use crate::state::Engine;

/// A team that was refused a turn this recently is pressing past its quota: the turns it does
/// get generate in the background (after every other team's forward passes).
pub const PRESSING: Duration = Duration::from_secs(10);

struct TenantQuota {
    permits: Arc<Semaphore>,
    refused_at: Option<Instant>,
}

/// Shared by every service; `engine` is set once models and tenants are loaded.
pub struct AppState {
    pub config: ServeConfig,
    pub engine: OnceLock<Arc<Engine>>,
    pending_replies: Arc<Semaphore>,
    /// Per tenant: at most `tenant_max_pending_replies` of the permits above, and when the
    /// tenant was last refused one.
    tenant_replies: std::sync::Mutex<std::collections::HashMap<String, TenantQuota>>,
    /// The generator's slots, shared round-robin by tenant.
    pub gate: crate::sched::FairGate,
    pub metrics: crate::sched::Metrics,
    /// True once the server is shutting down: idle streams end, new calls get UNAVAILABLE.
    pub draining: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(config: ServeConfig) -> Arc<Self> {
        let pending = Arc::new(Semaphore::new(config.max_pending_replies.max(1)));
        Arc::new(Self {
            engine: OnceLock::new(),
            pending_replies: pending,
            tenant_replies: Default::default(),
            gate: crate::sched::FairGate::new(config.generator_slots),
            metrics: Default::default(),
            draining: tokio::sync::watch::channel(false).0,
            config,
        })
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The reply path's figures now.
    pub fn snapshot(&self) -> crate::sched::Snapshot {
        let limit = self.config.max_pending_replies.max(1);
        crate::sched::Snapshot {
            in_flight: limit - self.pending_replies.available_permits(),
            limit,
            waiting: self.gate.waiting(),
        }
    }

    /// A reply permit for `tenant`: its own quota first, then the server's; `Err` says which is
    /// exhausted.
    fn admit(
        &self,
        tenant: &str,
    ) -> std::result::Result<
        (
            tokio::sync::OwnedSemaphorePermit,
            tokio::sync::OwnedSemaphorePermit,
        ),
        &'static str,
    > {
        let own = {
            let mut m = self
                .tenant_replies
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let q = m.entry(tenant.to_string()).or_insert_with(|| TenantQuota {
                permits: Arc::new(Semaphore::new(
                    self.config.tenant_max_pending_replies.max(1),
                )),
                refused_at: None,
            });
            let own = q.permits.clone().try_acquire_owned();
            if own.is_err() {
                q.refused_at = Some(Instant::now());
            }
            own
        };
        let refused = |why| {
            self.metrics.refused.fetch_add(1, Ordering::Relaxed);
            why
        };
        let own = own.map_err(|_| {
            refused("this team has too many replies in progress; retry in a few seconds")
        })?;
        let global = self
            .pending_replies
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused("too many replies in progress; retry in a few seconds"))?;
        let in_use =
            self.config.max_pending_replies.max(1) - self.pending_replies.available_permits();
        self.metrics
            .max_in_flight
            .fetch_max(in_use, Ordering::Relaxed);
        self.metrics.turns.fetch_add(1, Ordering::Relaxed);
        Ok((own, global))
    }

    /// Whether `tenant` was refused a turn by its own quota within [`PRESSING`].
    pub fn pressing(&self, tenant: &str) -> bool {
        let m = self
            .tenant_replies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.get(tenant)
            .and_then(|q| q.refused_at)
            .is_some_and(|at| at.elapsed() < PRESSING)
    }

    pub(crate) fn engine(&self) -> Result<Arc<Engine>> {
        self.engine.get().cloned().ok_or(Error::NotReady)
    }

    fn check_text(&self, field: &str, text: &str) -> Result<()> {
        check_text(self.config.max_message_chars, field, text)
    }
}

/// A visitor's text: not blank, at most `max_chars` characters (after invisible characters are
/// stripped, which callers do first).
pub fn check_text(max_chars: usize, field: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let n = text.chars().count();
    if n > max_chars {
        return Err(Error::invalid(
            field,
            format!("{n} characters, more than the limit of {max_chars}"),
        ));
    }
    Ok(())
}

/// The checks on a conversation's `start` event that need no state: the tenant id's form and
/// the conversation id's length.
pub fn check_start(start: &pb::Start) -> Result<()> {
    if start.tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(&start.tenant).map_err(|m| Error::invalid("tenant", m))?;
    if start.conversation_id.is_empty() || start.conversation_id.chars().count() > 128 {
        return Err(Error::invalid(
            "start.conversation_id",
            "must be 1 to 128 characters",
        ));
    }
    Ok(())
}

pub(crate) fn check_tenant_field(tenant: &str) -> Result<()> {
    if tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(tenant).map_err(|m| Error::invalid("tenant", m))?;
    // With keys required, the caller's key must belong to this tenant.
    crate::auth::check_tenant(tenant)
}

/// Runs model or index work off the async threads.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
        .map_err(Into::into)
}

/// Rep events of a conversation after `cursor`, as stream events; updates who has it.
async fn relay_rep_events(
    engine: &Arc<Engine>,
    conv: &Arc<std::sync::Mutex<crate::sales::Conversation>>,
    cursor: &mut u64,
) -> Result<Vec<pb::converse_response::Event>> {
    use pb::converse_response::Event as E;
    let (tenant, id) = {
        let c = conv.lock().unwrap_or_else(|p| p.into_inner());
        (c.tenant.clone(), c.id.clone())
    };
    let f = closer_store::EventFilter {
        tenant,
        kinds: vec!["rep_joined".into(), "rep_message".into(), "rep_left".into()],
        rep_id: None,
        team: None,
        conversation_id: Some(id),
    };
    let (e, after) = (engine.clone(), *cursor);
    let events = blocking(move || e.store.events_after(after, &f, 1000)).await?;
    let mut out = vec![];
    let mut c = conv.lock().unwrap_or_else(|p| p.into_inner());
    for ev in events {
        *cursor = ev.cursor;
        let p = &ev.event.payload;
        let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        match ev.event.kind.as_str() {
            "rep_joined" => {
                c.taken_over = Some(s("rep_id"));
                out.push(E::RepJoined(pb::RepJoined {
                    rep_id: s("rep_id"),
                    rep_name: s("rep_name"),
                    text: s("text"),
                }));
            }
            "rep_message" => out.push(E::RepMessage(pb::RepMessage {
                rep_id: s("rep_id"),
                rep_name: s("rep_name"),
                text: s("text"),
                at_ms: ev.at_ms,
            })),
            "rep_left" => {
                c.taken_over = None;
                out.push(E::RepLeft(pb::RepLeft {
                    rep_id: s("rep_id"),
                }));
            }
            _ => {}
        }
    }
    Ok(out)
}

pub struct AssistantService {
    pub state: Arc<AppState>,
}

type ConverseStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::ConverseResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::assistant_server::Assistant for AssistantService {
    type ConverseStream = ConverseStream;

    async fn converse(
        &self,
        request: Request<Streaming<pb::ConverseRequest>>,
    ) -> std::result::Result<Response<Self::ConverseStream>, Status> {
        if self.state.is_draining() {
            return Err(Error::Draining.into());
        }
        let engine = self.state.engine()?;
        // tonic's timeout bounds only the call's first response; the stream checks this itself.
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::sched::parse_grpc_timeout)
            .map(|d| Instant::now() + d);
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await
            .map_err(oversize)?
            .ok_or_else(|| Error::invalid("start", "the stream ended before a start event"))?;
        let start = match first.event {
            Some(pb::converse_request::Event::Start(s)) => s,
            _ => return Err(Error::invalid("start", "the first event must be `start`").into()),
        };
        check_start(&start)?;
        check_tenant_field(&start.tenant)?;
        let tenant = engine.tenant(&start.tenant)?;
        let visitor = Visitor::from_proto(start.visitor.as_ref());
        tracing::info!(tenant = %start.tenant, conversation = %start.conversation_id, domain = ?visitor.domain, "conversation started");

        // A conversation that continues (a reconnect, another replica) picks up its state.
        let conv = {
            let (engine, tenant, visitor, id) = (
                engine.clone(),
                tenant.clone(),
                visitor.clone(),
                start.conversation_id.clone(),
            );
            blocking(move || {
                crate::sales::Conversation::resume(&*engine.store, &tenant, &id, &visitor)
            })
            .await?
        };
        let conv = Arc::new(std::sync::Mutex::new(conv));
        let (tx, rx) = mpsc::channel(self.state.config.stream_buffer.max(1));
        let state = self.state.clone();
        tokio::spawn(async move {
            let cfg = AnswerConfig {
                max_new_tokens: state.config.max_new_tokens,
            };
            let mut turn: u32 = conv.lock().map(|c| c.turns).unwrap_or(0);
            // Rep events for this conversation (take-over, messages) come from the outbox.
            let mut wake = engine.bus.watch();
            let mut rep_cursor = {
                let e = engine.clone();
                blocking(move || e.store.last_cursor()).await.unwrap_or(0)
            };
            let mut drain = state.draining.subscribe();
            let expiry = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expiry);
            loop {
                let next = if *drain.borrow_and_update() {
                    // Shutting down, and no turn is in progress: a message already on its way
                    // is still answered; otherwise the stream ends cleanly.
                    match tokio::time::timeout(DRAIN_LINGER, inbound.message()).await {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        m = inbound.message() => m,
                        _ = drain.changed() => continue,
                        _ = &mut expiry => {
                            state.metrics.record_stop(Stop::Deadline, 0.0);
                            let _ = tx.send(Err(Error::Stopped(Stop::Deadline).into())).await;
                            break;
                        }
                        _ = wake.changed() => {
                            match relay_rep_events(&engine, &conv, &mut rep_cursor).await {
                                Ok(events) => {
                                    for ev in events {
                                        if tx.send(Ok(pb::ConverseResponse { event: Some(ev) })).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                Err(e) => tracing::warn!(error = %e, "reading rep events failed"),
                            }
                            continue;
                        }
                    }
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "client stream ended");
                        if status.code() == tonic::Code::OutOfRange {
                            let _ = tx.send(Err(oversize(status))).await;
                        }
                        break;
                    }
                };
                let text = match msg.event {
                    Some(pb::converse_request::Event::Message(m)) => m.text,
                    Some(pb::converse_request::Event::ChooseSlot(c)) => {
                        if !matches!(c.slot_id.as_str(), "1" | "2" | "3") {
                            let _ = tx
                                .send(Err(Error::invalid(
                                    "choose_slot.slot_id",
                                    "the id of a slot from the latest meeting_proposed",
                                )
                                .into()))
                                .await;
                            break;
                        }
                        c.slot_id
                    }
                    Some(pb::converse_request::Event::Start(_)) => {
                        let _ = tx
                            .send(Err(Error::invalid("start", "sent twice").into()))
                            .await;
                        break;
                    }
                    None => {
                        let _ = tx
                            .send(Err(Error::invalid("event", "empty client event").into()))
                            .await;
                        break;
                    }
                };
                // Invisible characters (tags, bidi controls, zero-width) never reach a model.
                let text = closer_kb::visible(&text).into_owned();
                if let Err(e) = state.check_text("message.text", &text) {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                turn += 1;
                if turn > state.config.max_turns {
                    let e = Error::Overloaded(format!(
                        "message: the conversation has more than {} turns (--max-turns); start a new one",
                        state.config.max_turns
                    ));
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                // Admission: fail fast rather than queue without bound behind the generator.
                let permit = match state.admit(&tenant.id) {
                    Ok(p) => p,
                    Err(why) => {
                        let ev = pb::converse_response::Event::Error(pb::ConverseError {
                            turn,
                            code: "RESOURCE_EXHAUSTED".into(),
                            message: why.into(),
                            retry_after_ms: RETRY_AFTER_MS,
                        });
                        if tx
                            .send(Ok(pb::ConverseResponse { event: Some(ev) }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        continue;
                    }
                };
                let (engine, tenant, visitor, tx2, cfg2, conv2) = (
                    engine.clone(),
                    tenant.clone(),
                    visitor.clone(),
                    tx.clone(),
                    cfg.clone(),
                    conv.clone(),
                );
                // When the client's stream closes, note the time: the turn must stop within one
                // token of it (measured in `/metrics`).
                let closed_at = Arc::new(OnceLock::<Instant>::new());
                let watcher = {
                    let (tx, closed_at) = (tx.clone(), closed_at.clone());
                    tokio::spawn(async move {
                        tx.closed().await;
                        let _ = closed_at.set(Instant::now());
                    })
                };
                let background = state.pressing(&tenant.id);
                if background {
                    state.metrics.background.fetch_add(1, Ordering::Relaxed);
                }
                let state2 = state.clone();
                let result = tokio::task::spawn_blocking(move || {
                    // Given back before the final event is sent: a client that has the whole
                    // reply may ask again at once without meeting its own turn's permit.
                    let mut permit = Some(permit);
                    let mut conv = conv2.lock().unwrap_or_else(|p| p.into_inner());
                    let stop = || {
                        if tx2.is_closed() {
                            Some(Stop::Gone)
                        } else if crate::sched::past(deadline) {
                            Some(Stop::Deadline)
                        } else {
                            None
                        }
                    };
                    let ctl = TurnControl {
                        gate: &state2.gate,
                        stop: &stop,
                        background,
                    };
                    run_turn(
                        &engine,
                        &tenant,
                        &cfg2,
                        &ctl,
                        &visitor,
                        &mut conv,
                        turn,
                        &text,
                        &mut |event| {
                            if matches!(event, pb::converse_response::Event::Final(_)) {
                                permit.take();
                            }
                            match tx2.blocking_send(Ok(pb::ConverseResponse { event: Some(event) }))
                            {
                                Ok(()) => std::ops::ControlFlow::Continue(()),
                                Err(_) => std::ops::ControlFlow::Break(()),
                            }
                        },
                    )
                })
                .await;
                watcher.abort();
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(join) => Some(Error::Internal(format!("turn task failed: {join}"))),
                };
                match failure {
                    Some(Error::Stopped(Stop::Gone)) => {
                        let ms = closed_at
                            .get()
                            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                        state.metrics.record_stop(Stop::Gone, ms);
                        tracing::debug!(turn, ms, "client left; turn stopped");
                        break;
                    }
                    Some(e @ Error::Stopped(Stop::Deadline)) => {
                        state.metrics.record_stop(Stop::Deadline, 0.0);
                        tracing::info!(turn, "deadline passed; turn stopped");
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                    _ => {}
                }
                if let Some(e) = failure {
                    tracing::error!(kind = e.kind(), error = %e, "turn failed");
                    let ev = pb::converse_response::Event::Error(pb::ConverseError {
                        turn,
                        code: code_name(e.code()),
                        message: e.to_string(),
                        retry_after_ms: 0,
                    });
                    if tx
                        .send(Ok(pb::ConverseResponse { event: Some(ev) }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> std::result::Result<Response<pb::ClassifyResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let text = closer_kb::visible(&req.text).into_owned();
        self.state.check_text("text", &text)?;
        let tenant = engine.tenant(&req.tenant)?;
        let (intents, slots) = blocking(move || {
            let model = tenant.intents();
            closer_models::IntentClassifier::classify(&model.classifier, &text).map(|v| {
                let intents = v.iter().map(|i| to_pb_intent(&text, i)).collect::<Vec<_>>();
                (intents, to_pb_slots(&crate::slots::extract(&text)))
            })
        })
        .await?;
        Ok(Response::new(pb::ClassifyResponse { intents, slots }))
    }
}

pub struct KnowledgeService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::knowledge_server::Knowledge for KnowledgeService {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> std::result::Result<Response<pb::SearchResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        self.state.check_text("query", &req.query)?;
        if req.limit > 50 {
            return Err(Error::invalid("limit", "must be 0 to 50").into());
        }
        let limit = if req.limit == 0 {
            5
        } else {
            req.limit as usize
        };
        let tenant = engine.tenant(&req.tenant)?;
        let hits =
            blocking(move || tenant.kb.search(&req.query, limit, req.intent.as_deref())).await?;
        let facts = hits
            .into_iter()
            .map(|h| pb::ScoredFact {
                fact: Some(pb_fact(h.fact)),
                score: h.score,
                bm25: h.bm25,
                dense: h.dense,
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { facts }))
    }

    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestChunk>>,
    ) -> std::result::Result<Response<pb::IngestSummary>, Status> {
        let started = std::time::Instant::now();
        let engine = self.state.engine()?;
        let mut inbound = request.into_inner();
        let mut tenant_id = String::new();
        // Files in arrival order, chunks concatenated.
        let mut files: Vec<(String, Vec<u8>)> = vec![];
        let mut total = 0usize;
        while let Some(chunk) = inbound.message().await? {
            if tenant_id.is_empty() {
                check_tenant_field(&chunk.tenant)?;
                tenant_id = chunk.tenant;
            } else if !chunk.tenant.is_empty() && chunk.tenant != tenant_id {
                return Err(Error::invalid("tenant", "changed within one ingest stream").into());
            }
            if chunk.file_name.trim().is_empty() || chunk.file_name.len() > 256 {
                return Err(Error::invalid("file_name", "must be 1 to 256 characters").into());
            }
            total += chunk.data.len();
            if total > MAX_INGEST_BYTES {
                return Err(Error::Overloaded(format!(
                    "more than {MAX_INGEST_BYTES} bytes in one ingest"
                ))
                .into());
            }
            match files.iter_mut().find(|(n, _)| *n == chunk.file_name) {
                Some((_, data)) => data.extend_from_slice(&chunk.data),
                None => files.push((chunk.file_name, chunk.data)),
            }
        }
        if tenant_id.is_empty() {
            return Err(Error::invalid("tenant", "no chunks were sent").into());
        }
        let tenant = engine.tenant(&tenant_id)?;
        let summary = blocking(move || -> Result<(closer_kb::BatchSummary, usize)> {
            let mut parsed = closer_kb::load::Files::default();
            for (name, data) in &files {
                parsed.add(name, data)?;
            }
            let n = parsed.files;
            let batch = closer_kb::Batch {
                facts: parsed.facts,
                accounts: parsed.accounts,
                reps: parsed.reps,
                delete_fact_ids: vec![],
            };
            Ok((tenant.kb.apply(batch)?, n))
        })
        .await?;
        let (s, files) = summary;
        tracing::info!(tenant = %tenant_id, files, facts = s.facts_upserted, accounts = s.accounts_upserted, reps = s.reps_upserted, "ingested");
        Ok(Response::new(pb::IngestSummary {
            files: files as u32,
            facts_upserted: s.facts_upserted as u32,
            accounts_upserted: s.accounts_upserted as u32,
            reps_upserted: s.reps_upserted as u32,
            facts_embedded: s.facts_embedded as u32,
            facts_pending_vectors: s.facts_pending as u32,
            took_ms: started.elapsed().as_millis() as u32,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> std::result::Result<Response<pb::DeleteResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        if req.fact_ids.is_empty() || req.fact_ids.len() > 10_000 {
            return Err(Error::invalid("fact_ids", "give 1 to 10000 ids").into());
        }
        let tenant = engine.tenant(&req.tenant)?;
        let s = blocking(move || {
            tenant.kb.apply(closer_kb::Batch {
                delete_fact_ids: req.fact_ids,
                ..Default::default()
            })
        })
        .await?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: s.facts_deleted as u32,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> std::result::Result<Response<pb::ListResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let kb = engine.tenant(&req.tenant)?.kb.snapshot();
        let mut out = pb::ListResponse::default();
        match pb::ListWhat::try_from(req.what) {
            Ok(pb::ListWhat::Unspecified | pb::ListWhat::Facts) => {
                let (a, b, next) = page(&req.page_token, req.page_size, kb.facts().len())?;
                out.facts = kb.facts()[a..b].iter().cloned().map(pb_fact).collect();
                out.total = kb.facts().len() as u32;
                out.next_page_token = next;
            }
            Ok(pb::ListWhat::Accounts) => {
                let all = kb.accounts();
                let (a, b, next) = page(&req.page_token, req.page_size, all.len())?;
                out.accounts = all[a..b]
                    .iter()
                    .map(|x| pb::Account {
                        domain: x.domain.clone(),
                        name: x.name.clone(),
                        owner_rep_id: x.owner_rep_id.clone(),
                        segment: x.segment.clone(),
                        employees: x.employees,
                        industry: x.industry.clone(),
                        country: x.country.clone(),
                        target: x.target,
                        open_opportunity: x.open_opportunity,
                    })
                    .collect();
                out.total = all.len() as u32;
                out.next_page_token = next;
            }
            Ok(pb::ListWhat::Reps) => {
                let all = kb.reps();
                let (a, b, next) = page(&req.page_token, req.page_size, all.len())?;
                out.reps = all[a..b]
                    .iter()
                    .map(|r| pb::Rep {
                        id: r.id.clone(),
                        name: r.name.clone(),
                        email: r.email.clone(),
                        team: r.team.clone(),
                        region: r.region.clone(),
                        languages: r.languages.clone(),
                        timezone: r.timezone.clone(),
                        working_hours: r.working_hours.clone(),
                        meeting_link: r.meeting_link.clone(),
                    })
                    .collect();
                out.total = all.len() as u32;
                out.next_page_token = next;
            }
            Err(_) => {
                return Err(Error::invalid("what", format!("unknown value {}", req.what)).into())
            }
        }
        Ok(Response::new(out))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> std::result::Result<Response<pb::ExportResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let kb = engine.tenant(&req.tenant)?.kb.snapshot();
        let facts = kb.facts();
        let content = match pb::ExportFormat::try_from(req.format) {
            Ok(pb::ExportFormat::Unspecified | pb::ExportFormat::Csv) => {
                closer_kb::formats::facts_to_csv(facts).map_err(Error::from)?
            }
            Ok(pb::ExportFormat::Jsonl) => closer_kb::formats::facts_to_jsonl(facts),
            Err(_) => {
                return Err(
                    Error::invalid("format", format!("unknown value {}", req.format)).into(),
                )
            }
        };
        Ok(Response::new(pb::ExportResponse {
            content,
            facts: facts.len() as u32,
        }))
    }
}

/// Largest intent set accepted by `Intents.Upload`.
pub const MAX_INTENT_SET_BYTES: usize = 4 << 20;

pub struct IntentsService {
    pub state: Arc<AppState>,
}

type ProgressStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::TrainingProgress, Status>> + Send>>;

fn done_of(r: &closer_models::intent::TrainReport) -> pb::TrainingDone {
    pb::TrainingDone {
        version: r.version.clone(),
        training_ms: r.training_ms.min(u64::from(u32::MAX)) as u32,
        holdout_accuracy: if r.holdout_accuracy.is_nan() {
            0.0
        } else {
            r.holdout_accuracy
        },
        oos_threshold: r.oos_threshold,
        temperature: r.temperature,
    }
}

#[tonic::async_trait]
impl pb::intents_server::Intents for IntentsService {
    type UploadStream = ProgressStream;

    async fn upload(
        &self,
        request: Request<pb::UploadIntentsRequest>,
    ) -> std::result::Result<Response<Self::UploadStream>, Status> {
        use closer_models::intent::{IntentSet, TrainProgress};
        use pb::training_progress::Event;
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        if req.content.len() > MAX_INTENT_SET_BYTES {
            return Err(Error::invalid(
                "content",
                format!(
                    "{} bytes, more than the limit of {MAX_INTENT_SET_BYTES}",
                    req.content.len()
                ),
            )
            .into());
        }
        let tenant = engine.tenant(&req.tenant)?;
        let parsed = match pb::IntentFormat::try_from(req.format) {
            Ok(pb::IntentFormat::Unspecified | pb::IntentFormat::Yaml) => {
                IntentSet::from_yaml(&closer_kb::visible(&req.content))
            }
            Ok(pb::IntentFormat::Jsonl) => IntentSet::from_jsonl(&closer_kb::visible(&req.content)),
            Err(_) => {
                return Err(
                    Error::invalid("format", format!("unknown value {}", req.format)).into(),
                )
            }
        };
        // A bad file fails the call before anything changes.
        let set = parsed.map_err(|e| {
            Error::invalid(
                "content",
                e.to_string()
                    .trim_start_matches("invalid intent set: ")
                    .to_string(),
            )
        })?;
        let (tx, rx) = mpsc::channel(64);
        let validated = pb::Validated {
            intents: set.intents.len() as u32,
            examples: set.intents.iter().map(|d| d.examples.len() as u32).sum(),
        };
        let _ = tx
            .send(Ok(pb::TrainingProgress {
                event: Some(Event::Validated(validated)),
            }))
            .await;
        tracing::info!(tenant = %req.tenant, intents = set.intents.len(), "intent set uploaded; retraining");
        let embedder = engine.models.intents();
        let cfg = engine.classifier_config.clone();
        tokio::task::spawn_blocking(move || {
            let mut last = (0u8, 0usize);
            let result = tenant.retrain(set, embedder, &cfg, &mut |p| {
                // Progress events: every embedding chunk, and about 20 training steps in all.
                let ev = match p {
                    TrainProgress::Embedding { done, total } => Some(Event::Embedding(pb::Step {
                        done: done as u32,
                        total: total as u32,
                    })),
                    TrainProgress::Training { step, steps } => {
                        let bucket = step * 20 / steps.max(1);
                        if last == (1, bucket) && step != steps {
                            None
                        } else {
                            last = (1, bucket);
                            Some(Event::Training(pb::Step {
                                done: step as u32,
                                total: steps as u32,
                            }))
                        }
                    }
                };
                if let Some(ev) = ev {
                    // A client that went away does not stop training: the upload was accepted.
                    let _ = tx.blocking_send(Ok(pb::TrainingProgress { event: Some(ev) }));
                }
            });
            let last_event = match result {
                Ok(report) => Ok(pb::TrainingProgress {
                    event: Some(Event::Done(done_of(&report))),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "retraining failed; the previous intent model keeps serving");
                    Err(Status::from(e))
                }
            };
            let _ = tx.blocking_send(last_event);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get(
        &self,
        request: Request<pb::GetIntentsRequest>,
    ) -> std::result::Result<Response<pb::GetIntentsResponse>, Status> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let model = engine.tenant(&req.tenant)?.intents();
        let intents = model
            .set
            .intents
            .iter()
            .map(|d| pb::IntentSummary {
                name: d.name.clone(),
                description: d.description.clone(),
                flags: d
                    .flags
                    .iter()
                    .map(|f| {
                        serde_json::to_value(f)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    })
                    .collect(),
                examples: d.examples.len() as u32,
            })
            .collect();
        Ok(Response::new(pb::GetIntentsResponse {
            content: model.set.to_yaml(),
            intents,
            model: Some(done_of(&model.classifier.trained().report)),
        }))
    }
}

/// Largest total upload accepted by one `Knowledge.Ingest` call.
pub const MAX_INGEST_BYTES: usize = 256 << 20;

fn pb_fact(f: closer_kb::Fact) -> pb::Fact {
    pb::Fact {
        id: f.id,
        kind: f.kind,
        question: f.question,
        answer: f.answer,
        tags: f.tags,
        intents: f.intents,
        valid_from: f.valid_from.unwrap_or_default(),
        valid_until: f.valid_until.unwrap_or_default(),
    }
}

/// Offset-based page tokens: the decimal offset of the next item.
pub(crate) fn page(token: &str, size: u32, total: usize) -> Result<(usize, usize, String)> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Error::invalid("page_token", "not a token from a previous response"))?
    };
    if size > 1000 {
        return Err(Error::invalid("page_size", "must be 0 to 1000"));
    }
    let size = if size == 0 { 100 } else { size as usize };
    let end = (start + size).min(total);
    let next = if end < total {
        end.to_string()
    } else {
        String::new()
    };
    Ok((start.min(total), end, next))
}
