//! The commit phase: a finished turn (or a qualified form) written in one store transaction —
//! messages, slots, intents, score, route and the events they raise — before the final event;
//! then subscribers are woken.

use closer_store::{Author, Event, Lead, Message, NewEvent, Reason, TurnWrite};
use serde_json::json;

use super::handoff::Handoff;
use crate::conversation::{Conversation, Routing};
use crate::engine::{Engine, Tenant};
use crate::error::Result;
use crate::playbook::Route;

pub fn reasons_json(reasons: &[Reason]) -> serde_json::Value {
    serde_json::to_value(reasons).unwrap_or_default()
}

/// The `cql_scored` event of a score change.
pub fn cql_event(tenant: &str, conv: &str, lead: &Lead, previous: i32) -> NewEvent {
    NewEvent {
        kind: "cql_scored".into(),
        tenant: tenant.into(),
        conversation_id: Some(conv.into()),
        rep_id: lead.rep_id.clone(),
        team: lead.team.clone(),
        // What a CRM needs to upsert the lead without reading it back.
        payload: json!({
            "score": lead.score,
            "previous": previous,
            "bot_score": lead.bot_score,
            "manual": lead.manual,
            "reasons": reasons_json(&lead.reasons),
            "email": lead.email,
            "domain": lead.domain,
            "slots": lead.slots,
            "rep_id": lead.rep_id,
            "team": lead.team,
            "turns": lead.turns,
            "identity": lead.identity,
        }),
    }
}

/// What a finished turn (or a qualified form) brings to the store.
pub struct TurnRecord<'a> {
    pub turn: u32,
    pub visitor_text: &'a str,
    pub reply: &'a str,
    /// Slots captured this turn, by name.
    pub slots: Vec<(String, String)>,
    pub email: Option<String>,
    /// Intents first seen this turn.
    pub intents: &'a [String],
    /// Every intent detected in the visitor's message (the transcript keeps them).
    pub detected: Vec<String>,
    pub score: (i32, Vec<Reason>),
    pub account_live: Option<(&'a closer_kb::Account, &'a closer_kb::Rep)>,
    pub handoff: Option<Handoff>,
    /// Further events of the turn (meeting_proposed, meeting_booked).
    pub events: Vec<NewEvent>,
    pub idempotency: Option<(String, String, Vec<u8>)>,
}

impl<'a> TurnRecord<'a> {
    /// A turn with nothing but its two messages and its score.
    pub fn new(
        turn: u32,
        visitor_text: &'a str,
        reply: &'a str,
        score: (i32, Vec<Reason>),
    ) -> Self {
        TurnRecord {
            turn,
            visitor_text,
            reply,
            slots: vec![],
            email: None,
            intents: &[],
            detected: vec![],
            score,
            account_live: None,
            handoff: None,
            events: vec![],
            idempotency: None,
        }
    }
}

/// Slots as the store keeps them.
pub fn slot_pairs(slots: &[crate::slots::Slot]) -> Vec<(String, String)> {
    slots
        .iter()
        .map(|s| (s.name.to_string(), s.value.clone()))
        .collect()
}

fn account_live_event(
    tenant: &str,
    conv: &Conversation,
    a: &closer_kb::Account,
    r: &closer_kb::Rep,
) -> NewEvent {
    let verified = !conv.seen.account_claimed;
    let conv = conv.id.as_str();
    NewEvent {
        kind: "account_live".into(),
        tenant: tenant.into(),
        conversation_id: Some(conv.into()),
        rep_id: Some(r.id.clone()),
        team: Some(r.team.clone()).filter(|t| !t.is_empty()),
        payload: json!({
            "domain": a.domain,
            "account": a.name,
            "rep_id": r.id,
            "rep_name": r.name,
            "message": format!("your account {} is live in chat", a.domain),
            // False: the visitor only claimed the domain (the tenant checks identity).
            "verified": verified,
        }),
    }
}

