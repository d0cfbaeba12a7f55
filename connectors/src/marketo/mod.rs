//! The Marketo connector ([`client`]: the identity token, errors inside HTTP 200, the rate and
//! concurrency limits). For each event of a conversation whose visitor gave an e-mail it pushes
//! the lead as it is now: `POST /rest/v1/leads.json` with `action: createOrUpdate` and
//! `lookupField: email` (one lead per call, far below Marketo's 300), with `email`,
//! `firstName`/`lastName` and `company` like the Salesforce connector's, and the custom fields
//! [`FIELDS`]. A lead the answer marks `skipped` (a field not created, say) fails the attempt
//! with Marketo's reason. `createOrUpdate` by e-mail makes a replay or a retry after a lost
//! answer harmless. Marketo has no per-conversation record here: the transcript stays in Closer
//! (`Leads.GetTranscript`); `closerConversation` names the latest conversation.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use closer_store::{Delivery, Lead, Store};
use closer_webhooks::connector::{Answer, Connector, Sending, URL_PREFIX};
use serde_json::{json, Map, Value};

use crate::config::{ConfigError, MarketoConfig};
use crate::lead;
use client::Client;

/// The custom lead fields written (REST API names).
pub const FIELDS: &[&str] = &[
    "closerCQL",
    "closerCQLReasons",
    "closerSlots",
    "closerMeeting",
    "closerConversation",
];

pub struct Marketo {
    config: MarketoConfig,
    id: String,
    client: Client,
    store: Arc<dyn Store>,
}

impl Marketo {
    pub fn new(config: MarketoConfig, store: Arc<dyn Store>) -> Result<Self, ConfigError> {
        let client = Client::new(&config).map_err(ConfigError::Invalid)?;
        Ok(Marketo {
            id: config.id(),
            config,
            client,
            store,
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
        let body = json!({
            "action": "createOrUpdate",
            "lookupField": "email",
            "input": [lead_fields(&snap.lead, &email, snap.meeting.as_deref())],
        });
        let reply = self.client.call("/rest/v1/leads.json", &body).await?;
        let result = &reply["result"][0];
        match result["status"].as_str() {
            Some(s @ ("created" | "updated")) => Ok(format!("lead {} {s}", result["id"])),
            _ => Err(Answer::none(crate::http::excerpt(
                "POST /rest/v1/leads.json: lead not written",
                result.to_string().as_bytes(),
            ))),
        }
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

    fn deliver<'a>(&'a self, d: &'a Delivery) -> Sending<'a> {
        Box::pin(async move {
            crate::http::within(self.config.attempt_timeout_secs, self.sync(d)).await
        })
    }
}
