//! The Salesforce connector (a connected app's client-credentials flow, [`client`]). For each
//! event of a conversation whose visitor gave an e-mail it writes the conversation as it is now
//! in one `POST /services/data/vXX.X/composite` call with `allOrNone: true`:
//!
//! 1. the Lead, upserted by the external id `Closer_Key__c` (tenant + ":" + e-mail):
//!    `PATCH /sobjects/Lead/Closer_Key__c/<key>` with `LastName` (the visitor's name, else the
//!    e-mail's local part), `Company` (the stated company, else the domain, else
//!    "[not provided]"), `Email`, `OwnerId` (the routed rep's active User, found by e-mail and
//!    cached) and the `Closer_*__c` fields ([`LEAD_FIELDS`]);
//! 2. one Task per conversation, upserted by the external id `Closer_Conversation__c`, its
//!    `WhoId` the Lead (`@{lead.id}`), the whole transcript in `Description` (at most 32,000
//!    characters; a longer one loses its start, behind a marker).
//!
//! A converted Lead (the Lead write answers `CANNOT_UPDATE_CONVERTED_LEAD` or
//! `INVALID_FIELD_FOR_INSERT_UPDATE`, and the Lead reads `IsConverted`) is written to its
//! Contact (`ConvertedContactId`, cached) instead: the `Closer_*__c` fields, and the Task with
//! the Contact as `WhoId`. Several Leads with the same key (HTTP 300) dead-letter the event at
//! once, naming the key. Every write is an upsert or a PATCH by id, so an event applied twice
//! (a retry after a lost answer, a replay, a restart after kill -9) leaves the same records.

pub mod client;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use closer_store::{Delivery, Lead, Message, Store};
use closer_webhooks::connector::{Answer, Connector, Sending, URL_PREFIX};
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::config::{ConfigError, SalesforceConfig};
use crate::lead::{self, RepEmails};
use client::Client;

/// Salesforce's limit on a Task's `Description`.
pub const DESCRIPTION_MAX_CHARS: usize = 32_000;
pub use crate::lead::CUT_MARKER;
/// The Lead's external id: tenant + ":" + e-mail.
pub const LEAD_KEY: &str = "Closer_Key__c";
/// The Task's external id: the conversation.
pub const TASK_KEY: &str = "Closer_Conversation__c";
/// The custom fields written on Leads and Contacts (besides the Lead's key).
pub const LEAD_FIELDS: &[&str] = &[
    "Closer_CQL__c",
    "Closer_CQL_Reasons__c",
    "Closer_Slots__c",
    "Closer_Meeting__c",
    "Closer_Conversation__c",
];

pub struct Salesforce {
    config: SalesforceConfig,
    id: String,
    client: Client,
    store: Arc<dyn Store>,
    reps: RepEmails,
    /// Rep e-mail → active User id (none: no active User has it).
    owners: Mutex<HashMap<String, Option<String>>>,
    /// Lead key → the Contact it was converted to.
    converted: Mutex<HashMap<String, String>>,
}

/// Why a composite call's answer fails the attempt.
enum Failed {
    /// The Lead was converted: write its Contact.
    Converted,
    Answer(Answer),
}

impl Salesforce {
    pub fn new(
        config: SalesforceConfig,
        store: Arc<dyn Store>,
        reps: RepEmails,
    ) -> Result<Self, ConfigError> {
        let client = Client::new(&config).map_err(ConfigError::Invalid)?;
        Ok(Salesforce {
            id: config.id(),
            config,
            client,
            store,
            reps,
            owners: Mutex::default(),
            converted: Mutex::default(),
        })
    }

    fn data(&self, rest: &str) -> String {
        format!("/services/data/{}{rest}", self.config.api_version)
    }

