//! The meeting step: offering a rep's free times once the score (or an unavailable team) calls
//! for it, and booking the time the visitor picks.

use std::ops::ControlFlow;
use std::time::Instant;

use closer_store::NewEvent;
use serde_json::json;

use super::commit::{record_turn, TurnRecord};
use super::events::{MeetingOffer, OfferedSlot, ReplyFinal, TurnEvent};
use super::handoff::Handoff;
use crate::conversation::Conversation;
use crate::engine::{Engine, Tenant};
use crate::error::Result;
use crate::meetings::{self, Slot};
use crate::playbook::{self, Availability, Playbook, Route};
use crate::visitor::Visitor;

/// How a meeting offer starts; the rep's name and the proposed times follow.
pub const MEETING_OFFER: &str = "Would one of these times work for a call with";

/// The offered time the visitor's message picks, if an offer is open and it picks one.
pub fn chosen_slot(conv: &Conversation, visitor: &Visitor, text: &str) -> Option<usize> {
    if conv.proposed.is_empty() {
        return None;
    }
    let labels: Vec<String> = conv
        .proposed
        .iter()
        .map(|s| meetings::label(s.start, visitor.tz()))
        .collect();
    meetings::chosen(text, &labels)
}

/// What the meeting step adds to a turn.
#[derive(Debug, Default)]
pub struct MeetingStep {
    pub offer: Option<MeetingOffer>,
    /// The offer's line in the reply.
    pub line: Option<String>,
    /// Its durable event.
    pub events: Vec<NewEvent>,
}

/// Offers meeting times once the score reaches the playbook's `offer_meeting_from_score`, or
/// when routing found nobody available now; never twice while an offer is open or after a
/// booking, never to a disqualified visitor.
#[allow(clippy::too_many_arguments)]
pub fn offer_step(
    engine: &Engine,
    tenant: &Tenant,
    playbook: &Playbook,
    conv: &mut Conversation,
    visitor: &Visitor,
    handoff: Option<&Handoff>,
    score: i32,
    turn: u32,
) -> Result<MeetingStep> {
    let fallback = matches!(handoff.map(|h| &h.route), Some(Route::Fallback { .. }));
    let offer_at = playbook.offer_meeting_from_score;
    let due = fallback || (offer_at > 0 && score >= offer_at);
    if conv.meeting_booked || !conv.proposed.is_empty() || score < 0 || !due {
        return Ok(MeetingStep::default());
    }
    Ok(
        match propose(engine, tenant, playbook, conv, visitor, handoff, turn)? {
            Some((offer, line, event)) => MeetingStep {
                offer: Some(offer),
                line: Some(line),
                events: vec![event],
            },
            None => MeetingStep::default(),
        },
    )
}

/// The reps whose time is offered, best first: the routed rep, the hand-off's or fallback reps,
/// the account owner, else the first rep routing would pick.
fn candidate_reps(
    pb: &Playbook,
    conv: &Conversation,
    handoff: Option<&Handoff>,
    reps: &[&closer_kb::Rep],
) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    if let Some(r) = conv.routed.as_ref().and_then(|r| r.rep_id.clone()) {
        out.push(r);
    }
    match handoff.map(|h| &h.route) {
        Some(Route::Rep { rep_id, .. }) => out.push(rep_id.clone()),
        Some(Route::Fallback { reps: r, .. }) => out.extend(r.iter().cloned()),
        _ => {}
    }
    if let Some(a) = &conv.seen.account {
        out.push(a.owner_rep_id.clone());
    }
    if out.is_empty() {
        let avail = Availability {
            now: closer_kb::time::now(),
            ..Availability::default()
        };
        if let Route::Rep { rep_id, .. } =
            playbook::route(pb, &conv.seen, reps, &avail, &mut |_, c| c.first().cloned())
        {
            out.push(rep_id);
        }
    }
    out
}

/// "a", "a or b", "a; b or c".
fn or_list(labels: &[String]) -> String {
    match labels {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join("; ")),
    }
}

/// Offers up to three free times of the first candidate rep who has any. Returns the stream
/// event, the line for the reply, and the durable event; `None` when nobody has free time.
pub fn propose(
    engine: &Engine,
    tenant: &Tenant,
    pb: &Playbook,
    conv: &mut Conversation,
    visitor: &Visitor,
    handoff: Option<&Handoff>,
    turn: u32,
) -> Result<Option<(MeetingOffer, String, NewEvent)>> {
    let kb = tenant.kb.snapshot();
    let now = closer_kb::time::now();
    let horizon = now + 15 * 24 * 3600;
    for id in candidate_reps(pb, conv, handoff, &kb.reps()) {
        let Some(rep) = kb.rep(&id) else { continue };
        let booked: Vec<(i64, i64)> = engine
            .store
            .meetings(&tenant.id, &id, now, horizon)?
            .iter()
            .map(|m| (m.start, m.end))
            .collect();
        let slots = meetings::free_slots(rep, pb.team(&rep.team), &booked, now, 3);
        if slots.is_empty() {
            continue;
        }
        let tz = visitor.tz();
        let labels: Vec<String> = slots.iter().map(|s| meetings::label(s.start, tz)).collect();
        let line = format!("{MEETING_OFFER} {}: {} ({tz})?", rep.name, or_list(&labels));
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
        let offer = MeetingOffer {
            turn,
            timezone: tz.to_string(),
            slots: slots
                .iter()
                .zip(&labels)
                .enumerate()
                .map(|(i, (s, l))| offered_slot(i, s, &rep.name, l))
                .collect(),
        };
        conv.proposed = slots;
        return Ok(Some((offer, line, event)));
    }
    Ok(None)
}

