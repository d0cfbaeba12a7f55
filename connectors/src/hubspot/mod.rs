//! The HubSpot connector (a private app's bearer token). For each event of a conversation it
//! writes the conversation's lead as it is now (so an old event replayed writes the latest
//! score): the `closer_*` properties first ([`properties`]), then
//!
//! 1. the contact, `POST /crm/v3/objects/contacts/batch/upsert` by `email`, with the score,
//!    reasons, slots, meeting, conversation and `hubspot_owner_id` (the routed rep's e-mail →
//!    `GET /crm/v3/owners?email=`, cached);
//! 2. the company, upserted by the unique `closer_domain`, and the contact → company default
//!    association (`PUT /crm/v4/objects/contact/{id}/associations/default/company/{id}`);
//! 3. one note per conversation holding the whole transcript (`hs_note_body`, `hs_timestamp`),
//!    upserted by the unique note property `closer_conversation_id`, associated to the contact.
//!
//! Every write is an upsert or an idempotent PUT, so an event applied twice (a retry after an
//! answer lost, a replay, a restart after kill -9) leaves the same records. A process remembers
//! the companies it upserted and the associations it made, so a conversation's later events cost
//! two calls (its contact and its note) instead of five; a failed association forgets the
//! company, so the next attempt upserts it again. Events of a
//! conversation without an e-mail yet write nothing (there is no contact to upsert).

pub mod client;
pub mod properties;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use closer_store::{Delivery, Lead, Message, Store};
use closer_webhooks::connector::{Answer, Connector, Sending, URL_PREFIX};
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::config::{ConfigError, HubSpotConfig};
use crate::lead::{self, RepEmails};
use client::Client;

/// HubSpot's limit on a note's body; a longer transcript keeps its end.
const NOTE_MAX_CHARS: usize = 65_000;

pub struct HubSpot {
    config: HubSpotConfig,
    id: String,
    client: Client,
    store: Arc<dyn Store>,
    reps: RepEmails,
    /// Rep e-mail → owner id (none: no HubSpot user has it).
    owners: Mutex<HashMap<String, Option<String>>>,
    /// The `closer_*` properties exist.
    ready: AtomicBool,
    /// Company ids by domain and associations made, by this process.
    made: Mutex<Made>,
}

/// What this process already wrote that never changes: a domain's company (its properties are
/// the domain alone) and associations. Forgotten wholesale past [`Made::MAX`] entries.
#[derive(Default)]
struct Made {
    companies: HashMap<String, String>,
    links: std::collections::HashSet<(String, String)>,
}

impl Made {
    const MAX: usize = 100_000;
}

impl HubSpot {
    pub fn new(
        config: HubSpotConfig,
        store: Arc<dyn Store>,
        reps: RepEmails,
    ) -> Result<Self, ConfigError> {
        let client = Client::new(&config).map_err(ConfigError::Invalid)?;
        Ok(HubSpot {
            id: config.id(),
            config,
            client,
            store,
            reps,
            owners: Mutex::default(),
            ready: AtomicBool::new(false),
            made: Mutex::default(),
        })
    }

    async fn owner(&self, email: &str) -> Result<Option<String>, Answer> {
        if let Some(known) = self.owners.lock().get(email) {
            return Ok(known.clone());
        }
        let query: String = url::form_urlencoded::byte_serialize(email.as_bytes()).collect();
        let reply = self
            .client
            .call(
                Method::GET,
                &format!("/crm/v3/owners?email={query}&limit=1"),
                None,
            )
            .await?;
        let id = reply.body["results"]
            .as_array()
            .and_then(|r| {
                r.iter().find(|o| {
                    o["email"]
                        .as_str()
                        .is_some_and(|e| e.eq_ignore_ascii_case(email))
                })
            })
            .and_then(|o| o["id"].as_str().map(str::to_string));
        self.owners.lock().insert(email.to_string(), id.clone());
        Ok(id)
    }

    /// One record upserted by a unique property; its HubSpot id.
    async fn upsert(
        &self,
        object: &str,
        id_property: &str,
        id: &str,
        properties: Map<String, Value>,
    ) -> Result<String, Answer> {
        let body =
            json!({"inputs": [{"idProperty": id_property, "id": id, "properties": properties}]});
        let reply = self
            .client
            .call(
                Method::POST,
                &format!("/crm/v3/objects/{object}/batch/upsert"),
                Some(&body),
            )
            .await?;
        reply.body["results"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Answer {
                status: Some(reply.status),
                excerpt: format!("{object} upsert: no id in the answer"),
                retry_after: None,
                dead: false,
            })
    }

    /// The default association `from` → `to`, unless this process made it already.
    async fn associate(&self, from: (&str, &str), to: (&str, &str)) -> Result<(), Answer> {
        let key = (
            format!("{}/{}", from.0, from.1),
            format!("{}/{}", to.0, to.1),
        );
        if self.made.lock().links.contains(&key) {
            return Ok(());
        }
        self.put_association(from, to).await?;
        let mut made = self.made.lock();
        if made.links.len() >= Made::MAX {
            made.links.clear();
        }
        made.links.insert(key);
        Ok(())
    }

    async fn put_association(&self, from: (&str, &str), to: (&str, &str)) -> Result<(), Answer> {
        self.client
            .call(
                Method::PUT,
                &format!(
                    "/crm/v4/objects/{}/{}/associations/default/{}/{}",
                    from.0, from.1, to.0, to.1
                ),
                None,
            )
            .await
            .map(|_| ())
    }

