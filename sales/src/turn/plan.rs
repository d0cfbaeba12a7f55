//! The plan phase: what answers each clause of the message — a fact, the accounts table, a
//! hand-off, a fixed line, or nothing — decided in code before anything is generated.

use closer_kb::{Account, Fact, Rep, Snapshot};
use closer_models::intent::{IntentFlag, IntentSet, OUT_OF_SCOPE};
use closer_models::IntentPrediction;

use crate::answerable::{answer_cosines, Answers, Candidate, Clause, Judge, Vocabulary};
pub use crate::coverage::is_question;
use crate::engine::Tenant;
use crate::error::Result;
use crate::visitor::Visitor;

/// Said when part of a question is not covered by any fact.
pub const DONT_KNOW: &str =
    "I don't have that information, but I can connect you with a rep who does.";
pub const HANDOFF_ACK: &str =
    "Sure, I'm letting the team know, and a rep will join this chat shortly.";
/// Said to a statement that asks nothing (no fact is looked up for it).
pub const NOTED: &str =
    "Thanks for letting me know! Ask me anything about the product, or I can connect you with a rep.";
/// Said to a statement that shows buying intent; the playbook's next question or meeting offer
/// follows it.
pub const BUYING_NOTED: &str =
    "Thanks, that's helpful to know! I can connect you with a rep to plan the next steps, and I'm happy to answer questions in the meantime.";
/// Said to thanks.
pub const WELCOME: &str = "You're welcome! Let me know if anything else comes up.";
/// Said before the closest documented answer, which was written for another question.
pub const CLOSEST_INTRO: &str = "Here is the closest information I have:";
/// Said after the closest documented answer when the judgement is not sure it answers the visitor.
pub const CLOSEST: &str =
    "If that doesn't fully answer your question, I can connect you with a rep who can confirm.";
pub const UNKNOWN_ACCOUNT: &str =
    "I couldn't find your company in our records, but I can connect you with a rep who can help.";

/// Facts retrieved per clause before the answerability judgement (5: the judgement with the
/// answer encoder answered 125 of 153 tuning questions left out, against 119 with 3 and 125 with
/// 8; `closer-eval answerability --candidates N`).
pub const CANDIDATES: usize = 5;
/// Facts one clause may cite ("how much, and is there a free trial?" needs two).
pub const FACTS_PER_CLAUSE: usize = 2;

/// What answers one intent's clause.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Facts that answer the clause (`Answers::Yes`), or are the closest the team documented.
    Facts(Vec<(Fact, Answers)>),
    /// Facts for some of the clause's questions; no fact answers the others.
    Partly(Vec<(Fact, Answers)>),
    Owner {
        account: Box<Account>,
        rep: Box<Rep>,
    },
    /// The visitor asked for their rep and their company is not known; the facts the judgement
    /// offers for the question, if it is one ("can an admin swap a rep's calendar?" read as "who is
    /// our rep?"), are stated as the closest documented answers.
    UnknownAccount(Vec<(Fact, Answers)>),
    Uncovered,
    /// The visitor asked for a person; the facts the judgement offers for the question asked
    /// with it ("number to call sales?", "we sell to dealers - need quotes, company logins…") are
    /// stated too, the ones it is unsure of as the closest documented answers.
    Handoff(Vec<(Fact, Answers)>),
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
    /// Only the closest documented answer: stated verbatim, never generated from.
    pub closest: bool,
}

impl Cited {
    fn fact(f: &Fact) -> Self {
        Cited {
            id: f.id.clone(),
            answer: f.answer.clone(),
            // The answer only: tags and the fact's question are not evidence.
            evidence: f.answer.clone(),
            closest: false,
        }
    }

