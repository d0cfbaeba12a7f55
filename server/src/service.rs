//! The gRPC services: `closer.v1.Assistant` and `closer.v1.Knowledge`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use closer_proto::v1 as pb;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::answer::{run_turn, to_pb_intent, AnswerConfig, Visitor};
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
        Arc::new(Self { config, engine: OnceLock::new(), pending_replies: pending })
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
                format!("{n} characters, more than the limit of {}", self.config.max_message_chars),
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

type ConverseStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::ConverseResponse, Status>> + Send>>;

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
            return Err(Error::invalid("start.conversation_id", "must be 1 to 128 characters").into());
        }
        let tenant = engine.tenant(&start.tenant)?;
        let visitor = Visitor::from_proto(start.visitor.as_ref());
        tracing::info!(tenant = %start.tenant, conversation = %start.conversation_id, domain = ?visitor.domain, "conversation started");

        let (tx, rx) = mpsc::channel(self.state.config.stream_buffer.max(1));
        let state = self.state.clone();
        tokio::spawn(async move {
            let cfg = AnswerConfig { max_new_tokens: state.config.max_new_tokens };
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
                        let _ = tx.send(Err(Error::invalid("start", "sent twice").into())).await;
                        break;
                    }
                    None => {
                        let _ = tx.send(Err(Error::invalid("event", "empty client event").into())).await;
                        break;
                    }
                };
                if let Err(e) = state.check_text("message.text", &text) {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                turn += 1;
                if turn > state.config.max_turns {
                    let e = Error::Overloaded(format!("conversation has more than {} turns", state.config.max_turns));
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
                        if tx.send(Ok(pb::ConverseResponse { event: Some(ev) })).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let (engine, tenant, visitor, tx2, cfg2) =
                    (engine.clone(), tenant.clone(), visitor.clone(), tx.clone(), cfg.clone());
                let live = account_live_pending;
                account_live_pending = false;
                let result = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    run_turn(&engine, &tenant, &cfg2, &visitor, turn, &text, live, &mut |event| {
                        match tx2.blocking_send(Ok(pb::ConverseResponse { event: Some(event) })) {
                            Ok(()) => std::ops::ControlFlow::Continue(()),
                            Err(_) => std::ops::ControlFlow::Break(()),
                        }
                    })
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
                    if tx.send(Ok(pb::ConverseResponse { event: Some(ev) })).await.is_err() {
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
        let intents = blocking(move || {
            closer_models::IntentClassifier::classify(&tenant.classifier, &text)
                .map(|v| v.iter().map(|i| to_pb_intent(&text, i)).collect::<Vec<_>>())
        })
        .await?;
        Ok(Response::new(pb::ClassifyResponse { intents }))
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
        let limit = if req.limit == 0 { 5 } else { req.limit as usize };
        let tenant = engine.tenant(&req.tenant)?;
        let hits = blocking(move || tenant.kb.search(&req.query, limit, req.intent.as_deref())).await?;
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
