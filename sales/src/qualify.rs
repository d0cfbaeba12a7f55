//! Form-to-chat: a submitted web form scored by the playbook like a conversation, routed when
//! the score is high enough, and answered with the next step. Retry-safe: one idempotency key
//! gets the same answer and one lead.

use std::collections::HashMap;

use closer_store::Lead;
use serde::{Deserialize, Serialize};

use crate::conversation::Conversation;
use crate::engine::{Engine, Tenant};
use crate::error::{Error, Result};
use crate::playbook::{Route, SlotValue};
use crate::turn::commit::{record_turn, TurnRecord};
use crate::turn::handoff::Handoff;
use crate::visitor::Visitor;

/// What the team should do with the form's visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NextStep {
    ChatNow,
    OfferMeeting,
    Nurture,
    Disqualified,
}

/// The answer to a form (stored under its idempotency key; the lead is read fresh).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormOutcome {
    pub next_step: NextStep,
    pub rep_id: Option<String>,
    pub rep_name: Option<String>,
    pub team: Option<String>,
    /// Fallback reps whose meeting times to offer.
    pub reps: Vec<String>,
    pub message: String,
    #[serde(skip)]
    pub lead: Option<Lead>,
}

const SCOPE: &str = "qualify_form";

/// A form field as a slot: (slot name, value, detail); `Err` names what is wrong.
pub fn form_slot(name: &str, value: &str) -> Result<Option<(String, String, String)>> {
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

/// The outcome's next step and message from the score and the route found.
fn outcome(score: i32, route: Option<&Route>, kb: &closer_kb::Snapshot) -> FormOutcome {
    let mut out = FormOutcome {
        next_step: NextStep::Nurture,
        rep_id: None,
        rep_name: None,
        team: None,
        reps: vec![],
        message: String::new(),
        lead: None,
    };
    match route {
        Some(Route::Rep {
            rep_id,
            team,
            mode,
            detail,
        }) => {
            out.next_step = NextStep::ChatNow;
            out.rep_name = kb.rep(rep_id).map(|r| r.name.clone());
            out.rep_id = Some(rep_id.clone());
            out.team = team.clone();
            out.message = format!("routed by {mode}: {detail}");
        }
        Some(Route::Fallback { reps, team }) => {
            out.next_step = NextStep::OfferMeeting;
            out.reps = reps.clone();
            out.team = team.clone();
            out.message = "nobody is available now: offer meetings".into();
        }
        _ => {
            if score < 0 {
                out.next_step = NextStep::Disqualified;
            }
            let what = if score < 0 {
                "disqualified"
            } else {
                "not ready for a rep"
            };
            out.message = format!("score {score}: {what}");
        }
    }
    out
}

/// The form field carrying the team's signature of the e-mail (identity checked).
const USER_HASH: &str = "user_hash";

/// Qualifies a submitted form once per idempotency key.
pub fn qualify(
    engine: &Engine,
    tenant: &Tenant,
    idempotency_key: &str,
    form: &HashMap<String, String>,
) -> Result<FormOutcome> {
    let conv_id = format!("form-{idempotency_key}");
    if let Some(bytes) = engine
        .store
        .idempotent_get(&tenant.id, SCOPE, idempotency_key)?
    {
        let mut out: FormOutcome = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("stored reply: {e}")))?;
        out.lead = engine.store.lead(&tenant.id, &conv_id)?;
        return Ok(out);
    }
    let mut fields: Vec<(&String, &String)> = form.iter().collect();
    fields.sort();
    let mut slots = vec![];
    for (k, v) in fields
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("message") && !k.eq_ignore_ascii_case(USER_HASH))
    {
        slots.extend(form_slot(k, v)?);
    }
    let message = fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("message"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let intents = match &message {
        Some(m) => closer_models::IntentClassifier::classify(&tenant.intents().classifier, m)?,
        None => vec![],
    };
    let mut conv = Conversation::resume(&*engine.store, tenant, &conv_id, &Visitor::default())?;
    if !tenant.kb.profile.identity.is_off() {
        // A form's e-mail is typed: only a `user_hash` field signed by the team verifies it.
        let email = slots.iter().find(|s| s.0 == "email").map(|s| s.1.as_str());
        let mut v = Visitor::new(None, email, None, None);
        let proof = crate::identity::Proof {
            user_hash: fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(USER_HASH))
                .map(|(_, v)| v.as_str()),
            token: None,
        };
        let now = closer_store::now_ms() / 1000;
        crate::identity::verify(&tenant.kb.profile, &mut v, &proof, now)?;
        conv.identity = v.identity;
    }
    let kb = tenant.kb.snapshot();
    for (name, value, detail) in &slots {
        conv.seen
            .slots
            .insert(name.clone(), SlotValue::new(value, detail, 1));
    }
    let names = conv.observe(1, &intents, &[], &kb);
    let playbook = tenant.playbook();
    let scored = crate::playbook::score(&playbook, &conv.seen);
    let route = if scored.0 >= playbook.handoff_from_score.max(1) {
        match crate::conversation::route(engine, tenant, &playbook, &conv.seen)? {
            Route::Nobody => None,
            r => Some(r),
        }
    } else {
        None
    };
    let mut out = outcome(scored.0, route.as_ref(), &kb);
    if conv
        .identity
        .as_ref()
        .is_some_and(|i| i.level != crate::identity::Level::Verified)
    {
        // Routed all the same, but an unverified visitor is not told the rep's name.
        out.rep_name = None;
    }
    let summary: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let summary = summary.join("\n");
    let stored = serde_json::to_vec(&out).map_err(|e| Error::Internal(e.to_string()))?;
    let record = TurnRecord {
        slots: slots.iter().map(|s| (s.0.clone(), s.1.clone())).collect(),
        email: slots.iter().find(|s| s.0 == "email").map(|s| s.1.clone()),
        intents: &names,
        handoff: route.map(|route| Handoff {
            route,
            reason: "qualified web form".into(),
            newly_routed: true,
        }),
        idempotency: Some((SCOPE.into(), idempotency_key.to_string(), stored)),
        ..TurnRecord::new(1, &summary, &out.message, scored)
    };
    match record_turn(engine, tenant, &mut conv, record) {
        Ok((lead, _)) => out.lead = Some(lead),
        // A concurrent call with the same key (on this replica or another) committed first:
        // its reply is the reply, and nothing of this one was written.
        Err(Error::Store(closer_store::Error::AlreadyApplied(bytes))) => {
            out = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Internal(format!("stored reply: {e}")))?;
            out.lead = engine.store.lead(&tenant.id, &conv_id)?;
        }
        Err(e) => return Err(e),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_become_slots_and_bad_ones_name_the_field() {
        assert_eq!(
            form_slot("Email", " Kim@Initech.co.uk ").unwrap(),
            Some((
                "email".into(),
                "kim@initech.co.uk".into(),
                "business".into()
            ))
        );
        assert_eq!(
            form_slot("website", "https://www.acme.com/about").unwrap(),
            Some(("company_domain".into(), "acme.com".into(), String::new()))
        );
        assert_eq!(
            form_slot("employees", "about 250").unwrap().unwrap().1,
            "250"
        );
        assert_eq!(form_slot("phone", "  ").unwrap(), None);
        let e = form_slot("email", "nobody").unwrap_err().to_string();
        assert!(e.starts_with("fields[email]"), "{e}");
        let e = form_slot("country", "Atlantis").unwrap_err().to_string();
        assert!(e.starts_with("fields[country]"), "{e}");
    }
}
