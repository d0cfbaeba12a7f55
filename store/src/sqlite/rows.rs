//! Row mapping and the writes several store methods share.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{ApiKey, Event, Lead, ManualScore, Meeting, NewEvent, Reason, Result};

pub(super) fn row_to_key(r: &rusqlite::Row) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        tenant: r.get(1)?,
        role: r.get(2)?,
        name: r.get(3)?,
        hash: r.get(4)?,
        created_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

pub(super) fn insert_events(tx: &Transaction, events: &[NewEvent], at: i64) -> Result<Vec<Event>> {
    let mut out = vec![];
    for e in events {
        tx.execute(
            "INSERT INTO events (tenant, kind, conversation_id, rep_id, team, payload, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                e.tenant,
                e.kind,
                e.conversation_id,
                e.rep_id,
                e.team,
                serde_json::to_string(&e.payload)?,
                at
            ],
        )?;
        let cursor = tx.last_insert_rowid() as u64;
        out.push(Event {
            cursor,
            id: format!("evt-{cursor}"),
            at_ms: at,
            event: e.clone(),
        });
    }
    Ok(out)
}

/// The conversation's identity level, as a lead column (from its claim).
pub(super) const IDENTITY: &str = "(SELECT k.identity FROM conversation_claims k
     WHERE k.tenant = conversations.tenant AND k.conversation_id = conversations.id)";

pub(super) fn read_lead(conn: &Connection, tenant: &str, id: &str) -> Result<Option<Lead>> {
    conn.query_row(
        &format!(
            "SELECT tenant, id, domain, email, bot_score, reasons, manual, rep_id, team, slots, turns,
                    created_ms, updated_ms, intents, {IDENTITY}
             FROM conversations WHERE tenant = ?1 AND id = ?2"
        ),
        params![tenant, id],
        row_to_lead,
    )
    .optional()?
    .transpose()
}

pub(super) fn row_to_lead(r: &rusqlite::Row) -> rusqlite::Result<Result<Lead>> {
    let reasons: String = r.get(5)?;
    let manual: Option<String> = r.get(6)?;
    let slots: String = r.get(9)?;
    let intents: String = r.get(13)?;
    let bot_score: i32 = r.get(4)?;
    let lead = || -> Result<Lead> {
        let manual: Option<ManualScore> = manual.map(|m| serde_json::from_str(&m)).transpose()?;
        Ok(Lead {
            tenant: r.get(0)?,
            conversation_id: r.get(1)?,
            domain: r.get(2)?,
            email: r.get(3)?,
            score: manual.as_ref().map_or(bot_score, |m| m.score),
            bot_score,
            manual,
            reasons: serde_json::from_str::<Vec<Reason>>(&reasons)?,
            rep_id: r.get(7)?,
            team: r.get(8)?,
            slots: serde_json::from_str::<BTreeMap<String, String>>(&slots)?,
            intents: serde_json::from_str::<BTreeMap<String, u32>>(&intents)?,
            turns: r.get(10)?,
            created_ms: r.get(11)?,
            updated_ms: r.get(12)?,
            identity: r.get(14)?,
        })
    };
    Ok(lead())
}

pub(super) fn row_to_meeting(r: &rusqlite::Row) -> rusqlite::Result<Meeting> {
    Ok(Meeting {
        id: r.get(0)?,
        tenant: r.get(1)?,
        rep_id: r.get(2)?,
        start: r.get(3)?,
        end: r.get(4)?,
        conversation_id: r.get(5)?,
        email: r.get(6)?,
    })
}

pub(super) fn row_to_event(r: &rusqlite::Row) -> rusqlite::Result<Result<Event>> {
    let cursor: i64 = r.get(0)?;
    let payload: String = r.get(6)?;
    let e = (|| -> Result<Event> {
        Ok(Event {
            cursor: cursor as u64,
            id: format!("evt-{cursor}"),
            at_ms: r.get(7)?,
            event: NewEvent {
                tenant: r.get(1)?,
                kind: r.get(2)?,
                conversation_id: r.get(3)?,
                rep_id: r.get(4)?,
                team: r.get(5)?,
                payload: serde_json::from_str(&payload)?,
            },
        })
    })();
    Ok(e)
}
