//! `closer.v1.Assistant`: Converse (a visitor's conversation) and Classify.

#[allow(unused_imports)]
use super::prelude::*;

use std::sync::atomic::Ordering;

use closer_sales::gate::Stop;
use closer_sales::turn::{run_turn, TurnContext, TurnControl, TurnEvent, TurnSettings};

/// While shutting down, how long an idle stream waits for a message already on its way.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

async fn relay_rep_events(
    engine: &Arc<Engine>,
    conv: &Arc<std::sync::Mutex<closer_sales::conversation::Conversation>>,
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
            .and_then(crate::metrics::parse_grpc_timeout)
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
        let tenant = engine.tenant(&start.tenant).api()?;
        let visitor = visitor_from_pb(start.visitor.as_ref());
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
                closer_sales::conversation::Conversation::resume(
                    &*engine.store,
                    &tenant,
                    &id,
                    &visitor,
                )
            })
            .await?
        };
        let conv = Arc::new(std::sync::Mutex::new(conv));
        let (tx, rx) = mpsc::channel(self.state.config.stream_buffer.max(1));
        let state = self.state.clone();
        tokio::spawn(async move {
            let cfg = TurnSettings {
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
                            let _ = tx.send(Err(Error::from(closer_sales::Error::Stopped(Stop::Deadline)).into())).await;
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
                        } else if crate::metrics::past(deadline) {
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
                    let cx = TurnContext {
                        engine: &engine,
                        tenant: &tenant,
                        settings: &cfg2,
                        ctl: &ctl,
                        visitor: &visitor,
                    };
                    run_turn(&cx, &mut conv, turn, &text, &mut |event| {
                        if matches!(event, TurnEvent::Final(_)) {
                            permit.take();
                        }
                        let event = Some(turn_event(event));
                        match tx2.blocking_send(Ok(pb::ConverseResponse { event })) {
                            Ok(()) => std::ops::ControlFlow::Continue(()),
                            Err(_) => std::ops::ControlFlow::Break(()),
                        }
                    })
                    .map_err(Error::from)
                })
                .await;
                watcher.abort();
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(join) => Some(Error::Internal(format!("turn task failed: {join}"))),
                };
                match failure {
                    Some(e) if e.is_stop(Stop::Gone) => {
                        let ms = closed_at
                            .get()
                            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                        state.metrics.record_stop(Stop::Gone, ms);
                        tracing::debug!(turn, ms, "client left; turn stopped");
                        break;
                    }
                    Some(e) if e.is_stop(Stop::Deadline) => {
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
        let tenant = engine.tenant(&req.tenant).api()?;
        let (intents, slots) = blocking(move || {
            let model = tenant.intents();
            closer_models::IntentClassifier::classify(&model.classifier, &text).map(|v| {
                let intents = v.iter().map(|i| to_pb_intent(&text, i)).collect::<Vec<_>>();
                (intents, to_pb_slots(&closer_sales::slots::extract(&text)))
            })
        })
        .await?;
        Ok(Response::new(pb::ClassifyResponse { intents, slots }))
    }
}
