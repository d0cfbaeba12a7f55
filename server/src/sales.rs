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
    /// Meeting slots offered and not yet taken (the visitor may pick one next turn).
    pub proposed: Vec<crate::meetings::Slot>,
    pub meeting_booked: bool,
    /// The rep who has taken the conversation over, while they have it.
    pub taken_over: Option<String>,
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
            proposed: vec![],
            meeting_booked: false,
            taken_over: None,
        };
        c.seen.domain = visitor.domain.clone();
        if let Some(e) = &visitor.email {
            c.seen.slots.insert(
                "email".into(),
                (e.to_lowercase(), email_detail(e).into(), 0),
            );
        }
        if let Some(ctl) = store.control(&tenant.id, id)? {
            c.taken_over = ctl.taken_over_by;
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

/// How a meeting offer starts; the rep's name and the proposed times follow.
pub const MEETING_OFFER: &str = "Would one of these times work for a call with";

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
    /// Further events of the turn (meeting_proposed, meeting_booked).
    pub events: Vec<NewEvent>,
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
        events: extra_events,
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
    events.extend(extra_events);
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
    if let Some(e) = stored.last() {
        engine.bus.publish(e.cursor);
    }
    Ok(())
}

/// The visitor's time zone, UTC when unknown.
pub fn visitor_tz(v: &Visitor) -> &str {
    v.timezone.as_deref().unwrap_or("UTC")
}

/// Offers meeting slots: with the routed rep, else the hand-off's or fallback reps, else the
/// account owner, else the first rep routing would pick. Returns the stream event, the line for
/// the reply, and the durable event; `None` when nobody has free time.
pub fn propose(
    engine: &Engine,
    tenant: &Tenant,
    pb_: &Playbook,
    conv: &mut Conversation,
    visitor: &Visitor,
    handoff: Option<&Handoff>,
    turn: u32,
) -> Result<Option<(closer_proto::v1::MeetingProposed, String, NewEvent)>> {
    let kb = tenant.kb.snapshot();
    let mut reps: Vec<String> = vec![];
    if let Some(Some(r)) = conv.routed.as_ref().map(|r| r.0.clone()) {
        reps.push(r);
    }
    match handoff.map(|h| &h.route) {
        Some(Route::Rep { rep_id, .. }) => reps.push(rep_id.clone()),
        Some(Route::Fallback { reps: r, .. }) => reps.extend(r.iter().cloned()),
        _ => {}
    }
    if let Some(a) = &conv.seen.account {
        reps.push(a.owner_rep_id.clone());
    }
    if reps.is_empty() {
        let avail = Availability {
            now: closer_kb::time::now(),
            ..Availability::default()
        };
        if let Route::Rep { rep_id, .. } =
            playbook::route(pb_, &conv.seen, &kb.reps(), &avail, &mut |_, c| {
                c.first().cloned()
            })
        {
            reps.push(rep_id);
        }
    }
    let now = closer_kb::time::now();
    let horizon = now + 15 * 24 * 3600;
    for id in reps {
        let Some(rep) = kb.rep(&id) else { continue };
        let booked: Vec<(i64, i64)> = engine
            .store
            .meetings(&tenant.id, &id, now, horizon)?
            .iter()
            .map(|m| (m.start, m.end))
            .collect();
        let slots = crate::meetings::free_slots(rep, pb_.team(&rep.team), &booked, now, 3);
        if slots.is_empty() {
            continue;
        }
        let tz = visitor_tz(visitor);
        let labels: Vec<String> = slots
            .iter()
            .map(|s| crate::meetings::label(s.start, tz))
            .collect();
        let line = format!(
            "{MEETING_OFFER} {}: {} ({tz})?",
            rep.name,
            match labels.as_slice() {
                [a] => a.clone(),
                [a, b] => format!("{a} or {b}"),
                [rest @ .., last] => format!("{} or {last}", rest.join("; ")),
                [] => String::new(),
            }
        );
        let event = NewEvent {
            kind: "meeting_proposed".into(),
            tenant: tenant.id.clone(),
            conversation_id: Some(conv.id.clone()),
            rep_id: Some(id.clone()),
            team: Some(rep.team.clone()).filter(|t| !t.is_empty()),
            payload: json!({
                "rep_id": id,
                "timezone": tz,
                "slots": slots.iter().zip(&labels).map(|(s, l)| json!({"start": s.start, "end": s.end, "label": l})).collect::<Vec<_>>(),
            }),
        };
        let proposed = closer_proto::v1::MeetingProposed {
            turn,
            timezone: tz.to_string(),
            slots: slots
                .iter()
                .zip(&labels)
                .enumerate()
                .map(|(i, (s, l))| pb_slot(i, s, &rep.name, l))
                .collect(),
        };
        conv.proposed = slots;
        return Ok(Some((proposed, line, event)));
    }
    Ok(None)
}

