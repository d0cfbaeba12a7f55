//! The selling side of a conversation: what it has shown (intents, slots, account), its CQL
//! score by the tenant's playbook, routing to a rep, the qualification question to ask next, and
//! the durable write of each turn with its events (`account_live`, `cql_scored`,
//! `handoff_requested`) in one transaction.

use std::collections::HashSet;

use closer_kb::Snapshot;
use closer_store::{Author, Event, Lead, Message, NewEvent, Reason, Store, TurnWrite};
use serde_json::json;

use crate::answer::Visitor;
use crate::error::Result;
use crate::playbook::{self, Availability, Playbook, Route, Seen};
use crate::state::{Engine, Tenant};

/// One conversation's selling state. Rebuilt from the store when a conversation continues on
/// another replica or after a restart ([`Conversation::resume`]).
#[derive(Debug, Clone)]
pub struct Conversation {
    pub tenant: String,
    pub id: String,
    pub seen: Seen,
    /// The playbook's score now.
    pub score: i32,
    pub reasons: Vec<Reason>,
    /// Where it was routed: (rep, team).
    pub routed: Option<(Option<String>, Option<String>)>,
    pub handed_off: bool,
    /// Slots whose question was asked.
    pub asked: HashSet<String>,
    pub account_live_sent: bool,
    pub turns: u32,
}

fn email_detail(email: &str) -> &'static str {
    match email.rsplit_once('@') {
        Some((_, d)) if crate::slots::is_free_mail(d) => "free_mail",
        _ => "business",
    }
}

