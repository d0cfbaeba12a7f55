//! One visitor turn, from text to guarded reply, as a pipeline of named phases with typed values
//! between them:
//!
//! 1. **classify** ([`classify`]): intents with their clauses, and slots;
//! 2. **observe and score**: the conversation's state takes them in; the playbook scores it;
//! 3. **plan** ([`plan`]): what answers each clause (a fact, the accounts table, a hand-off, a
//!    fixed line, nothing) — decided in code;
//! 4. **hand-off** ([`handoff`]): the account-live alert and a [`handoff::HandoffDecision`];
//! 5. **meeting** ([`meeting`]): offer a rep's free times when the score calls for it;
//! 6. **generate** ([`generate`]): the LLM writes from the cited facts only, each sentence
//!    released after the guard checked it;
//! 7. **commit** ([`commit`]): one store write, before the final event.
//!
//! Events go to the caller in protocol order through `emit`; `Break` means the client is gone.

use std::ops::ControlFlow;
use std::time::Instant;

use closer_models::intent::IntentFlag;
use closer_models::IntentPrediction;

use crate::conversation::Conversation;
use crate::engine::{IntentModel, Tenant};
use crate::error::Result;

/// Sends a turn event; returns from the turn (`Ok`) when the client is gone.
macro_rules! send {
    ($emit:expr, $event:expr) => {
        if ($emit)($event).is_break() {
            return Ok(());
        }
    };
}

pub mod commit;
pub mod control;
pub mod events;
pub mod generate;
pub mod handoff;
pub mod meeting;
pub mod plan;

pub use control::{TurnContext, TurnControl, TurnSettings};
pub use events::TurnEvent;
pub use plan::DONT_KNOW;

/// Every fixed sentence the assistant may say besides facts (for checks that count invented
/// spans in replies).
pub fn fixed_lines() -> Vec<&'static str> {
    let mut v = vec![
        plan::DONT_KNOW,
        plan::HANDOFF_ACK,
        plan::UNKNOWN_ACCOUNT,
        plan::CLOSEST,
        plan::CLOSEST_INTRO,
        plan::NOTED,
        plan::BUYING_NOTED,
        plan::WELCOME,
    ];
    for name in ["greeting", "just_browsing"] {
        v.extend(plan::canned(name, &[]));
    }
    v.extend(plan::canned("", &[IntentFlag::Disqualify]));
    v
}

/// The classify phase's output.
pub struct Classified {
    /// The intent model the turn read (held for the whole turn).
    pub model: std::sync::Arc<IntentModel>,
    pub intents: Vec<IntentPrediction>,
    pub slots: Vec<crate::slots::Slot>,
}

/// Classify phase: the message's intents (each with its clause) and slots.
pub fn classify(tenant: &Tenant, text: &str) -> Result<Classified> {
    let model = tenant.intents();
    let intents = closer_models::IntentClassifier::classify(&model.classifier, text)?;
    Ok(Classified {
        model,
        intents,
        slots: crate::slots::extract(text),
    })
}

/// What the middle phases decided (observe → plan → hand-off → meeting), with the signals to
/// send before the reply in protocol order.
pub struct Decided {
    pub score: (i32, Vec<closer_store::Reason>),
    /// Intents seen for the first time this turn.
    pub new_intents: Vec<String>,
    pub account_live: Option<(closer_kb::Account, closer_kb::Rep)>,
    pub plan: plan::TurnPlan,
    pub handoff: Option<handoff::Handoff>,
    pub meeting: meeting::MeetingStep,
    /// The qualification question to ask, when no meeting is offered.
    pub question: Option<String>,
    /// The visitor's account (the prompt names it when an owner is cited).
    pub account: Option<closer_kb::Account>,
    pub signals: Vec<TurnEvent>,
}

/// Observe, score, plan, decide the hand-off and the meeting step. One knowledge snapshot and
/// one playbook for the whole turn: a concurrent ingest or upload is seen whole or not at all.
pub fn decide(
    cx: &TurnContext<'_>,
    conv: &mut Conversation,
    turn: u32,
    text: &str,
    c: &Classified,
) -> Result<Decided> {
    let (engine, tenant, visitor) = (cx.engine, cx.tenant, cx.visitor);
    let (kb, playbook) = (tenant.kb.snapshot(), tenant.playbook());
    let new_intents = conv.observe(turn, &c.intents, &c.slots, &kb);
    let score = crate::playbook::score(&playbook, &conv.seen);
    let mut signals = vec![];
    let account_live = handoff::account_live(conv, &kb, turn).map(|(a, r, signal)| {
        // The visitor sees the owner's alert only for a trusted account; the rep is told
        // either way (the event says whether it was verified).
        if visitor.trusted_domain() == Some(a.domain.as_str()) {
            signals.push(TurnEvent::Handoff(signal));
        }
        (a, r)
    });
    let plan = plan::plan_turn(tenant, &kb, &c.model.set, visitor, text, &c.intents)?;
    let decision = handoff::decide(plan.ask, score.0, &playbook, conv);
    let handoff = handoff::resolve(engine, tenant, &playbook, conv, decision)?;
    let h = handoff.as_ref();
    let mut meeting =
        meeting::offer_step(engine, tenant, &playbook, conv, visitor, h, score.0, turn)?;
    let question = match &meeting.line {
        Some(_) => None,
        None => conv.next_question(&playbook, score.0).map(str::to_string),
    };
    let account = visitor.trusted_domain().and_then(|d| kb.account(d));
    if let Some(ask) = plan.ask {
        let owner = account.and_then(|a| kb.rep(&a.owner_rep_id));
        let signal = handoff::rep_requested(ask, visitor, owner, text, turn);
        signals.push(TurnEvent::Handoff(signal));
    }
    signals.extend(meeting.offer.take().map(TurnEvent::MeetingProposed));
    Ok(Decided {
        score,
        new_intents,
        account_live,
        plan,
        handoff,
        meeting,
        question,
        account: account.cloned(),
        signals,
    })
}