pub fn pb_slot(
    i: usize,
    s: &crate::meetings::Slot,
    rep_name: &str,
    label: &str,
) -> closer_proto::v1::MeetingSlot {
    closer_proto::v1::MeetingSlot {
        id: (i + 1).to_string(),
        rep_id: s.rep_id.clone(),
        rep_name: rep_name.to_string(),
        start_unix: s.start,
        end_unix: s.end,
        label: label.to_string(),
    }
}

/// A turn that picks proposed slot `i`: books it (or, when someone took it meanwhile, offers
/// new times), replies, and records the turn.
#[allow(clippy::too_many_arguments)]
pub fn book_turn(
    engine: &Engine,
    tenant: &Tenant,
    visitor: &Visitor,
    conv: &mut Conversation,
    turn: u32,
    text: &str,
    i: usize,
    emit: &mut dyn FnMut(closer_proto::v1::converse_response::Event) -> std::ops::ControlFlow<()>,
) -> Result<()> {
    use closer_proto::v1 as pb;
    use pb::converse_response::Event as E;
    let started = std::time::Instant::now();
    if emit(E::Intents(pb::IntentsDetected {
        turn,
        intents: vec![],
    }))
    .is_break()
    {
        return Ok(());
    }
    let kb = tenant.kb.snapshot();
    let slot = conv.proposed[i].clone();
    let tz = visitor_tz(visitor).to_string();
    let label = crate::meetings::label(slot.start, &tz);
    let rep = kb.rep(&slot.rep_id).cloned();
    let rep_name = rep.as_ref().map_or(slot.rep_id.clone(), |r| r.name.clone());
    let email = conv.seen.slots.get("email").map(|s| s.0.clone());
    let meeting = closer_store::Meeting {
        id: 0,
        tenant: tenant.id.clone(),
        rep_id: slot.rep_id.clone(),
        start: slot.start,
        end: slot.end,
        conversation_id: conv.id.clone(),
        email: email.clone(),
    };
    let (conv_id, tenant_id, l2) = (conv.id.clone(), tenant.id.clone(), label.clone());
    let booked = engine.store.book_meeting(&meeting, &|m| {
        vec![NewEvent {
            kind: "meeting_booked".into(),
            tenant: tenant_id.clone(),
            conversation_id: Some(conv_id.clone()),
            rep_id: Some(m.rep_id.clone()),
            team: None,
            payload: json!({
                "meeting_id": m.id, "rep_id": m.rep_id, "start": m.start, "end": m.end,
                "label": l2, "timezone": visitor_tz(visitor), "email": m.email,
            }),
        }]
    });
    let mut events = vec![];
    let reply = match booked {
        Ok((_, stored)) => {
            if let Some(e) = stored.last() {
                engine.bus.publish(e.cursor);
            }
            conv.meeting_booked = true;
            conv.proposed.clear();
            let link = rep
                .as_ref()
                .map(|r| r.meeting_link.clone())
                .unwrap_or_default();
            if emit(E::MeetingBooked(pb::MeetingBooked {
                turn,
                slot: Some(pb_slot(i, &slot, &rep_name, &label)),
                meeting_link: link.clone(),
            }))
            .is_break()
            {
                return Ok(());
            }
            let mut r = format!("You're booked with {rep_name} on {label} ({tz}).");
            if !link.is_empty() {
                r.push_str(&format!(" Join here: {link}"));
            }
            r
        }
        Err(closer_store::Error::Conflict(_)) => {
            conv.proposed.clear();
            let pb_ = tenant.playbook();
            match propose(engine, tenant, &pb_, conv, visitor, None, turn)? {
                Some((proposed, line, ev)) => {
                    events.push(ev);
                    if emit(E::MeetingProposed(proposed)).is_break() {
                        return Ok(());
                    }
                    format!("Sorry, that time was just taken. {line}")
                }
                None => "Sorry, that time was just taken, and there is no other free time soon; a rep will follow up.".to_string(),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if emit(E::Delta(pb::ReplyDelta {
        turn,
        text: reply.clone(),
    }))
    .is_break()
    {
        return Ok(());
    }
    let score = (conv.score, conv.reasons.clone());
    record_turn(
        engine,
        tenant,
        conv,
        TurnRecord {
            turn,
            visitor_text: text,
            reply: &reply,
            slots: vec![],
            email: None,
            intents: &[],
            score,
            account_live: None,
            handoff: None,
            events,
            idempotency: None,
        },
    )?;
    let _ = emit(E::Final(pb::ReplyFinal {
        turn,
        text: reply,
        fact_ids: vec![],
        guard_replaced: false,
        unanswered: false,
        latency_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
    }));
    Ok(())
}
