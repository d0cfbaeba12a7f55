//! Closer's durable state: conversations and their messages, leads with CQL scores and the
//! reasons for every change, the event outbox, event consumers' acknowledged cursors, rep
//! presence and round-robin counts, and idempotency keys.
//!
//! Everything sits behind [`Store`]: the embedded SQLite backend ([`sqlite::SqliteStore`], the
//! default) and PostgreSQL ([`postgres::PgStore`], for several replicas on one database). Every
//! method that changes state is one transaction, and the events a change raises are written in
//! that same transaction (outbox): when a method returns `Ok` the change and its events are on
//! disk, and a crash at any moment loses neither half.
//!
//! Events get a cursor (strictly increasing) and an id derived from it; subscribers read the
//! outbox after a cursor, and the [`bus::Bus`] only wakes them. See `Events.Subscribe`.

pub mod backend;
pub mod bus;
#[cfg(test)]
mod conformance;
pub mod nats;
pub mod postgres;
pub mod sqlite;
pub mod webhooks;

pub use webhooks::{
    AttemptResult, Delivery, DeliveryStatus, ReplaySelection, Secret, WebhookEndpoint, WebhookStore,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement. `transient`: worth retrying (a lost
    /// connection, a lock or serialization conflict, a database starting or shutting down).
    #[error("storage: {message}")]
    Database { message: String, transient: bool },
    #[error("storage: {0}")]
    Json(#[from] serde_json::Error),
    /// The change carried an idempotency key that an earlier (or concurrent) call already
    /// applied; nothing was written, and this is the reply stored with the first one.
    #[error("already applied with this idempotency key")]
    AlreadyApplied(Vec<u8>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("storage i/o on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether retrying the same call may succeed (the gRPC layer answers UNAVAILABLE).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Database {
                transient: true,
                ..
            }
        )
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        let transient = matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked));
        Error::Database {
            message: e.to_string(),
            transient,
        }
    }
}

/// Events that depend on what a change wrote (a lead, a meeting), computed inside its
/// transaction.
pub type Then<'a, T> = &'a (dyn Fn(&T) -> Vec<NewEvent> + Sync);

/// A condition on a conversation's control that a change requires (checked under the row's
/// lock): `Err` says why not, and becomes [`Error::Conflict`].
pub type ControlCheck<'a> =
    &'a (dyn Fn(&ConversationControl) -> std::result::Result<(), String> + Sync);

/// The database file of the embedded backend (conversations, leads, events…), under the data
/// directory.
pub const SQLITE_FILE: &str = "closer.db";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    Visitor,
    Bot,
    Rep,
}

impl Author {
    fn as_str(self) -> &'static str {
        match self {
            Author::Visitor => "visitor",
            Author::Bot => "bot",
            Author::Rep => "rep",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "bot" => Author::Bot,
            "rep" => Author::Rep,
            _ => Author::Visitor,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub turn: u32,
    pub author: Author,
    pub text: String,
    pub at_ms: i64,
}

/// Why a score changed: one rule (or a rep) and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The playbook rule's name, or `manual` for a rep's score.
    pub rule: String,
    /// The visitor turn that showed it (0 for account data known at the start, or a rep).
    pub turn: u32,
    /// What matched: an intent name, a slot and its value, an account field, a rep's note.
    pub detail: String,
    /// What the rule gives: bolts added, or -1 for a disqualifier.
    pub points: i32,
}

/// A rep's score; it wins over the playbook's until the rep clears it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualScore {
    pub score: i32,
    pub rep_id: String,
    pub note: String,
    pub at_ms: i64,
}

/// A conversation seen as a lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub tenant: String,
    pub conversation_id: String,
    pub domain: Option<String>,
    pub email: Option<String>,
    /// The score in force: the manual one when set, else the playbook's.
    pub score: i32,
    /// The playbook's score: -1 disqualified, 0 not yet scored, 1–3 bolts.
    pub bot_score: i32,
    pub manual: Option<ManualScore>,
    /// The reasons behind `bot_score` now.
    pub reasons: Vec<Reason>,
    /// The rep and team the conversation is routed to, once it is.
    pub rep_id: Option<String>,
    pub team: Option<String>,
    /// Captured slots by name (email, company_size, country...).
    pub slots: std::collections::BTreeMap<String, String>,
    /// Intents detected so far → the first turn each was seen.
    pub intents: std::collections::BTreeMap<String, u32>,
    pub turns: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// `verified`, `claimed` or `anonymous` when the tenant checks visitor identity.
    pub identity: Option<String>,
}

