//! What is sent: the webhook id of an event and the JSON body (Standard Webhooks' suggested
//! `type` / `timestamp` / `data` shape).

use closer_store::Event;

/// The webhook id: stable per event (and so per event and endpoint), the receiver's
/// idempotency key; the same on every retry and replay.
pub fn webhook_id(cursor: u64) -> String {
    format!("evt_{cursor}")
}

/// The request body of an event.
pub fn body(e: &Event) -> String {
    let time = jiff::Timestamp::from_millisecond(e.at_ms)
        .map(|t| t.to_string())
        .unwrap_or_default();
    serde_json::json!({
        "type": e.event.kind,
        "timestamp": time,
        "data": {
            "id": webhook_id(e.cursor),
            "kind": e.event.kind,
            "tenant": e.event.tenant,
            "conversation_id": e.event.conversation_id,
            "rep_id": e.event.rep_id,
            "team": e.event.team,
            "cursor": e.cursor,
            "at_ms": e.at_ms,
            "payload": e.event.payload,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_the_event() {
        let e = Event {
            cursor: 7,
            id: "evt-7".into(),
            at_ms: 1_700_000_000_123,
            event: closer_store::NewEvent {
                kind: "cql_scored".into(),
                tenant: "acme".into(),
                conversation_id: Some("c1".into()),
                rep_id: None,
                team: Some("emea".into()),
                payload: serde_json::json!({"score": 3}),
            },
        };
        let v: serde_json::Value = serde_json::from_str(&body(&e)).unwrap();
        assert_eq!(v["type"], "cql_scored");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["data"]["id"], "evt_7");
        assert_eq!(v["data"]["cursor"], 7);
        assert_eq!(v["data"]["conversation_id"], "c1");
        assert_eq!(v["data"]["team"], "emea");
        assert_eq!(v["data"]["payload"]["score"], 3);
    }
}