    async fn query(&self, soql: &str) -> Result<Vec<Value>, Answer> {
        let q: String = url::form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        let reply = self
            .client
            .call(Method::GET, &self.data(&format!("/query?q={q}")), None)
            .await?;
        Ok(reply.body["records"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The active User with the rep's e-mail.
    async fn owner(&self, email: &str) -> Result<Option<String>, Answer> {
        if let Some(known) = self.owners.lock().get(email) {
            return Ok(known.clone());
        }
        let records = self
            .query(&format!(
                "SELECT Id FROM User WHERE Email = '{}' AND IsActive = true LIMIT 1",
                soql_quote(email)
            ))
            .await?;
        let id = records
            .first()
            .and_then(|r| r["Id"].as_str())
            .map(str::to_string);
        self.owners.lock().insert(email.to_string(), id.clone());
        Ok(id)
    }

    /// The Contact a converted Lead became; none when the Lead is not converted.
    async fn converted_contact(&self, key: &str) -> Result<Option<String>, Answer> {
        if let Some(c) = self.converted.lock().get(key) {
            return Ok(Some(c.clone()));
        }
        let records = self
            .query(&format!(
                "SELECT Id, IsConverted, ConvertedContactId FROM Lead WHERE {LEAD_KEY} = '{}'",
                soql_quote(key)
            ))
            .await?;
        let contact = records
            .iter()
            .find(|r| r["IsConverted"].as_bool() == Some(true))
            .and_then(|r| r["ConvertedContactId"].as_str())
            .map(str::to_string);
        if let Some(c) = &contact {
            self.converted.lock().insert(key.to_string(), c.clone());
        }
        Ok(contact)
    }

    /// One composite call; the ids of its subrequests by reference id.
    async fn composite(&self, requests: Vec<Value>) -> Result<HashMap<String, String>, Failed> {
        let body = json!({"allOrNone": true, "compositeRequest": requests});
        let reply = self
            .client
            .call(Method::POST, &self.data("/composite"), Some(&body))
            .await
            .map_err(Failed::Answer)?;
        let results = reply.body["compositeResponse"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ids = HashMap::new();
        let mut failed: Option<(u16, String, Vec<String>)> = None;
        for r in &results {
            let reference = r["referenceId"].as_str().unwrap_or("").to_string();
            let status = r["httpStatusCode"].as_u64().unwrap_or(0) as u16;
            if (200..300).contains(&status) {
                if let Some(id) = r["body"]["id"].as_str() {
                    ids.insert(reference, id.to_string());
                }
                continue;
            }
            let codes: Vec<String> = client::error_codes(&r["body"])
                .into_iter()
                .map(str::to_string)
                .collect();
            // With allOrNone the others only say PROCESSING_HALTED: keep the cause.
            if failed.is_none() || !codes.iter().any(|c| c == "PROCESSING_HALTED") {
                let halted_only = codes.iter().all(|c| c == "PROCESSING_HALTED");
                if failed.is_none() || !halted_only {
                    failed = Some((status, format!("{reference}: {}", r["body"]), codes));
                }
            }
        }
        let Some((status, detail, codes)) = failed else {
            if results.is_empty() {
                return Err(Failed::Answer(Answer {
                    status: Some(reply.status),
                    excerpt: "composite: no compositeResponse in the answer".into(),
                    ..Answer::default()
                }));
            }
            return Ok(ids);
        };
        let excerpt = crate::http::excerpt("POST composite", detail.as_bytes());
        if status == 300 {
            return Err(Failed::Answer(Answer {
                status: Some(300),
                excerpt: format!("several records match the external id: {excerpt}"),
                dead: true,
                ..Answer::default()
            }));
        }
        if codes
            .iter()
            .any(|c| c == "CANNOT_UPDATE_CONVERTED_LEAD" || c == "INVALID_FIELD_FOR_INSERT_UPDATE")
        {
            return Err(Failed::Converted);
        }
        Err(Failed::Answer(Answer {
            status: Some(status),
            excerpt,
            ..Answer::default()
        }))
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
        let key = format!("{}:{}", self.config.tenant, email.to_lowercase());
        let rep_email = lead::rep_email(&self.reps, &self.config.tenant, lead);
        let owner = match &rep_email {
            Some(e) => self.owner(e).await?,
            None => None,
        };
        let fields = closer_fields(lead, snap.meeting.as_deref());
        let task = |who: &str| task_body(conv, who, &snap.transcript, lead, owner.as_deref());
        let task_url = self.data(&format!("/sobjects/Task/{TASK_KEY}/{}", path_segment(conv)));
        if !self.converted.lock().contains_key(&key) {
            let mut body = lead_fields(lead, &email, &fields);
            if let Some(o) = &owner {
                body.insert("OwnerId".into(), o.clone().into());
            }
            let requests = vec![
                json!({"method": "PATCH", "referenceId": "lead", "body": body,
                       "url": self.data(&format!("/sobjects/Lead/{LEAD_KEY}/{}", path_segment(&key)))}),
                json!({"method": "PATCH", "referenceId": "task", "url": task_url,
                       "body": task("@{lead.id}")}),
            ];
            match self.composite(requests).await {
                Ok(ids) => {
                    return Ok(format!(
                        "lead {}, task {}",
                        ids.get("lead").map_or("?", String::as_str),
                        ids.get("task").map_or("?", String::as_str)
                    ))
                }
                Err(Failed::Answer(a)) => return Err(a),
                Err(Failed::Converted) => {}
            }
        }
        let Some(contact) = self.converted_contact(&key).await? else {
            return Err(Answer {
                status: Some(400),
                excerpt: format!(
                    "the Lead {key} refused the update as converted, but reads as not converted"
                ),
                ..Answer::default()
            });
        };
        let requests = vec![
            json!({"method": "PATCH", "referenceId": "contact", "body": fields,
                   "url": self.data(&format!("/sobjects/Contact/{}", path_segment(&contact)))}),
            json!({"method": "PATCH", "referenceId": "task", "url": task_url,
                   "body": task(&contact)}),
        ];
        match self.composite(requests).await {
            Ok(ids) => Ok(format!(
                "converted lead: contact {contact}, task {}",
                ids.get("task").map_or("?", String::as_str)
            )),
            Err(Failed::Answer(a)) => Err(a),
            Err(Failed::Converted) => Err(Answer {
                status: Some(400),
                excerpt: format!(
                    "the Contact {contact} of the converted Lead {key} refused the update"
                ),
                ..Answer::default()
            }),
        }
    }
}

impl Connector for Salesforce {
    fn id(&self) -> &str {
        &self.id
    }

    fn tenant(&self) -> &str {
        &self.config.tenant
    }

    fn url(&self) -> String {
        format!("{URL_PREFIX}salesforce {}", self.config.base_url)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs(self.config.attempt_timeout_secs)
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> Sending<'a> {
        Box::pin(async move {
            let answer = crate::http::within(self.config.attempt_timeout_secs, self.sync(d)).await;
            if answer.status != Some(200) {
                tracing::debug!(connector = %self.id, cursor = d.cursor, status = ?answer.status, dead = answer.dead, "Salesforce write failed");
            }
            answer
        })
    }
}

/// The `Closer_*__c` fields of a Lead or Contact.
fn closer_fields(lead: &Lead, meeting: Option<&str>) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("Closer_CQL__c".into(), lead.score.into());
    f.insert(
        "Closer_CQL_Reasons__c".into(),
        lead::reasons_text(lead).into(),
    );
    f.insert("Closer_Slots__c".into(), lead::slots_text(lead).into());
    f.insert("Closer_Meeting__c".into(), meeting.unwrap_or("").into());
    f.insert(
        "Closer_Conversation__c".into(),
        lead.conversation_id.clone().into(),
    );
    f
}

/// The Lead's standard fields and `closer`'s: names and company filled sensibly.
fn lead_fields(lead: &Lead, email: &str, closer: &Map<String, Value>) -> Map<String, Value> {
    let mut f = closer.clone();
    let (first, last) = lead::names(lead, email);
    if let Some(first) = first {
        f.insert("FirstName".into(), first.into());
    }
    f.insert("LastName".into(), last.into());
    f.insert("Company".into(), lead::company(lead).into());
    f.insert("Email".into(), email.into());
    f
}

fn task_body(
    conv: &str,
    who: &str,
    transcript: &[Message],
    lead: &Lead,
    owner: Option<&str>,
) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert(
        "Subject".into(),
        format!("Closer conversation {conv}").into(),
    );
    t.insert("Description".into(), description(transcript).into());
    t.insert("Status".into(), "Completed".into());
    let first = transcript.first().map_or(lead.created_ms, |m| m.at_ms);
    if let Ok(at) = jiff::Timestamp::from_millisecond(first) {
        t.insert(
            "ActivityDate".into(),
            at.to_zoned(jiff::tz::TimeZone::UTC)
                .date()
                .to_string()
                .into(),
        );
    }
    t.insert("WhoId".into(), who.into());
    if let Some(o) = owner {
        t.insert("OwnerId".into(), o.into());
    }
    t
}

/// The transcript as plain text, one message a line, author first; at most
/// [`DESCRIPTION_MAX_CHARS`], the start cut behind [`CUT_MARKER`].
pub fn description(transcript: &[Message]) -> String {
    lead::transcript_text(transcript, DESCRIPTION_MAX_CHARS)
}

/// A value inside a SOQL string literal.
fn soql_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// A value as one URL path segment (unreserved characters, `:` and `@` kept).
fn path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(slots: &[(&str, &str)], domain: Option<&str>) -> Lead {
        let mut l = Lead {
            tenant: "t".into(),
            conversation_id: "c".into(),
            domain: domain.map(str::to_string),
            email: None,
            score: 0,
            bot_score: 0,
            manual: None,
            reasons: vec![],
            rep_id: None,
            team: None,
            slots: Default::default(),
            intents: Default::default(),
            turns: 0,
            created_ms: 0,
            updated_ms: 0,
            identity: None,
        };
        for (k, v) in slots {
            l.slots.insert(k.to_string(), v.to_string());
        }
        l
    }

    #[test]
    fn last_name_and_company_are_filled_sensibly() {
        let l = lead(&[], None);
        assert_eq!(
            lead::names(&l, "sam.lee@acme.com"),
            (None, "sam.lee".into())
        );
        assert_eq!(lead::company(&l), "[not provided]");
        let l = lead(&[("name", "Sam van Lee")], Some("acme.com"));
        assert_eq!(
            lead::names(&l, "x@acme.com"),
            (Some("Sam van".into()), "Lee".into())
        );
        assert_eq!(lead::company(&l), "acme.com");
        let l = lead(
            &[("company", "Acme Ltd"), ("last_name", "Lee")],
            Some("acme.com"),
        );
        assert_eq!(lead::names(&l, "x@acme.com"), (None, "Lee".into()));
        assert_eq!(lead::company(&l), "Acme Ltd");
    }

    #[test]
    fn a_long_transcript_keeps_its_end_within_the_limit() {
        let m = |i: u32| Message {
            turn: i,
            author: closer_store::Author::Visitor,
            text: format!("message {i} {}", "x".repeat(100)),
            at_ms: 0,
        };
        let t: Vec<Message> = (0..1000).map(m).collect();
        let d = description(&t);
        assert_eq!(d.chars().count(), DESCRIPTION_MAX_CHARS);
        assert!(
            d.starts_with(CUT_MARKER) && d.contains("message 999 "),
            "{}",
            &d[..80]
        );
        assert!(!d.contains("message 0 "));
    }

    #[test]
    fn keys_go_into_paths_and_soql_escaped() {
        assert_eq!(path_segment("t:a+b/c@x.com"), "t:a%2Bb%2Fc@x.com");
        assert_eq!(soql_quote("o'hara\\"), "o\\'hara\\\\");
    }
}
