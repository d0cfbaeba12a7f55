//! `closer.v1.Conversations`: a rep takes a live chat over, writes in it, hands it back, closes it.

#[allow(unused_imports)]
use super::common::prelude::*;

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
        Arc<Engine>,
        Arc<closer_sales::engine::Tenant>,
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
    Arc<Engine>,
    Arc<closer_sales::engine::Tenant>,
    Option<closer_kb::Rep>,
    closer_store::ConversationControl,
)> {
    let engine = state.engine()?;
    check_tenant_field(tenant)?;
    check_id("conversation_id", conversation_id)?;
    let t = engine.tenant(tenant).api()?;
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
        .ok_or_else(|| Error::not_found(format!("conversation {conversation_id:?}")))?;
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

fn published(engine: &Engine, events: &[closer_store::Event]) -> u64 {
    closer_store::bus::publish_events(&*engine.bus, events);
    events.iter().map(|e| e.cursor).max().unwrap_or(0)
}

/// What the control in force must be for a change; checked again by the store under the
/// conversation's lock, so a concurrent change on another replica cannot slip in between.
enum Requires {
    /// Nobody else has it: free, or with this rep already (take over).
    FreeFor(String),
    /// This rep has it (hand back); else the refusal.
    With(String, &'static str),
    /// Anything (close).
    Nothing,
}

impl Requires {
    fn check(&self, now: &closer_store::ConversationControl) -> std::result::Result<(), String> {
        match self {
            Requires::FreeFor(rep) => match &now.taken_over_by {
                Some(by) if by != rep => Err(format!("the conversation is with rep {by:?}")),
                _ => Ok(()),
            },
            Requires::With(rep, refusal) => match &now.taken_over_by {
                Some(by) if by == rep => Ok(()),
                _ => Err((*refusal).to_string()),
            },
            Requires::Nothing => Ok(()),
        }
    }
}

/// Stores the conversation's new control state with its event when `requires` holds, wakes
/// subscribers, and answers with the event's cursor.
async fn set_control(
    engine: Arc<Engine>,
    tenant: &str,
    conversation_id: String,
    control: closer_store::ConversationControl,
    requires: Requires,
    ev: closer_store::NewEvent,
) -> R<pb::ControlResponse> {
    let (e, t) = (engine.clone(), tenant.to_string());
    let stored = blocking(move || {
        e.store.set_control(
            &t,
            &conversation_id,
            &control,
            &|now| requires.check(now),
            &[ev],
        )
    })
    .await?;
    Ok(Response::new(pb::ControlResponse {
        cursor: published(&engine, &stored),
    }))
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
        let requires = Requires::FreeFor(rep.id.clone());
        let control = closer_store::ConversationControl {
            taken_over_by: Some(rep.id),
            closed: false,
        };
        set_control(
            engine,
            &tenant.id,
            req.conversation_id,
            control,
            requires,
            ev,
        )
        .await
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
            // Filed under the conversation's latest turn by the store.
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
        const REFUSAL: &str = "the conversation is not with this rep";
        let (engine, tenant, rep) = rep_in_control(
            &self.state,
            &req.tenant,
            &req.conversation_id,
            &req.rep_id,
            REFUSAL,
        )
        .await?;
        let requires = Requires::With(rep.id.clone(), REFUSAL);
        let ev = control_event(
            "rep_left",
            &tenant.id,
            &req.conversation_id,
            Some(&rep),
            serde_json::json!({"rep_id": rep.id}),
        );
        let control = closer_store::ConversationControl {
            taken_over_by: None,
            closed: false,
        };
        set_control(
            engine,
            &tenant.id,
            req.conversation_id,
            control,
            requires,
            ev,
        )
        .await
    }

    async fn revoke_resume(
        &self,
        request: Request<pb::RevokeResumeRequest>,
    ) -> R<pb::RevokeResumeResponse> {
        let req = request.into_inner();
        let engine = self.state.engine()?;
        check_tenant_field(&req.tenant)?;
        check_id("conversation_id", &req.conversation_id)?;
        let tenant = engine.tenant(&req.tenant).api()?.id.clone();
        let id = req.conversation_id;
        let revoked = blocking(move || engine.store.revoke_resume(&tenant, &id)).await?;
        Ok(Response::new(pb::RevokeResumeResponse { revoked }))
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
        let control = closer_store::ConversationControl {
            taken_over_by: None,
            closed: true,
        };
        let requires = Requires::Nothing;
        set_control(
            engine,
            &tenant.id,
            req.conversation_id,
            control,
            requires,
            ev,
        )
        .await
    }
}
