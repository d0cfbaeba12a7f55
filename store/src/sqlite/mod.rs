//! The embedded backend: one SQLite file (WAL, `synchronous = FULL`, so a committed transaction
//! survives power loss and `kill -9`), one connection behind a mutex. Every transaction that
//! writes begins IMMEDIATE (takes the file's write lock first), so two handles on one file
//! (two processes) never interleave a read-then-write.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use rusqlite::TransactionBehavior::Immediate;

use crate::{
    now_ms, ApiKey, Author, ControlCheck, ConversationControl, Error, Event, EventFilter, Lead,
    LeadFilter, LeadStat, ManualScore, Meeting, MeetingStat, Message, NewEvent, Presence, Result,
    Store, Then, TurnWrite,
};

mod rows;
mod schema;
#[cfg(test)]
mod tests;
mod webhooks;

use rows::{
    insert_events, read_lead, row_to_event, row_to_key, row_to_lead, row_to_meeting, IDENTITY,
};
use schema::{SCHEMA, WEBHOOKS};

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(WEBHOOKS)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(WEBHOOKS)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

impl Store for SqliteStore {
    fn record_turn(&self, w: &TurnWrite, then: Then<'_, Lead>) -> Result<(Lead, Vec<Event>)> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let at = now_ms();
        if let Some((scope, key, reply)) = &w.idempotency {
            let n = tx.execute(
                "INSERT OR IGNORE INTO idempotency (tenant, scope, key, reply, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![w.tenant, scope, key, reply, at],
            )?;
            if n == 0 {
                let stored: Vec<u8> = tx.query_row(
                    "SELECT reply FROM idempotency WHERE tenant = ?1 AND scope = ?2 AND key = ?3",
                    params![w.tenant, scope, key],
                    |r| r.get(0),
                )?;
                return Err(Error::AlreadyApplied(stored));
            }
        }
        tx.execute(
            "INSERT INTO conversations (tenant, id, domain, email, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (tenant, id) DO UPDATE SET
                domain = COALESCE(excluded.domain, domain),
                email = COALESCE(excluded.email, email),
                updated_ms = excluded.updated_ms",
            params![w.tenant, w.conversation_id, w.domain, w.email, at],
        )?;
        let (mut slots, mut intents, mut turns): (
            BTreeMap<String, String>,
            BTreeMap<String, u32>,
            u32,
        ) = {
            let (s, i, t): (String, String, u32) = tx.query_row(
                "SELECT slots, intents, turns FROM conversations WHERE tenant = ?1 AND id = ?2",
                params![w.tenant, w.conversation_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            (serde_json::from_str(&s)?, serde_json::from_str(&i)?, t)
        };
        for (k, v) in &w.slots {
            slots.insert(k.clone(), v.clone());
        }
        for (k, t) in &w.intents {
            intents.entry(k.clone()).or_insert(*t);
        }
        let mut seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE tenant = ?1 AND conversation_id = ?2",
            params![w.tenant, w.conversation_id],
            |r| r.get(0),
        )?;
        for m in &w.messages {
            seq += 1;
            tx.execute(
                "INSERT INTO messages (tenant, conversation_id, seq, turn, author, text, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    w.tenant,
                    w.conversation_id,
                    seq,
                    m.turn,
                    m.author.as_str(),
                    m.text,
                    m.at_ms
                ],
            )?;
            if m.author == Author::Visitor {
                turns = turns.max(m.turn);
            }
        }
        let visitor = w.messages.iter().find(|m| m.author == Author::Visitor);
        if let Some(m) = visitor.filter(|_| !w.detected.is_empty()) {
            tx.execute(
                "INSERT OR REPLACE INTO turn_intents (tenant, conversation_id, turn, intents)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    w.tenant,
                    w.conversation_id,
                    m.turn,
                    serde_json::to_string(&w.detected)?
                ],
            )?;
        }
        tx.execute(
            "UPDATE conversations SET slots = ?3, turns = ?4, intents = ?5
             WHERE tenant = ?1 AND id = ?2",
            params![
                w.tenant,
                w.conversation_id,
                serde_json::to_string(&slots)?,
                turns,
                serde_json::to_string(&intents)?
            ],
        )?;
        if let Some((score, reasons)) = &w.score {
            tx.execute(
                "UPDATE conversations SET bot_score = ?3, reasons = ?4 WHERE tenant = ?1 AND id = ?2",
                params![
                    w.tenant,
                    w.conversation_id,
                    score,
                    serde_json::to_string(reasons)?
                ],
            )?;
        }
        if let Some((rep, team)) = &w.route {
            tx.execute(
                "UPDATE conversations SET rep_id = ?3, team = ?4 WHERE tenant = ?1 AND id = ?2",
                params![w.tenant, w.conversation_id, rep, team],
            )?;
        }
        let mut events = insert_events(&tx, &w.events, at)?;
        let lead = read_lead(&tx, &w.tenant, &w.conversation_id)?
            .ok_or_else(|| Error::NotFound(w.conversation_id.clone()))?;
        events.extend(insert_events(&tx, &then(&lead), at)?);
        tx.commit()?;
        Ok((lead, events))
    }

    fn set_manual_score(
        &self,
        tenant: &str,
        conversation_id: &str,
        manual: Option<ManualScore>,
        events: Then<'_, Lead>,
    ) -> Result<(Lead, Vec<Event>)> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let manual_json = manual.as_ref().map(serde_json::to_string).transpose()?;
        let n = tx.execute(
            "UPDATE conversations SET manual = ?3, updated_ms = ?4 WHERE tenant = ?1 AND id = ?2",
            params![tenant, conversation_id, manual_json, now_ms()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("conversation {conversation_id:?}")));
        }
        let lead = read_lead(&tx, tenant, conversation_id)?
            .ok_or_else(|| Error::NotFound(conversation_id.to_string()))?;
        let stored = insert_events(&tx, &events(&lead), now_ms())?;
        tx.commit()?;
        Ok((lead, stored))
    }

    fn lead(&self, tenant: &str, conversation_id: &str) -> Result<Option<Lead>> {
        read_lead(&self.conn.lock(), tenant, conversation_id)
    }

    fn leads(&self, f: &LeadFilter) -> Result<(Vec<Lead>, usize)> {
        let conn = self.conn.lock();
        // The score in force is the manual one when set.
        let score = "COALESCE(json_extract(manual, '$.score'), bot_score)";
        let wher = format!(
            "tenant = ?1 AND (?2 IS NULL OR {score} >= ?2) AND (?3 IS NULL OR {score} <= ?3)
             AND (?4 IS NULL OR rep_id = ?4) AND (?5 IS NULL OR team = ?5)
             AND (?6 IS NULL OR created_ms >= ?6) AND (?7 IS NULL OR created_ms < ?7)"
        );
        let p = params![
            f.tenant,
            f.min_score,
            f.max_score,
            f.rep_id,
            f.team,
            f.since_ms,
            f.until_ms
        ];
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM conversations WHERE {wher}"),
            p,
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT tenant, id, domain, email, bot_score, reasons, manual, rep_id, team, slots,
                    turns, created_ms, updated_ms, intents, {IDENTITY}
             FROM conversations WHERE {wher}
             ORDER BY created_ms DESC, id LIMIT {} OFFSET {}",
            f.limit.clamp(1, 1000),
            f.offset
        ))?;
        let leads = stmt
            .query_map(p, row_to_lead)?
            .map(|r| r?)
            .collect::<Result<Vec<_>>>()?;
        Ok((leads, total as usize))
    }

    fn transcript(&self, tenant: &str, conversation_id: &str) -> Result<Vec<Message>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT turn, author, text, at_ms FROM messages
             WHERE tenant = ?1 AND conversation_id = ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![tenant, conversation_id], |r| {
            Ok(Message {
                turn: r.get(0)?,
                author: Author::parse(&r.get::<_, String>(1)?),
                text: r.get(2)?,
                at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn turn_intents(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<std::collections::BTreeMap<u32, Vec<String>>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT turn, intents FROM turn_intents WHERE tenant = ?1 AND conversation_id = ?2",
        )?;
        let rows = stmt.query_map(params![tenant, conversation_id], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (turn, json) = row?;
            out.insert(turn, serde_json::from_str(&json)?);
        }
        Ok(out)
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<Vec<Event>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let out = insert_events(&tx, events, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    fn events_after(&self, cursor: u64, f: &EventFilter, limit: usize) -> Result<Vec<Event>> {
        let conn = self.conn.lock();
        crate::readable_after(cursor, pruned_through(&conn)?)?;
        let kinds = serde_json::to_string(&f.kinds)?;
        let mut stmt = conn.prepare(
            "SELECT cursor, tenant, kind, conversation_id, rep_id, team, payload, at_ms
             FROM events
             WHERE tenant = ?1 AND cursor > ?2
               AND (?3 = '[]' OR kind IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR rep_id = ?4) AND (?5 IS NULL OR team = ?5)
               AND (?7 IS NULL OR conversation_id = ?7)
             ORDER BY cursor LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                f.tenant,
                cursor as i64,
                kinds,
                f.rep_id,
                f.team,
                limit.clamp(1, 10_000) as i64,
                f.conversation_id
            ],
            row_to_event,
        )?;
        rows.map(|r| r?).collect()
    }

    fn last_cursor(&self) -> Result<u64> {
        newest_cursor(&self.conn.lock())
    }

    fn document_names(&self, tenant: &str, prefix: &str) -> Result<Vec<String>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT name FROM tenant_documents
             WHERE tenant = ?1 AND substr(name, 1, length(?2)) = ?2 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![tenant, prefix], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn claim_lease(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool> {
        let conn = self.conn.lock();
        let changed = conn.execute(
            "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
             WHERE leases.until_ms < ?4 OR leases.holder = excluded.holder",
            params![name, holder, until_ms, now_ms()],
        )?;
        Ok(changed == 1)
    }

    fn tenant_cursors_after(&self, cursor: u64) -> Result<Vec<(String, u64)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT tenant, MAX(cursor) FROM events WHERE cursor > ?1 GROUP BY tenant ORDER BY tenant",
        )?;
        let rows = stmt.query_map(params![cursor as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn latest_event(
        &self,
        tenant: &str,
        conversation_id: &str,
        kinds: &[&str],
    ) -> Result<Option<Event>> {
        let conn = self.conn.lock();
        let kinds = serde_json::to_string(kinds)?;
        let mut stmt = conn.prepare_cached(
            "SELECT cursor, tenant, kind, conversation_id, rep_id, team, payload, at_ms
             FROM events
             WHERE tenant = ?1 AND conversation_id = ?2
               AND kind IN (SELECT value FROM json_each(?3))
             ORDER BY cursor DESC LIMIT 1",
        )?;
        stmt.query_row(params![tenant, conversation_id, kinds], row_to_event)
            .optional()?
            .transpose()
    }

    fn prune_events(&self, before_ms: i64) -> Result<u64> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let through: Option<i64> = tx.query_row(
            "SELECT MAX(cursor) FROM events WHERE at_ms < ?1",
            params![before_ms],
            |r| r.get(0),
        )?;
        let Some(through) = through else {
            return Ok(0);
        };
        // Everything up to the newest old event goes, so what stays is a suffix of cursors.
        let removed = tx.execute("DELETE FROM events WHERE cursor <= ?1", params![through])?;
        tx.execute(
            "INSERT INTO retention (id, pruned_through) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET pruned_through = MAX(pruned_through, excluded.pruned_through)",
            params![through],
        )?;
        tx.commit()?;
        Ok(removed as u64)
    }

    fn pruned_through(&self) -> Result<u64> {
        pruned_through(&self.conn.lock())
    }

    fn ack(&self, tenant: &str, consumer: &str, cursor: u64) -> Result<u64> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let last = newest_cursor(&tx)? as i64;
        if cursor as i64 > last {
            return Err(Error::Conflict(format!(
                "cursor {cursor} is past the newest event ({last})"
            )));
        }
        tx.execute(
            "INSERT INTO consumers (tenant, name, cursor) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, name) DO UPDATE SET cursor = MAX(cursor, excluded.cursor)",
            params![tenant, consumer, cursor as i64],
        )?;
        let now: i64 = tx.query_row(
            "SELECT cursor FROM consumers WHERE tenant = ?1 AND name = ?2",
            params![tenant, consumer],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(now as u64)
    }

    fn acked(&self, tenant: &str, consumer: &str) -> Result<u64> {
        let c: Option<i64> = self
            .conn
            .lock()
            .query_row(
                "SELECT cursor FROM consumers WHERE tenant = ?1 AND name = ?2",
                params![tenant, consumer],
                |r| r.get(0),
            )
            .optional()?;
        Ok(c.unwrap_or(0) as u64)
    }

    fn put_documents(&self, tenant: &str, docs: &[(&str, &[u8])]) -> Result<u64> {
        if docs.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let mut version: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM tenant_documents",
            [],
            |r| r.get(0),
        )?;
        let now = now_ms();
        for (name, content) in docs {
            version += 1;
            tx.execute(
                "INSERT INTO tenant_documents (tenant, name, content, version, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, name) DO UPDATE SET content = excluded.content,
                    version = excluded.version, updated_ms = excluded.updated_ms",
                params![tenant, name, content, version, now],
            )?;
        }
        tx.commit()?;
        Ok(version as u64)
    }

    fn document(&self, tenant: &str, name: &str) -> Result<Option<crate::Document>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT tenant, name, version, content FROM tenant_documents
                 WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
                |r| {
                    Ok(crate::Document {
                        tenant: r.get(0)?,
                        name: r.get(1)?,
                        version: r.get::<_, i64>(2)? as u64,
                        content: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn documents_after(&self, version: u64) -> Result<Vec<crate::Document>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT tenant, name, version, content FROM tenant_documents
             WHERE version > ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![version as i64], |r| {
            Ok(crate::Document {
                tenant: r.get(0)?,
                name: r.get(1)?,
                version: r.get::<_, i64>(2)? as u64,
                content: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn consumers(&self, tenant: &str) -> Result<Vec<(String, u64)>> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare("SELECT name, cursor FROM consumers WHERE tenant = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![tenant], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn count_events_after(&self, tenant: &str, cursor: u64) -> Result<u64> {
        let n: i64 = self.conn.lock().query_row(
            "SELECT COUNT(*) FROM events WHERE tenant = ?1 AND cursor > ?2",
            params![tenant, cursor as i64],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn set_presence(&self, tenant: &str, p: &Presence) -> Result<()> {
        self.conn.lock().execute(
            "INSERT INTO presence (tenant, rep_id, online, capacity) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, rep_id) DO UPDATE SET online = excluded.online,
                capacity = excluded.capacity",
            params![tenant, p.rep_id, p.online, p.capacity],
        )?;
        Ok(())
    }

    fn presence(&self, tenant: &str) -> Result<Vec<Presence>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT rep_id, online, capacity FROM presence WHERE tenant = ?1 ORDER BY rep_id",
        )?;
        let rows = stmt.query_map(params![tenant], |r| {
            Ok(Presence {
                rep_id: r.get(0)?,
                online: r.get(1)?,
                capacity: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn open_load(&self, tenant: &str) -> Result<HashMap<String, u32>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT rep_id, COUNT(*) FROM conversations
             WHERE tenant = ?1 AND rep_id IS NOT NULL AND closed = 0 GROUP BY rep_id",
        )?;
        let rows = stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
    }

    fn round_robin(
        &self,
        tenant: &str,
        team: &str,
        candidates: &[String],
    ) -> Result<Option<String>> {
        if candidates.is_empty() {
            return Ok(None);
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let mut best: Option<(i64, &String)> = None;
        for c in candidates {
            let n: i64 = tx
                .query_row(
                    "SELECT assigned FROM round_robin WHERE tenant = ?1 AND team = ?2 AND rep_id = ?3",
                    params![tenant, team, c],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if best.is_none_or(|(b, _)| n < b) {
                best = Some((n, c));
            }
        }
        let Some((_, rep)) = best else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO round_robin (tenant, team, rep_id, assigned) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT (tenant, team, rep_id) DO UPDATE SET assigned = assigned + 1",
            params![tenant, team, rep],
        )?;
        tx.commit()?;
        Ok(Some(rep.clone()))
    }

    fn meetings(&self, tenant: &str, rep_id: &str, from: i64, to: i64) -> Result<Vec<Meeting>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, tenant, rep_id, start_s, end_s, conversation_id, email FROM meetings
             WHERE tenant = ?1 AND rep_id = ?2 AND start_s < ?4 AND end_s > ?3 ORDER BY start_s",
        )?;
        let rows = stmt.query_map(params![tenant, rep_id, from, to], row_to_meeting)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn claim_conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
        token_hash: &str,
        external_ref: Option<&str>,
    ) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM conversations WHERE tenant = ?1 AND id = ?2",
                params![tenant, conversation_id],
                |r| r.get(0),
            )
            .optional()?;
        if existing.is_some() {
            return Ok(false);
        }
        let n = tx.execute(
            "INSERT OR IGNORE INTO conversation_claims
               (tenant, conversation_id, token_hash, external_ref, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, conversation_id, token_hash, external_ref, now_ms()],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn conversation_by_token(&self, tenant: &str, token_hash: &str) -> Result<Option<String>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT conversation_id FROM conversation_claims
             WHERE tenant = ?1 AND token_hash = ?2 AND revoked_ms IS NULL",
        )?;
        Ok(stmt
            .query_row(params![tenant, token_hash], |r| r.get(0))
            .optional()?)
    }

    fn set_identity(&self, tenant: &str, conversation_id: &str, level: &str) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "UPDATE conversation_claims SET identity = ?3
             WHERE tenant = ?1 AND conversation_id = ?2 AND identity IS NOT ?3",
            params![tenant, conversation_id, level],
        )?;
        Ok(())
    }

    fn revoke_resume(&self, tenant: &str, conversation_id: &str) -> Result<u32> {
        let conn = self.conn.lock();
        let n = conn.execute(
            "UPDATE conversation_claims SET revoked_ms = ?3
             WHERE tenant = ?1 AND conversation_id = ?2 AND revoked_ms IS NULL",
            params![tenant, conversation_id, now_ms()],
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn create_key(&self, key: &ApiKey) -> Result<()> {
        let conn = self.conn.lock();
        let n = conn.execute(
            "INSERT OR IGNORE INTO api_keys (id, tenant, role, name, hash, created_ms, revoked_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id,
                key.tenant,
                key.role,
                key.name,
                key.hash,
                key.created_ms,
                key.revoked_ms
            ],
        )?;
        if n == 0 {
            return Err(Error::Conflict(format!("key {} exists", key.id)));
        }
        Ok(())
    }

    fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, tenant, role, name, hash, created_ms, revoked_ms FROM api_keys
             WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map(params![tenant], row_to_key)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        let conn = self.conn.lock();
        conn.execute(
            "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms()],
        )?;
        conn.query_row(
            "SELECT id, tenant, role, name, hash, created_ms, revoked_ms FROM api_keys WHERE id = ?1",
            params![id],
            row_to_key,
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("no key {id}")))
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, tenant, role, name, hash, created_ms, revoked_ms FROM api_keys WHERE hash = ?1",
        )?;
        Ok(stmt.query_row(params![hash], row_to_key).optional()?)
    }

    fn lead_stats(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<LeadStat>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT rep_id, team, COALESCE(json_extract(manual, '$.score'), bot_score), created_ms
             FROM conversations WHERE tenant = ?1 AND created_ms >= ?2 AND created_ms < ?3",
        )?;
        let rows = stmt.query_map(params![tenant, from_ms, to_ms], |r| {
            Ok(LeadStat {
                rep_id: r.get(0)?,
                team: r.get(1)?,
                score: r.get(2)?,
                created_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn meetings_booked(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<MeetingStat>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT rep_id, created_ms FROM meetings
             WHERE tenant = ?1 AND created_ms >= ?2 AND created_ms < ?3",
        )?;
        let rows = stmt.query_map(params![tenant, from_ms, to_ms], |r| {
            Ok(MeetingStat {
                rep_id: r.get(0)?,
                booked_ms: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn book_meeting(
        &self,
        m: &Meeting,
        events: Then<'_, Meeting>,
    ) -> Result<(Meeting, Vec<Event>)> {
        let mut conn = self.conn.lock();
        // IMMEDIATE: the overlap check and the insert hold the write lock together, also
        // against another process on the same file.
        let tx = conn.transaction_with_behavior(Immediate)?;
        let clash: i64 = tx.query_row(
            "SELECT COUNT(*) FROM meetings
             WHERE tenant = ?1 AND rep_id = ?2 AND start_s < ?4 AND end_s > ?3",
            params![m.tenant, m.rep_id, m.start, m.end],
            |r| r.get(0),
        )?;
        if clash > 0 {
            return Err(Error::Conflict("that slot was just booked".into()));
        }
        tx.execute(
            "INSERT INTO meetings (tenant, rep_id, start_s, end_s, conversation_id, email, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                m.tenant,
                m.rep_id,
                m.start,
                m.end,
                m.conversation_id,
                m.email,
                now_ms()
            ],
        )?;
        let booked = Meeting {
            id: tx.last_insert_rowid(),
            ..m.clone()
        };
        let stored = insert_events(&tx, &events(&booked), now_ms())?;
        tx.commit()?;
        Ok((booked, stored))
    }

    fn append_messages(
        &self,
        tenant: &str,
        conversation_id: &str,
        messages: &[Message],
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let (mut seq, latest): (i64, u32) = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(turn), 0) FROM messages
             WHERE tenant = ?1 AND conversation_id = ?2",
            params![tenant, conversation_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        for m in messages {
            seq += 1;
            tx.execute(
                "INSERT INTO messages (tenant, conversation_id, seq, turn, author, text, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    tenant,
                    conversation_id,
                    seq,
                    if m.turn == 0 { latest } else { m.turn },
                    m.author.as_str(),
                    m.text,
                    m.at_ms
                ],
            )?;
        }
        let out = insert_events(&tx, events, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    fn set_control(
        &self,
        tenant: &str,
        conversation_id: &str,
        control: &ConversationControl,
        check: ControlCheck<'_>,
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(Immediate)?;
        let now = tx
            .query_row(
                "SELECT taken_over_by, closed FROM conversations WHERE tenant = ?1 AND id = ?2",
                params![tenant, conversation_id],
                |r| {
                    Ok(ConversationControl {
                        taken_over_by: r.get(0)?,
                        closed: r.get(1)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("conversation {conversation_id:?}")))?;
        check(&now).map_err(Error::Conflict)?;
        let n = tx.execute(
            "UPDATE conversations SET taken_over_by = ?3, closed = ?4, updated_ms = ?5
             WHERE tenant = ?1 AND id = ?2",
            params![
                tenant,
                conversation_id,
                control.taken_over_by,
                control.closed,
                now_ms()
            ],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("conversation {conversation_id:?}")));
        }
        let out = insert_events(&tx, events, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    fn control(&self, tenant: &str, conversation_id: &str) -> Result<Option<ConversationControl>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT taken_over_by, closed FROM conversations WHERE tenant = ?1 AND id = ?2",
                params![tenant, conversation_id],
                |r| {
                    Ok(ConversationControl {
                        taken_over_by: r.get(0)?,
                        closed: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn idempotent_get(&self, tenant: &str, scope: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT reply FROM idempotency WHERE tenant = ?1 AND scope = ?2 AND key = ?3",
                params![tenant, scope, key],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn idempotent_put(&self, tenant: &str, scope: &str, key: &str, reply: &[u8]) -> Result<()> {
        self.conn.lock().execute(
            "INSERT OR IGNORE INTO idempotency (tenant, scope, key, reply, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, scope, key, reply, now_ms()],
        )?;
        Ok(())
    }
}

/// The highest cursor removed by retention (0: none).
fn pruned_through(conn: &rusqlite::Connection) -> Result<u64> {
    let c: Option<i64> = conn
        .query_row(
            "SELECT pruned_through FROM retention WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(c.unwrap_or(0) as u64)
}

/// The newest cursor written: the outbox's, or the last one retention removed.
fn newest_cursor(conn: &rusqlite::Connection) -> Result<u64> {
    let c: i64 = conn.query_row("SELECT COALESCE(MAX(cursor), 0) FROM events", [], |r| {
        r.get(0)
    })?;
    Ok((c as u64).max(pruned_through(conn)?))
}
