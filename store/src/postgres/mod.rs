//! The PostgreSQL backend, for several `closer serve` replicas on one database.
//!
//! What SQLite's single writer gives for free is made explicit here:
//! - **event cursors in commit order**: every transaction that writes events takes one
//!   transaction-scoped advisory lock before its first event and holds it to commit, so a
//!   subscriber reading after cursor N never later finds a smaller cursor committed (cursors
//!   may have gaps where a transaction rolled back);
//! - **message numbers**: a conversation's writes take its advisory lock (`MAX(seq) + 1` under it);
//! - **round robin**: one advisory lock per (tenant, team) around the read and the count;
//! - **bookings**: one advisory lock per (tenant, rep) around the overlap check and the insert;
//! - **take-over**: the control row is read `FOR UPDATE` and the caller's condition checked
//!   under it;
//! - **idempotency keys**: inserted first with `ON CONFLICT DO NOTHING`, so a concurrent call
//!   with the same key waits for the first to commit and then gets its reply
//!   ([`Error::AlreadyApplied`]).
//!
//! Locks are always taken in the order conversation/row → (tenant, team) / (tenant, rep) →
//! events, so they cannot deadlock. The synchronous `postgres` client runs on the calling
//! thread (a blocking thread, as SQLite does); called from inside an async task it moves to a
//! scoped thread of its own rather than block the runtime's driver.

use std::collections::{BTreeMap, HashMap};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use crate::{
    now_ms, ApiKey, Author, ControlCheck, ConversationControl, Error, Event, EventFilter, Lead,
    LeadFilter, LeadStat, ManualScore, Meeting, MeetingStat, Message, NewEvent, Presence, Reason,
    Result, Store, Then, TurnWrite,
};

mod schema;
mod webhooks;

/// Session advisory lock held while migrations run.
const MIGRATION_LOCK: i64 = 0x636c_6f73_6572_0001;
/// Transaction advisory lock every event-writing transaction holds from its first event on.
const EVENTS_LOCK: i64 = 0x636c_6f73_6572_0002;

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        let transient = e.is_closed()
            || match e.code() {
                // Connection exceptions, transaction rollbacks (serialization, deadlock),
                // insufficient resources, operator intervention (shutdown, restart).
                Some(c) => ["08", "40", "53", "57"]
                    .iter()
                    .any(|class| c.code().starts_with(class)),
                // No SQLSTATE: the connection failed (i/o, timeout).
                None => true,
            };
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        Error::Database { message, transient }
    }
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        Error::Database {
            message: format!("no database connection: {e}"),
            transient: true,
        }
    }
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct PgStore {
    /// `None` only while being dropped.
    pool: Option<Pool>,
}

impl Drop for PgStore {
    /// A pooled client closes its connection on a runtime of its own: not inside an async task.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = outside_runtime(move || {
                drop(pool);
                Ok(())
            });
        }
    }
}

impl PgStore {
    /// Connects to `url` (`postgresql://user:password@host:port/database`, or the key=value
    /// form) and applies the migrations this version needs.
    pub fn connect(url: &str) -> Result<Self> {
        let config: postgres::Config = url.parse().map_err(|e| Error::Database {
            message: format!("--database-url: {e}"),
            transient: false,
        })?;
        Self::connect_with(config)
    }

    /// As [`PgStore::connect`], from a parsed configuration.
    pub fn connect_with(config: postgres::Config) -> Result<Self> {
        let run = move || -> Result<Self> {
            let manager = PostgresConnectionManager::new(config, NoTls);
            let pool = r2d2::Pool::builder()
                .max_size(16)
                .min_idle(Some(1))
                .connection_timeout(std::time::Duration::from_secs(10))
                .build(manager)?;
            let store = Self { pool: Some(pool) };
            store.migrate()?;
            Ok(store)
        };
        outside_runtime(run)
    }

    fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the pool lives until the store is dropped")
    }

    fn migrate(&self) -> Result<()> {
        let mut c = self.pool().get()?;
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let done = (|| -> Result<()> {
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS closer_migrations (
                    version INT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )?;
            for (version, sql) in schema::MIGRATIONS {
                let applied = c
                    .query_opt(
                        "SELECT 1 FROM closer_migrations WHERE version = $1",
                        &[version],
                    )?
                    .is_some();
                if applied {
                    continue;
                }
                let mut tx = c.transaction()?;
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO closer_migrations (version, applied_ms) VALUES ($1, $2)",
                    &[version, &now_ms()],
                )?;
                tx.commit()?;
                tracing::info!(version, "applied PostgreSQL migration");
            }
            Ok(())
        })();
        c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
        done
    }

    /// Runs `f` with a pooled connection.
    fn with<T: Send>(&self, f: impl FnOnce(&mut Client) -> Result<T> + Send) -> Result<T> {
        outside_runtime(|| {
            let mut c = self.pool().get()?;
            f(&mut c)
        })
    }

    /// Runs `f` in one transaction (rolled back when it fails).
    fn tx<T: Send>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T> + Send) -> Result<T> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }
}

/// The `postgres` client blocks on a runtime of its own, which tokio refuses inside an async
/// task: there, run `f` on a scoped thread.
fn outside_runtime<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A transaction-scoped advisory lock on a name.
fn lock(tx: &mut Transaction<'_>, name: &str) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&name],
    )?;
    Ok(())
}

fn lock_conversation(tx: &mut Transaction<'_>, tenant: &str, id: &str) -> Result<()> {
    lock(tx, &format!("conversation\u{1f}{tenant}\u{1f}{id}"))
}

fn insert_events(tx: &mut Transaction<'_>, events: &[NewEvent], at: i64) -> Result<Vec<Event>> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])?;
    let mut out = vec![];
    for e in events {
        let payload = serde_json::to_string(&e.payload)?;
        let row = tx.query_one(
            "INSERT INTO events (tenant, kind, conversation_id, rep_id, team, payload, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING cursor",
            &[
                &e.tenant,
                &e.kind,
                &e.conversation_id,
                &e.rep_id,
                &e.team,
                &payload,
                &at,
            ],
        )?;
        let cursor = row.get::<_, i64>(0) as u64;
        out.push(Event {
            cursor,
            id: format!("evt-{cursor}"),
            at_ms: at,
            event: e.clone(),
        });
    }
    Ok(out)
}

const LEAD_COLUMNS: &str = "c.tenant, c.id, c.domain, c.email, c.bot_score, c.reasons, c.manual,
    c.rep_id, c.team, c.slots, c.turns, c.created_ms, c.updated_ms, c.intents,
    (SELECT k.identity FROM conversation_claims k
     WHERE k.tenant = c.tenant AND k.conversation_id = c.id)";

/// The score in force: the rep's manual one when set.
const SCORE: &str = "COALESCE((c.manual::json->>'score')::INT, c.bot_score)";

fn row_to_lead(r: &Row) -> Result<Lead> {
    let manual: Option<String> = r.get(6);
    let manual: Option<ManualScore> = manual.map(|m| serde_json::from_str(&m)).transpose()?;
    let bot_score: i32 = r.get(4);
    Ok(Lead {
        tenant: r.get(0),
        conversation_id: r.get(1),
        domain: r.get(2),
        email: r.get(3),
        score: manual.as_ref().map_or(bot_score, |m| m.score),
        bot_score,
        manual,
        reasons: serde_json::from_str::<Vec<Reason>>(r.get(5))?,
        rep_id: r.get(7),
        team: r.get(8),
        slots: serde_json::from_str::<BTreeMap<String, String>>(r.get(9))?,
        turns: u32::try_from(r.get::<_, i64>(10)).unwrap_or(u32::MAX),
        created_ms: r.get(11),
        updated_ms: r.get(12),
        intents: serde_json::from_str::<BTreeMap<String, u32>>(r.get(13))?,
        identity: r.get(14),
    })
}

fn read_lead<C: postgres::GenericClient>(
    c: &mut C,
    tenant: &str,
    id: &str,
) -> Result<Option<Lead>> {
    c.query_opt(
        &format!("SELECT {LEAD_COLUMNS} FROM conversations c WHERE c.tenant = $1 AND c.id = $2"),
        &[&tenant, &id],
    )?
    .map(|r| row_to_lead(&r))
    .transpose()
}

const EVENT_COLUMNS: &str = "cursor, tenant, kind, conversation_id, rep_id, team, payload, at_ms";

