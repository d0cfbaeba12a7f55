//! One visitor turn, from text to guarded reply:
//!
//! 1. classify the message into intents, each with the clause that carries it;
//! 2. per intent, decide **in code** what answers it: a knowledge-base fact that covers every
//!    content word of the clause, the accounts table (account-owner questions), a hand-off, or
//!    nothing ("I don't have that information");
//! 3. only if something is covered, prompt the generator with just those facts and just the
//!    covered clauses, and release each generated sentence only after the [`guard`] verified it;
//!    a failing sentence is replaced by the fact's own authored answer;
//! 4. append the authored answer of any cited fact the model left out, then the honest
//!    "I don't have that" line for what no fact covers;
//! 5. score the visitor by the playbook, route a hand-off, ask the next qualification question,
//!    and commit the turn with its events ([`crate::sales`]) before the final event.

use std::ops::ControlFlow;
use std::time::Instant;

use closer_kb::{Account, Fact, Rep};
use closer_models::intent::{IntentFlag, IntentSet, OUT_OF_SCOPE};
use closer_models::{GenerationRequest, IntentPrediction};
use closer_proto::v1 as pb;

use crate::coverage::uncovered_terms;
use crate::error::{Error, Result};
use crate::guard::{claims, Claim, Evidence, SentenceSplitter};
use crate::sales::Conversation;
use crate::sched::Stop;
use crate::state::{Engine, Tenant};

/// Said when part of a question is not covered by any fact.
pub const DONT_KNOW: &str =
    "I don't have that information, but I can connect you with a rep who does.";
const HANDOFF_ACK: &str = "Sure, I'm letting the team know, and a rep will join this chat shortly.";
const UNKNOWN_ACCOUNT: &str =
    "I couldn't find your company in our records, but I can connect you with a rep who can help.";

/// Every fixed sentence the assistant may say besides facts (for checks that count invented
/// spans in replies).
pub fn fixed_lines() -> Vec<&'static str> {
    let mut v = vec![DONT_KNOW, HANDOFF_ACK, UNKNOWN_ACCOUNT];
    for name in ["greeting", "just_browsing"] {
        v.extend(canned(name, &[]));
    }
    v.extend(canned("", &[IntentFlag::Disqualify]));
    v
}

/// Facts retrieved per clause before the coverage check.
const CANDIDATES: usize = 3;
/// A clause classified out of scope may still be answered by a fact this similar to it.
const OOS_RESCUE_DENSE: f32 = 0.55;

/// What is known of the visitor for the whole conversation.
#[derive(Debug, Clone, Default)]
pub struct Visitor {
    pub domain: Option<String>,
    pub email: Option<String>,
    pub page_url: Option<String>,
    /// A valid IANA time zone, for meeting times.
    pub timezone: Option<String>,
}

impl Visitor {
    pub fn from_proto(v: Option<&pb::VisitorContext>) -> Self {
        let Some(v) = v else { return Self::default() };
        let clean = |s: &Option<String>| {
            s.as_ref()
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
        };
        let email = clean(&v.email);
        let domain = clean(&v.company_domain)
            .or_else(|| {
                email
                    .as_ref()
                    .and_then(|e| e.rsplit_once('@').map(|(_, d)| d.to_string()))
            })
            .map(|d| {
                d.to_ascii_lowercase()
                    .trim_start_matches("www.")
                    .to_string()
            });
        Self {
            domain,
            email,
            page_url: clean(&v.page_url),
            timezone: clean(&v.timezone).filter(|t| jiff::tz::TimeZone::get(t).is_ok()),
        }
    }
}

/// Settings of the answer path.
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    pub max_new_tokens: usize,
}

