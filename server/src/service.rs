//! The gRPC services: `closer.v1.Assistant` and `closer.v1.Knowledge`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use closer_proto::v1 as pb;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::answer::{run_turn, to_pb_intent, to_pb_slots, AnswerConfig, Visitor};
use crate::config::ServeConfig;
use crate::error::{Error, Result};
use crate::state::Engine;

/// Shared by every service; `engine` is set once models and tenants are loaded.
pub struct AppState {
    pub config: ServeConfig,
    pub engine: OnceLock<Arc<Engine>>,
    pending_replies: Arc<Semaphore>,
}

impl AppState {
    pub fn new(config: ServeConfig) -> Arc<Self> {
        let pending = Arc::new(Semaphore::new(config.max_pending_replies.max(1)));
        Arc::new(Self {
            config,
            engine: OnceLock::new(),
            pending_replies: pending,
        })
    }

    fn engine(&self) -> Result<Arc<Engine>> {
        self.engine.get().cloned().ok_or(Error::NotReady)
    }

    fn check_text(&self, field: &str, text: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        let n = text.chars().count();
        if n > self.config.max_message_chars {
            return Err(Error::invalid(
                field,
                format!(
                    "{n} characters, more than the limit of {}",
                    self.config.max_message_chars
                ),
            ));
        }
        Ok(())
    }
}

fn check_tenant_field(tenant: &str) -> Result<()> {
    if tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(tenant).map_err(|m| Error::invalid("tenant", m))
}

/// Runs model or index work off the async threads.
async fn blocking<T, E>(f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
        .map_err(Into::into)
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
        let engine = self.state.engine()?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Error::invalid("start", "the stream ended before a start event"))?;
        let start = match first.event {
            Some(pb::converse_request::Event::Start(s)) => s,
            _ => return Err(Error::invalid("start", "the first event must be `start`").into()),
        };
        check_tenant_field(&start.tenant)?;
        if start.conversation_id.is_empty() || start.conversation_id.chars().count() > 128 {
            return Err(
                Error::invalid("start.conversation_id", "must be 1 to 128 characters").into(),
            );
        }
        let tenant = engine.tenant(&start.tenant)?;
        let visitor = Visitor::from_proto(start.visitor.as_ref());
        tracing::info!(tenant = %start.tenant, conversation = %start.conversation_id, domain = ?visitor.domain, "conversation started");

        let (tx, rx) = mpsc::channel(self.state.config.stream_buffer.max(1));
        let state = self.state.clone();
        tokio::spawn(async move {
            let cfg = AnswerConfig {
                max_new_tokens: state.config.max_new_tokens,
            };
            let mut turn: u32 = 0;
            let mut account_live_pending = true;
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "client stream ended");
                        break;
                    }
                };
                let text = match msg.event {
                    Some(pb::converse_request::Event::Message(m)) => m.text,
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
                if let Err(e) = state.check_text("message.text", &text) {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                turn += 1;
                if turn > state.config.max_turns {
                    let e = Error::Overloaded(format!(
                        "conversation has more than {} turns",
                        state.config.max_turns
                    ));
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                // Admission: fail fast rather than queue without bound behind the generator.
                let permit = match state.pending_replies.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        let ev = pb::converse_response::Event::Error(pb::ConverseError {
                            turn,
                            code: "RESOURCE_EXHAUSTED".into(),
                            message: "too many replies in progress; retry in a few seconds".into(),
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
                let (engine, tenant, visitor, tx2, cfg2) = (
                    engine.clone(),
                    tenant.clone(),
                    visitor.clone(),
                    tx.clone(),
                    cfg.clone(),
                );
                let live = account_live_pending;
                account_live_pending = false;
                let result = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    run_turn(
                        &engine,
                        &tenant,
                        &cfg2,
                        &visitor,
                        turn,
                        &text,
                        live,
                        &mut |event| match tx2
                            .blocking_send(Ok(pb::ConverseResponse { event: Some(event) }))
                        {
                            Ok(()) => std::ops::ControlFlow::Continue(()),
                            Err(_) => std::ops::ControlFlow::Break(()),
                        },
                    )
                })
                .await;
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(join) => Some(Error::Internal(format!("turn task failed: {join}"))),
                };
                if let Some(e) = failure {
                    tracing::error!(kind = e.kind(), error = %e, "turn failed");
                    let ev = pb::converse_response::Event::Error(pb::ConverseError {
                        turn,
                        code: format!("{:?}", e.code()).to_uppercase(),
                        message: e.to_string(),
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
        self.state.check_text("text", &req.text)?;
        let tenant = engine.tenant(&req.tenant)?;
        let text = req.text;
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
                fact: Some(pb::Fact {
                    id: h.fact.id,
                    kind: h.fact.kind,
                    question: h.fact.question,
                    answer: h.fact.answer,
                    tags: h.fact.tags,
                    intents: h.fact.intents,
                }),
                score: h.score,
                bm25: h.bm25,
                dense: h.dense,
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { facts }))
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
                IntentSet::from_yaml(&req.content)
            }
            Ok(pb::IntentFormat::Jsonl) => IntentSet::from_jsonl(&req.content),
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
        let embedder = engine.models.embedder.clone();
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
                    TrainProgress::Training { epoch, epochs } => {
                        let bucket = epoch * 20 / epochs.max(1);
                        if last == (1, bucket) && epoch != epochs {
                            None
                        } else {
                            last = (1, bucket);
                            Some(Event::Training(pb::Step {
                                done: epoch as u32,
                                total: epochs as u32,
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
