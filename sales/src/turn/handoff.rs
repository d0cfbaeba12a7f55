//! The hand-off phase: the account-live alert, the decision whether this turn hands the visitor
//! to a person (and to whom), and the signal the sales team sees.

use closer_kb::{Account, Rep, Snapshot};

use super::events::{HandoffKind, HandoffSignal};
use super::plan::HandoffAsk;
use crate::conversation::{Conversation, Routing};
use crate::engine::{Engine, Tenant};
use crate::error::Result;
use crate::playbook::{Playbook, Route};
use crate::visitor::Visitor;

/// Whether this turn hands the conversation to a person, and how its rep is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffDecision {
    /// No durable hand-off this turn.
    None,
    /// To the rep the conversation is already routed to.
    Assigned {
        rep_id: String,
        team: Option<String>,
        reason: String,
    },
    /// Routed anew by the playbook.
    Route { reason: String },
}

/// The durable hand-off: routed by the playbook, once per conversation unless the visitor asks
/// for a person again; a disqualified visitor is handed off only on request. A score at the
/// playbook's `handoff_from_score` hands off too.
pub fn decide(
    ask: Option<HandoffAsk>,
    score: i32,
    playbook: &Playbook,
    conv: &Conversation,
) -> HandoffDecision {
    let asked_for_person = ask == Some(HandoffAsk::AskedForPerson);
    let mut reason: Option<String> = ask
        .filter(|_| score >= 0 || asked_for_person)
        .map(|a| a.reason().to_string());
    if reason.is_none() && playbook.handoff_from_score > 0 && score >= playbook.handoff_from_score {
        reason = Some(format!(
            "CQL score {score} reached the playbook's hand-off score"
        ));
    }
    if conv.handed_off && !asked_for_person {
        reason = None;
    }
    match (reason, &conv.routed) {
        (None, _) => HandoffDecision::None,
        (
            Some(reason),
            Some(Routing {
                rep_id: Some(rep_id),
                team,
            }),
        ) => HandoffDecision::Assigned {
            rep_id: rep_id.clone(),
            team: team.clone(),
            reason,
        },
        (Some(reason), _) => HandoffDecision::Route { reason },
    }
}

/// What the turn decided about hand-off, for the durable write.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub route: Route,
    pub reason: String,
    pub newly_routed: bool,
}

/// Turns a decision into a route (routing by the playbook with the store's presence, load and
/// round-robin counters when needed).
pub fn resolve(
    engine: &Engine,
    tenant: &Tenant,
    playbook: &Playbook,
    conv: &Conversation,
    decision: HandoffDecision,
) -> Result<Option<Handoff>> {
    Ok(match decision {
        HandoffDecision::None => None,
        HandoffDecision::Assigned {
            rep_id,
            team,
            reason,
        } => Some(Handoff {
            route: Route::Rep {
                rep_id,
                team,
                mode: "assigned",
                detail: "the rep this conversation is routed to".into(),
            },
            reason,
            newly_routed: false,
        }),
        HandoffDecision::Route { reason } => Some(Handoff {
            route: crate::conversation::route(engine, tenant, playbook, &conv.seen)?,
            reason,
            newly_routed: true,
        }),
    })
}

/// The first time a known account's visitor is seen, its owner is told (once per conversation).
pub fn account_live(
    conv: &mut Conversation,
    kb: &Snapshot,
    turn: u32,
) -> Option<(Account, Rep, HandoffSignal)> {
    if conv.account_live_sent {
        return None;
    }
    let a = conv.seen.account.clone()?;
    let r = kb.rep(&a.owner_rep_id)?.clone();
    conv.account_live_sent = true;
    let signal = HandoffSignal {
        turn,
        kind: HandoffKind::AccountLive,
        rep_id: Some(r.id.clone()),
        rep_name: Some(r.name.clone()),
        account_domain: Some(a.domain.clone()),
        message: format!(
            "account owner {}: your account {} is live in chat",
            r.name, a.domain
        ),
        reason: "account owner".into(),
    };
    Some((a, r, signal))
}

/// The signal that a visitor needs a rep (their account's owner when known).
pub fn rep_requested(
    ask: HandoffAsk,
    visitor: &Visitor,
    owner: Option<&Rep>,
    text: &str,
    turn: u32,
) -> HandoffSignal {
    let reason = ask.reason();
    HandoffSignal {
        turn,
        kind: HandoffKind::RepRequested,
        rep_id: owner.map(|r| r.id.clone()),
        rep_name: owner.map(|r| r.name.clone()),
        account_domain: visitor.domain.clone(),
        message: format!(
            "visitor{} needs a rep: {reason}: \"{}\"",
            visitor
                .domain
                .as_ref()
                .map(|d| format!(" from {d}"))
                .unwrap_or_default(),
            text.chars().take(200).collect::<String>()
        ),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Conversation {
        Conversation::new("t", "c1")
    }

    fn playbook(handoff_from: i32) -> Playbook {
        let mut p = Playbook::from_intents(&closer_models::intent::IntentSet { intents: vec![] });
        p.handoff_from_score = handoff_from;
        p
    }

    #[test]
    fn an_unanswered_question_routes_once_and_a_request_for_a_person_again() {
        let pb = playbook(0);
        let mut c = conv();
        assert_eq!(
            decide(Some(HandoffAsk::Unanswered), 1, &pb, &c),
            HandoffDecision::Route {
                reason: "unanswered question".into()
            }
        );
        c.handed_off = true;
        c.routed = Some(Routing {
            rep_id: Some("r-a".into()),
            team: Some("emea".into()),
        });
        assert_eq!(
            decide(Some(HandoffAsk::Unanswered), 1, &pb, &c),
            HandoffDecision::None
        );
        assert_eq!(
            decide(Some(HandoffAsk::AskedForPerson), 1, &pb, &c),
            HandoffDecision::Assigned {
                rep_id: "r-a".into(),
                team: Some("emea".into()),
                reason: "asked for a person".into()
            }
        );
    }

    #[test]
    fn a_disqualified_visitor_is_handed_off_only_on_request() {
        let pb = playbook(0);
        let c = conv();
        assert_eq!(
            decide(Some(HandoffAsk::Unanswered), -1, &pb, &c),
            HandoffDecision::None
        );
        assert!(matches!(
            decide(Some(HandoffAsk::AskedForPerson), -1, &pb, &c),
            HandoffDecision::Route { .. }
        ));
    }

    #[test]
    fn a_high_score_hands_off_without_a_request() {
        let c = conv();
        assert_eq!(decide(None, 2, &playbook(3), &c), HandoffDecision::None);
        assert_eq!(
            decide(None, 3, &playbook(3), &c),
            HandoffDecision::Route {
                reason: "CQL score 3 reached the playbook's hand-off score".into()
            }
        );
        assert_eq!(decide(None, 3, &playbook(0), &c), HandoffDecision::None);
    }

    #[test]
    fn the_rep_request_names_domain_and_quotes_the_message() {
        let v = Visitor::new(Some("acme.com"), None, None, None);
        let s = rep_requested(HandoffAsk::Unanswered, &v, None, "any discounts?", 2);
        assert_eq!(s.kind, HandoffKind::RepRequested);
        assert_eq!(
            s.message,
            "visitor from acme.com needs a rep: unanswered question: \"any discounts?\""
        );
        assert_eq!(s.account_domain.as_deref(), Some("acme.com"));
    }
}
