//! API keys per tenant with roles, checked by one layer in front of every service.
//!
//! - **display** — the leaderboard screen: its event stream, for its tenant only, and nothing else;
//! - **publishable** — for chat frontends: `Assistant` (Converse, Classify) and
//!   `Leads.QualifyForm`, for its tenant only;
//! - **rep** — rep consoles and connectors: also leads, manual scores, events, take-over,
//!   presence, reports and the leaderboard, and reading knowledge, intents and playbooks;
//! - **admin** — also changing knowledge, intents and playbooks, and managing webhooks.
//!
//! A key is sent as `authorization: Bearer <key>` (or `x-api-key: <key>`; the leaderboard's
//! event stream also takes `?key=` because browsers cannot set headers on it, but only a
//! display token there: a read-only key that opens nothing else). Keys are stored
//! as SHA-256 only. A missing, unknown or revoked key gets UNAUTHENTICATED; a key of a role that
//! may not call the method, or used for another tenant, gets PERMISSION_DENIED. The tenant check
//! happens where every handler checks its `tenant` field ([`check_tenant`]), through a
//! task-local set by the layer for the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rand::RngCore;
use sha2::Digest;
use tonic::Status;

use crate::app::AppState;
pub use crate::config::KeyPolicy;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read-only, one tenant: opens the leaderboard's event stream and nothing else. The only
    /// key that may go in a URL (`?key=`), so an office screen holds no rep powers.
    Display,
    Publishable,
    Rep,
    Admin,
    /// The server's operator, no tenant: reads every tenant's figures on `/metrics`; a tenant's
    /// RPCs refuse it (its tenant is [`OPERATOR_TENANT`]).
    Operator,
}

/// The tenant field of an operator key.
pub const OPERATOR_TENANT: &str = "*";

impl Role {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "display" => Ok(Role::Display),
            "publishable" => Ok(Role::Publishable),
            "rep" => Ok(Role::Rep),
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            other => Err(Error::invalid(
                "role",
                format!(
                    "unknown role {other:?}; one of display, publishable, rep, admin, operator"
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Display => "display",
            Role::Publishable => "publishable",
            Role::Rep => "rep",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Role::Display => "dsp",
            Role::Publishable => "pub",
            Role::Rep => "rep",
            Role::Admin => "adm",
            Role::Operator => "opr",
        }
    }
}

/// The role a path needs; `None` for what anyone may call (health, reflection, the
/// leaderboard page itself, which holds no data).
pub fn required_role(path: &str) -> Option<Role> {
    let open = ["/grpc.health.v1.Health/", "/grpc.reflection."];
    if open.iter().any(|p| path.starts_with(p))
        || ["/leaderboard", "/", "/widget.js"].contains(&path)
    {
        return None;
    }
    let role = match path {
        p if p.starts_with("/closer.v1.Assistant/") => Role::Publishable,
        "/closer.v1.Leads/QualifyForm" => Role::Publishable,
        "/closer.v1.Knowledge/Search"
        | "/closer.v1.Knowledge/List"
        | "/closer.v1.Knowledge/Export"
        | "/closer.v1.Intents/Get"
        | "/closer.v1.Playbooks/Get" => Role::Rep,
        "/leaderboard/events" => Role::Display,
        // Operational state of every consumer, webhook URLs included.
        "/closer.v1.Events/ListConsumers" => Role::Admin,
        p if [
            "/closer.v1.Leads/",
            "/closer.v1.Events/",
            "/closer.v1.Conversations/",
            "/closer.v1.Reps/",
            "/closer.v1.Reports/",
        ]
        .iter()
        .any(|x| p.starts_with(x)) =>
        {
            Role::Rep
        }
        // Knowledge, Intents and Playbooks changes, and anything not listed.
        _ => Role::Admin,
    };
    Some(role)
}

/// Hex SHA-256 of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// A new key for `tenant` and `role`: the key (shown once) and what is stored of it.
pub fn new_key(tenant: &str, role: Role, name: &str) -> (String, closer_store::ApiKey) {
    let mut secret = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = format!("closer_{}_{}", role.prefix(), hex::encode(secret));
    let hash = hash_key(&key);
    let stored = closer_store::ApiKey {
        id: format!("key-{}", &hash[..12]),
        tenant: tenant.to_string(),
        role: role.name().to_string(),
        name: name.to_string(),
        hash,
        created_ms: closer_store::now_ms(),
        revoked_ms: None,
    };
    (key, stored)
}

/// Who is calling, for the request being served.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub role: Role,
    pub key_id: String,
}