/// The `handoff_requested` event (with the transcript so far, this turn included); records the
/// route on the conversation when it is new, and returns it for the store.
fn handoff_event(
    engine: &Engine,
    tenant: &Tenant,
    conv: &mut Conversation,
    h: &Handoff,
    r: &TurnRecord,
) -> Result<(NewEvent, Option<Routing>)> {
    let (rep, team, mode, detail, reps) = match &h.route {
        Route::Rep {
            rep_id,
            team,
            mode,
            detail,
        } => (
            Some(rep_id.clone()),
            team.clone(),
            *mode,
            detail.clone(),
            vec![],
        ),
        Route::Fallback { reps, team } => (
            None,
            team.clone(),
            "fallback",
            "nobody available: offer meetings".to_string(),
            reps.clone(),
        ),
        Route::Nobody => (None, None, "none", "no routing mode applies".into(), vec![]),
    };
    let mut route = None;
    if h.newly_routed {
        route = Some(Routing {
            rep_id: rep.clone(),
            team: team.clone(),
        });
        conv.routed = route.clone();
    }
    let kb = tenant.kb.snapshot();
    let mut transcript: Vec<serde_json::Value> = engine
        .store
        .transcript(&tenant.id, &conv.id)?
        .iter()
        .map(|m| json!({"turn": m.turn, "author": m.author, "text": m.text}))
        .collect();
    transcript.push(json!({"turn": r.turn, "author": "visitor", "text": r.visitor_text}));
    transcript.push(json!({"turn": r.turn, "author": "bot", "text": r.reply}));
    let slots: serde_json::Map<String, serde_json::Value> = conv
        .seen
        .slots
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.value)))
        .collect();
    conv.handed_off = true;
    let event = NewEvent {
        kind: "handoff_requested".into(),
        tenant: tenant.id.clone(),
        conversation_id: Some(conv.id.clone()),
        rep_id: rep.clone(),
        team: team.clone(),
        payload: json!({
            "rep_id": rep,
            "rep_name": rep.as_deref().and_then(|r| kb.rep(r)).map(|r| r.name.clone()),
            "team": team,
            "mode": mode,
            "detail": detail,
            "meeting_reps": reps,
            "reason": h.reason,
            "score": r.score.0,
            "domain": conv.seen.domain,
            "identity": conv.identity.as_ref().map(|i| i.level.as_str()),
            "slots": slots,
            "transcript": transcript,
        }),
    };
    Ok((event, route))
}

/// Writes a finished turn: the visitor's message and the reply, slots, intents, score, route and
/// the events they raise, in one transaction; then wakes subscribers.
pub fn record_turn(
    engine: &Engine,
    tenant: &Tenant,
    conv: &mut Conversation,
    r: TurnRecord,
) -> Result<(Lead, Vec<Event>)> {
    let now = closer_store::now_ms();
    let mut events = vec![];
    if let Some((a, rep)) = r.account_live {
        events.push(account_live_event(&tenant.id, conv, a, rep));
    }
    let mut route = None;
    if let Some(h) = &r.handoff {
        let (event, routed) = handoff_event(engine, tenant, conv, h, &r)?;
        events.push(event);
        route = routed.map(|x| (x.rep_id, x.team));
    }
    let TurnRecord {
        turn,
        visitor_text,
        reply,
        slots: new_slots,
        email,
        intents: new_intents,
        detected,
        score,
        events: extra_events,
        idempotency,
        ..
    } = r;
    events.extend(extra_events);
    let previous = conv.score;
    let changed = score.0 != previous || score.1 != conv.reasons;
    let message = |author, text: &str| Message {
        turn,
        author,
        text: text.to_string(),
        at_ms: now,
    };
    let w = TurnWrite {
        tenant: tenant.id.clone(),
        conversation_id: conv.id.clone(),
        domain: conv.seen.domain.clone(),
        email: email.or_else(|| {
            new_slots
                .iter()
                .find(|s| s.0 == "email")
                .map(|s| s.1.clone())
        }),
        messages: vec![
            message(Author::Visitor, visitor_text),
            message(Author::Bot, reply),
        ],
        slots: new_slots,
        intents: new_intents.iter().map(|i| (i.clone(), turn)).collect(),
        detected,
        score: Some(score.clone()),
        route,
        events,
        idempotency,
    };
    let (tenant_id, conv_id) = (tenant.id.clone(), conv.id.clone());
    let (lead, stored) = engine.store.record_turn(&w, &|lead| {
        if changed {
            vec![cql_event(&tenant_id, &conv_id, lead, previous)]
        } else {
            vec![]
        }
    })?;
    conv.score = score.0;
    conv.reasons = score.1;
    closer_store::bus::publish_events(&*engine.bus, &stored);
    Ok((lead, stored))
}

/// A visitor's message while a rep has the conversation: stored and passed to the rep as a
/// `visitor_message` event; the bot does not answer.
pub fn relay_visitor_message(
    engine: &Engine,
    tenant: &Tenant,
    conv: &Conversation,
    rep: &str,
    turn: u32,
    text: &str,
) -> Result<()> {
    let stored = engine.store.append_messages(
        &tenant.id,
        &conv.id,
        &[Message {
            turn,
            author: Author::Visitor,
            text: text.to_string(),
            at_ms: closer_store::now_ms(),
        }],
        &[NewEvent {
            kind: "visitor_message".into(),
            tenant: tenant.id.clone(),
            conversation_id: Some(conv.id.clone()),
            rep_id: Some(rep.to_string()),
            team: None,
            payload: json!({"rep_id": rep, "text": text, "turn": turn}),
        }],
    )?;
    closer_store::bus::publish_events(&*engine.bus, &stored);
    Ok(())
}
