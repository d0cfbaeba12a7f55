//! What a turn tells the visitor's stream, in protocol order. The gRPC edge turns each into its
//! `closer.v1` message; nothing here knows the proto.

use closer_models::IntentPrediction;

use crate::slots::Slot;

/// One event of a turn.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    /// The intents of the message; spans are byte offsets into `text`.
    Intents {
        turn: u32,
        text: String,
        intents: Vec<IntentPrediction>,
    },
    /// Slots the message carries (only sent when there are some).
    Slots {
        turn: u32,
        slots: Vec<Slot>,
    },
    Handoff(HandoffSignal),
    MeetingProposed(MeetingOffer),
    MeetingBooked {
        turn: u32,
        slot: OfferedSlot,
        meeting_link: String,
    },
    /// A released sentence of the reply (prefixed by a space after the first).
    Delta {
        turn: u32,
        text: String,
    },
    Final(ReplyFinal),
}

/// Which hand-off a signal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffKind {
    /// A known account's visitor is in chat: its owner is told.
    AccountLive,
    /// The visitor needs a person (asked, or a question went unanswered).
    RepRequested,
}

#[derive(Debug, Clone)]
pub struct HandoffSignal {
    pub turn: u32,
    pub kind: HandoffKind,
    pub rep_id: Option<String>,
    pub rep_name: Option<String>,
    pub account_domain: Option<String>,
    pub message: String,
    pub reason: String,
}

/// Meeting times offered to the visitor.
#[derive(Debug, Clone)]
pub struct MeetingOffer {
    pub turn: u32,
    pub timezone: String,
    pub slots: Vec<OfferedSlot>,
}

/// One offered meeting time; `id` ("1".."3") is what the visitor picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedSlot {
    pub id: String,
    pub rep_id: String,
    pub rep_name: String,
    pub start_unix: i64,
    pub end_unix: i64,
    pub label: String,
}

/// The end of a turn: the whole reply (= the deltas), what backs it, and how it went.
#[derive(Debug, Clone, Default)]
pub struct ReplyFinal {
    pub turn: u32,
    pub text: String,
    pub fact_ids: Vec<String>,
    pub guard_replaced: bool,
    pub unanswered: bool,
    pub latency_ms: u32,
}