tokio::task_local! {
    static CALLER: Caller;
}

tokio::task_local! {
    static ORIGIN: Option<String>;
}

/// Checks that a browser request (one with an `Origin` header) comes from a page of one of the
/// tenant's `allowed_origins`; requests without the header (servers, native gRPC) pass.
pub fn check_origin(tenant: &str, allowed: &[String]) -> Result<()> {
    match ORIGIN.try_with(Clone::clone).ok().flatten() {
        Some(o) if !allowed.contains(&o) => Err(Error::PermissionDenied(format!(
            "origin: {o} is not among tenant {tenant:?}'s allowed_origins (tenant.yaml)"
        ))),
        _ => Ok(()),
    }
}

/// Who is calling, when keys are checked for this request.
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// Checks that the caller (when keys are required) may act on `tenant`.
pub fn check_tenant(tenant: &str) -> Result<()> {
    match CALLER.try_with(|c| c.tenant == tenant) {
        Ok(false) => Err(Error::PermissionDenied(
            "tenant: this API key belongs to another tenant".into(),
        )),
        // Same tenant, or keys are not required (no caller set).
        _ => Ok(()),
    }
}

/// For clients: sends `key` (when there is one) as `authorization: Bearer <key>`.
pub fn authorize<T>(req: &mut tonic::Request<T>, key: Option<&str>) -> anyhow::Result<()> {
    if let Some(k) = key {
        let v = format!("Bearer {k}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--api-key: not a valid header value"))?;
        req.metadata_mut().insert("authorization", v);
    }
    Ok(())
}

/// The key a request presents, and whether it came in the URL (`?key=`).
fn presented_key<B>(req: &http::Request<B>) -> Option<(String, bool)> {
    let h = req.headers();
    if let Some(v) = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(|k| (k.trim().to_string(), false));
    }
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some((v.trim().to_string(), false));
    }
    if req.uri().path() == "/leaderboard/events" {
        return req.uri().query().and_then(query_key).map(|k| (k, true));
    }
    None
}

/// The `key` parameter of a query string, percent-decoded.
fn query_key(query: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(k, v)| (k == "key").then_some(v))
}

/// Decides a request: `Ok(None)` open, `Ok(Some(caller))` allowed, `Err` refused.
fn decide<B>(
    state: &AppState,
    req: &http::Request<B>,
) -> std::result::Result<Option<Caller>, Status> {
    let path = req.uri().path();
    let Some(need) = required_role(path) else {
        return Ok(None);
    };
    let Some((key, in_url)) = presented_key(req).filter(|(k, _)| !k.is_empty()) else {
        return Err(Status::unauthenticated(
            "missing API key: send `authorization: Bearer <key>` (create one with `closer keys create`)",
        ));
    };
    let engine = state.engine().map_err(Status::from)?;
    let stored = engine
        .store
        .key_by_hash(&hash_key(&key))
        .map_err(|e| Status::from(Error::from(e)))?;
    let Some(k) = stored.filter(|k| k.revoked_ms.is_none()) else {
        return Err(Status::unauthenticated("unknown or revoked API key"));
    };
    let role = Role::parse(&k.role).map_err(Status::from)?;
    if in_url && role != Role::Display {
        // URLs end up in browser history, proxy logs and screenshots of office screens.
        return Err(Status::permission_denied(format!(
            "a {} key may not go in a URL; give the screen a display token (`closer keys create --role display`)",
            role.name()
        )));
    }
    if role < need {
        let method = path.trim_start_matches('/');
        return Err(Status::permission_denied(format!(
            "a {} key may not call {method} (needs a {} key)",
            role.name(),
            need.name()
        )));
    }
    Ok(Some(Caller {
        tenant: k.tenant,
        role,
        key_id: k.id,
    }))
}

