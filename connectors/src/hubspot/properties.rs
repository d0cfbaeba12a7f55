//! The `closer_*` custom properties, created once per process (409: it exists, fine; again
//! after HubSpot answered `PROPERTY_DOESNT_EXIST`, someone removed one), each in
//! a `closer` property group of its object type: on contacts the score, its reasons, the
//! slots, the meeting and the conversation; on companies `closer_domain`, unique (companies
//! are upserted by it: HubSpot does not dedupe API-created companies by `domain`, and refuses
//! an upsert by a property without unique values); on notes `closer_conversation_id`, unique
//! (one transcript note per conversation, upserted by it).

use closer_webhooks::connector::Answer;
use reqwest::Method;
use serde_json::json;

use super::client::Client;

/// The property group made on each object type.
pub const GROUP: &str = "closer";

/// (object type, name, label, type, field type, unique values)
pub const PROPERTIES: &[(&str, &str, &str, &str, &str, bool)] = &[
    (
        "contacts",
        "closer_cql",
        "Closer CQL score",
        "number",
        "number",
        false,
    ),
    (
        "contacts",
        "closer_cql_reasons",
        "Closer CQL reasons",
        "string",
        "textarea",
        false,
    ),
    (
        "contacts",
        "closer_slots",
        "Closer qualification answers",
        "string",
        "textarea",
        false,
    ),
    (
        "contacts",
        "closer_meeting_slot",
        "Closer meeting",
        "string",
        "text",
        false,
    ),
    (
        "contacts",
        "closer_conversation_id",
        "Closer conversation",
        "string",
        "text",
        false,
    ),
    (
        "companies",
        "closer_domain",
        "Closer domain",
        "string",
        "text",
        true,
    ),
    (
        "notes",
        "closer_conversation_id",
        "Closer conversation",
        "string",
        "text",
        true,
    ),
];

/// Creates the groups and the properties; `Ok` once all exist.
pub async fn ensure(client: &Client) -> Result<(), Answer> {
    for object in ["contacts", "companies", "notes"] {
        client
            .call(
                Method::POST,
                &format!("/crm/v3/properties/{object}/groups"),
                Some(&json!({"name": GROUP, "label": "Closer", "displayOrder": -1})),
            )
            .await?;
    }
    for (object, name, label, kind, field, unique) in PROPERTIES {
        client
            .call(
                Method::POST,
                &format!("/crm/v3/properties/{object}"),
                Some(&json!({
                    "name": name,
                    "label": label,
                    "type": kind,
                    "fieldType": field,
                    "groupName": GROUP,
                    "hasUniqueValue": unique,
                })),
            )
            .await?;
    }
    Ok(())
}
