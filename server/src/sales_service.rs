//! gRPC services of the selling side: `Leads`, `Events`, `Playbooks`, `Reps`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use closer_proto::v1 as pb;
use closer_store::{EventFilter, Lead, LeadFilter, ManualScore, Presence};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::playbook::Route;
use crate::sales::{self, Conversation, Handoff, TurnRecord};
use crate::service::{blocking, check_tenant_field, AppState};

type R<T> = std::result::Result<Response<T>, Status>;

fn pb_lead(l: Lead) -> pb::Lead {
    pb::Lead {
        tenant: l.tenant,
        conversation_id: l.conversation_id,
        domain: l.domain,
        email: l.email,
        score: l.score,
        bot_score: l.bot_score,
        reasons: l
            .reasons
            .into_iter()
            .map(|r| pb::ScoreReason {
                rule: r.rule,
                turn: r.turn,
                detail: r.detail,
                points: r.points,
            })
            .collect(),
        manual: l.manual.map(|m| pb::ManualScore {
            score: m.score,
            rep_id: m.rep_id,
            note: m.note,
            at_ms: m.at_ms,
        }),
        rep_id: l.rep_id,
        team: l.team,
        slots: l.slots.into_iter().collect(),
        turns: l.turns,
        created_ms: l.created_ms,
        updated_ms: l.updated_ms,
    }
}

fn check_id(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() || v.chars().count() > 128 {
        return Err(Error::invalid(field, "must be 1 to 128 characters"));
    }
    Ok(())
}

pub struct LeadsService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::leads_server::Leads for LeadsService {
    async fn get(&self, request: Request<pb::GetLeadRequest>) -> R<pb::Lead> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("conversation_id", &req.conversation_id)?;
        engine.tenant(&req.tenant)?;
        let lead = blocking(move || engine.store.lead(&req.tenant, &req.conversation_id))
            .await?
            .ok_or_else(|| Error::NotFound("no lead for that conversation".into()))?;
        Ok(Response::new(pb_lead(lead)))
    }

    async fn list(&self, request: Request<pb::ListLeadsRequest>) -> R<pb::ListLeadsResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        engine.tenant(&req.tenant)?;
        if req.page_size > 500 {
            return Err(Error::invalid("page_size", "must be 0 to 500").into());
        }
        let offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Error::invalid("page_token", "not a token from a previous response"))?
        };
        let limit = if req.page_size == 0 {
            100
        } else {
            req.page_size as usize
        };
        let f = LeadFilter {
            tenant: req.tenant,
            min_score: req.min_score,
            max_score: req.max_score,
            rep_id: req.rep_id,
            team: req.team,
            since_ms: req.since_ms,
            until_ms: req.until_ms,
            limit,
            offset,
        };
        let (leads, total) = blocking(move || engine.store.leads(&f)).await?;
        let next = offset + leads.len();
        Ok(Response::new(pb::ListLeadsResponse {
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
            total: total as u32,
            leads: leads.into_iter().map(pb_lead).collect(),
        }))
    }

    async fn set_score(&self, request: Request<pb::SetScoreRequest>) -> R<pb::Lead> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("conversation_id", &req.conversation_id)?;
        check_id("rep_id", &req.rep_id)?;
        let tenant = engine.tenant(&req.tenant)?;
        if tenant.kb.snapshot().rep(&req.rep_id).is_none() {
            return Err(Error::invalid("rep_id", format!("no rep {:?}", req.rep_id)).into());
        }
        if !req.clear && !matches!(req.score, -1 | 1..=3) {
            return Err(Error::invalid(
                "score",
                "-1 (disqualified) or 1 to 3 bolts; use clear to remove a manual score",
            )
            .into());
        }
        if req.note.chars().count() > 2000 {
            return Err(Error::invalid("note", "at most 2000 characters").into());
        }
        let manual = (!req.clear).then(|| ManualScore {
            score: req.score,
            rep_id: req.rep_id.clone(),
            note: req.note.clone(),
            at_ms: closer_store::now_ms(),
        });
        let e2 = engine.clone();
        let (lead, events) = blocking(move || {
            let before = e2
                .store
                .lead(&req.tenant, &req.conversation_id)?
                .map(|l| l.score)
                .unwrap_or(0);
            e2.store
                .set_manual_score(&req.tenant, &req.conversation_id, manual, &|lead| {
                    vec![sales::cql_event(
                        &req.tenant,
                        &req.conversation_id,
                        lead,
                        before,
                    )]
                })
        })
        .await?;
        if let Some(last) = events.iter().map(|e| e.cursor).max() {
            engine.bus.publish(last);
        }
        Ok(Response::new(pb_lead(lead)))
    }

    async fn qualify_form(
        &self,
        request: Request<pb::QualifyFormRequest>,
    ) -> R<pb::QualifyFormResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("idempotency_key", &req.idempotency_key)?;
        if req.fields.is_empty() || req.fields.len() > 100 {
            return Err(Error::invalid("fields", "1 to 100 fields").into());
        }
        for (k, v) in &req.fields {
            if k.is_empty() || k.len() > 64 || v.chars().count() > 4000 {
                return Err(Error::invalid(
                    &format!("fields[{k}]"),
                    "names of 1 to 64 bytes, values of at most 4000 characters",
                )
                .into());
            }
        }
        let tenant = engine.tenant(&req.tenant)?;
        let out = blocking(move || qualify(&engine, &tenant, &req)).await?;
        Ok(Response::new(out))
    }
}