/// The layer in front of every service (gRPC and web).
#[derive(Clone)]
pub struct AuthLayer {
    pub state: Arc<AppState>,
    pub policy: KeyPolicy,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<AppState>,
    policy: KeyPolicy,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let path = req.uri().path();
        let decision = if self.state.is_draining() && !path.starts_with("/grpc.health.v1.Health/") {
            Err(Status::from(Error::Draining))
        } else if !self.policy.needs_key(&req) {
            Ok(None)
        } else {
            decide(&self.state, &req)
        };
        // A browser's page origin, checked against the tenant's `allowed_origins` by the
        // visitor-facing handlers once they know the tenant.
        // The server's own pages (the demo page) are same-origin and always allowed.
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin = req
            .headers()
            .get(http::header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("(not text)").to_string())
            .filter(|o| o.split_once("://").is_none_or(|(_, h)| h != host));
        match decision {
            Ok(None) => Box::pin(oversize_status(ORIGIN.scope(origin, inner.call(req)))),
            Ok(Some(caller)) => {
                tracing::debug!(key = %caller.key_id, tenant = %caller.tenant, role = caller.role.name(), "authorised");
                Box::pin(oversize_status(
                    ORIGIN.scope(origin, CALLER.scope(caller, inner.call(req))),
                ))
            }
            Err(status) => {
                tracing::info!(path = %req.uri().path(), code = ?status.code(), "refused");
                let resp = if grpc {
                    status.into_http()
                } else {
                    let code = match status.code() {
                        tonic::Code::Unauthenticated => http::StatusCode::UNAUTHORIZED,
                        tonic::Code::PermissionDenied => http::StatusCode::FORBIDDEN,
                        _ => http::StatusCode::SERVICE_UNAVAILABLE,
                    };
                    let mut r = http::Response::new(tonic::body::Body::empty());
                    *r.status_mut() = code;
                    r
                };
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

/// tonic answers a unary request over `--max-request-bytes` with OUT_OF_RANGE before any service
/// code runs; the contract is RESOURCE_EXHAUSTED, so the status header is rewritten here.
async fn oversize_status<F, E>(call: F) -> std::result::Result<http::Response<tonic::body::Body>, E>
where
    F: Future<Output = std::result::Result<http::Response<tonic::body::Body>, E>>,
{
    let mut resp = call.await?;
    let h = resp.headers();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if too_large {
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "request%20message%20too%20large%20(--max-request-bytes)",
            ),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_cover_every_path_and_default_to_admin() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(required_role("/leaderboard"), None);
        assert_eq!(
            required_role("/closer.v1.Assistant/Converse"),
            Some(Role::Publishable)
        );
        assert_eq!(
            required_role("/closer.v1.Leads/QualifyForm"),
            Some(Role::Publishable)
        );
        assert_eq!(required_role("/closer.v1.Leads/SetScore"), Some(Role::Rep));
        // Webhooks hold signing secrets and send data out: admin only.
        for m in [
            "Create",
            "List",
            "Delete",
            "RotateSecret",
            "ListDeadLetters",
            "Replay",
        ] {
            assert_eq!(
                required_role(&format!("/closer.v1.Webhooks/{m}")),
                Some(Role::Admin)
            );
        }
        assert_eq!(
            required_role("/closer.v1.Leads/GetTranscript"),
            Some(Role::Rep),
            "a transcript is not for publishable keys"
        );
        assert_eq!(
            required_role("/closer.v1.Knowledge/Search"),
            Some(Role::Rep)
        );
        assert_eq!(
            required_role("/closer.v1.Knowledge/Ingest"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role("/closer.v1.Playbooks/Upload"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/leaderboard/events"), Some(Role::Display));
        assert_eq!(required_role("/closer.v1.Whatever/New"), Some(Role::Admin));
        assert!(Role::Admin > Role::Rep && Role::Rep > Role::Publishable);
        assert!(
            Role::Publishable > Role::Display,
            "a display token opens no chat"
        );
        assert_eq!(Role::parse("display").unwrap(), Role::Display);
    }

    #[test]
    fn a_key_in_the_query_is_decoded() {
        assert_eq!(
            query_key("tenant=a&key=ck_rep%2Bx").as_deref(),
            Some("ck_rep+x")
        );
        assert_eq!(query_key("tenant=a"), None);
    }

    #[test]
    fn keys_are_random_and_stored_as_hashes() {
        let (a, sa) = new_key("t", Role::Rep, "console");
        let (b, _) = new_key("t", Role::Rep, "console");
        assert_ne!(a, b);
        assert!(a.starts_with("closer_rep_") && a.len() == "closer_rep_".len() + 48);
        assert_eq!(sa.hash, hash_key(&a));
        assert!(!sa.hash.contains(&a[11..]));
        assert!(sa.id.starts_with("key-") && sa.hash.starts_with(&sa.id[4..]));
    }
}
