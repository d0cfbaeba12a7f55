//! [`WebhookStore`] on PostgreSQL. Several replicas run the delivery worker against the same
//! rows: a scan holds its endpoint's row lock (so two replicas never scan one endpoint at
//! once), deliveries are queued with `ON CONFLICT DO NOTHING`, and an attempt starts only by
//! a conditional update that moves the delivery's due time forward, so of two replicas
//! reaching for one due delivery exactly one sends it.

use postgres::Row;

use super::{newest_cursor, pruned_through, row_to_event, PgStore, EVENT_COLUMNS};
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

fn row_to_endpoint(r: &Row) -> Result<WebhookEndpoint> {
    let previous: Option<String> = r.get(6);
    let until: Option<i64> = r.get(7);
    let disabled_ms: Option<i64> = r.get(10);
    let reason: Option<String> = r.get(11);
    let oldest: Option<i64> = r.get(13);
    Ok(WebhookEndpoint {
        id: r.get(0),
        tenant: r.get(1),
        url: r.get(2),
        kinds: serde_json::from_str(r.get(3))?,
        description: r.get(4),
        secret: Secret::new(r.get::<_, String>(5)),
        previous: previous.zip(until).map(|(s, u)| (Secret::new(s), u)),
        scan_cursor: r.get::<_, i64>(8) as u64,
        created_ms: r.get(9),
        disabled: disabled_ms.map(|at| (at, reason.unwrap_or_default())),
        pending: r.get::<_, i64>(12) as u64,
        oldest_pending: oldest.map(|c| c as u64),
        dead: r.get::<_, i64>(14) as u64,
    })
}

const DELIVERY_COLUMNS: &str = "endpoint_id, tenant, cursor, kind, conversation_id, body, status,
    attempts, next_attempt_ms, last_status, last_response, created_ms, updated_ms";

fn row_to_delivery(r: &Row) -> Delivery {
    Delivery {
        endpoint_id: r.get(0),
        tenant: r.get(1),
        cursor: r.get::<_, i64>(2) as u64,
        kind: r.get(3),
        conversation_id: r.get(4),
        body: r.get(5),
        status: DeliveryStatus::parse(r.get(6)),
        attempts: u32::try_from(r.get::<_, i32>(7)).unwrap_or(0),
        next_attempt_ms: r.get(8),
        last_status: r
            .get::<_, Option<i32>>(9)
            .and_then(|s| u16::try_from(s).ok()),
        last_response: r.get(10),
        created_ms: r.get(11),
        updated_ms: r.get(12),
    }
}

fn read_endpoint<C: postgres::GenericClient>(
    c: &mut C,
    tenant: &str,
    id: &str,
) -> Result<Option<WebhookEndpoint>> {
    c.query_opt(
        &format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e WHERE e.tenant = $1 AND e.id = $2"
        ),
        &[&tenant, &id],
    )?
    .map(|r| row_to_endpoint(&r))
    .transpose()
}

/// Events of `tenant` with cursors in `(after, through]`, oldest first, at most `limit`.
fn tenant_events<C: postgres::GenericClient>(
    c: &mut C,
    tenant: &str,
    after: u64,
    through: u64,
    limit: usize,
) -> Result<Vec<Event>> {
    let rows = c.query(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE tenant = $1 AND cursor > $2 AND cursor <= $3 ORDER BY cursor LIMIT $4"
        ),
        &[&tenant, &(after as i64), &(through as i64), &(limit as i64)],
    )?;
    rows.iter().map(row_to_event).collect()
}

/// Queues `e` for the endpoint unless it is queued already; whether it was.
fn queue<C: postgres::GenericClient>(
    c: &mut C,
    endpoint_id: &str,
    e: &Event,
    body: &str,
    at: i64,
) -> Result<bool> {
    let n = c.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, cursor, tenant, kind, conversation_id,
            body, status, attempts, next_attempt_ms, created_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7) ON CONFLICT DO NOTHING",
        &[
            &endpoint_id,
            &(e.cursor as i64),
            &e.event.tenant,
            &e.event.kind,
            &e.event.conversation_id,
            &body,
            &at,
        ],
    )?;
    Ok(n == 1)
}

impl WebhookStore for PgStore {
    fn create_endpoint(&self, e: &WebhookEndpoint) -> Result<WebhookEndpoint> {
        self.tx(|tx| {
            let start = newest_cursor(tx)?;
            let n = tx.execute(
                "INSERT INTO webhook_endpoints (id, tenant, url, kinds, description, secret,
                    scan_cursor, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT DO NOTHING",
                &[
                    &e.id,
                    &e.tenant,
                    &e.url,
                    &serde_json::to_string(&e.kinds)?,
                    &e.description,
                    &e.secret.expose(),
                    &(start as i64),
                    &e.created_ms,
                ],
            )?;
            if n == 0 {
                return Err(Error::Conflict(format!("webhook endpoint {} exists", e.id)));
            }
            read_endpoint(tx, &e.tenant, &e.id)?.ok_or_else(|| Error::NotFound(e.id.clone()))
        })
    }

