//! The plan phase: what answers each clause of the message — a fact, the accounts table, a
//! hand-off, a fixed line, or nothing — decided in code before anything is generated.

use closer_kb::{Account, Fact, Rep, Snapshot};
use closer_models::intent::{IntentFlag, IntentSet, OUT_OF_SCOPE};
use closer_models::IntentPrediction;

use crate::coverage::uncovered_terms;
use crate::engine::Tenant;
use crate::error::Result;
use crate::visitor::Visitor;

/// Said when part of a question is not covered by any fact.
pub const DONT_KNOW: &str =
    "I don't have that information, but I can connect you with a rep who does.";
pub const HANDOFF_ACK: &str =
    "Sure, I'm letting the team know, and a rep will join this chat shortly.";
pub const UNKNOWN_ACCOUNT: &str =
    "I couldn't find your company in our records, but I can connect you with a rep who can help.";

/// Facts retrieved per clause before the coverage check.
const CANDIDATES: usize = 3;
/// A clause classified out of scope may still be answered by a fact this similar to it.
const OOS_RESCUE_DENSE: f32 = 0.55;

/// What answers one intent's clause.
#[derive(Debug, Clone)]
pub enum Plan {
    Fact(Fact),
    Owner { account: Account, rep: Rep },
    UnknownAccount,
    Uncovered,
    Handoff,
    Canned(&'static str),
}

/// An authored fact as the generator and the guard see it.
#[derive(Debug, Clone)]
pub struct Cited {
    pub id: String,
    /// The text that may be stated (and that replaces a failing sentence).
    pub answer: String,
    /// Everything that backs claims about this fact.
    pub evidence: String,
}

impl Cited {
    fn fact(f: &Fact) -> Self {
        Cited {
            id: f.id.clone(),
            answer: f.answer.clone(),
            evidence: f.evidence_text(),
        }
    }

    fn account(account: &Account, rep: &Rep) -> Self {
        let answer = format!("{} is the account owner for {}.", rep.name, account.domain);
        let evidence = format!("{answer} {} {} {}", account.name, rep.name, rep.email);
        Cited {
            id: format!("account:{}", account.domain),
            answer,
            evidence,
        }
    }

    /// Whether this is an account owner's line (the prompt then names the visitor's company).
    pub fn is_account(&self) -> bool {
        self.id.starts_with("account:")
    }
}

/// Why the visitor should get a person, as the plan found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffAsk {
    /// The visitor asked for a person.
    AskedForPerson,
    /// A question went unanswered.
    Unanswered,
    /// The visitor asked for their rep and their company is not in the accounts table.
    UnknownAccount,
}

impl HandoffAsk {
    pub fn reason(self) -> &'static str {
        match self {
            HandoffAsk::AskedForPerson => "asked for a person",
            HandoffAsk::Unanswered => "unanswered question",
            HandoffAsk::UnknownAccount => "rep asked for, account unknown",
        }
    }
}

/// The plan of a whole message.
#[derive(Debug, Clone, Default)]
pub struct TurnPlan {
    /// Facts the reply may state, in the order the visitor asked.
    pub cited: Vec<Cited>,
    /// The clauses those facts answer (the generator sees only these).
    pub covered_clauses: Vec<String>,
    /// Fixed lines said after the generated part.
    pub tail: Vec<&'static str>,
    pub ask: Option<HandoffAsk>,
    pub unanswered: bool,
}

/// A fixed reply for intents that need no fact.
pub fn canned(name: &str, flags: &[IntentFlag]) -> Option<&'static str> {
    if flags.contains(&IntentFlag::Disqualify) {
        return Some("Thanks for letting me know! We build for business teams, and I'm happy to answer questions about the product.");
    }
    match name {
        "greeting" => {
            Some("Hi! Ask me anything about pricing, security, integrations, or booking a demo.")
        }
        "just_browsing" => Some("No problem, take your time. I'm here if a question comes up."),
        _ => None,
    }
}

/// Plans every intent, in the order the visitor wrote them.
pub fn plan_turn(
    tenant: &Tenant,
    kb: &Snapshot,
    set: &IntentSet,
    visitor: &Visitor,
    text: &str,
    intents: &[IntentPrediction],
) -> Result<TurnPlan> {
    let mut ordered: Vec<&IntentPrediction> = intents.iter().collect();
    ordered.sort_by_key(|i| i.span.0);
    let mut p = TurnPlan::default();
    for intent in &ordered {
        let clause = &text[intent.span.0..intent.span.1];
        match plan_for(tenant, kb, set, visitor, clause, intent)? {
            Plan::Fact(f) => {
                if !p.cited.iter().any(|c| c.id == f.id) {
                    p.cited.push(Cited::fact(&f));
                }
                p.covered_clauses.push(clause.to_string());
            }
            Plan::Owner { account, rep } => {
                p.cited.push(Cited::account(&account, &rep));
                p.covered_clauses.push(clause.to_string());
            }
            Plan::UnknownAccount => {
                p.tail.push(UNKNOWN_ACCOUNT);
                p.ask.get_or_insert(HandoffAsk::UnknownAccount);
            }
            Plan::Uncovered => {
                p.unanswered = true;
                p.tail.push(DONT_KNOW);
                p.ask.get_or_insert(HandoffAsk::Unanswered);
            }
            Plan::Handoff => {
                p.tail.push(HANDOFF_ACK);
                p.ask = Some(HandoffAsk::AskedForPerson);
            }
            Plan::Canned(line) if ordered.len() == 1 => p.tail.push(line),
            Plan::Canned(_) => {}
        }
    }
    p.tail.dedup();
    if p.tail.is_empty() && p.cited.is_empty() {
        p.tail.push(DONT_KNOW);
        p.unanswered = true;
        p.ask.get_or_insert(HandoffAsk::Unanswered);
    }
    Ok(p)
}