/// The reply: the generated answer from the cited facts (when any), then the fixed lines, the
/// meeting offer or the next question. `Ok(None)`: the client went away.
fn reply(
    cx: &TurnContext<'_>,
    d: &mut Decided,
    turn: u32,
    emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
) -> Result<Option<generate::Reply>> {
    let mut reply = generate::Reply::default();
    // Answers judged sure are generated under the guard; the closest documented answers are
    // stated in the team's own words.
    let (closest, sure): (Vec<plan::Cited>, Vec<plan::Cited>) =
        d.plan.cited.iter().cloned().partition(|c| c.closest);
    if !sure.is_empty() {
        let clauses = &d.plan.covered_clauses;
        let (e, t, a) = (cx.engine, cx.tenant, d.account.as_ref());
        match generate::generate_answer(e, t, cx.settings, cx.ctl, &sure, clauses, a, turn, emit)? {
            Some(r) => reply = r,
            None => return Ok(None),
        }
    }
    // A closest answer was written for another question: its own "Yes." or "No." must not read
    // as the answer to this one.
    let intro = (!closest.is_empty()).then(|| plan::CLOSEST_INTRO.to_string());
    let tail = intro.into_iter().chain(
        closest
            .into_iter()
            .map(|c| generate::without_yes_no(&c.answer)),
    );
    let tail = tail.chain(d.plan.tail.drain(..).map(str::to_string));
    let tail: Vec<String> = tail
        .chain(d.meeting.line.take())
        .chain(d.question.take())
        .collect();
    for line in tail {
        if reply.send(&line, turn, emit).is_break() {
            return Ok(None);
        }
    }
    Ok(Some(reply))
}

/// Runs one turn and emits its events in protocol order: classify → decide (observe, plan,
/// hand-off, meeting) → reply (generate under the guard) → commit → final. When `ctl.stop` says
/// so, the turn stops within one token and returns `Error::Stopped`.
pub fn run_turn(
    cx: &TurnContext<'_>,
    conv: &mut Conversation,
    turn: u32,
    text: &str,
    emit: &mut dyn FnMut(TurnEvent) -> ControlFlow<()>,
) -> Result<()> {
    let (engine, tenant, visitor) = (cx.engine, cx.tenant, cx.visitor);
    let started = Instant::now();
    if let Some(rep) = conv.taken_over.clone() {
        // A rep has the conversation: no bot reply; the message goes to the rep.
        return commit::relay_visitor_message(engine, tenant, conv, &rep, turn, text);
    }
    if let Some(i) = meeting::chosen_slot(conv, visitor, text) {
        return meeting::book_turn(engine, tenant, visitor, conv, turn, text, i, emit);
    }
    let c = classify(tenant, text)?;
    let intents = c.intents.clone();
    send!(
        emit,
        TurnEvent::Intents {
            turn,
            text: text.into(),
            intents
        }
    );
    if !c.slots.is_empty() {
        send!(
            emit,
            TurnEvent::Slots {
                turn,
                slots: c.slots.clone()
            }
        );
    }
    let mut d = decide(cx, conv, turn, text, &c)?;
    for signal in std::mem::take(&mut d.signals) {
        send!(emit, signal);
    }
    let Some(reply) = reply(cx, &mut d, turn, emit)? else {
        return Ok(());
    };
    let text_out = reply.text();
    // Committed before the final event: a turn the client saw finish is on disk.
    let record = commit::TurnRecord {
        slots: commit::slot_pairs(&c.slots),
        email: visitor.email.clone(),
        intents: &d.new_intents,
        detected: c.intents.iter().map(|i| i.name.clone()).collect(),
        account_live: d.account_live.as_ref().map(|(a, r)| (a, r)),
        handoff: d.handoff.take(),
        events: std::mem::take(&mut d.meeting.events),
        ..commit::TurnRecord::new(turn, text, &text_out, d.score.clone())
    };
    commit::record_turn(engine, tenant, conv, record)?;
    let _ = emit(TurnEvent::Final(events::ReplyFinal {
        turn,
        text: text_out,
        fact_ids: d.plan.cited.iter().map(|c| c.id.clone()).collect(),
        guard_replaced: reply.guard_replaced,
        unanswered: d.plan.unanswered,
        latency_ms: control::elapsed_ms(started),
    }));
    Ok(())
}
