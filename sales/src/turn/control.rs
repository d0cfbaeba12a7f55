//! What a turn reads besides the conversation and the message: its settings, the service's
//! controls (generator gate, stop check), and the engine, tenant and visitor.

use std::time::Instant;

use crate::engine::{Engine, Tenant};
use crate::gate::{FairGate, Stop};
use crate::visitor::Visitor;

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

/// Milliseconds since `started`, saturating.
pub(crate) fn elapsed_ms(started: Instant) -> u32 {
    started.elapsed().as_millis().min(u32::MAX as u128) as u32
}
