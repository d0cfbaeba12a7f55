//! The Marketo connector ([`client`]: the identity token, errors inside HTTP 200, the rate and
//! concurrency limits). For each event of a conversation whose visitor gave an e-mail it pushes
//! the lead as it is now: `POST /rest/v1/leads.json` with `action: createOrUpdate` and
//! `lookupField: email`, with `email`,
//! `firstName`/`lastName` and `company` like the Salesforce connector's, and the custom fields
//! [`FIELDS`]. A lead the answer marks `skipped` (a field not created, say) fails the attempt
//! with Marketo's reason. `createOrUpdate` by e-mail makes a replay or a retry after a lost
//! answer harmless. Marketo's own lead-owner fields are left to its CRM sync, and it has no
//! per-conversation record an upsert keeps single, so the lead carries both as fields:
//! `closerOwnerEmail` (the routed rep's e-mail, for a smart campaign to assign),
//! `closerConversation` (the latest conversation) and `closerTranscript` (that conversation's
//! every message, one a line, at most [`TRANSCRIPT_MAX_CHARS`], the start cut); every
//! conversation's stays in Closer (`Leads.GetTranscript`).
//!
//! Pushes are batched across conversations ([`pusher`]): an event's lead joins a queue, and a
//! push takes everything queued (up to [`MAX_BATCH`]) once it has a concurrent slot and the
//! budget, so a lone event goes at once and a burst shares calls instead of queueing behind the
//! 100-calls-per-20-s limit. Each event still counts as delivered only by its own lead's
//! `created`/`updated` in the answer; two events for the same e-mail in one batch send the
//! later one's lead (by outbox cursor) once, and both read its result.

pub mod client;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use closer_store::{Delivery, Lead, Store};
use closer_webhooks::connector::{Answer, Connector, Sending, URL_PREFIX};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, MarketoConfig};
use crate::lead::{self, RepEmails};
use client::Client;

/// The custom lead fields written (REST API names).
pub const FIELDS: &[&str] = &[
    "closerCQL",
    "closerCQLReasons",
    "closerSlots",
    "closerMeeting",
    "closerConversation",
    "closerOwnerEmail",
    "closerTranscript",
];

/// The most of a transcript written to `closerTranscript` (a Text Area field).
pub const TRANSCRIPT_MAX_CHARS: usize = 32_000;

/// Leads in one push at most (Marketo's limit for `leads.json`).
pub const MAX_BATCH: usize = 300;

/// The connector's events in flight at once, waiting to join a push: a burst fills pushes of up
/// to this many (500 leads a second within the default 100 calls per 20 s) without a blocking
/// store read per event of a whole batch of 300 at once.
pub const IN_FLIGHT: usize = 100;

const PATH: &str = "/rest/v1/leads.json";

/// One event's lead waiting for a push, and the event's attempt waiting for its result.
struct Queued {
    email: String,
    cursor: u64,
    fields: Map<String, Value>,
    result: oneshot::Sender<Result<String, Answer>>,
}

pub struct Marketo {
    config: MarketoConfig,
    id: String,
    client: Arc<Client>,
    store: Arc<dyn Store>,
    reps: RepEmails,
    queue: mpsc::UnboundedSender<Queued>,
    /// The queue's other end, until the first event starts the [`pusher`].
    idle: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
}

impl Marketo {
    pub fn new(
        config: MarketoConfig,
        store: Arc<dyn Store>,
        reps: RepEmails,
    ) -> Result<Self, ConfigError> {
        let client = Arc::new(Client::new(&config).map_err(ConfigError::Invalid)?);
        let (queue, idle) = mpsc::unbounded_channel();
        Ok(Marketo {
            id: config.id(),
            config,
            client,
            store,
            reps,
            queue,
            idle: Mutex::new(Some(idle)),
        })
    }

