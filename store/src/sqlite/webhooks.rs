//! [`WebhookStore`] on SQLite: endpoints, their scan cursors and deliveries.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::row_to_event;
use super::{newest_cursor, pruned_through, SqliteStore};
use crate::webhooks::{
    AttemptResult, Delivery, DeliveryStatus, ReplaySelection, Secret, WebhookEndpoint, WebhookStore,
};
use crate::{now_ms, Error, Event, Result};

const ENDPOINT_COLUMNS: &str = "e.id, e.tenant, e.url, e.kinds, e.description, e.secret,
    e.previous_secret, e.previous_until_ms, e.scan_cursor, e.created_ms, e.disabled_ms,
    e.disabled_reason,
    (SELECT COUNT(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'pending'),
    (SELECT MIN(d.cursor) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'pending'),
    (SELECT COUNT(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'dead')";

fn row_to_endpoint(r: &rusqlite::Row) -> rusqlite::Result<Result<WebhookEndpoint>> {
    let kinds: String = r.get(3)?;
    let previous: Option<String> = r.get(6)?;
    let until: Option<i64> = r.get(7)?;
    let disabled_ms: Option<i64> = r.get(10)?;
    let reason: Option<String> = r.get(11)?;
    let oldest: Option<i64> = r.get(13)?;
    let e = (|| -> Result<WebhookEndpoint> {
        Ok(WebhookEndpoint {
            id: r.get(0)?,
            tenant: r.get(1)?,
            url: r.get(2)?,
            kinds: serde_json::from_str(&kinds)?,
            description: r.get(4)?,
            secret: Secret::new(r.get::<_, String>(5)?),
            previous: previous.zip(until).map(|(s, u)| (Secret::new(s), u)),
            scan_cursor: r.get::<_, i64>(8)? as u64,
            created_ms: r.get(9)?,
            disabled: disabled_ms.map(|at| (at, reason.unwrap_or_default())),
            pending: r.get::<_, i64>(12)? as u64,
            oldest_pending: oldest.map(|c| c as u64),
            dead: r.get::<_, i64>(14)? as u64,
        })
    })();
    Ok(e)
}

const DELIVERY_COLUMNS: &str = "endpoint_id, tenant, cursor, kind, conversation_id, body, status,
    attempts, next_attempt_ms, last_status, last_response, created_ms, updated_ms";

fn row_to_delivery(r: &rusqlite::Row) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        endpoint_id: r.get(0)?,
        tenant: r.get(1)?,
        cursor: r.get::<_, i64>(2)? as u64,
        kind: r.get(3)?,
        conversation_id: r.get(4)?,
        body: r.get(5)?,
        status: DeliveryStatus::parse(&r.get::<_, String>(6)?),
        attempts: r.get(7)?,
        next_attempt_ms: r.get(8)?,
        last_status: r.get(9)?,
        last_response: r.get(10)?,
        created_ms: r.get(11)?,
        updated_ms: r.get(12)?,
    })
}

fn read_endpoint(conn: &Connection, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
    conn.query_row(
        &format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e WHERE e.tenant = ?1 AND e.id = ?2"
        ),
        params![tenant, id],
        row_to_endpoint,
    )
    .optional()?
    .transpose()
}

/// Events of `tenant` with cursors in `(after, through]`, oldest first, at most `limit`.
fn tenant_events(
    conn: &Connection,
    tenant: &str,
    after: u64,
    through: u64,
    limit: usize,
) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT cursor, tenant, kind, conversation_id, rep_id, team, payload, at_ms
         FROM events WHERE tenant = ?1 AND cursor > ?2 AND cursor <= ?3
         ORDER BY cursor LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![tenant, after as i64, through as i64, limit as i64],
        row_to_event,
    )?;
    rows.map(|r| r?).collect()
}

/// Queues `e` for the endpoint unless it is queued already; whether it was.
fn queue(conn: &Connection, endpoint_id: &str, e: &Event, body: &str, at: i64) -> Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO webhook_deliveries (endpoint_id, cursor, tenant, kind,
            conversation_id, body, status, attempts, next_attempt_ms, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7)",
        params![
            endpoint_id,
            e.cursor as i64,
            e.event.tenant,
            e.event.kind,
            e.event.conversation_id,
            body,
            at
        ],
    )?;
    Ok(n == 1)
}