fn offered_slot(i: usize, s: &Slot, rep_name: &str, label: &str) -> OfferedSlot {
    OfferedSlot {
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
    emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
) -> Result<()> {
    let started = Instant::now();
    send!(
        emit,
        TurnEvent::Intents {
            turn,
            text: text.to_string(),
            intents: vec![]
        }
    );
    let mut events = vec![];
    let reply = match book(engine, tenant, visitor, conv, i) {
        Ok((slot, link)) => {
            send!(
                emit,
                TurnEvent::MeetingBooked {
                    turn,
                    meeting_link: link.clone(),
                    slot: slot.clone()
                }
            );
            let tz = visitor.tz();
            let mut r = format!(
                "You're booked with {} on {} ({tz}).",
                slot.rep_name, slot.label
            );
            if !link.is_empty() {
                r.push_str(&format!(" Join here: {link}"));
            }
            r
        }
        Err(crate::Error::Store(closer_store::Error::Conflict(_))) => {
            conv.proposed.clear();
            let pb = tenant.playbook();
            match propose(engine, tenant, &pb, conv, visitor, None, turn)? {
                Some((offer, line, ev)) => {
                    events.push(ev);
                    send!(emit, TurnEvent::MeetingProposed(offer));
                    format!("Sorry, that time was just taken. {line}")
                }
                None => "Sorry, that time was just taken, and there is no other free time soon; a rep will follow up.".to_string(),
            }
        }
        Err(e) => return Err(e),
    };
    send!(
        emit,
        TurnEvent::Delta {
            turn,
            text: reply.clone()
        }
    );
    let score = (conv.score, conv.reasons.clone());
    record_turn(
        engine,
        tenant,
        conv,
        TurnRecord {
            events,
            ..TurnRecord::new(turn, text, &reply, score)
        },
    )?;
    let _ = emit(TurnEvent::Final(ReplyFinal {
        turn,
        text: reply,
        latency_ms: super::control::elapsed_ms(started),
        ..Default::default()
    }));
    Ok(())
}

/// Books proposed slot `i` in the store (one of two overlapping bookings wins); the offered
/// slot and the rep's meeting link.
fn book(
    engine: &Engine,
    tenant: &Tenant,
    visitor: &Visitor,
    conv: &mut Conversation,
    i: usize,
) -> Result<(OfferedSlot, String)> {
    let kb = tenant.kb.snapshot();
    let slot = conv.proposed[i].clone();
    let label = meetings::label(slot.start, visitor.tz());
    let rep = kb.rep(&slot.rep_id).cloned();
    let rep_name = rep.as_ref().map_or(slot.rep_id.clone(), |r| r.name.clone());
    let meeting = closer_store::Meeting {
        id: 0,
        tenant: tenant.id.clone(),
        rep_id: slot.rep_id.clone(),
        start: slot.start,
        end: slot.end,
        conversation_id: conv.id.clone(),
        email: conv.seen.slots.get("email").map(|s| s.value.clone()),
    };
    let (conv_id, tenant_id, l2) = (conv.id.clone(), tenant.id.clone(), label.clone());
    let (_, stored) = engine.store.book_meeting(&meeting, &|m| {
        vec![NewEvent {
            kind: "meeting_booked".into(),
            tenant: tenant_id.clone(),
            conversation_id: Some(conv_id.clone()),
            rep_id: Some(m.rep_id.clone()),
            team: None,
            payload: json!({
                "meeting_id": m.id, "rep_id": m.rep_id, "start": m.start, "end": m.end,
                "label": l2, "timezone": visitor.tz(), "email": m.email,
            }),
        }]
    })?;
    closer_store::bus::publish_events(&*engine.bus, &stored);
    conv.meeting_booked = true;
    conv.proposed.clear();
    let link = rep.map(|r| r.meeting_link).unwrap_or_default();
    Ok((offered_slot(i, &slot, &rep_name, &label), link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_times_read_as_a_list() {
        let l = |v: &[&str]| or_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(l(&[]), "");
        assert_eq!(l(&["Mon 10:00"]), "Mon 10:00");
        assert_eq!(l(&["a", "b"]), "a or b");
        assert_eq!(l(&["a", "b", "c"]), "a; b or c");
    }
}