/// What answers one intent's clause.
#[derive(Debug, Clone)]
enum Plan {
    Fact(Fact),
    Owner { account: Account, rep: Rep },
    UnknownAccount,
    Uncovered,
    Handoff,
    Canned(&'static str),
}

/// An authored fact as the generator and the guard see it.
#[derive(Debug, Clone)]
struct Cited {
    id: String,
    /// The text that may be stated (and that replaces a failing sentence).
    answer: String,
    /// Everything that backs claims about this fact.
    evidence: String,
}

fn account_fact(account: &Account, rep: &Rep) -> Cited {
    let answer = format!("{} is the account owner for {}.", rep.name, account.domain);
    let evidence = format!("{answer} {} {} {}", account.name, rep.name, rep.email);
    Cited {
        id: format!("account:{}", account.domain),
        answer,
        evidence,
    }
}

fn canned(name: &str, flags: &[IntentFlag]) -> Option<&'static str> {
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

fn plan_for(
    tenant: &Tenant,
    kb: &closer_kb::Snapshot,
    set: &IntentSet,
    visitor: &Visitor,
    text: &str,
    intent: &IntentPrediction,
) -> Result<Plan> {
    let clause = &text[intent.span.0..intent.span.1];
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
fn is_question(clause: &str) -> bool {
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

/// True when the reply already states this fact: all its amounts, and at least half of its other
/// checkable details.
fn is_stated(fact: &Cited, reply_claims: &[Claim]) -> bool {
    let fact_claims = claims(&fact.answer);
    if fact_claims.is_empty() {
        return !reply_claims.is_empty();
    }
    let mut others = 0;
    let mut others_found = 0;
    for c in &fact_claims {
        let found = reply_claims.contains(c);
        match c {
            Claim::Number { unit: Some(_), .. } | Claim::ProperName(_) if !found => return false,
            Claim::Number { unit: Some(_), .. } | Claim::ProperName(_) => {}
            _ => {
                others += 1;
                others_found += usize::from(found);
            }
        }
    }
    others == 0 || others_found * 2 >= others
}

/// What a turn asks of the service around it: a generator slot, and whether to stop.
pub struct TurnControl<'a> {
    pub gate: &'a crate::sched::FairGate,
    /// Asked before generating, while queued for the generator, and after every token.
    pub stop: &'a dyn Fn() -> Option<Stop>,
    /// The team is pressing past its quota: its generation yields the model to other teams.
    pub background: bool,
}

/// Runs one turn and emits its events in protocol order. `emit` returning `Break` means the
/// client is gone: stop, including generation. When `ctl.stop` says so, the turn stops within
/// one token and returns `Error::Stopped`.
#[allow(clippy::too_many_arguments)]
pub fn run_turn(
    engine: &Engine,
    tenant: &Tenant,
    cfg: &AnswerConfig,
    ctl: &TurnControl<'_>,
    visitor: &Visitor,
    conv: &mut Conversation,
    turn: u32,
    text: &str,
    emit: &mut dyn FnMut(pb::converse_response::Event) -> ControlFlow<()>,
) -> Result<()> {
    use pb::converse_response::Event;
    let started = Instant::now();
    if let Some(rep) = conv.taken_over.clone() {
        // A rep has the conversation: no bot reply; the message goes to the rep.
        return crate::sales::relay_visitor_message(engine, tenant, conv, &rep, turn, text);
    }
    if !conv.proposed.is_empty() {
        let tz = crate::sales::visitor_tz(visitor);
        let labels: Vec<String> = conv
            .proposed
            .iter()
            .map(|s| crate::meetings::label(s.start, tz))
            .collect();
        if let Some(i) = crate::meetings::chosen(text, &labels) {
            return crate::sales::book_turn(engine, tenant, visitor, conv, turn, text, i, emit);
        }
    }
    let model = tenant.intents();
    let intents = closer_models::IntentClassifier::classify(&model.classifier, text)?;
    let detected = pb::IntentsDetected {
        turn,
        intents: intents.iter().map(|i| to_pb_intent(text, i)).collect(),
    };
    if emit(Event::Intents(detected)).is_break() {
        return Ok(());
    }
    let found_slots = crate::slots::extract(text);
    let slots = to_pb_slots(&found_slots);
    if !slots.is_empty() && emit(Event::Slots(pb::SlotsCaptured { turn, slots })).is_break() {
        return Ok(());
    }

    // One knowledge snapshot and one playbook for the whole turn: a concurrent ingest or upload
    // is seen whole or not at all.
    let kb = tenant.kb.snapshot();
    let playbook = tenant.playbook();
    let names: Vec<String> = intents.iter().map(|i| i.name.clone()).collect();
    let new_intents: Vec<String> = names
        .iter()
        .filter(|n| !conv.seen.intents.contains_key(*n))
        .cloned()
        .collect();
    conv.observe(turn, &names, &found_slots, &kb);
    let scored = crate::playbook::score(&playbook, &conv.seen);
    let account = visitor.domain.as_deref().and_then(|d| kb.account(d));
    let owner = account.and_then(|a| kb.rep(&a.owner_rep_id));
    let live_account = conv
        .seen
        .account
        .clone()
        .and_then(|a| kb.rep(&a.owner_rep_id).map(|r| (a, r)));
    let mut account_live = None;
    if !conv.account_live_sent {
        if let Some((a, r)) = live_account {
            conv.account_live_sent = true;
            account_live = Some((a.clone(), r));
            let h = pb::HandoffSignal {
                turn,
                kind: pb::HandoffKind::AccountLive as i32,
                rep_id: Some(r.id.clone()),
                rep_name: Some(r.name.clone()),
                account_domain: Some(a.domain.clone()),
                message: format!(
                    "account owner {}: your account {} is live in chat",
                    r.name, a.domain
                ),
                reason: "account owner".into(),
            };
            if emit(Event::Handoff(h)).is_break() {
                return Ok(());
            }
        }
    }

    // Plan every intent, in the order the visitor wrote them.
    let mut ordered: Vec<&IntentPrediction> = intents.iter().collect();
    ordered.sort_by_key(|i| i.span.0);
    let mut cited: Vec<Cited> = vec![];
    let mut covered_clauses: Vec<&str> = vec![];
    let mut tail: Vec<&str> = vec![];
    let mut handoff_reason: Option<&'static str> = None;
    let mut unanswered = false;
    for intent in &ordered {
        let clause = &text[intent.span.0..intent.span.1];
        match plan_for(tenant, &kb, &model.set, visitor, text, intent)? {
            Plan::Fact(f) => {
                if !cited.iter().any(|c| c.id == f.id) {
                    cited.push(Cited {
                        id: f.id.clone(),
                        answer: f.answer.clone(),
                        evidence: f.evidence_text(),
                    });
                }
                covered_clauses.push(clause);
            }
            Plan::Owner { account, rep } => {
                cited.push(account_fact(&account, &rep));
                covered_clauses.push(clause);
            }
            Plan::UnknownAccount => {
                tail.push(UNKNOWN_ACCOUNT);
                handoff_reason.get_or_insert("rep asked for, account unknown");
            }
            Plan::Uncovered => {
                unanswered = true;
                tail.push(DONT_KNOW);
                handoff_reason.get_or_insert("unanswered question");
            }
            Plan::Handoff => {
                tail.push(HANDOFF_ACK);
                handoff_reason = Some("asked for a person");
            }
            Plan::Canned(line) => {
                if ordered.len() == 1 {
                    tail.push(line);
                }
            }
        }
    }
    tail.dedup();
    if tail.is_empty() && cited.is_empty() {
        tail.push(DONT_KNOW);
        unanswered = true;
        handoff_reason.get_or_insert("unanswered question");
    }

    // The durable hand-off: routed by the playbook, once per conversation unless the visitor
    // asks for a person again; a disqualified visitor is handed off only on request.
    let asked_for_person = handoff_reason == Some("asked for a person");
    let mut durable_reason: Option<String> = handoff_reason
        .filter(|_| scored.0 >= 0 || asked_for_person)
        .map(str::to_string);
    if durable_reason.is_none()
        && playbook.handoff_from_score > 0
        && scored.0 >= playbook.handoff_from_score
    {
        durable_reason = Some(format!(
            "CQL score {} reached the playbook's hand-off score",
            scored.0
        ));
    }
    if conv.handed_off && !asked_for_person {
        durable_reason = None;
    }
    let handoff = match durable_reason {
        Some(reason) => Some(match &conv.routed {
            Some((Some(rep_id), team)) => crate::sales::Handoff {
                route: crate::playbook::Route::Rep {
                    rep_id: rep_id.clone(),
                    team: team.clone(),
                    mode: "assigned",
                    detail: "the rep this conversation is routed to".into(),
                },
                reason,
                newly_routed: false,
            },
            _ => crate::sales::Handoff {
                route: crate::sales::route(engine, tenant, &playbook, &conv.seen)?,
                reason,
                newly_routed: true,
            },
        }),
        None => None,
    };
    // Meeting times: once the score is high enough, or when nobody is available now.
    let mut meeting_events = vec![];
    let mut proposal = None;
    let fallback = matches!(
        handoff.as_ref().map(|h| &h.route),
        Some(crate::playbook::Route::Fallback { .. })
    );
    let offer_at = playbook.offer_meeting_from_score;
    if !conv.meeting_booked
        && conv.proposed.is_empty()
        && scored.0 >= 0
        && (fallback || (offer_at > 0 && scored.0 >= offer_at))
    {
        if let Some((p, line, ev)) = crate::sales::propose(
            engine,
            tenant,
            &playbook,
            conv,
            visitor,
            handoff.as_ref(),
            turn,
        )? {
            meeting_events.push(ev);
            proposal = Some((p, line));
        }
    }
    let proposal_line = proposal.as_ref().map(|p| p.1.clone());
    match &proposal_line {
        Some(line) => tail.push(line.as_str()),
        None => {
            if let Some(q) = conv.next_question(&playbook, scored.0) {
                tail.push(q);
            }
        }
    }

    if let Some(reason) = handoff_reason {
        let h = pb::HandoffSignal {
            turn,
            kind: pb::HandoffKind::RepRequested as i32,
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
        };
        if emit(Event::Handoff(h)).is_break() {
            return Ok(());
        }
    }
    if let Some((p, _)) = proposal {
        if emit(Event::MeetingProposed(p)).is_break() {
            return Ok(());
        }
    }

    let mut released: Vec<String> = vec![];
    let mut guard_replaced = false;
    let mut gone = false;
    {
        let mut send = |s: &str, released: &mut Vec<String>| -> ControlFlow<()> {
            let text = if released.is_empty() {
                s.to_string()
            } else {
                format!(" {s}")
            };
            released.push(s.to_string());
            emit(Event::Delta(pb::ReplyDelta { turn, text }))
        };

        if !cited.is_empty() {
            let mut evidence = Evidence::new(cited.iter().map(|c| c.evidence.as_str()));
            evidence.add(&tenant.kb.profile.company);
            for n in &tenant.kb.profile.names {
                evidence.add(n);
            }
            let owner_cited = cited.iter().any(|c| c.id.starts_with("account:"));
            let instructions = instructions(tenant, account.filter(|_| owner_cited));
            let request = GenerationRequest {
                system: system_prompt(&instructions, &cited),
                user: covered_clauses.join(" "),
                max_tokens: cfg.max_new_tokens,
                share: tenant.id.clone(),
                background: ctl.background,
            };
            let mut splitter = SentenceSplitter::default();
            let mut replaced_with: Vec<String> = vec![];
            let mut handle = |sentence: String,
                              released: &mut Vec<String>,
                              replaced: &mut bool|
             -> ControlFlow<()> {
                if leaks_prompt(&sentence, &instructions) {
                    *replaced = true;
                    tracing::info!(tenant = %tenant.kb.profile.id, "guard dropped a sentence that recites the prompt");
                    return ControlFlow::Continue(());
                }
                let bad = evidence.unsupported(&sentence);
                if bad.is_empty() {
                    return send(&sentence, released);
                }
                *replaced = true;
                tracing::info!(tenant = %tenant.kb.profile.id, unsupported = ?bad.iter().map(ToString::to_string).collect::<Vec<_>>(), "guard replaced a sentence");
                // The authored answer closest to what the sentence tried to say, once.
                let best = cited
                    .iter()
                    .filter(|c| !replaced_with.contains(&c.id))
                    .max_by_key(|c| overlap(&sentence, &c.answer));
                match best {
                    Some(c) if overlap(&sentence, &c.answer) > 0 => {
                        replaced_with.push(c.id.clone());
                        send(&c.answer, released)
                    }
                    _ => ControlFlow::Continue(()),
                }
            };
            let _slot = ctl
                .gate
                .acquire(&tenant.id, ctl.stop)
                .map_err(Error::Stopped)?;
            let mut stopped = None;
            let result = engine.models.generator.generate(&request, &mut |piece| {
                if let Some(why) = (ctl.stop)() {
                    stopped = Some(why);
                    return ControlFlow::Break(());
                }
                for s in splitter.push(piece) {
                    if handle(s, &mut released, &mut guard_replaced).is_break() {
                        gone = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })?;
            drop(_slot);
            if let Some(why) = stopped {
                return Err(Error::Stopped(why));
            }
            if gone {
                return Ok(());
            }
            if let Some(s) = splitter.finish() {
                if handle(s, &mut released, &mut guard_replaced).is_break() {
                    return Ok(());
                }
            }
            tracing::debug!(
                prompt_tokens = result.prompt_tokens,
                reused_prompt_tokens = result.reused_prompt_tokens,
                generated = result.generated_tokens,
                ttft_ms = result.time_to_first_token_ms,
                "generated"
            );
            // Whatever the model left out is stated in the team's own words.
            let said: Vec<Claim> = released.iter().flat_map(|s| claims(s)).collect();
            for c in &cited {
                if !released.iter().any(|r| r == &c.answer)
                    && !is_stated(c, &said)
                    && send(&c.answer, &mut released).is_break()
                {
                    return Ok(());
                }
            }
        }
        for line in &tail {
            if send(line, &mut released).is_break() {
                return Ok(());
            }
        }
    }

    let reply = released.join(" ");
    // Committed before the final event: a turn the client saw finish is on disk.
    crate::sales::record_turn(
        engine,
        tenant,
        conv,
        crate::sales::TurnRecord {
            turn,
            visitor_text: text,
            reply: &reply,
            slots: crate::sales::slot_pairs(&found_slots),
            email: visitor.email.clone(),
            intents: &new_intents,
            score: scored,
            account_live: account_live.as_ref().map(|(a, r)| (a, *r)),
            handoff,
            events: meeting_events,
            idempotency: None,
        },
    )?;
    let final_ = pb::ReplyFinal {
        turn,
        text: reply,
        fact_ids: cited.iter().map(|c| c.id.clone()).collect(),
        guard_replaced,
        unanswered,
        latency_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
    };
    let _ = emit(Event::Final(final_));
    Ok(())
}

fn overlap(a: &str, b: &str) -> usize {
    let words = |s: &str| crate::coverage::content_terms(s);
    let bw = words(b);
    words(a).iter().filter(|w| bw.contains(w)).count()
}

/// The instructions part of the system prompt (facts follow it).
fn instructions(tenant: &Tenant, account: Option<&Account>) -> String {
    let mut s = format!(
        "You are the website chat assistant of {company}. Answer the visitor in one to three short \
         sentences using only these facts:\n",
        company = tenant.kb.profile.company
    );
    if let Some(a) = account {
        s = format!("{s}(The visitor works at {} ({}).)\n", a.name, a.domain);
    }
    s
}

fn system_prompt(instructions: &str, cited: &[Cited]) -> String {
    let mut s = instructions.to_string();
    for c in cited {
        s.push_str(&format!("- {}\n", c.answer));
    }
    s
}

/// True when a sentence repeats five or more consecutive words of the instructions: the model is
/// reciting its prompt rather than answering.
fn leaks_prompt(sentence: &str, instructions: &str) -> bool {
    let words = |t: &str| -> Vec<String> {
        t.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (s, i) = (words(sentence), words(instructions));
    s.windows(5).any(|w| i.windows(5).any(|x| x == w))
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

pub fn to_pb_slots(slots: &[crate::slots::Slot]) -> Vec<pb::Slot> {
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