    /// Writes one conversation as it is now; what was written.
    async fn sync(&self, d: &Delivery) -> Result<String, Answer> {
        let Some(conv) = d.conversation_id.as_deref() else {
            return Ok("no conversation: nothing to write".into());
        };
        let Some(snap) = lead::read(&self.store, &self.config.tenant, conv).await? else {
            return Ok("no lead: nothing to write".into());
        };
        let lead = &snap.lead;
        let Some(email) = lead.email.clone().filter(|e| !e.is_empty()) else {
            return Ok("no e-mail yet: nothing to write".into());
        };
        if !self.ready.load(Ordering::SeqCst) {
            properties::ensure(&self.client).await?;
            self.ready.store(true, Ordering::SeqCst);
        }
        let rep_email = lead::rep_email(&self.reps, &self.config.tenant, lead);
        let owner = match &rep_email {
            Some(e) => self.owner(e).await?,
            None => None,
        };
        let mut contact = contact_properties(lead, &email, snap.meeting.as_deref());
        if let Some(o) = &owner {
            contact.insert("hubspot_owner_id".into(), o.clone().into());
        }
        let contact_id = self.upsert("contacts", "email", &email, contact).await?;
        let mut wrote = format!("contact {contact_id}");
        if let Some(domain) = lead::domain(lead) {
            let known = self.made.lock().companies.get(&domain).cloned();
            let company_id = match known {
                Some(id) => id,
                None => {
                    let mut company = Map::new();
                    company.insert("closer_domain".into(), domain.clone().into());
                    company.insert("domain".into(), domain.clone().into());
                    company.insert("name".into(), domain.clone().into());
                    let id = self
                        .upsert("companies", "closer_domain", &domain, company)
                        .await?;
                    let mut made = self.made.lock();
                    if made.companies.len() >= Made::MAX {
                        made.companies.clear();
                    }
                    made.companies.insert(domain.clone(), id.clone());
                    id
                }
            };
            if let Err(e) = self
                .associate(("contact", &contact_id), ("company", &company_id))
                .await
            {
                // The company may be gone from HubSpot: upserted again next time.
                self.made.lock().companies.remove(&domain);
                return Err(e);
            }
            wrote.push_str(&format!(", company {company_id}"));
        }
        let mut note = Map::new();
        note.insert("closer_conversation_id".into(), conv.into());
        note.insert(
            "hs_note_body".into(),
            note_body(conv, &snap.transcript).into(),
        );
        let at = snap.transcript.first().map_or(lead.created_ms, |m| m.at_ms);
        note.insert("hs_timestamp".into(), at.to_string().into());
        if let Some(o) = &owner {
            note.insert("hubspot_owner_id".into(), o.clone().into());
        }
        let note_id = self
            .upsert("notes", "closer_conversation_id", conv, note)
            .await?;
        self.associate(("note", &note_id), ("contact", &contact_id))
            .await?;
        wrote.push_str(&format!(", note {note_id}"));
        Ok(wrote)
    }
}

impl Connector for HubSpot {
    fn id(&self) -> &str {
        &self.id
    }

    fn tenant(&self) -> &str {
        &self.config.tenant
    }

    fn url(&self) -> String {
        format!("{URL_PREFIX}hubspot {}", self.config.base_url)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs(self.config.attempt_timeout_secs)
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> Sending<'a> {
        Box::pin(async move {
            let answer = crate::http::within(self.config.attempt_timeout_secs, self.sync(d)).await;
            if answer.status != Some(200) {
                // A property removed in HubSpot since: make them again on the next attempt.
                if answer.excerpt.contains("PROPERTY_DOESNT_EXIST") {
                    self.ready.store(false, Ordering::SeqCst);
                }
                tracing::debug!(connector = %self.id, cursor = d.cursor, status = ?answer.status, "HubSpot write failed");
            }
            answer
        })
    }
}

/// The contact's `closer_*` properties and e-mail.
fn contact_properties(lead: &Lead, email: &str, meeting: Option<&str>) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("email".into(), email.into());
    p.insert("closer_cql".into(), lead.score.to_string().into());
    p.insert("closer_cql_reasons".into(), lead::reasons_text(lead).into());
    p.insert("closer_slots".into(), lead::slots_text(lead).into());
    p.insert("closer_meeting_slot".into(), meeting.unwrap_or("").into());
    p.insert(
        "closer_conversation_id".into(),
        lead.conversation_id.clone().into(),
    );
    p
}

/// The transcript as a note: one paragraph per message, author first, HTML-escaped.
pub fn note_body(conversation: &str, transcript: &[Message]) -> String {
    let mut lines = vec![format!(
        "<p><b>Closer conversation {}</b></p>",
        escape(conversation)
    )];
    for m in transcript {
        let author = lead::author(&m.author);
        lines.push(format!("<p><b>{author}:</b> {}</p>", escape(&m.text)));
    }
    lead::keep_end(lines.join("\n"), NOTE_MAX_CHARS, "<p>(start cut)</p>")
}

/// `&`, `<` and `>` escaped (quotes need none in element text).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_holds_every_message_escaped() {
        let m = |author, text: &str| Message {
            turn: 1,
            author,
            text: text.into(),
            at_ms: 0,
        };
        let body = note_body(
            "c-1",
            &[
                m(closer_store::Author::Visitor, "Is <b>R&D</b> included?"),
                m(closer_store::Author::Bot, "Yes."),
            ],
        );
        assert!(
            body.contains("<b>Visitor:</b> Is &lt;b&gt;R&amp;D&lt;/b&gt; included?"),
            "{body}"
        );
        assert!(body.contains("<b>Bot:</b> Yes."), "{body}");
    }
}