impl WebhookStore for SqliteStore {
    fn create_endpoint(&self, e: &WebhookEndpoint) -> Result<WebhookEndpoint> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let start = newest_cursor(&tx)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO webhook_endpoints (id, tenant, url, kinds, description, secret,
                scan_cursor, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.id,
                e.tenant,
                e.url,
                serde_json::to_string(&e.kinds)?,
                e.description,
                e.secret.expose(),
                start as i64,
                e.created_ms
            ],
        )?;
        if n == 0 {
            return Err(Error::Conflict(format!("webhook endpoint {} exists", e.id)));
        }
        let out =
            read_endpoint(&tx, &e.tenant, &e.id)?.ok_or_else(|| Error::NotFound(e.id.clone()))?;
        tx.commit()?;
        Ok(out)
    }

    fn endpoints(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e
             WHERE ?1 IS NULL OR e.tenant = ?1 ORDER BY e.created_ms, e.id"
        ))?;
        let rows = stmt.query_map(params![tenant], row_to_endpoint)?;
        rows.map(|r| r?).collect()
    }

    fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        read_endpoint(&self.conn.lock(), tenant, id)
    }

    fn set_endpoint_url(&self, tenant: &str, id: &str, url: &str) -> Result<()> {
        let n = self.conn.lock().execute(
            "UPDATE webhook_endpoints SET url = ?3 WHERE tenant = ?1 AND id = ?2",
            params![tenant, id, url],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
        }
        Ok(())
    }

    fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM webhook_endpoints WHERE tenant = ?1 AND id = ?2",
            params![tenant, id],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
        }
        tx.execute(
            "DELETE FROM webhook_deliveries WHERE endpoint_id = ?1",
            params![id],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn rotate_endpoint_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &Secret,
        previous_until_ms: i64,
    ) -> Result<WebhookEndpoint> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_until_ms = ?3,
                secret = ?4 WHERE tenant = ?1 AND id = ?2",
            params![tenant, id, previous_until_ms, secret.expose()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
        }
        let out = read_endpoint(&tx, tenant, id)?.ok_or_else(|| Error::NotFound(id.to_string()))?;
        tx.commit()?;
        Ok(out)
    }

    fn disable_endpoint(&self, id: &str, reason: &str, at_ms: i64) -> Result<()> {
        self.conn.lock().execute(
            "UPDATE webhook_endpoints SET disabled_ms = COALESCE(disabled_ms, ?2),
                disabled_reason = COALESCE(disabled_reason, ?3) WHERE id = ?1",
            params![id, at_ms, reason],
        )?;
        Ok(())
    }

    fn scan_events(
        &self,
        endpoint_id: &str,
        limit: usize,
        body: &(dyn Fn(&Event) -> String + Sync),
    ) -> Result<(usize, bool)> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some((tenant, kinds, scan)): Option<(String, String, i64)> = tx
            .query_row(
                "SELECT tenant, kinds, scan_cursor FROM webhook_endpoints WHERE id = ?1",
                params![endpoint_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
        else {
            return Ok((0, true));
        };
        let kinds: Vec<String> = serde_json::from_str(&kinds)?;
        // Events removed by retention before they were looked at are gone for this endpoint.
        let from = (scan as u64).max(pruned_through(&tx)?);
        let newest = newest_cursor(&tx)?;
        let limit = limit.max(1);
        let events = tenant_events(&tx, &tenant, from, newest, limit)?;
        let reached_end = events.len() < limit;
        let through = if reached_end {
            newest
        } else {
            events.last().map_or(newest, |e| e.cursor)
        };
        let at = now_ms();
        let mut queued = 0;
        for e in events
            .iter()
            .filter(|e| kinds.is_empty() || kinds.contains(&e.event.kind))
        {
            queued += usize::from(queue(&tx, endpoint_id, e, &body(e), at)?);
        }
        if through as i64 > scan {
            tx.execute(
                "UPDATE webhook_endpoints SET scan_cursor = ?2 WHERE id = ?1",
                params![endpoint_id, through as i64],
            )?;
        }
        tx.commit()?;
        Ok((queued, reached_end))
    }

    fn due_deliveries(
        &self,
        endpoint_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
             WHERE d.endpoint_id = ?1 AND d.status = 'pending' AND d.next_attempt_ms <= ?2
               AND EXISTS (SELECT 1 FROM webhook_endpoints e
                           WHERE e.id = d.endpoint_id AND e.disabled_ms IS NULL)
               AND (d.conversation_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM webhook_deliveries p
                   WHERE p.endpoint_id = d.endpoint_id AND p.conversation_id = d.conversation_id
                     AND p.status = 'pending' AND p.cursor < d.cursor))
             ORDER BY d.cursor LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![endpoint_id, now_ms, limit.max(1) as i64],
            row_to_delivery,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn next_due_ms(&self, after_ms: i64) -> Result<Option<i64>> {
        Ok(self.conn.lock().query_row(
            "SELECT MIN(d.next_attempt_ms) FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'pending' AND e.disabled_ms IS NULL AND d.next_attempt_ms > ?1",
            params![after_ms],
            |r| r.get(0),
        )?)
    }

    fn begin_attempt(
        &self,
        endpoint_id: &str,
        cursor: u64,
        retry_at_ms: i64,
    ) -> Result<Option<u32>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_ms = ?3,
                updated_ms = ?4
             WHERE endpoint_id = ?1 AND cursor = ?2 AND status = 'pending'
               AND next_attempt_ms <= ?4
               AND EXISTS (SELECT 1 FROM webhook_endpoints e
                           WHERE e.id = endpoint_id AND e.disabled_ms IS NULL)",
            params![endpoint_id, cursor as i64, retry_at_ms, now_ms()],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let attempts: u32 = tx.query_row(
            "SELECT attempts FROM webhook_deliveries WHERE endpoint_id = ?1 AND cursor = ?2",
            params![endpoint_id, cursor as i64],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Some(attempts))
    }

    fn finish_attempt(&self, endpoint_id: &str, cursor: u64, r: &AttemptResult) -> Result<()> {
        self.conn.lock().execute(
            "UPDATE webhook_deliveries SET status = ?3, next_attempt_ms = ?4, last_status = ?5,
                last_response = ?6, updated_ms = ?7
             WHERE endpoint_id = ?1 AND cursor = ?2 AND status = 'pending'",
            params![
                endpoint_id,
                cursor as i64,
                r.status.as_str(),
                r.next_attempt_ms,
                r.response_status,
                r.response_excerpt,
                now_ms()
            ],
        )?;
        Ok(())
    }

    fn dead_letters(&self, tenant: &str, endpoint_id: Option<&str>) -> Result<Vec<Delivery>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE tenant = ?1 AND status = 'dead' AND (?2 IS NULL OR endpoint_id = ?2)
             ORDER BY endpoint_id, cursor"
        ))?;
        let rows = stmt.query_map(params![tenant, endpoint_id], row_to_delivery)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn replay(
        &self,
        tenant: &str,
        endpoint_id: &str,
        which: &ReplaySelection,
        body: &(dyn Fn(&Event) -> String + Sync),
    ) -> Result<u64> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let endpoint = read_endpoint(&tx, tenant, endpoint_id)?
            .ok_or_else(|| Error::NotFound(format!("webhook endpoint {endpoint_id:?}")))?;
        let at = now_ms();
        let (from, to) = match which {
            ReplaySelection::Dead => (0, i64::MAX),
            ReplaySelection::Range { from, to } => (*from as i64, *to as i64),
        };
        let only_dead = matches!(which, ReplaySelection::Dead);
        let mut n = tx.execute(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_ms = ?5,
                updated_ms = ?5
             WHERE endpoint_id = ?1 AND cursor >= ?2 AND cursor <= ?3
               AND (status = 'dead' OR (?4 = 0 AND status = 'delivered'))",
            params![endpoint_id, from, to, only_dead as i64, at],
        )? as u64;
        if let ReplaySelection::Range { from, to } = which {
            // Events never queued for this endpoint (before it existed, or filtered since).
            let mut after = from.saturating_sub(1).max(pruned_through(&tx)?);
            loop {
                let events = tenant_events(&tx, tenant, after, *to, 1000)?;
                let Some(last) = events.last().map(|e| e.cursor) else {
                    break;
                };
                for e in events.iter().filter(|e| endpoint.wants(&e.event.kind)) {
                    n += u64::from(queue(&tx, endpoint_id, e, &body(e), at)?);
                }
                after = last;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn prune_deliveries(&self, before_ms: i64) -> Result<u64> {
        Ok(self.conn.lock().execute(
            "DELETE FROM webhook_deliveries
             WHERE status IN ('delivered', 'dead') AND updated_ms < ?1",
            params![before_ms],
        )? as u64)
    }

    fn last_failure(&self, endpoint_id: &str) -> Result<Option<(Option<u16>, String, i64)>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                "SELECT last_status, last_response, updated_ms FROM webhook_deliveries
                 WHERE endpoint_id = ?1 AND status != 'delivered' AND attempts > 0
                   AND (last_status IS NOT NULL OR last_response != '')
                 ORDER BY updated_ms DESC, cursor DESC LIMIT 1",
                params![endpoint_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn delivery(&self, endpoint_id: &str, cursor: u64) -> Result<Option<Delivery>> {
        Ok(self
            .conn
            .lock()
            .query_row(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                     WHERE endpoint_id = ?1 AND cursor = ?2"
                ),
                params![endpoint_id, cursor as i64],
                row_to_delivery,
            )
            .optional()?)
    }
}
