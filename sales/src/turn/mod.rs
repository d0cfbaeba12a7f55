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
use crate::engine::{Engine, IntentModel, Tenant};
use crate::error::Result;
use crate::gate::{FairGate, Stop};
use crate::visitor::Visitor;

/// Sends a turn event; returns from the turn (`Ok`) when the client is gone.
macro_rules! send {
    ($emit:expr, $event:expr) => {
        if ($emit)($event).is_break() {
            return Ok(());
        }
    };
}

pub mod commit;
pub mod events;
pub mod generate;
pub mod handoff;
pub mod meeting;
pub mod plan;

pub use events::TurnEvent;
pub use plan::DONT_KNOW;

/// Every fixed sentence the assistant may say besides facts (for checks that count invented
/// spans in replies).
pub fn fixed_lines() -> Vec<&'static str> {
    let mut v = vec![plan::DONT_KNOW, plan::HANDOFF_ACK, plan::UNKNOWN_ACCOUNT];
    for name in ["greeting", "just_browsing"] {
        v.extend(plan::canned(name, &[]));
    }
    v.extend(plan::canned("", &[IntentFlag::Disqualify]));
    v
}

/// Settings of the answer path.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    pub max_new_tokens: usize,
}

/// What a turn asks of the service around it: a generator slot, and whether to stop.
pub struct TurnControl<'a> {
    pub gate: &'a FairGate,
    /// Asked before generating, while queued for the generator, and after every token.
    pub stop: &'a dyn Fn() -> Option<Stop>,
    /// The team is pressing past its quota: its generation yields the model to other teams.
    pub background: bool,
}

/// Everything a turn reads besides the conversation and the message.
pub struct TurnContext<'a> {
    pub engine: &'a Engine,
    pub tenant: &'a Tenant,
    pub settings: &'a TurnSettings,
    pub ctl: &'a TurnControl<'a>,
    pub visitor: &'a Visitor,
}

pub(crate) fn elapsed_ms(started: Instant) -> u32 {
    started.elapsed().as_millis().min(u32::MAX as u128) as u32
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

/// Runs one turn and emits its events in protocol order. When `ctl.stop` says so, the turn stops
/// within one token and returns `Error::Stopped`.
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
    send!(
        emit,
        TurnEvent::Intents {
            turn,
            text: text.to_string(),
            intents: c.intents.clone()
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
    // One knowledge snapshot and one playbook for the whole turn: a concurrent ingest or upload
    // is seen whole or not at all.
    let (kb, playbook) = (tenant.kb.snapshot(), tenant.playbook());
    let new_intents = conv.observe(turn, &c.intents, &c.slots, &kb);
    let score = crate::playbook::score(&playbook, &conv.seen);
    let account_live = handoff::account_live(conv, &kb, turn);
    if let Some((_, _, signal)) = &account_live {
        send!(emit, TurnEvent::Handoff(signal.clone()));
    }
    let mut plan = plan::plan_turn(tenant, &kb, &c.model.set, visitor, text, &c.intents)?;
    let decision = handoff::decide(plan.ask, score.0, &playbook, conv);
    let handoff = handoff::resolve(engine, tenant, &playbook, conv, decision)?;
    let meeting = meeting::offer_step(
        engine,
        tenant,
        &playbook,
        conv,
        visitor,
        handoff.as_ref(),
        score.0,
        turn,
    )?;
    let question = match &meeting.line {
        Some(_) => None,
        None => conv.next_question(&playbook, score.0),
    };
    if let Some(ask) = plan.ask {
        let account = visitor.domain.as_deref().and_then(|d| kb.account(d));
        let owner = account.and_then(|a| kb.rep(&a.owner_rep_id));
        send!(
            emit,
            TurnEvent::Handoff(handoff::rep_requested(ask, visitor, owner, text, turn))
        );
    }
    if let Some(offer) = meeting.offer {
        send!(emit, TurnEvent::MeetingProposed(offer));
    }
    let mut reply = generate::Reply::default();
    if !plan.cited.is_empty() {
        let account = visitor.domain.as_deref().and_then(|d| kb.account(d));
        let (cited, clauses) = (&plan.cited, &plan.covered_clauses);
        match generate::generate_answer(
            engine,
            tenant,
            cx.settings,
            cx.ctl,
            cited,
            clauses,
            account,
            turn,
            emit,
        )? {
            Some(r) => reply = r,
            None => return Ok(()),
        }
    }
    let tail = plan
        .tail
        .drain(..)
        .map(str::to_string)
        .chain(meeting.line)
        .chain(question.map(str::to_string));
    for line in tail.collect::<Vec<_>>() {
        if reply.send(&line, turn, emit).is_break() {
            return Ok(());
        }
    }
    let text_out = reply.text();
    // Committed before the final event: a turn the client saw finish is on disk.
    commit::record_turn(
        engine,
        tenant,
        conv,
        commit::TurnRecord {
            slots: commit::slot_pairs(&c.slots),
            email: visitor.email.clone(),
            intents: &new_intents,
            account_live: account_live.as_ref().map(|(a, r, _)| (a, r)),
            handoff,
            events: meeting.events,
            ..commit::TurnRecord::new(turn, text, &text_out, score)
        },
    )?;
    let _ = emit(TurnEvent::Final(events::ReplyFinal {
        turn,
        text: text_out,
        fact_ids: plan.cited.iter().map(|c| c.id.clone()).collect(),
        guard_replaced: reply.guard_replaced,
        unanswered: plan.unanswered,
        latency_ms: elapsed_ms(started),
    }));
    Ok(())
}