fn row_to_event(r: &Row) -> Result<Event> {
    let cursor = r.get::<_, i64>(0) as u64;
    Ok(Event {
        cursor,
        id: format!("evt-{cursor}"),
        at_ms: r.get(7),
        event: NewEvent {
            tenant: r.get(1),
            kind: r.get(2),
            conversation_id: r.get(3),
            rep_id: r.get(4),
            team: r.get(5),
            payload: serde_json::from_str(r.get(6))?,
        },
    })
}

fn row_to_key(r: &Row) -> ApiKey {
    ApiKey {
        id: r.get(0),
        tenant: r.get(1),
        role: r.get(2),
        name: r.get(3),
        hash: r.get(4),
        created_ms: r.get(5),
        revoked_ms: r.get(6),
    }
}

fn row_to_meeting(r: &Row) -> Meeting {
    Meeting {
        id: r.get(0),
        tenant: r.get(1),
        rep_id: r.get(2),
        start: r.get(3),
        end: r.get(4),
        conversation_id: r.get(5),
        email: r.get(6),
    }
}

fn pruned_through<C: postgres::GenericClient>(c: &mut C) -> Result<u64> {
    let r = c.query_opt("SELECT pruned_through FROM retention WHERE id = 1", &[])?;
    Ok(r.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

fn newest_cursor<C: postgres::GenericClient>(c: &mut C) -> Result<u64> {
    let max: i64 = c
        .query_one("SELECT COALESCE(MAX(cursor), 0) FROM events", &[])?
        .get(0);
    Ok((max as u64).max(pruned_through(c)?))
}

/// The next message number of a conversation (its lock held).
fn next_seq(tx: &mut Transaction<'_>, tenant: &str, id: &str) -> Result<(i64, i64)> {
    let r = tx.query_one(
        "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(turn), 0) FROM messages
         WHERE tenant = $1 AND conversation_id = $2",
        &[&tenant, &id],
    )?;
    Ok((r.get(0), r.get(1)))
}

fn insert_message(
    tx: &mut Transaction<'_>,
    tenant: &str,
    id: &str,
    seq: i64,
    turn: i64,
    m: &Message,
) -> Result<()> {
    tx.execute(
        "INSERT INTO messages (tenant, conversation_id, seq, turn, author, text, at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &tenant,
            &id,
            &seq,
            &turn,
            &m.author.as_str(),
            &m.text,
            &m.at_ms,
        ],
    )?;
    Ok(())
}

impl Store for PgStore {
    fn record_turn(&self, w: &TurnWrite, then: Then<'_, Lead>) -> Result<(Lead, Vec<Event>)> {
        self.tx(|tx| {
            let at = now_ms();
            if let Some((scope, key, reply)) = &w.idempotency {
                let n = tx.execute(
                    "INSERT INTO idempotency (tenant, scope, key, reply, at_ms)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&w.tenant, scope, key, reply, &at],
                )?;
                if n == 0 {
                    let stored: Vec<u8> = tx
                        .query_one(
                            "SELECT reply FROM idempotency
                             WHERE tenant = $1 AND scope = $2 AND key = $3",
                            &[&w.tenant, scope, key],
                        )?
                        .get(0);
                    return Err(Error::AlreadyApplied(stored));
                }
            }
            lock_conversation(tx, &w.tenant, &w.conversation_id)?;
            let row = tx.query_one(
                "INSERT INTO conversations (tenant, id, domain, email, created_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $5)
                 ON CONFLICT (tenant, id) DO UPDATE SET
                    domain = COALESCE(excluded.domain, conversations.domain),
                    email = COALESCE(excluded.email, conversations.email),
                    updated_ms = excluded.updated_ms
                 RETURNING slots, intents, turns",
                &[&w.tenant, &w.conversation_id, &w.domain, &w.email, &at],
            )?;
            let mut slots: BTreeMap<String, String> = serde_json::from_str(row.get(0))?;
            let mut intents: BTreeMap<String, u32> = serde_json::from_str(row.get(1))?;
            let mut turns: i64 = row.get(2);
            for (k, v) in &w.slots {
                slots.insert(k.clone(), v.clone());
            }
            for (k, t) in &w.intents {
                intents.entry(k.clone()).or_insert(*t);
            }
            let (mut seq, _) = next_seq(tx, &w.tenant, &w.conversation_id)?;
            for m in &w.messages {
                seq += 1;
                insert_message(tx, &w.tenant, &w.conversation_id, seq, i64::from(m.turn), m)?;
                if m.author == Author::Visitor {
                    turns = turns.max(i64::from(m.turn));
                }
            }
            let visitor = w.messages.iter().find(|m| m.author == Author::Visitor);
            if let Some(m) = visitor.filter(|_| !w.detected.is_empty()) {
                tx.execute(
                    "INSERT INTO turn_intents (tenant, conversation_id, turn, intents)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tenant, conversation_id, turn) DO UPDATE SET intents = excluded.intents",
                    &[
                        &w.tenant,
                        &w.conversation_id,
                        &i64::from(m.turn),
                        &serde_json::to_string(&w.detected)?,
                    ],
                )?;
            }
            tx.execute(
                "UPDATE conversations SET slots = $3, turns = $4, intents = $5
                 WHERE tenant = $1 AND id = $2",
                &[
                    &w.tenant,
                    &w.conversation_id,
                    &serde_json::to_string(&slots)?,
                    &turns,
                    &serde_json::to_string(&intents)?,
                ],
            )?;
            if let Some((score, reasons)) = &w.score {
                tx.execute(
                    "UPDATE conversations SET bot_score = $3, reasons = $4
                     WHERE tenant = $1 AND id = $2",
                    &[
                        &w.tenant,
                        &w.conversation_id,
                        score,
                        &serde_json::to_string(reasons)?,
                    ],
                )?;
            }
            if let Some((rep, team)) = &w.route {
                tx.execute(
                    "UPDATE conversations SET rep_id = $3, team = $4 WHERE tenant = $1 AND id = $2",
                    &[&w.tenant, &w.conversation_id, rep, team],
                )?;
            }
            let lead = read_lead(tx, &w.tenant, &w.conversation_id)?
                .ok_or_else(|| Error::NotFound(w.conversation_id.clone()))?;
            let mut all = w.events.clone();
            all.extend(then(&lead));
            let events = insert_events(tx, &all, at)?;
            Ok((lead, events))
        })
    }

    fn set_manual_score(
        &self,
        tenant: &str,
        conversation_id: &str,
        manual: Option<ManualScore>,
        events: Then<'_, Lead>,
    ) -> Result<(Lead, Vec<Event>)> {
        self.tx(|tx| {
            let manual_json = manual.as_ref().map(serde_json::to_string).transpose()?;
            lock_conversation(tx, tenant, conversation_id)?;
            let n = tx.execute(
                "UPDATE conversations SET manual = $3, updated_ms = $4 WHERE tenant = $1 AND id = $2",
                &[&tenant, &conversation_id, &manual_json, &now_ms()],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("conversation {conversation_id:?}")));
            }
            let lead = read_lead(tx, tenant, conversation_id)?
                .ok_or_else(|| Error::NotFound(conversation_id.to_string()))?;
            let stored = insert_events(tx, &events(&lead), now_ms())?;
            Ok((lead, stored))
        })
    }

    fn lead(&self, tenant: &str, conversation_id: &str) -> Result<Option<Lead>> {
        self.with(|c| read_lead(c, tenant, conversation_id))
    }

    fn leads(&self, f: &LeadFilter) -> Result<(Vec<Lead>, usize)> {
        self.with(|c| {
            let wher = format!(
                "c.tenant = $1 AND ($2::INT IS NULL OR {SCORE} >= $2) AND ($3::INT IS NULL OR {SCORE} <= $3)
                 AND ($4::TEXT IS NULL OR c.rep_id = $4) AND ($5::TEXT IS NULL OR c.team = $5)
                 AND ($6::BIGINT IS NULL OR c.created_ms >= $6) AND ($7::BIGINT IS NULL OR c.created_ms < $7)"
            );
            let p: [&(dyn ToSql + Sync); 7] = [
                &f.tenant,
                &f.min_score,
                &f.max_score,
                &f.rep_id,
                &f.team,
                &f.since_ms,
                &f.until_ms,
            ];
            let total: i64 = c
                .query_one(
                    &format!("SELECT COUNT(*) FROM conversations c WHERE {wher}"),
                    &p,
                )?
                .get(0);
            let rows = c.query(
                &format!(
                    "SELECT {LEAD_COLUMNS} FROM conversations c WHERE {wher}
                     ORDER BY c.created_ms DESC, c.id LIMIT {} OFFSET {}",
                    f.limit.clamp(1, 1000),
                    f.offset
                ),
                &p,
            )?;
            let leads = rows.iter().map(row_to_lead).collect::<Result<Vec<_>>>()?;
            Ok((leads, total as usize))
        })
    }

    fn transcript(&self, tenant: &str, conversation_id: &str) -> Result<Vec<Message>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT turn, author, text, at_ms FROM messages
                 WHERE tenant = $1 AND conversation_id = $2 ORDER BY seq",
                &[&tenant, &conversation_id],
            )?;
            Ok(rows
                .iter()
                .map(|r| Message {
                    turn: u32::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                    author: Author::parse(r.get(1)),
                    text: r.get(2),
                    at_ms: r.get(3),
                })
                .collect())
        })
    }

    fn turn_intents(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<BTreeMap<u32, Vec<String>>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT turn, intents FROM turn_intents WHERE tenant = $1 AND conversation_id = $2",
                &[&tenant, &conversation_id],
            )?;
            let mut out = BTreeMap::new();
            for r in rows {
                let turn = u32::try_from(r.get::<_, i64>(0)).unwrap_or(0);
                out.insert(turn, serde_json::from_str(r.get(1))?);
            }
            Ok(out)
        })
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<Vec<Event>> {
        self.tx(|tx| insert_events(tx, events, now_ms()))
    }

    fn events_after(&self, cursor: u64, f: &EventFilter, limit: usize) -> Result<Vec<Event>> {
        self.with(|c| {
            crate::readable_after(cursor, pruned_through(c)?)?;
            let rows = c.query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events
                     WHERE tenant = $1 AND cursor > $2
                       AND (cardinality($3::TEXT[]) = 0 OR kind = ANY($3))
                       AND ($4::TEXT IS NULL OR rep_id = $4) AND ($5::TEXT IS NULL OR team = $5)
                       AND ($7::TEXT IS NULL OR conversation_id = $7)
                     ORDER BY cursor LIMIT $6"
                ),
                &[
                    &f.tenant,
                    &(cursor as i64),
                    &f.kinds,
                    &f.rep_id,
                    &f.team,
                    &(limit.clamp(1, 10_000) as i64),
                    &f.conversation_id,
                ],
            )?;
            rows.iter().map(row_to_event).collect()
        })
    }

    fn last_cursor(&self) -> Result<u64> {
        self.with(newest_cursor)
    }

    fn document_names(&self, tenant: &str, prefix: &str) -> Result<Vec<String>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT name FROM tenant_documents
                 WHERE tenant = $1 AND starts_with(name, $2) ORDER BY name",
                &[&tenant, &prefix],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn claim_lease(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool> {
        self.with(|c| {
            let changed = c.execute(
                "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                 WHERE leases.until_ms < $4 OR leases.holder = excluded.holder",
                &[&name, &holder, &until_ms, &now_ms()],
            )?;
            Ok(changed == 1)
        })
    }

    fn tenant_cursors_after(&self, cursor: u64) -> Result<Vec<(String, u64)>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT tenant, MAX(cursor) FROM events WHERE cursor > $1 GROUP BY tenant ORDER BY tenant",
                &[&(cursor as i64)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
        })
    }

    fn latest_event(
        &self,
        tenant: &str,
        conversation_id: &str,
        kinds: &[&str],
    ) -> Result<Option<Event>> {
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_string()).collect();
        self.with(|c| {
            c.query_opt(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events
                     WHERE tenant = $1 AND conversation_id = $2 AND kind = ANY($3)
                     ORDER BY cursor DESC LIMIT 1"
                ),
                &[&tenant, &conversation_id, &kinds],
            )?
            .map(|r| row_to_event(&r))
            .transpose()
        })
    }

    fn prune_events(&self, before_ms: i64) -> Result<u64> {
        self.tx(|tx| {
            let through: Option<i64> = tx
                .query_one(
                    "SELECT MAX(cursor) FROM events WHERE at_ms < $1",
                    &[&before_ms],
                )?
                .get(0);
            let Some(through) = through else {
                return Ok(0);
            };
            let removed = tx.execute("DELETE FROM events WHERE cursor <= $1", &[&through])?;
            tx.execute(
                "INSERT INTO retention (id, pruned_through) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE
                 SET pruned_through = GREATEST(retention.pruned_through, excluded.pruned_through)",
                &[&through],
            )?;
            Ok(removed)
        })
    }

    fn pruned_through(&self) -> Result<u64> {
        self.with(pruned_through)
    }

    fn ack(&self, tenant: &str, consumer: &str, cursor: u64) -> Result<u64> {
        self.tx(|tx| {
            let last = newest_cursor(tx)?;
            if cursor > last {
                return Err(Error::Conflict(format!(
                    "cursor {cursor} is past the newest event ({last})"
                )));
            }
            let now: i64 = tx
                .query_one(
                    "INSERT INTO consumers (tenant, name, cursor) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, name) DO UPDATE
                     SET cursor = GREATEST(consumers.cursor, excluded.cursor)
                     RETURNING cursor",
                    &[&tenant, &consumer, &(cursor as i64)],
                )?
                .get(0);
            Ok(now as u64)
        })
    }

    fn acked(&self, tenant: &str, consumer: &str) -> Result<u64> {
        self.with(|c| {
            let r = c.query_opt(
                "SELECT cursor FROM consumers WHERE tenant = $1 AND name = $2",
                &[&tenant, &consumer],
            )?;
            Ok(r.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    fn put_documents(&self, tenant: &str, docs: &[(&str, &[u8])]) -> Result<u64> {
        if docs.is_empty() {
            return Ok(0);
        }
        self.tx(|tx| {
            // Versions in commit order, as event cursors.
            lock(tx, "tenant documents")?;
            let now = now_ms();
            let mut version = 0i64;
            for (name, content) in docs {
                version = tx
                    .query_one(
                        "INSERT INTO tenant_documents (tenant, name, content, version, updated_ms)
                         VALUES ($1, $2, $3, nextval('tenant_document_version'), $4)
                         ON CONFLICT (tenant, name) DO UPDATE SET content = excluded.content,
                            version = excluded.version, updated_ms = excluded.updated_ms
                         RETURNING version",
                        &[&tenant, name, content, &now],
                    )?
                    .get(0);
            }
            Ok(version as u64)
        })
    }

    fn document(&self, tenant: &str, name: &str) -> Result<Option<crate::Document>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT tenant, name, version, content FROM tenant_documents
                 WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )?
            .map(|r| crate::Document {
                tenant: r.get(0),
                name: r.get(1),
                version: r.get::<_, i64>(2) as u64,
                content: r.get(3),
            }))
        })
    }

    fn documents_after(&self, version: u64) -> Result<Vec<crate::Document>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT tenant, name, version, content FROM tenant_documents
                 WHERE version > $1 ORDER BY version",
                &[&(version as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| crate::Document {
                    tenant: r.get(0),
                    name: r.get(1),
                    version: r.get::<_, i64>(2) as u64,
                    content: r.get(3),
                })
                .collect())
        })
    }

    fn consumers(&self, tenant: &str) -> Result<Vec<(String, u64)>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT name, cursor FROM consumers WHERE tenant = $1 ORDER BY name",
                &[&tenant],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    fn count_events_after(&self, tenant: &str, cursor: u64) -> Result<u64> {
        self.with(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM events WHERE tenant = $1 AND cursor > $2",
                    &[&tenant, &(cursor as i64)],
                )?
                .get(0);
            Ok(n as u64)
        })
    }

    fn set_presence(&self, tenant: &str, p: &Presence) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO presence (tenant, rep_id, online, capacity) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, rep_id) DO UPDATE SET online = excluded.online,
                    capacity = excluded.capacity",
                &[&tenant, &p.rep_id, &p.online, &i64::from(p.capacity)],
            )?;
            Ok(())
        })
    }

    fn presence(&self, tenant: &str) -> Result<Vec<Presence>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT rep_id, online, capacity FROM presence WHERE tenant = $1 ORDER BY rep_id",
                &[&tenant],
            )?;
            Ok(rows
                .iter()
                .map(|r| Presence {
                    rep_id: r.get(0),
                    online: r.get(1),
                    capacity: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
                })
                .collect())
        })
    }

    fn open_load(&self, tenant: &str) -> Result<HashMap<String, u32>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT rep_id, COUNT(*) FROM conversations
                 WHERE tenant = $1 AND rep_id IS NOT NULL AND NOT closed GROUP BY rep_id",
                &[&tenant],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    let n: i64 = r.get(1);
                    (r.get(0), u32::try_from(n).unwrap_or(u32::MAX))
                })
                .collect())
        })
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
        self.tx(|tx| {
            lock(tx, &format!("round-robin\u{1f}{tenant}\u{1f}{team}"))?;
            let rows = tx.query(
                "SELECT rep_id, assigned FROM round_robin
                 WHERE tenant = $1 AND team = $2 AND rep_id = ANY($3)",
                &[&tenant, &team, &candidates],
            )?;
            let counts: HashMap<String, i64> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let mut best: Option<(i64, &String)> = None;
            for c in candidates {
                let n = counts.get(c).copied().unwrap_or(0);
                if best.is_none_or(|(b, _)| n < b) {
                    best = Some((n, c));
                }
            }
            let Some((_, rep)) = best else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO round_robin (tenant, team, rep_id, assigned) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (tenant, team, rep_id) DO UPDATE SET assigned = round_robin.assigned + 1",
                &[&tenant, &team, rep],
            )?;
            Ok(Some(rep.clone()))
        })
    }

    fn meetings(&self, tenant: &str, rep_id: &str, from: i64, to: i64) -> Result<Vec<Meeting>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT id, tenant, rep_id, start_s, end_s, conversation_id, email FROM meetings
                 WHERE tenant = $1 AND rep_id = $2 AND start_s < $4 AND end_s > $3
                 ORDER BY start_s",
                &[&tenant, &rep_id, &from, &to],
            )?;
            Ok(rows.iter().map(row_to_meeting).collect())
        })
    }

    fn book_meeting(
        &self,
        m: &Meeting,
        events: Then<'_, Meeting>,
    ) -> Result<(Meeting, Vec<Event>)> {
        self.tx(|tx| {
            lock(tx, &format!("calendar\u{1f}{}\u{1f}{}", m.tenant, m.rep_id))?;
            let clash: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM meetings
                     WHERE tenant = $1 AND rep_id = $2 AND start_s < $4 AND end_s > $3",
                    &[&m.tenant, &m.rep_id, &m.start, &m.end],
                )?
                .get(0);
            if clash > 0 {
                return Err(Error::Conflict("that slot was just booked".into()));
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO meetings
                       (tenant, rep_id, start_s, end_s, conversation_id, email, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &m.tenant,
                        &m.rep_id,
                        &m.start,
                        &m.end,
                        &m.conversation_id,
                        &m.email,
                        &now_ms(),
                    ],
                )?
                .get(0);
            let booked = Meeting { id, ..m.clone() };
            let stored = insert_events(tx, &events(&booked), now_ms())?;
            Ok((booked, stored))
        })
    }

    fn append_messages(
        &self,
        tenant: &str,
        conversation_id: &str,
        messages: &[Message],
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        self.tx(|tx| {
            lock_conversation(tx, tenant, conversation_id)?;
            let (mut seq, latest) = next_seq(tx, tenant, conversation_id)?;
            for m in messages {
                seq += 1;
                let turn = if m.turn == 0 {
                    latest
                } else {
                    i64::from(m.turn)
                };
                insert_message(tx, tenant, conversation_id, seq, turn, m)?;
            }
            insert_events(tx, events, now_ms())
        })
    }

    fn set_control(
        &self,
        tenant: &str,
        conversation_id: &str,
        control: &ConversationControl,
        check: ControlCheck<'_>,
        events: &[NewEvent],
    ) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let now = tx
                .query_opt(
                    "SELECT taken_over_by, closed FROM conversations
                     WHERE tenant = $1 AND id = $2 FOR UPDATE",
                    &[&tenant, &conversation_id],
                )?
                .map(|r| ConversationControl {
                    taken_over_by: r.get(0),
                    closed: r.get(1),
                })
                .ok_or_else(|| Error::NotFound(format!("conversation {conversation_id:?}")))?;
            check(&now).map_err(Error::Conflict)?;
            tx.execute(
                "UPDATE conversations SET taken_over_by = $3, closed = $4, updated_ms = $5
                 WHERE tenant = $1 AND id = $2",
                &[
                    &tenant,
                    &conversation_id,
                    &control.taken_over_by,
                    &control.closed,
                    &now_ms(),
                ],
            )?;
            insert_events(tx, events, now_ms())
        })
    }

    fn control(&self, tenant: &str, conversation_id: &str) -> Result<Option<ConversationControl>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT taken_over_by, closed FROM conversations WHERE tenant = $1 AND id = $2",
                &[&tenant, &conversation_id],
            )?
            .map(|r| ConversationControl {
                taken_over_by: r.get(0),
                closed: r.get(1),
            }))
        })
    }

    fn lead_stats(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<LeadStat>> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT c.rep_id, c.team, {SCORE}, c.created_ms FROM conversations c
                     WHERE c.tenant = $1 AND c.created_ms >= $2 AND c.created_ms < $3"
                ),
                &[&tenant, &from_ms, &to_ms],
            )?;
            Ok(rows
                .iter()
                .map(|r| LeadStat {
                    rep_id: r.get(0),
                    team: r.get(1),
                    score: r.get(2),
                    created_ms: r.get(3),
                })
                .collect())
        })
    }

    fn meetings_booked(&self, tenant: &str, from_ms: i64, to_ms: i64) -> Result<Vec<MeetingStat>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT rep_id, created_ms FROM meetings
                 WHERE tenant = $1 AND created_ms >= $2 AND created_ms < $3",
                &[&tenant, &from_ms, &to_ms],
            )?;
            Ok(rows
                .iter()
                .map(|r| MeetingStat {
                    rep_id: r.get(0),
                    booked_ms: r.get(1),
                })
                .collect())
        })
    }

    fn claim_conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
        token_hash: &str,
        external_ref: Option<&str>,
    ) -> Result<bool> {
        self.tx(|tx| {
            lock_conversation(tx, tenant, conversation_id)?;
            let existing = tx.query_opt(
                "SELECT 1 FROM conversations WHERE tenant = $1 AND id = $2",
                &[&tenant, &conversation_id],
            )?;
            if existing.is_some() {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO conversation_claims
                   (tenant, conversation_id, token_hash, external_ref, created_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &tenant,
                    &conversation_id,
                    &token_hash,
                    &external_ref,
                    &now_ms(),
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn conversation_by_token(&self, tenant: &str, token_hash: &str) -> Result<Option<String>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT conversation_id FROM conversation_claims
                 WHERE tenant = $1 AND token_hash = $2 AND revoked_ms IS NULL",
                &[&tenant, &token_hash],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn set_identity(&self, tenant: &str, conversation_id: &str, level: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE conversation_claims SET identity = $3
                 WHERE tenant = $1 AND conversation_id = $2 AND identity IS DISTINCT FROM $3",
                &[&tenant, &conversation_id, &level],
            )?;
            Ok(())
        })
    }

    fn revoke_resume(&self, tenant: &str, conversation_id: &str) -> Result<u32> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE conversation_claims SET revoked_ms = $3
                 WHERE tenant = $1 AND conversation_id = $2 AND revoked_ms IS NULL",
                &[&tenant, &conversation_id, &now_ms()],
            )?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    fn create_key(&self, key: &ApiKey) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "INSERT INTO api_keys (id, tenant, role, name, hash, created_ms, revoked_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &key.id,
                    &key.tenant,
                    &key.role,
                    &key.name,
                    &key.hash,
                    &key.created_ms,
                    &key.revoked_ms,
                ],
            )?;
            if n == 0 {
                return Err(Error::Conflict(format!("key {} exists", key.id)));
            }
            Ok(())
        })
    }

    fn keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT id, tenant, role, name, hash, created_ms, revoked_ms FROM api_keys
                 WHERE $1::TEXT IS NULL OR tenant = $1 ORDER BY created_ms, id",
                &[&tenant],
            )?;
            Ok(rows.iter().map(row_to_key).collect())
        })
    }

    fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        self.with(|c| {
            c.query_opt(
                "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $2) WHERE id = $1
                 RETURNING id, tenant, role, name, hash, created_ms, revoked_ms",
                &[&id, &now_ms()],
            )?
            .map(|r| row_to_key(&r))
            .ok_or_else(|| Error::NotFound(format!("no key {id}")))
        })
    }

    fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT id, tenant, role, name, hash, created_ms, revoked_ms FROM api_keys
                 WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| row_to_key(&r)))
        })
    }

    fn idempotent_get(&self, tenant: &str, scope: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT reply FROM idempotency WHERE tenant = $1 AND scope = $2 AND key = $3",
                &[&tenant, &scope, &key],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn idempotent_put(&self, tenant: &str, scope: &str, key: &str, reply: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO idempotency (tenant, scope, key, reply, at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&tenant, &scope, &key, &reply, &now_ms()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
