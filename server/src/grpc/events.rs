//! `closer.v1.Events`: stored then live sales events after a cursor, and consumer acks.

#[allow(unused_imports)]
use super::common::prelude::*;

pub struct EventsService {
    pub state: Arc<AppState>,
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::SalesEvent, Status>> + Send>>;

fn pb_event(e: closer_store::Event) -> pb::SalesEvent {
    pb::SalesEvent {
        id: e.id,
        cursor: e.cursor,
        kind: e.event.kind,
        tenant: e.event.tenant,
        conversation_id: e.event.conversation_id,
        rep_id: e.event.rep_id,
        team: e.event.team,
        at_ms: e.at_ms,
        payload_json: e.event.payload.to_string(),
    }
}

/// Every kind of sales event (filters of `Subscribe` and of webhook endpoints).
pub const KINDS: &[&str] = &[
    "account_live",
    "cql_scored",
    "handoff_requested",
    "meeting_proposed",
    "meeting_booked",
    "rep_joined",
    "rep_message",
    "visitor_message",
    "rep_left",
    "conversation_closed",
];

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> R<Self::SubscribeStream> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        engine.tenant(&req.tenant).api()?;
        for (i, k) in req.kinds.iter().enumerate() {
            if !KINDS.contains(&k.as_str()) {
                return Err(Error::invalid(
                    &format!("kinds[{i}]"),
                    format!("unknown kind {k:?}; one of {}", KINDS.join(", ")),
                )
                .into());
            }
        }
        if let Some(c) = &req.consumer {
            check_id("consumer", c)?;
        }
        let filter = EventFilter {
            tenant: req.tenant.clone(),
            kinds: req.kinds.clone(),
            rep_id: req.rep_id.clone(),
            team: req.team.clone(),
            conversation_id: req.conversation_id.clone(),
        };
        let start = {
            let (e, t, c, after) = (
                engine.clone(),
                req.tenant.clone(),
                req.consumer.clone(),
                req.after_cursor,
            );
            blocking(move || -> Result<u64> {
                let start = match (after, c) {
                    (Some(a), _) => a,
                    (None, Some(name)) => e.store.acked(&t, &name)?,
                    (None, None) => e.store.last_cursor()?,
                };
                // Refused before the stream opens when retention removed what it asks for.
                e.store.check_readable(start)?;
                Ok(start)
            })
            .await?
        };
        let (tx, rx) = mpsc::channel(64);
        let mut wake = engine.bus.watch(&req.tenant);
        tokio::spawn(async move {
            let mut cursor = start;
            loop {
                let (e, f) = (engine.clone(), filter.clone());
                let batch = match blocking(move || e.store.events_after(cursor, &f, 500)).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let full = batch.len() == 500;
                for ev in batch {
                    cursor = ev.cursor;
                    if tx.send(Ok(pb_event(ev))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                // Events of other tenants or filters also wake us; the periodic look is a
                // safety net only (the outbox is the truth).
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> R<pb::AckResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        check_id("consumer", &req.consumer)?;
        engine.tenant(&req.tenant).api()?;
        let cursor =
            blocking(move || engine.store.ack(&req.tenant, &req.consumer, req.cursor)).await?;
        Ok(Response::new(pb::AckResponse { cursor }))
    }

    async fn list_consumers(
        &self,
        request: Request<pb::ListConsumersRequest>,
    ) -> R<pb::ListConsumersResponse> {
        let engine = self.state.engine()?;
        let req = request.into_inner();
        check_tenant_field(&req.tenant)?;
        engine.tenant(&req.tenant).api()?;
        let (consumers, last_cursor) =
            closer_webhooks::status::consumers(engine.store.clone(), &req.tenant)
                .await
                .map_err(Error::from)?;
        Ok(Response::new(pb::ListConsumersResponse {
            consumers: consumers
                .into_iter()
                .map(|c| pb::ConsumerStatus {
                    kind: c.kind.as_str().into(),
                    name: c.name,
                    cursor: c.cursor,
                    lag: c.lag,
                    pending: c.pending,
                    dead: c.dead,
                    last_error: c.last_error,
                    disabled: c.disabled,
                    url: c.url,
                })
                .collect(),
            last_cursor,
        }))
    }
}