/// A form field as a slot: (slot name, value, detail); `Err` names what is wrong.
fn form_slot(name: &str, value: &str) -> Result<Option<(String, String, String)>> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let field = format!("fields[{name}]");
    let slot = match name.to_ascii_lowercase().as_str() {
        "email" => {
            let e = v.to_lowercase();
            let Some((_, d)) = e
                .rsplit_once('@')
                .filter(|(u, d)| !u.is_empty() && d.contains('.'))
            else {
                return Err(Error::invalid(&field, "not an email address"));
            };
            let detail = if crate::slots::is_free_mail(d) {
                "free_mail"
            } else {
                "business"
            };
            ("email", e.clone(), detail)
        }
        "company" | "company_domain" | "website" | "domain" => {
            let d = v
                .to_ascii_lowercase()
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_start_matches("www.")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            if !d.contains('.') {
                // A company name, not a domain: kept as given.
                return Ok(Some(("company".into(), v.into(), String::new())));
            }
            ("company_domain", d, "")
        }
        "employees" | "company_size" => {
            let digits: String = v.chars().filter(char::is_ascii_digit).collect();
            let n: u64 = digits
                .parse()
                .map_err(|_| Error::invalid(&field, "a number of people"))?;
            ("company_size", n.to_string(), "")
        }
        "seats" => {
            let n: u64 = v
                .parse()
                .map_err(|_| Error::invalid(&field, "a number of seats"))?;
            ("seats", n.to_string(), "")
        }
        "country" => {
            let c = crate::slots::country_code(v).ok_or_else(|| {
                Error::invalid(&field, "a country name or ISO 3166-1 code like GB")
            })?;
            ("country", c.to_string(), "")
        }
        "phone" | "timeline" => (name, v.to_string(), ""),
        _ => return Ok(Some((name.to_string(), v.to_string(), String::new()))),
    };
    Ok(Some((slot.0.to_string(), slot.1, slot.2.to_string())))
}

