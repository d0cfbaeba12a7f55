//! What every connector reads of a conversation: its lead as it is now, the transcript and the
//! latest meeting (one store read per event, so a replayed old event writes the latest state),
//! and the lead's fields as text (score reasons, qualification answers, the meeting, names and
//! company filled sensibly).

use std::sync::Arc;

use closer_store::{Author, Lead, Message, Store};
use closer_webhooks::connector::Answer;
use serde_json::Value;

/// A rep's e-mail from a tenant's directory: `(tenant, rep_id) → e-mail`.
pub type RepEmails = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// What the store holds for one conversation.
pub struct Snapshot {
    pub lead: Lead,
    pub transcript: Vec<Message>,
    pub meeting: Option<String>,
}

/// The conversation's lead, transcript and latest meeting; none without a lead.
pub async fn read(
    store: &Arc<dyn Store>,
    tenant: &str,
    conversation: &str,
) -> Result<Option<Snapshot>, Answer> {
    let (store, tenant, conv) = (store.clone(), tenant.to_string(), conversation.to_string());
    tokio::task::spawn_blocking(move || -> closer_store::Result<Option<Snapshot>> {
        let Some(lead) = store.lead(&tenant, &conv)? else {
            return Ok(None);
        };
        let transcript = store.transcript(&tenant, &conv)?;
        let meeting = store
            .latest_event(&tenant, &conv, &["meeting_booked", "meeting_proposed"])?
            .map(|e| meeting_text(&e.event.kind, &e.event.payload));
        Ok(Some(Snapshot {
            lead,
            transcript,
            meeting,
        }))
    })
    .await
    .map_err(|e| Answer::none(format!("store task: {e}")))?
    .map_err(|e| Answer::none(format!("reading the lead: {e}")))
}

/// The score's reasons, one a line, a rep's manual score first.
pub fn reasons_text(lead: &Lead) -> String {
    let mut reasons: Vec<String> = lead
        .reasons
        .iter()
        .map(|r| format!("{} ({:+}): {}", r.rule, r.points, r.detail))
        .collect();
    if let Some(m) = &lead.manual {
        reasons.insert(
            0,
            format!("manual ({}) by {}: {}", m.score, m.rep_id, m.note),
        );
    }
    reasons.join("\n")
}

/// The qualification answers, `name: value` a line.
pub fn slots_text(lead: &Lead) -> String {
    let slots: Vec<String> = lead
        .slots
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    slots.join("\n")
}

/// The lead's domain: the visitor's site, else the stated company domain.
pub fn domain(lead: &Lead) -> Option<String> {
    lead.domain
        .clone()
        .or_else(|| lead.slots.get("domain").cloned())
        .or_else(|| lead.slots.get("company_domain").cloned())
        .filter(|d| !d.is_empty())
}

/// (first name, last name): the stated names, else the name split at its last word, else the
/// e-mail's local part as the last name.
pub fn names(lead: &Lead, email: &str) -> (Option<String>, String) {
    let slot = |k: &str| {
        lead.slots
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(last) = slot("last_name") {
        return (slot("first_name"), last);
    }
    if let Some(name) = slot("name") {
        return match name.rsplit_once(char::is_whitespace) {
            Some((first, last)) => (Some(first.trim().to_string()), last.to_string()),
            None => (None, name),
        };
    }
    let local = email.split('@').next().unwrap_or(email);
    (
        None,
        if local.is_empty() { email } else { local }.to_string(),
    )
}

/// The stated company, else the domain, else Salesforce's "[not provided]".
pub fn company(lead: &Lead) -> String {
    lead.slots
        .get("company")
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(|| domain(lead))
        .unwrap_or_else(|| "[not provided]".into())
}

/// A message's author as a word.
pub fn author(a: &Author) -> &'static str {
    match a {
        Author::Visitor => "Visitor",
        Author::Bot => "Bot",
        Author::Rep => "Rep",
    }
}

/// What a transcript cut at its start begins with.
pub const CUT_MARKER: &str = "[start of the conversation cut]\n";

/// The transcript as plain text, one message a line, author first; at most `max` characters,
/// the start cut behind [`CUT_MARKER`].
pub fn transcript_text(transcript: &[Message], max: usize) -> String {
    let lines: Vec<String> = transcript
        .iter()
        .map(|m| format!("{}: {}", author(&m.author), m.text))
        .collect();
    keep_end(lines.join("\n"), max, CUT_MARKER)
}

/// The routed rep's e-mail from the tenant's directory, if any.
pub fn rep_email(reps: &RepEmails, tenant: &str, lead: &Lead) -> Option<String> {
    lead.rep_id
        .as_deref()
        .and_then(|r| reps(tenant, r))
        .filter(|e| !e.is_empty())
}

/// `text` cut to at most `max` characters by dropping its start, `marker` put in front.
pub fn keep_end(text: String, max: usize, marker: &str) -> String {
    let len = text.chars().count();
    if len <= max {
        return text;
    }
    let keep = max.saturating_sub(marker.chars().count());
    format!(
        "{marker}{}",
        text.chars().skip(len - keep).collect::<String>()
    )
}

/// "booked: <label> (<start>)" or "proposed: <labels>".
fn meeting_text(kind: &str, payload: &Value) -> String {
    if kind == "meeting_booked" {
        let start = payload["start"]
            .as_i64()
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        return format!(
            "booked: {} ({start}) with {}",
            payload["label"].as_str().unwrap_or(""),
            payload["rep_id"].as_str().unwrap_or("")
        );
    }
    let labels: Vec<String> = payload["slots"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|x| {
                    x["label"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    format!("proposed: {}", labels.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_end_cuts_the_start_and_stays_within_the_limit() {
        assert_eq!(keep_end("abc".into(), 3, "[cut]"), "abc");
        let t = keep_end("0123456789".repeat(10), 30, "[cut]");
        assert_eq!(t.chars().count(), 30);
        assert!(t.starts_with("[cut]") && t.ends_with("789"), "{t}");
    }
}