    fn endpoints(&self, tenant: Option<&str>) -> Result<Vec<WebhookEndpoint>> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e
                     WHERE $1::TEXT IS NULL OR e.tenant = $1 ORDER BY e.created_ms, e.id"
                ),
                &[&tenant],
            )?;
            rows.iter().map(row_to_endpoint).collect()
        })
    }

    fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        self.with(|c| read_endpoint(c, tenant, id))
    }

    fn set_endpoint_url(&self, tenant: &str, id: &str, url: &str) -> Result<()> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE webhook_endpoints SET url = $3 WHERE tenant = $1 AND id = $2",
                &[&tenant, &id, &url],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
            }
            Ok(())
        })
    }

    fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<()> {
        self.tx(|tx| {
            let n = tx.execute(
                "DELETE FROM webhook_endpoints WHERE tenant = $1 AND id = $2",
                &[&tenant, &id],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
            }
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
                &[&id],
            )?;
            Ok(())
        })
    }

    fn rotate_endpoint_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &Secret,
        previous_until_ms: i64,
    ) -> Result<WebhookEndpoint> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_until_ms = $3,
                    secret = $4 WHERE tenant = $1 AND id = $2",
                &[&tenant, &id, &previous_until_ms, &secret.expose()],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
            }
            read_endpoint(tx, tenant, id)?.ok_or_else(|| Error::NotFound(id.to_string()))
        })
    }

    fn disable_endpoint(&self, id: &str, reason: &str, at_ms: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE webhook_endpoints SET disabled_ms = COALESCE(disabled_ms, $2),
                    disabled_reason = COALESCE(disabled_reason, $3) WHERE id = $1",
                &[&id, &at_ms, &reason],
            )?;
            Ok(())
        })
    }

    fn scan_events(
        &self,
        endpoint_id: &str,
        limit: usize,
        body: &(dyn Fn(&Event) -> String + Sync),
    ) -> Result<(usize, bool)> {
        self.tx(|tx| {
            let Some(row) = tx.query_opt(
                "SELECT tenant, kinds, scan_cursor FROM webhook_endpoints WHERE id = $1 FOR UPDATE",
                &[&endpoint_id],
            )?
            else {
                return Ok((0, true));
            };
            let (tenant, scan): (String, i64) = (row.get(0), row.get(2));
            let kinds: Vec<String> = serde_json::from_str(row.get(1))?;
            // Events removed by retention before they were looked at are gone for this endpoint.
            let from = (scan as u64).max(pruned_through(tx)?);
            let newest = newest_cursor(tx)?;
            let limit = limit.max(1);
            let events = tenant_events(tx, &tenant, from, newest, limit)?;
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
                queued += usize::from(queue(tx, endpoint_id, e, &body(e), at)?);
            }
            if through as i64 > scan {
                tx.execute(
                    "UPDATE webhook_endpoints SET scan_cursor = $2 WHERE id = $1",
                    &[&endpoint_id, &(through as i64)],
                )?;
            }
            Ok((queued, reached_end))
        })
    }

    fn due_deliveries(
        &self,
        endpoint_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
                     WHERE d.endpoint_id = $1 AND d.status = 'pending' AND d.next_attempt_ms <= $2
                       AND EXISTS (SELECT 1 FROM webhook_endpoints e
                                   WHERE e.id = d.endpoint_id AND e.disabled_ms IS NULL)
                       AND (d.conversation_id IS NULL OR NOT EXISTS (
                           SELECT 1 FROM webhook_deliveries p
                           WHERE p.endpoint_id = d.endpoint_id
                             AND p.conversation_id = d.conversation_id
                             AND p.status = 'pending' AND p.cursor < d.cursor))
                     ORDER BY d.cursor LIMIT $3"
                ),
                &[&endpoint_id, &now_ms, &(limit.max(1) as i64)],
            )?;
            Ok(rows.iter().map(row_to_delivery).collect())
        })
    }

    fn next_due_ms(&self, after_ms: i64) -> Result<Option<i64>> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT MIN(d.next_attempt_ms) FROM webhook_deliveries d
                 JOIN webhook_endpoints e ON e.id = d.endpoint_id
                 WHERE d.status = 'pending' AND e.disabled_ms IS NULL AND d.next_attempt_ms > $1",
                &[&after_ms],
            )?
            .get(0))
        })
    }

    fn begin_attempt(
        &self,
        endpoint_id: &str,
        cursor: u64,
        retry_at_ms: i64,
    ) -> Result<Option<u32>> {
        self.with(|c| {
            let row = c.query_opt(
                "UPDATE webhook_deliveries d SET attempts = attempts + 1, next_attempt_ms = $3,
                    updated_ms = $4
                 WHERE d.endpoint_id = $1 AND d.cursor = $2 AND d.status = 'pending'
                   AND d.next_attempt_ms <= $4
                   AND EXISTS (SELECT 1 FROM webhook_endpoints e
                               WHERE e.id = d.endpoint_id AND e.disabled_ms IS NULL)
                 RETURNING attempts",
                &[&endpoint_id, &(cursor as i64), &retry_at_ms, &now_ms()],
            )?;
            Ok(row.map(|r| u32::try_from(r.get::<_, i32>(0)).unwrap_or(0)))
        })
    }

    fn finish_attempt(&self, endpoint_id: &str, cursor: u64, r: &AttemptResult) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE webhook_deliveries SET status = $3, next_attempt_ms = $4, last_status = $5,
                    last_response = $6, updated_ms = $7
                 WHERE endpoint_id = $1 AND cursor = $2 AND status = 'pending'",
                &[
                    &endpoint_id,
                    &(cursor as i64),
                    &r.status.as_str(),
                    &r.next_attempt_ms,
                    &r.response_status.map(i32::from),
                    &r.response_excerpt,
                    &now_ms(),
                ],
            )?;
            Ok(())
        })
    }

    fn dead_letters(&self, tenant: &str, endpoint_id: Option<&str>) -> Result<Vec<Delivery>> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                     WHERE tenant = $1 AND status = 'dead' AND ($2::TEXT IS NULL OR endpoint_id = $2)
                     ORDER BY endpoint_id, cursor"
                ),
                &[&tenant, &endpoint_id],
            )?;
            Ok(rows.iter().map(row_to_delivery).collect())
        })
    }

    fn replay(
        &self,
        tenant: &str,
        endpoint_id: &str,
        which: &ReplaySelection,
        body: &(dyn Fn(&Event) -> String + Sync),
    ) -> Result<u64> {
        self.tx(|tx| {
            let endpoint = read_endpoint(tx, tenant, endpoint_id)?
                .ok_or_else(|| Error::NotFound(format!("webhook endpoint {endpoint_id:?}")))?;
            let at = now_ms();
            let (from, to) = match which {
                ReplaySelection::Dead => (0, i64::MAX),
                ReplaySelection::Range { from, to } => (*from as i64, *to as i64),
            };
            let only_dead = matches!(which, ReplaySelection::Dead);
            let mut n = tx.execute(
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_ms = $5,
                    updated_ms = $5
                 WHERE endpoint_id = $1 AND cursor >= $2 AND cursor <= $3
                   AND (status = 'dead' OR (NOT $4 AND status = 'delivered'))",
                &[&endpoint_id, &from, &to, &only_dead, &at],
            )?;
            if let ReplaySelection::Range { from, to } = which {
                // Events never queued for this endpoint (before it existed, or filtered since).
                let mut after = from.saturating_sub(1).max(pruned_through(tx)?);
                loop {
                    let events = tenant_events(tx, tenant, after, *to, 1000)?;
                    let Some(last) = events.last().map(|e| e.cursor) else {
                        break;
                    };
                    for e in events.iter().filter(|e| endpoint.wants(&e.event.kind)) {
                        n += u64::from(queue(tx, endpoint_id, e, &body(e), at)?);
                    }
                    after = last;
                }
            }
            Ok(n)
        })
    }

    fn prune_deliveries(&self, before_ms: i64) -> Result<u64> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM webhook_deliveries
                 WHERE status IN ('delivered', 'dead') AND updated_ms < $1",
                &[&before_ms],
            )?)
        })
    }

    fn last_failure(&self, endpoint_id: &str) -> Result<Option<(Option<u16>, String, i64)>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT last_status, last_response, updated_ms FROM webhook_deliveries
                 WHERE endpoint_id = $1 AND status != 'delivered' AND attempts > 0
                   AND (last_status IS NOT NULL OR last_response != '')
                 ORDER BY updated_ms DESC, cursor DESC LIMIT 1",
                &[&endpoint_id],
            )?
            .map(|r| {
                let status: Option<i32> = r.get(0);
                (
                    status.and_then(|s| u16::try_from(s).ok()),
                    r.get(1),
                    r.get(2),
                )
            }))
        })
    }

    fn delivery(&self, endpoint_id: &str, cursor: u64) -> Result<Option<Delivery>> {
        self.with(|c| {
            Ok(c.query_opt(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
                     WHERE endpoint_id = $1 AND cursor = $2"
                ),
                &[&endpoint_id, &(cursor as i64)],
            )?
            .map(|r| row_to_delivery(&r)))
        })
    }
}