/// An event to write with a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// `account_live`, `cql_scored`, `handoff_requested`, ...
    pub kind: String,
    pub tenant: String,
    pub conversation_id: Option<String>,
    pub rep_id: Option<String>,
    pub team: Option<String>,
    pub payload: serde_json::Value,
}

/// An event in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the outbox; strictly increasing.
    pub cursor: u64,
    /// Stable id for de-duplication (`evt-<cursor>`).
    pub id: String,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Which events a subscriber wants; empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub tenant: String,
    pub kinds: Vec<String>,
    pub rep_id: Option<String>,
    pub team: Option<String>,
    pub conversation_id: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        e.event.tenant == self.tenant
            && (self.kinds.is_empty() || self.kinds.contains(&e.event.kind))
            && self
                .rep_id
                .as_ref()
                .is_none_or(|r| e.event.rep_id.as_ref() == Some(r))
            && self
                .team
                .as_ref()
                .is_none_or(|t| e.event.team.as_ref() == Some(t))
            && self
                .conversation_id
                .as_ref()
                .is_none_or(|c| e.event.conversation_id.as_ref() == Some(c))
    }
}

/// What one visitor turn changed, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct TurnWrite {
    pub tenant: String,
    pub conversation_id: String,
    pub domain: Option<String>,
    pub email: Option<String>,
    /// The visitor's message and the bot's reply (none while a rep has taken over).
    pub messages: Vec<Message>,
    /// Slots captured so far (merged into the lead's).
    pub slots: Vec<(String, String)>,
    /// Intents first seen this turn, with the turn (the lead's intents).
    pub intents: Vec<(String, u32)>,
    /// Every intent detected in this turn's visitor message, in order (the transcript's).
    pub detected: Vec<String>,
    /// The playbook's score after this turn and its reasons, when it was computed.
    pub score: Option<(i32, Vec<Reason>)>,
    /// Where the conversation was routed this turn.
    pub route: Option<(Option<String>, Option<String>)>,
    pub events: Vec<NewEvent>,
    /// `(scope, key, reply)`: remembered in the same transaction, so a retried request with the
    /// same key gets `reply` back instead of being applied twice.
    pub idempotency: Option<(String, String, Vec<u8>)>,
}

/// Filters of `Leads.List`.
#[derive(Debug, Clone, Default)]
pub struct LeadFilter {
    pub tenant: String,
    pub min_score: Option<i32>,
    pub max_score: Option<i32>,
    pub rep_id: Option<String>,
    pub team: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
    pub offset: usize,
}

/// A rep's presence, set from the rep console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub rep_id: String,
    pub online: bool,
    /// Conversations the rep takes at once; 0 = no limit.
    pub capacity: u32,
}

/// A booked meeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meeting {
    pub id: i64,
    pub tenant: String,
    pub rep_id: String,
    /// Unix seconds, end exclusive.
    pub start: i64,
    pub end: i64,
    pub conversation_id: String,
    pub email: Option<String>,
}

/// A conversation as reports count it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadStat {
    pub rep_id: Option<String>,
    pub team: Option<String>,
    /// The score in force (a rep's manual score wins).
    pub score: i32,
    pub created_ms: i64,
}

/// A booked meeting as reports count it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingStat {
    pub rep_id: String,
    pub booked_ms: i64,
}

/// An API key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public handle (`key-` + the first 12 hex digits of the hash), for listing and revoking.
    pub id: String,
    pub tenant: String,
    /// `publishable`, `rep` or `admin`.
    pub role: String,
    /// A label for people (`website`, `crm sync`...).
    pub name: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// Who is talking to the visitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationControl {
    /// The rep who took the conversation over, while they have it.
    pub taken_over_by: Option<String>,
    pub closed: bool,
}

/// A tenant's configuration document shared by replicas: its playbook, its intent set and the
/// model trained for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub tenant: String,
    /// What it is: `playbook.yaml`, `intents.yaml`, `intent-model.bin`.
    pub name: String,
    /// Grows with every put, across tenants; readers follow it.
    pub version: u64,
    pub content: Vec<u8>,
}

