//! `closer.v1.Assistant`: Converse (a visitor's conversation) and Classify.

#[allow(unused_imports)]
use super::common::prelude::*;

use closer_sales::gate::Stop;
use closer_sales::turn::{run_turn, TurnContext, TurnControl, TurnEvent, TurnSettings};

/// While shutting down, how long an idle stream waits for a message already on its way.
const DRAIN_LINGER: Duration = Duration::from_millis(100);

async fn relay_rep_events(
    engine: &Arc<Engine>,
    conv: &Arc<parking_lot::Mutex<closer_sales::conversation::Conversation>>,
    cursor: &mut u64,
) -> Result<Vec<pb::converse_response::Event>> {
    use pb::converse_response::Event as E;
    let (tenant, id) = {
        let c = conv.lock();
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
    let mut c = conv.lock();
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

type Out = std::result::Result<pb::ConverseResponse, Status>;

/// When the client's `grpc-timeout` runs out, if it sent one.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::metrics::parse_grpc_timeout)
        .map(|d| Instant::now() + d)
}
type SharedConversation = Arc<parking_lot::Mutex<closer_sales::conversation::Conversation>>;

/// One visitor's Converse stream: started by a valid `start`, then a turn per message, rep
/// events relayed as they happen, ended by the client, its deadline or shutdown.
struct Session {
    state: Arc<AppState>,
    engine: Arc<Engine>,
    tenant: Arc<closer_sales::engine::Tenant>,
    visitor: closer_sales::visitor::Visitor,
    conv: SharedConversation,
    tx: mpsc::Sender<Out>,
    /// From `grpc-timeout`: tonic's timeout bounds only the call's first response.
    deadline: Option<Instant>,
    rep_cursor: u64,
}

/// What the client's side of the stream brought.
enum Inbound {
    Message(Box<pb::ConverseRequest>),
    /// Something was relayed or the state changed: look again.
    Again,
    End,
}

impl Session {
    /// Validates the `start` event and picks up the conversation's state (a reconnect or
    /// another replica continues it).
    async fn start(
        state: Arc<AppState>,
        request: Request<Streaming<pb::ConverseRequest>>,
    ) -> std::result::Result<(Self, Streaming<pb::ConverseRequest>, mpsc::Receiver<Out>), Status>
    {
        // Not ready yet: refuse before waiting for the first event.
        state.engine()?;
        let deadline = deadline_of(&request);
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await
            .map_err(oversize)?
            .ok_or_else(|| Error::invalid("start", "the stream ended before a start event"))?;
        let Some(pb::converse_request::Event::Start(start)) = first.event else {
            return Err(Error::invalid("start", "the first event must be `start`").into());
        };
        let (session, rx) = Self::open(state, start, deadline).await?;
        Ok((session, inbound, rx))
    }

    /// Opens (or, with its resume token, continues) the conversation `start` asks for; the
    /// stream's first event, `opened`, is already queued.
    async fn open(
        state: Arc<AppState>,
        start: pb::Start,
        deadline: Option<Instant>,
    ) -> std::result::Result<(Self, mpsc::Receiver<Out>), Status> {
        let engine = state.engine()?;
        check_start(&start)?;
        check_tenant_field(&start.tenant)?;
        let tenant = engine.tenant(&start.tenant).api()?;
        crate::auth::check_origin(&tenant.id, &tenant.kb.profile.allowed_origins)?;
        let mut visitor = visitor_from_pb(start.visitor.as_ref());
        let proof = closer_sales::identity::Proof {
            user_hash: start.visitor.as_ref().and_then(|v| v.user_hash.as_deref()),
            token: start
                .visitor
                .as_ref()
                .and_then(|v| v.identity_token.as_deref()),
        };
        let now = closer_store::now_ms() / 1000;
        let level = closer_sales::identity::verify(&tenant.kb.profile, &mut visitor, &proof, now)
            .map_err(Error::from)?;
        // One trip to the store: the conversation (a new server-named one, or the one its resume
        // token names), the visitor's identity level when the tenant checks it, the
        // conversation's state, and where rep events start.
        let (e, t, v) = (engine.clone(), tenant.clone(), visitor.clone());
        let wanted = start.conversation_id;
        let token = start.resume_token.filter(|t| !t.is_empty());
        let (opened, conv, rep_cursor) = blocking(move || -> closer_sales::Result<_> {
            let opened =
                closer_sales::ownership::open(&*e.store, &t.id, &wanted, token.as_deref())?;
            if v.identity.is_some() {
                e.store.set_identity(&t.id, &opened.id, level.as_str())?;
            }
            let conv =
                closer_sales::conversation::Conversation::resume(&*e.store, &t, &opened.id, &v)?;
            // Rep events for this conversation (take-over, messages) come from the outbox.
            let cursor = e.store.last_cursor().unwrap_or(0);
            Ok((opened, conv, cursor))
        })
        .await?;
        tracing::info!(tenant = %start.tenant, conversation = %opened.id, resumed = opened.resumed, domain = ?visitor.domain, identity = level.as_str(), "conversation started");
        let (tx, rx) = mpsc::channel(state.config.stream_buffer.max(1));
        // First on the stream: the conversation's id and the token that continues it.
        let _ = tx.try_send(Ok(pb::ConverseResponse {
            event: Some(pb::converse_response::Event::Opened(
                pb::ConversationOpened {
                    conversation_id: opened.id,
                    resume_token: opened.resume_token,
                    resumed: opened.resumed,
                    external_ref: opened.external_ref.unwrap_or_default(),
                },
            )),
        }));
        let session = Session {
            state,
            engine,
            tenant,
            visitor,
            conv: Arc::new(parking_lot::Mutex::new(conv)),
            tx,
            deadline,
            rep_cursor,
        };
        Ok((session, rx))
    }

    async fn send(&self, out: Out) -> bool {
        self.tx.send(out).await.is_ok()
    }

    /// Runs the conversation until the client, its deadline or shutdown ends it.
    async fn run(mut self, mut inbound: Streaming<pb::ConverseRequest>) {
        let mut turn: u32 = self.conv.lock().turns;
        let mut wake = self.engine.bus.watch(&self.tenant.id);
        let mut drain = self.state.draining.subscribe();
        loop {
            let msg = match self.next(&mut inbound, &mut wake, &mut drain).await {
                Inbound::Message(m) => *m,
                Inbound::Again => continue,
                Inbound::End => break,
            };
            let Some(text) = self.text_of(msg).await else {
                break;
            };
            turn += 1;
            if !self.within_turn_limit(turn).await {
                break;
            }
            if !self.serve_turn(turn, text).await || self.tx.is_closed() {
                break;
            }
        }
    }

    /// The next client message, or rep events relayed meanwhile, or the end (client gone,
    /// deadline passed, shutting down with nothing on its way).
    async fn next(
        &mut self,
        inbound: &mut Streaming<pb::ConverseRequest>,
        wake: &mut tokio::sync::watch::Receiver<u64>,
        drain: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Inbound {
        let next = if *drain.borrow_and_update() {
            // Shutting down, and no turn is in progress: a message already on its way is still
            // answered; otherwise the stream ends cleanly.
            match tokio::time::timeout(DRAIN_LINGER, inbound.message()).await {
                Ok(m) => m,
                Err(_) => return Inbound::End,
            }
        } else {
            let expiry = async {
                match self.deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = inbound.message() => m,
                _ = drain.changed() => return Inbound::Again,
                _ = expiry => {
                    self.state.metrics.record_stop(Stop::Deadline, 0.0);
                    let e = Error::from(closer_sales::Error::Stopped(Stop::Deadline));
                    let _ = self.send(Err(e.into())).await;
                    return Inbound::End;
                }
                _ = wake.changed() => return self.relay().await,
            }
        };
        match next {
            Ok(Some(m)) => Inbound::Message(Box::new(m)),
            Ok(None) => Inbound::End,
            Err(status) => {
                tracing::debug!(%status, "client stream ended");
                if status.code() == tonic::Code::OutOfRange {
                    let _ = self.send(Err(oversize(status))).await;
                }
                Inbound::End
            }
        }
    }

    /// Relays the rep events that arrived since the last look.
    async fn relay(&mut self) -> Inbound {
        match relay_rep_events(&self.engine, &self.conv, &mut self.rep_cursor).await {
            Ok(events) => {
                for ev in events {
                    if !self
                        .send(Ok(pb::ConverseResponse { event: Some(ev) }))
                        .await
                    {
                        return Inbound::End;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading rep events failed"),
        }
        Inbound::Again
    }

    /// Whether `turn` is within `--max-turns`; else the error that ends the stream is sent.
    async fn within_turn_limit(&self, turn: u32) -> bool {
        if turn <= self.state.config.max_turns {
            return true;
        }
        let e = Error::Overloaded(format!(
            "message: the conversation has more than {} turns (--max-turns); start a new one",
            self.state.config.max_turns
        ));
        let _ = self.send(Err(e.into())).await;
        false
    }

    /// The visitor's text of a client event (a chosen slot's id counts); `None` after sending
    /// the error that ends the stream.
    async fn text_of(&self, msg: pb::ConverseRequest) -> Option<String> {
        let text = match msg.event {
            Some(pb::converse_request::Event::Message(m)) => Ok(m.text),
            Some(pb::converse_request::Event::ChooseSlot(c)) => {
                if matches!(c.slot_id.as_str(), "1" | "2" | "3") {
                    Ok(c.slot_id)
                } else {
                    Err(Error::invalid(
                        "choose_slot.slot_id",
                        "the id of a slot from the latest meeting_proposed",
                    ))
                }
            }
            Some(pb::converse_request::Event::Start(_)) => {
                Err(Error::invalid("start", "sent twice"))
            }
            None => Err(Error::invalid("event", "empty client event")),
        };
        // Invisible characters (tags, bidi controls, zero-width) never reach a model.
        let text = text
            .map(|t| closer_kb::visible(&t).into_owned())
            .and_then(|t| {
                check_text(self.state.config.max_message_chars, "message.text", &t).map(|()| t)
            });
        match text {
            Ok(t) => Some(t),
            Err(e) => {
                let _ = self.send(Err(e.into())).await;
                None
            }
        }
    }

    /// A turn event for the client; `false` when the client is gone.
    async fn error_event(
        &self,
        turn: u32,
        code: String,
        message: String,
        retry_after_ms: u32,
    ) -> bool {
        let ev = pb::converse_response::Event::Error(pb::ConverseError {
            turn,
            code,
            message,
            retry_after_ms,
        });
        self.send(Ok(pb::ConverseResponse { event: Some(ev) }))
            .await
    }

    /// Admits and runs one turn on a blocking thread; `false` ends the stream.
    async fn serve_turn(&self, turn: u32, text: String) -> bool {
        // Admission: fail fast rather than queue without bound behind the generator.
        let permit = match self.state.admit(&self.tenant.id) {
            Ok(p) => p,
            Err(why) => {
                let code = "RESOURCE_EXHAUSTED".into();
                return self
                    .error_event(turn, code, why.into(), RETRY_AFTER_MS)
                    .await;
            }
        };
        // When the client's stream closes, note the time: the turn must stop within one token
        // of it (measured in `/metrics`).
        let closed_at = Arc::new(OnceLock::<Instant>::new());
        let watcher = {
            let (tx, closed_at) = (self.tx.clone(), closed_at.clone());
            tokio::spawn(async move {
                tx.closed().await;
                let _ = closed_at.set(Instant::now());
            })
        };
        let background = self.state.pressing(&self.tenant.id);
        if background {
            self.state.metrics.background.inc();
        }
        let result = self.blocking_turn(turn, text, permit, background).await;
        watcher.abort();
        match result {
            Ok(()) => true,
            Err(e) if e.is_stop(Stop::Gone) => {
                let ms = closed_at
                    .get()
                    .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                self.state.metrics.record_stop(Stop::Gone, ms);
                tracing::debug!(turn, ms, "client left; turn stopped");
                false
            }
            Err(e) if e.is_stop(Stop::Deadline) => {
                self.state.metrics.record_stop(Stop::Deadline, 0.0);
                tracing::info!(turn, "deadline passed; turn stopped");
                let _ = self.send(Err(e.into())).await;
                false
            }
            Err(e) => {
                tracing::error!(kind = e.kind(), error = %e, "turn failed");
                self.error_event(turn, code_name(e.code()), e.to_string(), 0)
                    .await
            }
        }
    }

    /// `run_turn` on a blocking thread, its events sent as they come.
    async fn blocking_turn(
        &self,
        turn: u32,
        text: String,
        permit: crate::app::Permits,
        background: bool,
    ) -> Result<()> {
        let (state, engine, tenant) =
            (self.state.clone(), self.engine.clone(), self.tenant.clone());
        let (visitor, conv, tx, deadline) = (
            self.visitor.clone(),
            self.conv.clone(),
            self.tx.clone(),
            self.deadline,
        );
        let settings = TurnSettings {
            max_new_tokens: state.config.max_new_tokens,
        };
        tokio::task::spawn_blocking(move || {
            // Given back before the final event is sent: a client that has the whole reply may
            // ask again at once without meeting its own turn's permit.
            let mut permit = Some(permit);
            let mut conv = conv.lock();
            let stop = || {
                if tx.is_closed() {
                    Some(Stop::Gone)
                } else if crate::metrics::past(deadline) {
                    Some(Stop::Deadline)
                } else {
                    None
                }
            };
            let ctl = TurnControl {
                gate: &state.gate,
                stop: &stop,
                background,
            };
            let cx = TurnContext {
                engine: &engine,
                tenant: &tenant,
                settings: &settings,
                ctl: &ctl,
                visitor: &visitor,
            };
            run_turn(&cx, &mut conv, turn, &text, &mut |event| {
                if matches!(event, TurnEvent::Final(_)) {
                    permit.take();
                }
                let event = Some(turn_event(event));
                match tx.blocking_send(Ok(pb::ConverseResponse { event })) {
                    Ok(()) => std::ops::ControlFlow::Continue(()),
                    Err(_) => std::ops::ControlFlow::Break(()),
                }
            })
            .map_err(Error::from)
        })
        .await
        .unwrap_or_else(|join| Err(Error::Internal(format!("turn task failed: {join}"))))
    }
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
        let (session, inbound, rx) = Session::start(self.state.clone(), request).await?;
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SendStream = ConverseStream;

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> std::result::Result<Response<Self::SendStream>, Status> {
        if self.state.is_draining() {
            return Err(Error::Draining.into());
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let start = req
            .start
            .ok_or_else(|| Error::invalid("start", "required"))?;
        let event = match req.event {
            Some(pb::send_request::Event::Message(m)) => pb::converse_request::Event::Message(m),
            Some(pb::send_request::Event::ChooseSlot(c)) => {
                pb::converse_request::Event::ChooseSlot(c)
            }
            None => {
                return Err(Error::invalid("event", "a message or choose_slot is required").into())
            }
        };
        let (session, rx) = Session::open(self.state.clone(), start, deadline).await?;
        tokio::spawn(async move {
            let msg = pb::ConverseRequest { event: Some(event) };
            if let Some(text) = session.text_of(msg).await {
                let turn = session.conv.lock().turns + 1;
                if session.within_turn_limit(turn).await {
                    session.serve_turn(turn, text).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = ConverseStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        if self.state.is_draining() {
            return Err(Error::Draining.into());
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        if req.resume_token.is_empty() {
            return Err(Error::invalid("resume_token", "required").into());
        }
        let start = pb::Start {
            tenant: req.tenant,
            conversation_id: String::new(),
            visitor: None,
            resume_token: Some(req.resume_token),
        };
        let (mut session, rx) = Session::open(self.state.clone(), start, deadline).await?;
        // A rep who has the conversation already (the page was reloaded) is announced first.
        let rep = session.conv.lock().taken_over.clone();
        if let Some(rep_id) = rep {
            let name = session
                .tenant
                .kb
                .snapshot()
                .rep(&rep_id)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            let joined = pb::converse_response::Event::RepJoined(pb::RepJoined {
                rep_id,
                rep_name: name.clone(),
                text: format!("{name} has joined the conversation."),
            });
            let _ = session
                .send(Ok(pb::ConverseResponse {
                    event: Some(joined),
                }))
                .await;
        }
        tokio::spawn(async move {
            let mut wake = session.engine.bus.watch(&session.tenant.id);
            let mut drain = session.state.draining.subscribe();
            loop {
                tokio::select! {
                    _ = wake.changed() => {
                        if matches!(session.relay().await, Inbound::End) {
                            break;
                        }
                    }
                    _ = drain.changed() => break,
                    () = session.tx.closed() => break,
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
        check_text(self.state.config.max_message_chars, "text", &text)?;
        let tenant = engine.tenant(&req.tenant).api()?;
        crate::auth::check_origin(&tenant.id, &tenant.kb.profile.allowed_origins)?;
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