    async fn sync(&self, d: &Delivery) -> Result<String, Answer> {
        let Some(conv) = d.conversation_id.as_deref() else {
            return Ok("no conversation: nothing to write".into());
        };
        let Some(snap) = lead::read(&self.store, &self.config.tenant, conv).await? else {
            return Ok("no lead: nothing to write".into());
        };
        let Some(email) = snap.lead.email.clone().filter(|e| !e.is_empty()) else {
            return Ok("no e-mail yet: nothing to write".into());
        };
        if let Some(idle) = self.idle.lock().take() {
            tokio::spawn(pusher(self.client.clone(), idle));
        }
        let (result, answer) = oneshot::channel();
        let mut fields = lead_fields(&snap.lead, &email, snap.meeting.as_deref());
        let owner = lead::rep_email(&self.reps, &self.config.tenant, &snap.lead);
        fields.insert("closerOwnerEmail".into(), owner.unwrap_or_default().into());
        fields.insert(
            "closerTranscript".into(),
            lead::transcript_text(&snap.transcript, TRANSCRIPT_MAX_CHARS).into(),
        );
        let queued = Queued {
            email: email.to_lowercase(),
            cursor: d.cursor,
            fields,
            result,
        };
        self.queue
            .send(queued)
            .map_err(|_| Answer::none("the Marketo pusher stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Answer::none("the Marketo pusher stopped")))
    }
}

/// Takes the queued leads as calls may go: waits for one, then for a concurrent slot and the
/// budget, then takes every lead queued meanwhile (up to [`MAX_BATCH`]) into one push, sent on
/// its own task while the next batch gathers. Ends when the connector is dropped.
async fn pusher(client: Arc<Client>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    while let Some(first) = queue.recv().await {
        if first.result.is_closed() {
            continue; // its attempt gave up waiting
        }
        let ready = match client.ready().await {
            Ok(r) => r,
            Err(a) => {
                let _ = first.result.send(Err(a));
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(q) if !q.result.is_closed() => batch.push(q),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let client = client.clone();
        tokio::spawn(async move {
            let (input, waiting) = by_email(batch);
            let n = input.len();
            let body = json!({
                "action": "createOrUpdate",
                "lookupField": "email",
                "input": input,
            });
            match client.call(PATH, &body, ready).await {
                Err(failed) => {
                    for q in waiting.into_iter().flatten() {
                        let _ = q.send(Err(failed.clone()));
                    }
                }
                Ok(reply) => {
                    for (i, senders) in waiting.into_iter().enumerate() {
                        let outcome = lead_result(&reply["result"][i], n);
                        for q in senders {
                            let _ = q.send(outcome.clone());
                        }
                    }
                }
            }
        });
    }
}

/// One `input` entry per e-mail (the lead of the latest event by cursor), and who waits for it.
#[allow(clippy::type_complexity)]
fn by_email(
    batch: Vec<Queued>,
) -> (
    Vec<Map<String, Value>>,
    Vec<Vec<oneshot::Sender<Result<String, Answer>>>>,
) {
    let mut at: HashMap<String, usize> = HashMap::new();
    let (mut input, mut cursors, mut waiting) = (vec![], vec![], Vec::<Vec<_>>::new());
    for q in batch {
        match at.get(&q.email) {
            Some(&i) => {
                if q.cursor > cursors[i] {
                    (input[i], cursors[i]) = (q.fields, q.cursor);
                }
                waiting[i].push(q.result);
            }
            None => {
                at.insert(q.email, input.len());
                input.push(q.fields);
                cursors.push(q.cursor);
                waiting.push(vec![q.result]);
            }
        }
    }
    (input, waiting)
}

/// One lead's entry of a push's `result`: written, or the attempt fails with Marketo's reasons.
fn lead_result(result: &Value, leads: usize) -> Result<String, Answer> {
    match result["status"].as_str() {
        Some(s @ ("created" | "updated")) => {
            Ok(format!("lead {} {s} (a push of {leads})", result["id"]))
        }
        _ => Err(Answer::none(crate::http::excerpt(
            "POST /rest/v1/leads.json: lead not written",
            result.to_string().as_bytes(),
        ))),
    }
}

/// The lead's standard and `closer*` fields.
fn lead_fields(lead: &Lead, email: &str, meeting: Option<&str>) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("email".into(), email.into());
    let (first, last) = lead::names(lead, email);
    if let Some(first) = first {
        f.insert("firstName".into(), first.into());
    }
    f.insert("lastName".into(), last.into());
    f.insert("company".into(), lead::company(lead).into());
    f.insert("closerCQL".into(), lead.score.into());
    f.insert("closerCQLReasons".into(), lead::reasons_text(lead).into());
    f.insert("closerSlots".into(), lead::slots_text(lead).into());
    f.insert("closerMeeting".into(), meeting.unwrap_or("").into());
    f.insert(
        "closerConversation".into(),
        lead.conversation_id.clone().into(),
    );
    f
}

impl Connector for Marketo {
    fn id(&self) -> &str {
        &self.id
    }

    fn tenant(&self) -> &str {
        &self.config.tenant
    }

    fn url(&self) -> String {
        format!("{URL_PREFIX}marketo {}", self.config.base_url)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs(self.config.attempt_timeout_secs)
    }

    fn in_flight(&self) -> Option<usize> {
        Some(IN_FLIGHT)
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> Sending<'a> {
        Box::pin(async move {
            crate::http::within(self.config.attempt_timeout_secs, self.sync(d)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(email: &str, cursor: u64) -> (Queued, oneshot::Receiver<Result<String, Answer>>) {
        let (result, rx) = oneshot::channel();
        let mut fields = Map::new();
        fields.insert("closerConversation".into(), format!("c{cursor}").into());
        let q = Queued {
            email: email.into(),
            cursor,
            fields,
            result,
        };
        (q, rx)
    }

    #[test]
    fn a_batch_sends_each_email_once_with_its_latest_event_and_answers_every_event() {
        let (a7, _r1) = queued("sam@acme.com", 7);
        let (b3, _r2) = queued("kim@acme.com", 3);
        let (a5, _r3) = queued("sam@acme.com", 5);
        let (input, waiting) = by_email(vec![a7, b3, a5]);
        let conv: Vec<&Value> = input.iter().map(|f| &f["closerConversation"]).collect();
        assert_eq!(conv, [&json!("c7"), &json!("c3")]);
        assert_eq!(waiting.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn a_skipped_lead_fails_only_its_own_events() {
        let written = lead_result(&json!({"id": 4, "status": "updated"}), 2).unwrap();
        assert_eq!(written, "lead 4 updated (a push of 2)");
        let skipped = json!({"status": "skipped", "reasons": [{"code": "1006", "message": "Field 'closerCQL' not found"}]});
        let e = lead_result(&skipped, 2).unwrap_err();
        assert!(e.excerpt.contains("1006") && e.status.is_none(), "{e:?}");
    }
}
