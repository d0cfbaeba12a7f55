//! Managing a tenant's endpoints, for the gRPC service and the `closer webhooks` command alike:
//! create (the URL checked, the secret shown once), list, delete, rotate the secret (the old one
//! signs beside it for 24 h), dead letters, replay with the original webhook ids.

use std::sync::Arc;

use closer_store::{Delivery, ReplaySelection, Store, WebhookEndpoint};
use rand::RngCore;

use crate::error::{Error, Result};

/// How long a rotated-out secret keeps signing.
pub const ROTATION_GRACE_MS: i64 = 24 * 3600 * 1000;

/// What `create` needs.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    pub tenant: String,
    pub url: String,
    /// Event kinds to send; empty = every kind. The caller checks them against the known kinds.
    pub kinds: Vec<String>,
    pub description: String,
}

/// An endpoint with its secret, shown only now.
#[derive(Debug)]
pub struct WithSecret {
    pub endpoint: WebhookEndpoint,
    pub secret: closer_store::Secret,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> closer_store::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("store task: {e}")))?
        .map_err(|e| match e {
            closer_store::Error::NotFound(m) => Error::NotFound(m),
            e => Error::Store(e),
        })
}

pub async fn create(
    store: Arc<dyn Store>,
    req: NewEndpoint,
    allow_loopback: bool,
) -> Result<WithSecret> {
    let url = crate::target::check_url(&req.url, allow_loopback).await?;
    if req.description.chars().count() > 500 {
        return Err(Error::invalid("description", "at most 500 characters"));
    }
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let secret = crate::secret::generate();
    let e = WebhookEndpoint {
        id: format!("wh_{}", hex::encode(id)),
        tenant: req.tenant,
        url: url.to_string(),
        kinds: req.kinds,
        description: req.description,
        secret: secret.clone(),
        previous: None,
        created_ms: closer_store::now_ms(),
        disabled: None,
        scan_cursor: 0,
        pending: 0,
        oldest_pending: None,
        dead: 0,
    };
    let endpoint = blocking(move || store.create_endpoint(&e)).await?;
    tracing::info!(tenant = %endpoint.tenant, id = %endpoint.id, url = %endpoint.url, "webhook endpoint created");
    Ok(WithSecret { endpoint, secret })
}

pub async fn list(store: Arc<dyn Store>, tenant: &str) -> Result<Vec<WebhookEndpoint>> {
    let t = tenant.to_string();
    let all = blocking(move || store.endpoints(Some(&t))).await?;
    // Connectors' rows are theirs (`closer sync status` shows them).
    Ok(all
        .into_iter()
        .filter(|e| !crate::connector::is_connector(e))
        .collect())
}

pub async fn delete(store: Arc<dyn Store>, tenant: &str, id: &str) -> Result<()> {
    let (t, i) = (tenant.to_string(), id.to_string());
    blocking(move || store.delete_endpoint(&t, &i)).await
}

/// A new secret; the old one signs beside it for [`ROTATION_GRACE_MS`].
pub async fn rotate(store: Arc<dyn Store>, tenant: &str, id: &str) -> Result<WithSecret> {
    let (t, i) = (tenant.to_string(), id.to_string());
    let secret = crate::secret::generate();
    let s = secret.clone();
    let until = closer_store::now_ms() + ROTATION_GRACE_MS;
    let endpoint = blocking(move || store.rotate_endpoint_secret(&t, &i, &s, until)).await?;
    Ok(WithSecret { endpoint, secret })
}

pub async fn dead_letters(
    store: Arc<dyn Store>,
    tenant: &str,
    endpoint_id: Option<&str>,
) -> Result<Vec<Delivery>> {
    let (t, e) = (tenant.to_string(), endpoint_id.map(str::to_string));
    blocking(move || store.dead_letters(&t, e.as_deref())).await
}

/// Queues deliveries again with their original webhook ids; how many.
pub async fn replay(
    store: Arc<dyn Store>,
    tenant: &str,
    id: &str,
    which: ReplaySelection,
) -> Result<u64> {
    if let ReplaySelection::Range { from, to } = which {
        if from == 0 || to < from {
            return Err(Error::invalid(
                "range",
                "from_cursor must be at least 1 and to_cursor at least from_cursor",
            ));
        }
    }
    let (t, i) = (tenant.to_string(), id.to_string());
    blocking(move || store.replay(&t, &i, &which, &crate::payload::body)).await
}