fn qualify(
    engine: &crate::state::Engine,
    tenant: &crate::state::Tenant,
    req: &pb::QualifyFormRequest,
) -> Result<pb::QualifyFormResponse> {
    const SCOPE: &str = "qualify_form";
    let conv_id = format!("form-{}", req.idempotency_key);
    if let Some(bytes) = engine
        .store
        .idempotent_get(&tenant.id, SCOPE, &req.idempotency_key)?
    {
        let mut out = pb::QualifyFormResponse::decode(bytes.as_slice())
            .map_err(|e| Error::Internal(format!("stored reply: {e}")))?;
        out.lead = engine.store.lead(&tenant.id, &conv_id)?.map(pb_lead);
        return Ok(out);
    }
    let mut slots = vec![];
    let mut fields: Vec<(&String, &String)> = req.fields.iter().collect();
    fields.sort();
    for (k, v) in &fields {
        if k.eq_ignore_ascii_case("message") {
            continue;
        }
        slots.extend(form_slot(k, v)?);
    }
    let message = req
        .fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("message"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let intents: Vec<String> = match &message {
        Some(m) => closer_models::IntentClassifier::classify(&tenant.intents().classifier, m)?
            .into_iter()
            .map(|i| i.name)
            .collect(),
        None => vec![],
    };
    let visitor = crate::answer::Visitor::default();
    let mut conv = Conversation::resume(&*engine.store, tenant, &conv_id, &visitor)?;
    let kb = tenant.kb.snapshot();
    for (name, value, detail) in &slots {
        conv.seen
            .slots
            .insert(name.clone(), (value.clone(), detail.clone(), 1));
    }
    conv.observe(1, &intents, &[], &kb);
    let pb_ = tenant.playbook();
    let scored = crate::playbook::score(&pb_, &conv.seen);
    let threshold = pb_.handoff_from_score.max(1);
    let (step, route) = if scored.0 < 0 {
        (pb::NextStep::Disqualified, None)
    } else if scored.0 < threshold {
        (pb::NextStep::Nurture, None)
    } else {
        match sales::route(engine, tenant, &pb_, &conv.seen)? {
            r @ Route::Rep { .. } => (pb::NextStep::ChatNow, Some(r)),
            r @ Route::Fallback { .. } => (pb::NextStep::OfferMeeting, Some(r)),
            Route::Nobody => (pb::NextStep::Nurture, None),
        }
    };
    let mut out = pb::QualifyFormResponse {
        lead: None,
        next_step: step as i32,
        ..Default::default()
    };
    match &route {
        Some(Route::Rep {
            rep_id,
            team,
            mode,
            detail,
        }) => {
            out.rep_name = kb.rep(rep_id).map(|r| r.name.clone());
            out.rep_id = Some(rep_id.clone());
            out.team = team.clone();
            out.message = format!("routed by {mode}: {detail}");
        }
        Some(Route::Fallback { reps, team }) => {
            out.reps = reps.clone();
            out.team = team.clone();
            out.message = "nobody is available now: offer meetings".into();
        }
        _ => {
            out.message = format!(
                "score {}: {}",
                scored.0,
                if scored.0 < 0 {
                    "disqualified"
                } else {
                    "not ready for a rep"
                }
            )
        }
    }
    let summary: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let handoff = route.map(|route| Handoff {
        route,
        reason: "qualified web form".into(),
        newly_routed: true,
    });
    let reply = out.message.clone();
    let (lead, _) = sales::record_turn(
        engine,
        tenant,
        &mut conv,
        TurnRecord {
            turn: 1,
            visitor_text: &summary.join("\n"),
            reply: &reply,
            slots: slots.iter().map(|s| (s.0.clone(), s.1.clone())).collect(),
            email: slots.iter().find(|s| s.0 == "email").map(|s| s.1.clone()),
            intents: &intents,
            score: scored,
            account_live: None,
            handoff,
            events: vec![],
            idempotency: Some((
                SCOPE.into(),
                req.idempotency_key.clone(),
                out.encode_to_vec(),
            )),
        },
    )?;
    out.lead = Some(pb_lead(lead));
    Ok(out)
}

pub struct EventsService {
    pub state: Arc<AppState>,
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::SalesEvent, Status>> + Send>>;

fn pb_event(e: closer_store::Event) -> pb::SalesEvent {
    pb::SalesEvent {
        id: e.id,
        cursor: e.cursor,
        kind: e.event.kind,
        tenant: e.event.tenant,
        conversation_id: e.event.conversation_id,
        rep_id: e.event.rep_id,
        team: e.event.team,
        at_ms: e.at_ms,
        payload_json: e.event.payload.to_string(),
    }
}

const KINDS: &[&str] = &[
    "account_live",
    "cql_scored",
    "handoff_requested",
    "meeting_proposed",
    "meeting_booked",
    "rep_joined",
    "rep_message",
    "visitor_message",
    "rep_left",
    "conversation_closed",
];

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> R<Self::SubscribeStream> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        engine.tenant(&req.tenant)?;
        for (i, k) in req.kinds.iter().enumerate() {
            if !KINDS.contains(&k.as_str()) {
                return Err(Error::invalid(
                    &format!("kinds[{i}]"),
                    format!("unknown kind {k:?}; one of {}", KINDS.join(", ")),
                )
                .into());
            }
        }
        if let Some(c) = &req.consumer {
            check_id("consumer", c)?;
        }
        let filter = EventFilter {
            tenant: req.tenant.clone(),
            kinds: req.kinds.clone(),
            rep_id: req.rep_id.clone(),
            team: req.team.clone(),
            conversation_id: req.conversation_id.clone(),
        };
        let start = {
            let (e, t, c, after) = (
                engine.clone(),
                req.tenant.clone(),
                req.consumer.clone(),
                req.after_cursor,
            );
            blocking(move || -> Result<u64> {
                Ok(match (after, c) {
                    (Some(a), _) => a,
                    (None, Some(name)) => e.store.acked(&t, &name)?,
                    (None, None) => e.store.last_cursor()?,
                })
            })
            .await?
        };
        let (tx, rx) = mpsc::channel(64);
        let mut wake = engine.bus.watch();
        tokio::spawn(async move {
            let mut cursor = start;
            loop {
                let (e, f) = (engine.clone(), filter.clone());
                let batch = match blocking(move || e.store.events_after(cursor, &f, 500)).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let full = batch.len() == 500;
                for ev in batch {
                    cursor = ev.cursor;
                    if tx.send(Ok(pb_event(ev))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                // Events of other tenants or filters also wake us; the periodic look is a
                // safety net only (the outbox is the truth).
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> R<pb::AckResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("consumer", &req.consumer)?;
        engine.tenant(&req.tenant)?;
        let cursor =
            blocking(move || engine.store.ack(&req.tenant, &req.consumer, req.cursor)).await?;
        Ok(Response::new(pb::AckResponse { cursor }))
    }
}

pub struct PlaybooksService {
    pub state: Arc<AppState>,
}

fn summary(tenant: &str, p: &crate::playbook::Playbook, derived: bool) -> pb::PlaybookSummary {
    pb::PlaybookSummary {
        tenant: tenant.into(),
        yaml: serde_yaml::to_string(p).unwrap_or_default(),
        derived,
        score_rules: p.score_rules.len() as u32,
        questions: p.questions.len() as u32,
        teams: p.teams.iter().map(|t| t.name.clone()).collect(),
        routing: p
            .routing
            .iter()
            .map(|m| {
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.get("mode").and_then(|m| m.as_str()).map(str::to_string))
                    .unwrap_or_default()
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::playbooks_server::Playbooks for PlaybooksService {
    async fn upload(&self, request: Request<pb::UploadPlaybookRequest>) -> R<pb::PlaybookSummary> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        if req.yaml.len() > 1 << 20 {
            return Err(Error::invalid("yaml", "at most 1 MiB").into());
        }
        let tenant = engine.tenant(&req.tenant)?;
        let t2 = tenant.clone();
        let p = blocking(move || t2.set_playbook(&closer_kb::visible(&req.yaml))).await?;
        Ok(Response::new(summary(&tenant.id, &p, false)))
    }

    async fn get(&self, request: Request<pb::GetPlaybookRequest>) -> R<pb::PlaybookSummary> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let tenant = engine.tenant(&req.tenant)?;
        let (p, derived) = tenant.playbook_source();
        Ok(Response::new(summary(&tenant.id, &p, derived)))
    }
}

pub struct RepsService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::reps_server::Reps for RepsService {
    async fn set_presence(
        &self,
        request: Request<pb::SetPresenceRequest>,
    ) -> R<pb::SetPresenceResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("rep_id", &req.rep_id)?;
        let tenant = engine.tenant(&req.tenant)?;
        if tenant.kb.snapshot().rep(&req.rep_id).is_none() {
            return Err(Error::invalid("rep_id", format!("no rep {:?}", req.rep_id)).into());
        }
        blocking(move || {
            engine.store.set_presence(
                &req.tenant,
                &Presence {
                    rep_id: req.rep_id,
                    online: req.online,
                    capacity: req.capacity,
                },
            )
        })
        .await?;
        Ok(Response::new(pb::SetPresenceResponse {}))
    }
}

pub struct ConversationsService {
    pub state: Arc<AppState>,
}

/// Checks the request's tenant, conversation and rep; returns the engine, the tenant, the rep
/// and who controls the conversation now.
/// The rep of `rep_id` when they have taken the conversation over; else FAILED_PRECONDITION
/// with `refusal`.
async fn rep_in_control(
    state: &AppState,
    tenant: &str,
    conversation_id: &str,
    rep_id: &str,
    refusal: &str,
) -> std::result::Result<
    (
        Arc<crate::state::Engine>,
        Arc<crate::state::Tenant>,
        closer_kb::Rep,
    ),
    Status,
> {
    let (engine, tenant, rep, ctl) =
        control_of(state, tenant, conversation_id, Some(rep_id)).await?;
    let rep = rep.expect("checked");
    if ctl.taken_over_by.as_deref() != Some(rep.id.as_str()) {
        return Err(Status::failed_precondition(refusal.to_string()));
    }
    Ok((engine, tenant, rep))
}

async fn control_of(
    state: &AppState,
    tenant: &str,
    conversation_id: &str,
    rep_id: Option<&str>,
) -> Result<(
    Arc<crate::state::Engine>,
    Arc<crate::state::Tenant>,
    Option<closer_kb::Rep>,
    closer_store::ConversationControl,
)> {
    let engine = state.engine()?;
    check_tenant_field(tenant)?;
    check_id("conversation_id", conversation_id)?;
    let t = engine.tenant(tenant)?;
    let rep = match rep_id {
        Some(r) => {
            check_id("rep_id", r)?;
            Some(
                t.kb.snapshot()
                    .rep(r)
                    .cloned()
                    .ok_or_else(|| Error::invalid("rep_id", format!("no rep {r:?}")))?,
            )
        }
        None => None,
    };
    let (e, tn, c) = (
        engine.clone(),
        tenant.to_string(),
        conversation_id.to_string(),
    );
    let control = blocking(move || e.store.control(&tn, &c))
        .await?
        .ok_or_else(|| Error::NotFound(format!("conversation {conversation_id:?}")))?;
    Ok((engine, t, rep, control))
}

fn control_event(
    kind: &str,
    tenant: &str,
    conv: &str,
    rep: Option<&closer_kb::Rep>,
    payload: serde_json::Value,
) -> closer_store::NewEvent {
    closer_store::NewEvent {
        kind: kind.into(),
        tenant: tenant.into(),
        conversation_id: Some(conv.into()),
        rep_id: rep.map(|r| r.id.clone()),
        team: rep.map(|r| r.team.clone()).filter(|t| !t.is_empty()),
        payload,
    }
}

fn published(engine: &crate::state::Engine, events: &[closer_store::Event]) -> u64 {
    let last = events.iter().map(|e| e.cursor).max().unwrap_or(0);
    if last > 0 {
        engine.bus.publish(last);
    }
    last
}

fn busy(by: &str) -> Status {
    Status::failed_precondition(format!("the conversation is with rep {by:?}"))
}

#[tonic::async_trait]
impl pb::conversations_server::Conversations for ConversationsService {
    async fn take_over(&self, request: Request<pb::TakeOverRequest>) -> R<pb::ControlResponse> {
        let req = request.into_inner();
        let (engine, tenant, rep, ctl) = control_of(
            &self.state,
            &req.tenant,
            &req.conversation_id,
            Some(&req.rep_id),
        )
        .await?;
        let rep = rep.expect("checked");
        if let Some(by) = ctl.taken_over_by.filter(|b| b != &rep.id) {
            return Err(busy(&by));
        }
        let first = rep.name.split_whitespace().next().unwrap_or(&rep.name);
        let text = format!(
            "Human here! {first} from {} has joined the chat.",
            tenant.kb.profile.company
        );
        let ev = control_event(
            "rep_joined",
            &tenant.id,
            &req.conversation_id,
            Some(&rep),
            serde_json::json!({"rep_id": rep.id, "rep_name": rep.name, "text": text}),
        );
        let (e, t, c, r) = (
            engine.clone(),
            tenant.id.clone(),
            req.conversation_id,
            rep.id,
        );
        let stored = blocking(move || {
            e.store.set_control(
                &t,
                &c,
                &closer_store::ConversationControl {
                    taken_over_by: Some(r),
                    closed: false,
                },
                &[ev],
            )
        })
        .await?;
        Ok(Response::new(pb::ControlResponse {
            cursor: published(&engine, &stored),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::RepMessageRequest>,
    ) -> R<pb::ControlResponse> {
        let req = request.into_inner();
        if req.text.trim().is_empty() || req.text.chars().count() > 4000 {
            return Err(Error::invalid("text", "1 to 4000 characters").into());
        }
        let (engine, tenant, rep) = rep_in_control(
            &self.state,
            &req.tenant,
            &req.conversation_id,
            &req.rep_id,
            "take the conversation over before writing to the visitor",
        )
        .await?;
        let ev = control_event(
            "rep_message",
            &tenant.id,
            &req.conversation_id,
            Some(&rep),
            serde_json::json!({"rep_id": rep.id, "rep_name": rep.name, "text": req.text}),
        );
        let msg = closer_store::Message {
            turn: 0,
            author: closer_store::Author::Rep,
            text: req.text,
            at_ms: closer_store::now_ms(),
        };
        let (e, t, c) = (engine.clone(), tenant.id.clone(), req.conversation_id);
        let stored = blocking(move || e.store.append_messages(&t, &c, &[msg], &[ev])).await?;
        Ok(Response::new(pb::ControlResponse {
            cursor: published(&engine, &stored),
        }))
    }

    async fn hand_back(&self, request: Request<pb::HandBackRequest>) -> R<pb::ControlResponse> {
        let req = request.into_inner();
        let (engine, tenant, rep) = rep_in_control(
            &self.state,
            &req.tenant,
            &req.conversation_id,
            &req.rep_id,
            "the conversation is not with this rep",
        )
        .await?;
        let ev = control_event(
            "rep_left",
            &tenant.id,
            &req.conversation_id,
            Some(&rep),
            serde_json::json!({"rep_id": rep.id}),
        );
        let (e, t, c) = (engine.clone(), tenant.id.clone(), req.conversation_id);
        let stored = blocking(move || {
            e.store.set_control(
                &t,
                &c,
                &closer_store::ConversationControl {
                    taken_over_by: None,
                    closed: false,
                },
                &[ev],
            )
        })
        .await?;
        Ok(Response::new(pb::ControlResponse {
            cursor: published(&engine, &stored),
        }))
    }

    async fn close(&self, request: Request<pb::CloseRequest>) -> R<pb::ControlResponse> {
        let req = request.into_inner();
        let by = (!req.closed_by.is_empty()).then_some(req.closed_by.as_str());
        let (engine, tenant, rep, _) =
            control_of(&self.state, &req.tenant, &req.conversation_id, by).await?;
        let ev = control_event(
            "conversation_closed",
            &tenant.id,
            &req.conversation_id,
            rep.as_ref(),
            serde_json::json!({"closed_by": req.closed_by}),
        );
        let (e, t, c) = (engine.clone(), tenant.id.clone(), req.conversation_id);
        let stored = blocking(move || {
            e.store.set_control(
                &t,
                &c,
                &closer_store::ConversationControl {
                    taken_over_by: None,
                    closed: true,
                },
                &[ev],
            )
        })
        .await?;
        Ok(Response::new(pb::ControlResponse {
            cursor: published(&engine, &stored),
        }))
    }
}

/// `Reports`: summary counts and the live leaderboard.
pub struct ReportsService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::reports_server::Reports for ReportsService {
    async fn summary(&self, request: Request<pb::SummaryRequest>) -> R<pb::SummaryResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        let out = blocking(move || crate::reports::summary_request(&engine, &req)).await?;
        Ok(Response::new(out))
    }

    type LeaderboardStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::LeaderboardUpdate, Status>> + Send>>;

    async fn leaderboard(
        &self,
        request: Request<pb::LeaderboardRequest>,
    ) -> R<Self::LeaderboardStream> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        let board = crate::reports::BoardRequest::check(
            &engine,
            &req.tenant,
            &req.period,
            &req.timezone,
            req.team.clone(),
        )?;
        let rx = crate::reports::watch(engine, board);
        let stream =
            tokio_stream::StreamExt::map(ReceiverStream::new(rx), |r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