/// Durable state of all tenants (webhook endpoints and deliveries in [`WebhookStore`]).
pub trait Store: WebhookStore + Send + Sync {
    /// Writes a turn: messages, slots, score and reasons, route and events, all or nothing;
    /// `then` adds events that depend on the lead as written (a score change), in the same
    /// transaction. Returns the lead after it and the events as stored.
    ///
    /// With an idempotency key already stored (by an earlier call, or a concurrent one that
    /// committed first), nothing is written: [`Error::AlreadyApplied`] with the stored reply.
    fn record_turn(&self, w: &TurnWrite, then: Then<'_, Lead>) -> Result<(Lead, Vec<Event>)>;
    /// Sets (`Some`) or clears (`None`) a rep's manual score; writes `events` with it.
    fn set_manual_score(
        &self,
        tenant: &str,
        conversation_id: &str,
        manual: Option<ManualScore>,
        events: Then<'_, Lead>,
    ) -> Result<(Lead, Vec<Event>)>;
    fn lead(&self, tenant: &str, conversation_id: &str) -> Result<Option<Lead>>;
    /// Leads matching `f`, newest first, and how many match in all.
    fn leads(&self, f: &LeadFilter) -> Result<(Vec<Lead>, usize)>;
    fn transcript(&self, tenant: &str, conversation_id: &str) -> Result<Vec<Message>>;
    /// The intents detected in each visitor turn of a conversation, by turn (turns recorded
    /// before these were kept have none).
    fn turn_intents(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<std::collections::BTreeMap<u32, Vec<String>>>;
    /// Writes events on their own (no other change).
    fn append_events(&self, events: &[NewEvent]) -> Result<Vec<Event>>;
    /// Up to `limit` events after `cursor` that match `f`, oldest first. `Conflict` naming the
    /// first cursor that can be read when events after `cursor` were removed by retention.
    fn events_after(&self, cursor: u64, f: &EventFilter, limit: usize) -> Result<Vec<Event>>;
    /// The newest cursor written (0 when none; removed events count).
    fn last_cursor(&self) -> Result<u64>;
    /// Each tenant with events after `cursor`, with its newest cursor.
    fn tenant_cursors_after(&self, cursor: u64) -> Result<Vec<(String, u64)>>;
    /// The conversation's newest event of one of `kinds` (still in the outbox).
    fn latest_event(
        &self,
        tenant: &str,
        conversation_id: &str,
        kinds: &[&str],
    ) -> Result<Option<Event>>;
    /// Removes the events written before `before_ms` (event retention), oldest first, and
    /// remembers the highest cursor removed; returns how many went.
    fn prune_events(&self, before_ms: i64) -> Result<u64>;
    /// The highest cursor removed by [`Store::prune_events`] (0: none). Reading after a smaller
    /// cursor would miss events.
    fn pruned_through(&self) -> Result<u64>;
    /// `Conflict` naming where reading can start when retention removed events after `cursor`.
    fn check_readable(&self, cursor: u64) -> Result<()> {
        readable_after(cursor, self.pruned_through()?)
    }
    /// Records that `consumer` has processed everything up to `cursor` (never moves back).
    fn ack(&self, tenant: &str, consumer: &str, cursor: u64) -> Result<u64>;
    fn acked(&self, tenant: &str, consumer: &str) -> Result<u64>;
    /// Stores a tenant's document (replacing one of that name) under the next version, in
    /// commit order (a reader after version N never later finds a smaller one).
    fn put_document(&self, tenant: &str, name: &str, content: &[u8]) -> Result<u64> {
        self.put_documents(tenant, &[(name, content)])
    }
    /// Stores several of a tenant's documents in one transaction, each under its own next
    /// version: a reader sees all of them or none. Returns the last version (0 when `docs` is
    /// empty).
    fn put_documents(&self, tenant: &str, docs: &[(&str, &[u8])]) -> Result<u64>;
    /// The documents put after `version`, oldest first (each name once, its latest).
    fn documents_after(&self, version: u64) -> Result<Vec<Document>>;
    /// A tenant's document of that name, if any.
    fn document(&self, tenant: &str, name: &str) -> Result<Option<Document>>;
    /// The names of a tenant's documents that start with `prefix`, sorted.
    fn document_names(&self, tenant: &str, prefix: &str) -> Result<Vec<String>>;
    /// Takes the lease `name` for `holder` until `until_ms` when it is free, expired or held by
    /// `holder` already; whether `holder` has it now. Replicas use it so one of them does a
    /// piece of shared work.
    fn claim_lease(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool>;
    /// The tenant's named consumers and their acknowledged cursors, by name.
    fn consumers(&self, tenant: &str) -> Result<Vec<(String, u64)>>;
    /// How many of the tenant's events (still in the outbox) come after `cursor`.
    fn count_events_after(&self, tenant: &str, cursor: u64) -> Result<u64>;
    fn set_presence(&self, tenant: &str, p: &Presence) -> Result<()>;
    fn presence(&self, tenant: &str) -> Result<Vec<Presence>>;
    /// Open (routed, not closed) conversations per rep.
    fn open_load(&self, tenant: &str) -> Result<std::collections::HashMap<String, u32>>;
    /// Picks, among `candidates` (in order), the rep with the fewest round-robin assignments in
    /// `team` so far (ties: the first), and counts the assignment, atomically.
    fn round_robin(
        &self,
        tenant: &str,
        team: &str,
        candidates: &[String],
    ) -> Result<Option<String>>;
    /// Meetings of a rep that overlap `[from, to)` (Unix seconds).
    fn meetings(&self, tenant: &str, rep_id: &str, from: i64, to: i64) -> Result<Vec<Meeting>>;
    /// Books a meeting unless it overlaps one of the rep's (then `Conflict`), with its events,
    /// in one transaction: two visitors can never get the same slot.
    fn book_meeting(&self, m: &Meeting, events: Then<'_, Meeting>)
        -> Result<(Meeting, Vec<Event>)>;
    /// Appends messages to a conversation (a rep's, or a visitor's while a rep has it) with
    /// their events. A message with turn 0 is filed under the conversation's latest turn.
    fn append_messages(
        &self,
        tenant: &str,
        conversation_id: &str,
        messages: &[Message],
        events: &[NewEvent],
    ) -> Result<Vec<Event>>;
    /// Sets who controls a conversation (take over / hand back / close) with its events, when
    /// `check` accepts the control in force (read under the conversation's lock, so of two
    /// concurrent take-overs one wins and the other gets `Conflict`). `NotFound` when there is
    /// no such conversation.
    fn set_control(
        &self,
        tenant: &str,
        conversation_id: &str,
        control: &ConversationControl,
        check: ControlCheck<'_>,
        events: &[NewEvent],
    ) -> Result<Vec<Event>>;
    fn control(&self, tenant: &str, conversation_id: &str) -> Result<Option<ConversationControl>>;
    /// Conversations of a tenant started in `[from_ms, to_ms)`.
    fn lead_stats(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<LeadStat>>;
    /// Meetings of a tenant booked in `[from_ms, to_ms)`.
    fn meetings_booked(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<MeetingStat>>;
    /// Opens a new conversation `conversation_id` in `tenant` whose resume token hashes to
    /// `token_hash`. False (and nothing written) when the id is taken: a conversation or an
    /// earlier claim of the tenant has it. Atomic: of two callers claiming one id, one wins.
    fn claim_conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
        token_hash: &str,
        external_ref: Option<&str>,
    ) -> Result<bool>;
    /// The conversation of `tenant` a live (not revoked) resume token opens.
    fn conversation_by_token(&self, tenant: &str, token_hash: &str) -> Result<Option<String>>;
    /// Records how far the conversation's visitor is known (`verified`, `claimed`, `anonymous`).
    fn set_identity(&self, tenant: &str, conversation_id: &str, level: &str) -> Result<()>;
    /// Revokes the conversation's resume token; how many live tokens were revoked.
    fn revoke_resume(&self, tenant: &str, conversation_id: &str) -> Result<u32>;
    /// Stores a new API key (`Conflict` when its id or hash exists).
    fn create_key(&self, key: &ApiKey) -> Result<()>;
    /// Keys of a tenant (or of all tenants), revoked ones included, oldest first.
    fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>>;
    /// Revokes a key by id; `NotFound` when there is none.
    fn revoke_key(&self, id: &str) -> Result<ApiKey>;
    /// The key with this hash, revoked or not.
    fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>>;
    /// A stored reply for an idempotency key, if that request was already answered.
    fn idempotent_get(&self, tenant: &str, scope: &str, key: &str) -> Result<Option<Vec<u8>>>;
    fn idempotent_put(&self, tenant: &str, scope: &str, key: &str, reply: &[u8]) -> Result<()>;
}

/// Reading after `cursor` is whole unless retention removed events up to `pruned` beyond it.
pub fn readable_after(cursor: u64, pruned: u64) -> Result<()> {
    if cursor < pruned {
        return Err(Error::Conflict(format!(
            "after_cursor: events up to cursor {pruned} were removed by the event retention \
             (--event-retention-days); read from after_cursor {pruned}"
        )));
    }
    Ok(())
}