/// What answers one clause.
pub fn plan_for(
    tenant: &Tenant,
    kb: &Snapshot,
    set: &IntentSet,
    visitor: &Visitor,
    clause: &str,
    intent: &IntentPrediction,
) -> Result<Plan> {
    let flags: &[IntentFlag] = set
        .get(&intent.name)
        .map(|d| d.flags.as_slice())
        .unwrap_or(&[]);
    if flags.contains(&IntentFlag::AccountOwner) {
        let found = visitor
            .domain
            .as_deref()
            .and_then(|d| kb.account(d))
            .and_then(|a| {
                kb.rep(&a.owner_rep_id).map(|r| Plan::Owner {
                    account: a.clone(),
                    rep: r.clone(),
                })
            });
        return Ok(found.unwrap_or(Plan::UnknownAccount));
    }
    if flags.contains(&IntentFlag::Handoff) {
        return Ok(Plan::Handoff);
    }
    let knowledge = flags.contains(&IntentFlag::Knowledge);
    // A disqualified visitor's question ("is there a student discount?") is still a question:
    // answered from a fact that covers it, else "I don't know", never brushed off.
    let oos = intent.name == OUT_OF_SCOPE
        || (flags.contains(&IntentFlag::Disqualify) && !knowledge && is_question(clause));
    if knowledge || oos {
        let hits = tenant.kb.search(
            clause,
            CANDIDATES,
            knowledge.then_some(intent.name.as_str()),
        )?;
        for hit in hits {
            if oos && hit.dense < OOS_RESCUE_DENSE {
                continue;
            }
            let evidence = format!(
                "{} {} {} {} {}",
                hit.fact.evidence_text(),
                hit.fact.kind,
                hit.fact.intents.join(" "),
                tenant.kb.profile.company,
                tenant.kb.profile.names.join(" ")
            );
            if uncovered_terms(clause, &evidence).is_empty() {
                return Ok(Plan::Fact(hit.fact));
            }
        }
        return Ok(Plan::Uncovered);
    }
    Ok(canned(&intent.name, flags)
        .map(Plan::Canned)
        .unwrap_or(Plan::Uncovered))
}

/// A clause that asks something: ends with `?` or opens with a question word.
pub fn is_question(clause: &str) -> bool {
    const OPENERS: &[&str] = &[
        "what", "how", "is", "are", "do", "does", "can", "could", "will", "would", "which", "who",
        "when", "where", "why", "should", "any", "got",
    ];
    let t = clause.trim();
    t.ends_with('?')
        || t.split(|c: char| !c.is_alphanumeric())
            .find(|w| !w.is_empty())
            .is_some_and(|w| OPENERS.contains(&w.to_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_told_from_statements() {
        assert!(is_question("is there a student discount"));
        assert!(is_question("Student discount?"));
        assert!(!is_question("I'm a student"));
        assert!(!is_question(""));
    }

    #[test]
    fn disqualified_visitors_get_the_polite_line_and_greetings_their_own() {
        assert!(canned("jobs", &[IntentFlag::Disqualify])
            .unwrap()
            .starts_with("Thanks"));
        assert!(canned("greeting", &[]).unwrap().starts_with("Hi!"));
        assert_eq!(canned("pricing", &[IntentFlag::Knowledge]), None);
    }

    #[test]
    fn an_account_line_names_owner_and_domain_and_is_backed_by_the_rep_table() {
        let a = Account {
            domain: "acme.com".into(),
            name: "Acme Corporation".into(),
            owner_rep_id: "r-chelsea".into(),
            ..Default::default()
        };
        let r = Rep {
            id: "r-chelsea".into(),
            name: "Chelsea Ward".into(),
            email: "chelsea.ward@applinks.example".into(),
            ..Default::default()
        };
        let c = Cited::account(&a, &r);
        assert_eq!(c.answer, "Chelsea Ward is the account owner for acme.com.");
        assert!(c.is_account());
        assert!(c.evidence.contains("chelsea.ward@applinks.example"));
        assert!(c.evidence.contains("Acme Corporation"));
    }
}
