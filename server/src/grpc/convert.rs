//! Domain ↔ `closer.v1`: the only place that turns the selling domain's values into proto
//! messages and back.

use closer_models::IntentPrediction;
use closer_proto::v1 as pb;
use closer_sales::turn::events::{
    HandoffKind, HandoffSignal, MeetingOffer, OfferedSlot, ReplyFinal, TurnEvent,
};
use closer_sales::visitor::Visitor;

/// The visitor's context as the domain keeps it.
pub fn visitor_from_pb(v: Option<&pb::VisitorContext>) -> Visitor {
    let Some(v) = v else {
        return Visitor::default();
    };
    Visitor::new(
        v.company_domain.as_deref(),
        v.email.as_deref(),
        v.page_url.as_deref(),
        v.timezone.as_deref(),
    )
}

/// The proto form of a prediction; spans are byte offsets into `text`.
pub fn to_pb_intent(text: &str, i: &IntentPrediction) -> pb::Intent {
    pb::Intent {
        name: i.name.clone(),
        confidence: i.confidence,
        span_start: i.span.0 as u32,
        span_end: i.span.1 as u32,
        span_text: text.get(i.span.0..i.span.1).unwrap_or_default().to_string(),
        ambiguous_with: i
            .alternative
            .as_ref()
            .map(|(name, confidence)| pb::Alternative {
                name: name.clone(),
                confidence: *confidence,
            }),
    }
}

pub fn to_pb_slots(slots: &[closer_sales::slots::Slot]) -> Vec<pb::Slot> {
    slots
        .iter()
        .map(|s| pb::Slot {
            name: s.name.to_string(),
            value: s.value.clone(),
            detail: s.detail.to_string(),
            span_start: s.span.0 as u32,
            span_end: s.span.1 as u32,
        })
        .collect()
}

fn handoff(h: HandoffSignal) -> pb::HandoffSignal {
    pb::HandoffSignal {
        turn: h.turn,
        kind: match h.kind {
            HandoffKind::AccountLive => pb::HandoffKind::AccountLive,
            HandoffKind::RepRequested => pb::HandoffKind::RepRequested,
        } as i32,
        rep_id: h.rep_id,
        rep_name: h.rep_name,
        account_domain: h.account_domain,
        message: h.message,
        reason: h.reason,
    }
}

fn meeting_slot(s: OfferedSlot) -> pb::MeetingSlot {
    pb::MeetingSlot {
        id: s.id,
        rep_id: s.rep_id,
        rep_name: s.rep_name,
        start_unix: s.start_unix,
        end_unix: s.end_unix,
        label: s.label,
    }
}

fn offer(o: MeetingOffer) -> pb::MeetingProposed {
    pb::MeetingProposed {
        turn: o.turn,
        timezone: o.timezone,
        slots: o.slots.into_iter().map(meeting_slot).collect(),
    }
}

fn reply_final(f: ReplyFinal) -> pb::ReplyFinal {
    pb::ReplyFinal {
        turn: f.turn,
        text: f.text,
        fact_ids: f.fact_ids,
        guard_replaced: f.guard_replaced,
        unanswered: f.unanswered,
        latency_ms: f.latency_ms,
    }
}

/// A turn event as the Converse stream sends it.
pub fn turn_event(e: TurnEvent) -> pb::converse_response::Event {
    use pb::converse_response::Event as E;
    match e {
        TurnEvent::Intents {
            turn,
            text,
            intents,
        } => E::Intents(pb::IntentsDetected {
            turn,
            intents: intents.iter().map(|i| to_pb_intent(&text, i)).collect(),
        }),
        TurnEvent::Slots { turn, slots } => E::Slots(pb::SlotsCaptured {
            turn,
            slots: to_pb_slots(&slots),
        }),
        TurnEvent::Handoff(h) => E::Handoff(handoff(h)),
        TurnEvent::MeetingProposed(o) => E::MeetingProposed(offer(o)),
        TurnEvent::MeetingBooked {
            turn,
            slot,
            meeting_link,
        } => E::MeetingBooked(pb::MeetingBooked {
            turn,
            slot: Some(meeting_slot(slot)),
            meeting_link,
        }),
        TurnEvent::Delta { turn, text } => E::Delta(pb::ReplyDelta { turn, text }),
        TurnEvent::Final(f) => E::Final(reply_final(f)),
    }
}

/// A knowledge-base fact.
pub fn pb_fact(f: closer_kb::Fact) -> pb::Fact {
    pb::Fact {
        id: f.id,
        kind: f.kind,
        question: f.question,
        answer: f.answer,
        tags: f.tags,
        intents: f.intents,
        valid_from: f.valid_from.unwrap_or_default(),
        valid_until: f.valid_until.unwrap_or_default(),
    }
}

/// A transcript line in its proto form.
pub fn pb_transcript_message(l: closer_sales::transcript::Line) -> pb::TranscriptMessage {
    let author = match l.author {
        closer_store::Author::Visitor => pb::MessageAuthor::Visitor,
        closer_store::Author::Bot => pb::MessageAuthor::Bot,
        closer_store::Author::Rep => pb::MessageAuthor::Rep,
    };
    pb::TranscriptMessage {
        turn: l.turn,
        author: author as i32,
        text: l.text,
        at_ms: l.at_ms,
        intents: l.intents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_event_keeps_every_field() {
        let e = turn_event(TurnEvent::Final(ReplyFinal {
            turn: 2,
            text: "Hi.".into(),
            fact_ids: vec!["a".into()],
            guard_replaced: true,
            unanswered: true,
            latency_ms: 7,
        }));
        let pb::converse_response::Event::Final(f) = e else {
            panic!("not a final event")
        };
        assert_eq!((f.turn, f.text.as_str(), f.latency_ms), (2, "Hi.", 7));
        assert!(f.guard_replaced && f.unanswered);
        assert_eq!(f.fact_ids, vec!["a".to_string()]);
    }

    #[test]
    fn intent_spans_carry_their_text() {
        let i = IntentPrediction {
            name: "pricing".into(),
            confidence: 0.9,
            span: (0, 9),
            alternative: Some(("trial".into(), 0.8)),
        };
        let p = to_pb_intent("How much? And SOC 2?", &i);
        assert_eq!(p.span_text, "How much?");
        assert_eq!(p.ambiguous_with.unwrap().name, "trial");
    }
}
