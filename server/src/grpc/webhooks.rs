//! `closer.v1.Webhooks`: a tenant's signed-webhook endpoints (admin keys), thin over
//! `closer_webhooks::manage`; the delivery worker runs beside the server (`server.rs`).

#[allow(unused_imports)]
use super::common::prelude::*;
use closer_store::{Delivery, ReplaySelection, WebhookEndpoint};
use closer_webhooks::manage;

pub struct WebhooksService {
    pub state: Arc<AppState>,
}

fn pb_endpoint(e: WebhookEndpoint) -> pb::WebhookEndpoint {
    let disabled = e.disabled.is_some();
    let reason = e.disabled.map(|(_, why)| why).unwrap_or_default();
    pb::WebhookEndpoint {
        id: e.id,
        tenant: e.tenant,
        url: e.url,
        kinds: e.kinds,
        description: e.description,
        created_ms: e.created_ms,
        disabled,
        disabled_reason: reason,
        scan_cursor: e.scan_cursor,
        pending: e.pending,
        dead: e.dead,
        previous_secret_until_ms: e
            .previous
            .map(|(_, until)| until)
            .filter(|u| *u > closer_store::now_ms())
            .unwrap_or(0),
    }
}

fn pb_dead_letter(d: Delivery) -> pb::DeadLetter {
    pb::DeadLetter {
        webhook_id: closer_webhooks::payload::webhook_id(d.cursor),
        endpoint_id: d.endpoint_id,
        cursor: d.cursor,
        kind: d.kind,
        conversation_id: d.conversation_id,
        attempts: d.attempts,
        last_status: d.last_status.map(u32::from),
        last_response: d.last_response,
        last_attempt_ms: d.updated_ms,
    }
}

impl WebhooksService {
    /// The store, once the tenant's field is checked and the tenant exists.
    fn store(&self, tenant: &str) -> Result<Arc<dyn closer_store::Store>> {
        let engine = self.state.engine()?;
        check_tenant_field(tenant)?;
        engine.tenant(tenant).api()?;
        Ok(engine.store.clone())
    }
}

#[tonic::async_trait]
impl pb::webhooks_server::Webhooks for WebhooksService {
    async fn create(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> R<pb::CreateWebhookResponse> {
        let req = request.into_inner();
        let store = self.store(&req.tenant)?;
        for (i, k) in req.kinds.iter().enumerate() {
            if !super::events::KINDS.contains(&k.as_str()) {
                return Err(Error::invalid(
                    &format!("kinds[{i}]"),
                    format!(
                        "unknown kind {k:?}; one of {}",
                        super::events::KINDS.join(", ")
                    ),
                )
                .into());
            }
        }
        let created = manage::create(
            store,
            manage::NewEndpoint {
                tenant: req.tenant,
                url: req.url,
                kinds: req.kinds,
                description: req.description,
            },
            self.state.config.webhooks_allow_loopback,
        )
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::CreateWebhookResponse {
            secret: created.secret.expose().to_string(),
            endpoint: Some(pb_endpoint(created.endpoint)),
        }))
    }

    async fn list(&self, request: Request<pb::ListWebhooksRequest>) -> R<pb::ListWebhooksResponse> {
        let req = request.into_inner();
        let store = self.store(&req.tenant)?;
        let endpoints = manage::list(store, &req.tenant)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListWebhooksResponse {
            endpoints: endpoints.into_iter().map(pb_endpoint).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> R<pb::DeleteWebhookResponse> {
        let req = request.into_inner();
        let store = self.store(&req.tenant)?;
        check_id("id", &req.id)?;
        manage::delete(store, &req.tenant, &req.id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> R<pb::RotateWebhookSecretResponse> {
        let req = request.into_inner();
        let store = self.store(&req.tenant)?;
        check_id("id", &req.id)?;
        let rotated = manage::rotate(store, &req.tenant, &req.id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            secret: rotated.secret.expose().to_string(),
            endpoint: Some(pb_endpoint(rotated.endpoint)),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> R<pb::ListDeadLettersResponse> {
        let req = request.into_inner();
        let store = self.store(&req.tenant)?;
        let endpoint = Some(req.endpoint_id.as_str()).filter(|e| !e.is_empty());
        let letters = manage::dead_letters(store, &req.tenant, endpoint)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(pb_dead_letter).collect(),
        }))
    }

    async fn replay(
        &self,
        request: Request<pb::ReplayWebhooksRequest>,
    ) -> R<pb::ReplayWebhooksResponse> {
        let req = request.into_inner();
        let store = self.store(&req.tenant)?;
        check_id("id", &req.id)?;
        use pb::replay_webhooks_request::Which;
        let which = match req.which {
            Some(Which::DeadLetters(true)) => ReplaySelection::Dead,
            Some(Which::Range(r)) => ReplaySelection::Range {
                from: r.from_cursor,
                to: r.to_cursor,
            },
            Some(Which::DeadLetters(false)) | None => {
                return Err(Error::invalid(
                    "which",
                    "set dead_letters (true) or range (from_cursor, to_cursor)",
                )
                .into())
            }
        };
        let queued = manage::replay(store, &req.tenant, &req.id, which)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ReplayWebhooksResponse { queued }))
    }
}