    fn account(account: &Account, rep: &Rep) -> Self {
        let answer = format!("{} is the account owner for {}.", rep.name, account.domain);
        let evidence = format!("{answer} {} {} {}", account.name, rep.name, rep.email);
        Cited {
            id: format!("account:{}", account.domain),
            answer,
            evidence,
            closest: false,
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
    /// A question got only the closest documented answer.
    Unconfirmed,
}

impl HandoffAsk {
    pub fn reason(self) -> &'static str {
        match self {
            HandoffAsk::AskedForPerson => "asked for a person",
            HandoffAsk::Unanswered => "unanswered question",
            HandoffAsk::UnknownAccount => "rep asked for, account unknown",
            HandoffAsk::Unconfirmed => "answer needs a rep's confirmation",
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

/// Adds a clause's facts to the plan: a sure one covers the clause, a closest one adds the offer
/// of a rep unless the reply fetches a person anyway (`person_asked`: a hand-off, an unknown
/// account, whose line and reason for the rep stand).
fn cite(p: &mut TurnPlan, facts: Vec<(Fact, Answers)>, clause: &str, person_asked: bool) {
    for (f, sure) in facts {
        let closest = sure == Answers::Closest;
        match p.cited.iter_mut().find(|c| c.id == f.id) {
            Some(c) => c.closest &= closest,
            None => p.cited.push(Cited {
                closest,
                ..Cited::fact(&f)
            }),
        }
        if closest {
            if !person_asked {
                p.tail.push(CLOSEST);
                p.ask.get_or_insert(HandoffAsk::Unconfirmed);
            }
        } else if !p.covered_clauses.iter().any(|c| c == clause) {
            p.covered_clauses.push(clause.to_string());
        }
    }
}

/// A question no fact answers: "I don't have that information" and a rep asked for.
fn unanswered(p: &mut TurnPlan) {
    p.unanswered = true;
    p.tail.push(DONT_KNOW);
    p.ask.get_or_insert(HandoffAsk::Unanswered);
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
    let mut canned_lines = vec![];
    let vocab = std::cell::OnceCell::new();
    for intent in &ordered {
        let clause = context(text, intent.span, ordered.len());
        match plan_for(tenant, kb, &vocab, set, visitor, clause, intent)? {
            Plan::Facts(facts) => cite(&mut p, facts, clause, false),
            Plan::Partly(facts) => {
                cite(&mut p, facts, clause, false);
                unanswered(&mut p);
            }
            Plan::Owner { account, rep } => {
                p.cited.push(Cited::account(&account, &rep));
                p.covered_clauses.push(clause.to_string());
            }
            Plan::UnknownAccount(facts) => {
                cite(&mut p, facts, clause, true);
                p.tail.push(UNKNOWN_ACCOUNT);
                p.ask.get_or_insert(HandoffAsk::UnknownAccount);
            }
            Plan::Uncovered => unanswered(&mut p),
            Plan::Handoff(facts) => {
                cite(&mut p, facts, clause, true);
                p.tail.push(HANDOFF_ACK);
                p.ask = Some(HandoffAsk::AskedForPerson);
            }
            Plan::Canned(line) => canned_lines.push(line),
        }
    }
    // A fixed line (greeting, thanks, a statement noted) only when nothing else is said.
    if p.tail.is_empty() && p.cited.is_empty() {
        p.tail.extend(canned_lines.first());
    }
    let mut seen = vec![];
    p.tail.retain(|l| {
        let new = !seen.contains(l);
        seen.push(*l);
        new
    });
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
    vocab: &std::cell::OnceCell<Vocabulary>,
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
        // Only a trusted domain (any, or a verified one when the tenant checks identity) is
        // told its owner's name.
        let found = visitor
            .trusted_domain()
            .and_then(|d| kb.account(d))
            .and_then(|a| {
                kb.rep(&a.owner_rep_id).map(|r| Plan::Owner {
                    account: Box::new(a.clone()),
                    rep: Box::new(r.clone()),
                })
            });
        if let Some(found) = found {
            return Ok(found);
        }
        // A question the classifier read as "who is our rep?" that a fact surely answers ("do
        // we sign up through you or someone else?") is answered from it; the closest documented
        // answers the judgement offers are stated beside the unknown-account line.
        let facts = judged_question(tenant, kb, vocab, clause, &intent.name)?;
        if !facts.is_empty() && facts.iter().all(|(_, a)| *a == Answers::Yes) {
            return Ok(Plan::Facts(facts));
        }
        return Ok(Plan::UnknownAccount(facts));
    }
    if flags.contains(&IntentFlag::Handoff) {
        // A person is fetched whatever else; a question asked with the request ("number to call
        // sales?") is answered meanwhile, as any question is.
        let facts = judged_question(tenant, kb, vocab, clause, &intent.name)?;
        return Ok(Plan::Handoff(facts));
    }
    let knowledge = flags.contains(&IntentFlag::Knowledge);
    // A disqualified visitor's question ("is there a student discount?") is still a question:
    // answered from a fact that covers it, else "I don't know", never brushed off.
    let asks = is_question(clause);
    // A question under an intent no fact is tagged with (out of scope, a buying signal, a
    // disqualifier: "is there a student discount?") is still a question: answered from a fact
    // the judgement accepts, else "I don't know", never brushed off.
    let oos = searched_unprompted(&intent.name, flags, clause);
    // A statement classified out of scope ("ok cool, running it by my CFO") is acknowledged,
    // not answered with the nearest fact.
    if intent.name == OUT_OF_SCOPE && !asks {
        return Ok(Plan::Canned(statement_reply(clause, flags)));
    }
    if knowledge || oos {
        // Each question of the clause judged on its own ("whats enterprise cost on annual and
        // do u have soc 2"): one retrieval for both would find facts for one of them.
        let parts = crate::coverage::questions(clause);
        let mut facts: Vec<(Fact, Answers)> = vec![];
        let mut missed = false;
        for part in &parts {
            let found = judged(tenant, kb, vocab, part, &intent.name, knowledge, oos)?;
            missed |= found.is_empty();
            for (f, a) in found {
                if !facts.iter().any(|(g, _)| g.id == f.id) {
                    facts.push((f, a));
                }
            }
        }
        if !facts.is_empty() {
            return Ok(if missed {
                Plan::Partly(facts)
            } else {
                Plan::Facts(facts)
            });
        }
        return Ok(if asks {
            Plan::Uncovered
        } else {
            Plan::Canned(statement_reply(clause, flags))
        });
    }
    Ok(match canned(&intent.name, flags) {
        Some(line) => Plan::Canned(line),
        None if !asks => Plan::Canned(statement_reply(clause, flags)),
        None => Plan::Uncovered,
    })
}

/// The facts the judgement offers for a question under an intent that needs none (account
/// owner, hand-off), sure or closest; none for a statement.
fn judged_question(
    tenant: &Tenant,
    kb: &Snapshot,
    vocab: &std::cell::OnceCell<Vocabulary>,
    clause: &str,
    intent: &str,
) -> Result<Vec<(closer_kb::Fact, Answers)>> {
    if !is_question(clause) {
        return Ok(vec![]);
    }
    judged(tenant, kb, vocab, clause, intent, false, true)
}

/// The facts the judgement accepts for a clause, best first (empty: none answers it):
/// retrieval's candidates (boosted for `intent` when it is a knowledge intent), judged with the
/// clause's words written out.
fn judged(
    tenant: &Tenant,
    kb: &Snapshot,
    vocab: &std::cell::OnceCell<Vocabulary>,
    clause: &str,
    intent: &str,
    knowledge: bool,
    oos: bool,
) -> Result<Vec<(closer_kb::Fact, Answers)>> {
    let asked_as = crate::coverage::spelled_out(clause);
    let hits = tenant
        .kb
        .search(&asked_as, CANDIDATES, knowledge.then_some(intent))?;
    // The answer encoder's cosines, when the server has one (a failure there is logged and
    // judged without them, by the weights that never read them).
    let deep = tenant.answer_embedder.as_deref().and_then(|e| {
        let facts: Vec<(&str, &str)> = hits
            .iter()
            .map(|h| (h.fact.question.as_str(), h.fact.answer.as_str()))
            .collect();
        answer_cosines(e, &asked_as, &facts)
            .map_err(|e| tracing::warn!(error = %e, "answer encoder failed"))
            .ok()
    });
    let cands: Vec<Candidate<'_>> = hits
        .iter()
        .enumerate()
        .map(|(i, h)| Candidate {
            question: &h.fact.question,
            answer: &h.fact.answer,
            tags: &h.fact.tags,
            intents: &h.fact.intents,
            dense: h.dense,
            bm25: h.bm25,
            answer_encoder: deep.as_ref().map(|d| d[i]),
        })
        .collect();
    // Built once per turn, by the first clause that needs it.
    let vocab = vocab.get_or_init(|| {
        let profile = &tenant.kb.profile;
        let names = std::iter::once(profile.company.as_str())
            .chain(profile.names.iter().map(String::as_str));
        Vocabulary::of_facts(kb.facts(), names)
    });
    let asked = Clause {
        text: &asked_as,
        intent,
        out_of_scope: oos,
    };
    let picked = Judge::builtin(deep.is_some()).pick(asked, &cands, vocab, FACTS_PER_CLAUSE);
    for (i, p, sure) in &picked {
        tracing::debug!(fact = %hits[*i].fact.id, p, ?sure, "answerable");
    }
    Ok(picked
        .into_iter()
        .map(|(i, _, sure)| (hits[i].fact.clone(), sure))
        .collect())
}

/// The text a clause is answered from: the whole message when it carries one intent (the
/// classifier's span is often a fragment: "flat fee or per head" of "whats the damage for 15 ppl?
/// flat fee or per head"), else the sentences the span touches, and the one before when those
/// have no topic word of their own ("free trial?? how long").
pub fn context(text: &str, span: (usize, usize), intents: usize) -> &str {
    if intents <= 1 {
        return text.trim();
    }
    let ends = |i: usize, c: char| {
        matches!(c, '?' | '!' | '\n')
            || (c == '.' && text[i + 1..].starts_with(char::is_whitespace))
    };
    let sentence_start = |at: usize| {
        text[..at]
            .char_indices()
            .rfind(|&(i, c)| ends(i, c))
            .map_or(0, |(i, c)| i + c.len_utf8())
    };
    let mut start = sentence_start(span.0);
    // The span's last character (a char boundary, whatever its width).
    let from_end = text[..span.1]
        .char_indices()
        .next_back()
        .map_or(span.0, |(i, _)| i)
        .max(span.0);
    let end = text[from_end..]
        .char_indices()
        .find(|&(i, c)| ends(from_end + i, c))
        .map_or(text.len(), |(i, c)| from_end + i + c.len_utf8());
    let end = end.max(span.1);
    // A sentence without a topic word of its own ("how long?") asks about the one before.
    while start > 0 && crate::coverage::content_terms(&text[start..end]).is_empty() {
        start = sentence_start(text[..start].trim_end_matches(ends_char).len());
    }
    text[start..end].trim()
}

/// Whether `c` can end a sentence (a period only before whitespace: see `context`).
fn ends_char(c: char) -> bool {
    matches!(c, '?' | '!' | '\n' | '.')
}

/// Whether a clause whose intent no fact is tagged with is still looked up in the facts: out of
/// scope, or a question under a buying signal, a disqualifier or another intent with no fixed
/// line.
pub fn searched_unprompted(intent: &str, flags: &[IntentFlag], clause: &str) -> bool {
    intent == OUT_OF_SCOPE
        || (!flags.contains(&IntentFlag::Knowledge)
            && is_question(clause)
            && (flags.contains(&IntentFlag::Disqualify) || canned(intent, flags).is_none()))
}

/// The reply to a clause that asks nothing: thanks, a buying signal, or anything else said.
pub fn statement_reply(clause: &str, flags: &[IntentFlag]) -> &'static str {
    const THANKS: &[&str] = &[
        "thanks",
        "thank",
        "thx",
        "ty",
        "tks",
        "cheers",
        "appreciate",
        "appreciated",
    ];
    let thanks = clause
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| THANKS.contains(&w));
    if thanks {
        WELCOME
    } else if flags.contains(&IntentFlag::BuyingSignal) {
        BUYING_NOTED
    } else {
        NOTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clause_is_read_in_its_sentence_or_the_whole_single_intent_message() {
        let t = "hey whats the damage for like 15 ppl? flat fee or per head";
        assert_eq!(context(t, (38, 58), 1), t);
        let t = "How much is a seat? Are you SOC II compliant? And who is our rep?";
        assert_eq!(context(t, (4, 18), 3), "How much is a seat?");
        assert_eq!(context(t, (24, 44), 3), "Are you SOC II compliant?");
        assert_eq!(context(t, (50, 64), 3), "And who is our rep?");
        // A sentence with no topic word of its own is read with the one before.
        let t = "need sso. free trial?? how long";
        assert_eq!(context(t, (23, 31), 2), "free trial?? how long");
        assert_eq!(context(t, (10, 20), 2), "free trial?");
        let t = "パスワードは何ですか？\nHow much does each seat cost?";
        assert_eq!(context(t, (0, 33), 2), "パスワードは何ですか？");
    }

    #[test]
    fn statements_get_a_fitting_line_not_a_refusal() {
        assert_eq!(statement_reply("thx thats really helpful", &[]), WELCOME);
        assert_eq!(
            statement_reply(
                "we're 300 ppl and want to buy this quarter",
                &[IntentFlag::BuyingSignal]
            ),
            BUYING_NOTED
        );
        assert_eq!(
            statement_reply("fyi we're moving off wave next month", &[]),
            NOTED
        );
    }

    #[test]
    fn questions_are_told_from_statements() {
        assert!(is_question("is there a student discount"));
        assert!(is_question("Student discount?"));
        assert!(!is_question("I'm a student"));
        assert!(is_question("hq where"));
        assert!(is_question(
            "signed up as US by mistake - can i flip the country"
        ));
        assert!(is_question(
            "need 8 ppl on standard, can i just buy extra seats"
        ));
        assert!(!is_question("we're 300 ppl and want to buy this quarter"));
        assert!(!is_question(
            "ok cool, gonna run it by my cfo and circle back"
        ));
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
    fn a_facts_tags_and_question_do_not_back_a_claim() {
        // The case of issue 28: the product's name was in the fact's tags, so "Yes, <company>
        // can work with <product>" passed although the fact says it is not supported.
        let f = Fact {
            id: "integrations".into(),
            question: "Does Applinks work with Pipedrive or HubSpot?".into(),
            answer: "Applinks integrates with Salesforce and HubSpot.".into(),
            tags: vec!["pipedrive".into(), "crm".into()],
            kind: "integration".into(),
            intents: vec![],
            valid_from: None,
            valid_until: None,
        };
        let c = Cited::fact(&f);
        assert!(
            !c.evidence.to_lowercase().contains("pipedrive"),
            "{}",
            c.evidence
        );
        let e = crate::guard::Evidence::new([c.evidence.as_str(), "Applinks"]);
        assert!(!e
            .unsupported("Yes, Applinks can work with Pipedrive.")
            .is_empty());
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