impl Conversation {
    /// The state of `id`: from the store when it has the conversation, else new.
    pub fn resume(store: &dyn Store, tenant: &Tenant, id: &str, visitor: &Visitor) -> Result<Self> {
        let mut c = Conversation {
            tenant: tenant.id.clone(),
            id: id.to_string(),
            seen: Seen::default(),
            score: 0,
            reasons: vec![],
            routed: None,
            handed_off: false,
            asked: HashSet::new(),
            account_live_sent: false,
            turns: 0,
        };
        c.seen.domain = visitor.domain.clone();
        if let Some(e) = &visitor.email {
            c.seen.slots.insert(
                "email".into(),
                (e.to_lowercase(), email_detail(e).into(), 0),
            );
        }
        if let Some(lead) = store.lead(&tenant.id, id)? {
            c.turns = lead.turns;
            c.score = lead.bot_score;
            c.reasons = lead.reasons.clone();
            c.seen.intents = lead.intents.clone();
            for (k, v) in &lead.slots {
                let detail = if k == "email" { email_detail(v) } else { "" };
                c.seen
                    .slots
                    .entry(k.clone())
                    .or_insert((v.clone(), detail.into(), 0));
            }
            c.seen.domain = c.seen.domain.take().or(lead.domain.clone());
            c.routed = (lead.rep_id.is_some() || lead.team.is_some())
                .then(|| (lead.rep_id.clone(), lead.team.clone()));
            c.handed_off = c.routed.is_some();
            c.account_live_sent = c.turns > 0;
            let pb = tenant.playbook();
            for m in store.transcript(&tenant.id, id)? {
                if m.author == Author::Bot {
                    for q in &pb.questions {
                        if m.text.contains(&q.ask) {
                            c.asked.insert(q.slot.clone());
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// Records what a turn showed.
    pub fn observe(
        &mut self,
        turn: u32,
        intents: &[String],
        slots: &[crate::slots::Slot],
        kb: &Snapshot,
    ) {
        self.turns = turn;
        for i in intents {
            self.seen.intents.entry(i.clone()).or_insert(turn);
        }
        for s in slots {
            self.seen.slots.insert(
                s.name.to_string(),
                (s.value.clone(), s.detail.to_string(), turn),
            );
        }
        if self.seen.domain.is_none() {
            // A stated company domain, or a business email's domain, names the company.
            self.seen.domain = self
                .seen
                .slots
                .get("company_domain")
                .map(|s| s.0.clone())
                .or_else(|| {
                    self.seen
                        .slots
                        .get("email")
                        .filter(|s| s.1 == "business")
                        .and_then(|s| s.0.rsplit_once('@').map(|x| x.1.to_string()))
                });
        }
        self.seen.account = self
            .seen
            .domain
            .as_deref()
            .and_then(|d| kb.account(d))
            .cloned();
    }

    /// Whether a slot's answer is known, from the visitor or from the account table.
    fn knows(&self, slot: &str) -> bool {
        if self.seen.slots.contains_key(slot) {
            return true;
        }
        let a = self.seen.account.as_ref();
        match slot {
            "company_size" => a.is_some_and(|a| a.employees.is_some()),
            "country" => a.is_some_and(|a| !a.country.is_empty()),
            "company_domain" => self.seen.domain.is_some(),
            _ => false,
        }
    }

    /// The next qualification question, if one is due: the first in the playbook's order whose
    /// slot is unknown and that was not asked yet, once the score allows.
    pub fn next_question<'p>(&mut self, pb: &'p Playbook, score: i32) -> Option<&'p str> {
        if score < 0 || score < pb.ask_from_score {
            return None;
        }
        let q = pb
            .questions
            .iter()
            .find(|q| !self.knows(&q.slot) && !self.asked.contains(&q.slot))?;
        self.asked.insert(q.slot.clone());
        Some(&q.ask)
    }
}

/// Routes by the playbook with the store's presence, load and round-robin counters.
pub fn route(engine: &Engine, tenant: &Tenant, pb: &Playbook, seen: &Seen) -> Result<Route> {
    let store = &engine.store;
    let kb = tenant.kb.snapshot();
    let avail = Availability {
        presence: store
            .presence(&tenant.id)?
            .into_iter()
            .map(|p| (p.rep_id, (p.online, p.capacity)))
            .collect(),
        load: store.open_load(&tenant.id)?,
        now: closer_kb::time::now(),
    };
    let mut rr_error = None;
    let r = playbook::route(pb, seen, &kb.reps(), &avail, &mut |team, cands| match store
        .round_robin(&tenant.id, team, cands)
    {
        Ok(r) => r,
        Err(e) => {
            rr_error = Some(e);
            None
        }
    });
    match rr_error {
        Some(e) => Err(e.into()),
        None => Ok(r),
    }
}

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
        payload: json!({
            "score": lead.score,
            "previous": previous,
            "bot_score": lead.bot_score,
            "manual": lead.manual,
            "reasons": reasons_json(&lead.reasons),
        }),
    }
}

/// What the turn decided about hand-off, for the durable write.
pub struct Handoff {
    pub route: Route,
    pub reason: String,
    pub newly_routed: bool,
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
    pub score: (i32, Vec<Reason>),
    pub account_live: Option<(&'a closer_kb::Account, &'a closer_kb::Rep)>,
    pub handoff: Option<Handoff>,
    pub idempotency: Option<(String, String, Vec<u8>)>,
}

/// Slots as the store keeps them.
pub fn slot_pairs(slots: &[crate::slots::Slot]) -> Vec<(String, String)> {
    slots
        .iter()
        .map(|s| (s.name.to_string(), s.value.clone()))
        .collect()
}

/// Writes a finished turn: the visitor's message and the reply, slots, intents, score, route and
/// the events they raise, in one transaction; then wakes subscribers.
pub fn record_turn(
    engine: &Engine,
    tenant: &Tenant,
    conv: &mut Conversation,
    r: TurnRecord,
) -> Result<(Lead, Vec<Event>)> {
    let TurnRecord {
        turn,
        visitor_text,
        reply,
        slots: new_slots,
        email,
        intents: new_intents,
        score,
        account_live,
        handoff,
        idempotency,
    } = r;
    let now = closer_store::now_ms();
    let mut events = vec![];
    if let Some((a, r)) = account_live {
        events.push(NewEvent {
            kind: "account_live".into(),
            tenant: tenant.id.clone(),
            conversation_id: Some(conv.id.clone()),
            rep_id: Some(r.id.clone()),
            team: Some(r.team.clone()).filter(|t| !t.is_empty()),
            payload: json!({
                "domain": a.domain,
                "account": a.name,
                "rep_id": r.id,
                "rep_name": r.name,
                "message": format!("your account {} is live in chat", a.domain),
            }),
        });
    }
    let mut route = None;
    if let Some(h) = &handoff {
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
        if h.newly_routed {
            route = Some((rep.clone(), team.clone()));
            conv.routed = route.clone();
        }
        let kb = tenant.kb.snapshot();
        let mut transcript: Vec<serde_json::Value> = engine
            .store
            .transcript(&tenant.id, &conv.id)?
            .iter()
            .map(|m| json!({"turn": m.turn, "author": m.author, "text": m.text}))
            .collect();
        transcript.push(json!({"turn": turn, "author": "visitor", "text": visitor_text}));
        transcript.push(json!({"turn": turn, "author": "bot", "text": reply}));
        let slots: serde_json::Map<String, serde_json::Value> = conv
            .seen
            .slots
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.0)))
            .collect();
        events.push(NewEvent {
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
                "score": score.0,
                "domain": conv.seen.domain,
                "slots": slots,
                "transcript": transcript,
            }),
        });
        conv.handed_off = true;
    }
    let previous = conv.score;
    let changed = score.0 != previous || score.1 != conv.reasons;
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
            Message {
                turn,
                author: Author::Visitor,
                text: visitor_text.to_string(),
                at_ms: now,
            },
            Message {
                turn,
                author: Author::Bot,
                text: reply.to_string(),
                at_ms: now,
            },
        ],
        slots: new_slots,
        intents: new_intents.iter().map(|i| (i.clone(), turn)).collect(),
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
    if let Some(last) = stored.iter().map(|e| e.cursor).max() {
        engine.bus.publish(last);
    }
    Ok((lead, stored))
}
