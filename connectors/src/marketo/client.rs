//! Marketo's REST API as the connector uses it: an access token from the identity service
//! (`GET /identity/oauth/token?grant_type=client_credentials`, the API-only user's client id and
//! secret), sent as a bearer header; errors arrive as HTTP 200 with `success: false` and codes:
//! 601/602 (token invalid or expired) fetch a new token once and send the call again, 606 (the
//! 100-calls-per-20-s rate) and 615 (the 10-concurrent-calls limit) are waited out (20 s at
//! most, three times) and the call sent again. A call first takes one of the instance's
//! concurrent slots (10 by default), held until its answer, retries included, then the
//! instance's [`Budget`] (100 per rolling 20 s by default; each retry and token takes one more).

use std::sync::Arc;
use std::time::Duration;

use closer_webhooks::connector::Answer;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::Budget;
use crate::config::{MarketoConfig, Token};
use crate::http::{self, chain};

/// Rate and concurrency errors waited out within one call.
const RATE_RETRIES: u32 = 3;

pub struct Client {
    http: reqwest::Client,
    base: String,
    client_id: Token,
    client_secret: Token,
    token: tokio::sync::Mutex<Option<Token>>,
    budget: Budget,
    slots: Arc<Semaphore>,
}

/// One of the instance's concurrent slots, and the budget taken for a call's first request.
pub struct Ready {
    _slot: OwnedSemaphorePermit,
}

impl Client {
    pub fn new(c: &MarketoConfig) -> Result<Self, String> {
        Ok(Client {
            http: http::client(Duration::from_secs(c.request_timeout_secs), "Marketo")?,
            base: c.base_url.trim_end_matches('/').to_string(),
            client_id: c.client_id.clone().ok_or("no client id read")?,
            client_secret: c.client_secret.clone().ok_or("no client secret read")?,
            token: tokio::sync::Mutex::new(None),
            budget: Budget::new(c.calls_per_20s, Duration::from_secs(20)),
            slots: Arc::new(Semaphore::new(c.concurrent_calls.max(1) as usize)),
        })
    }

    /// The token in use, or a new one when there is none or `stale` is the one in use.
    async fn access_token(&self, stale: Option<&Token>) -> Result<Token, Answer> {
        let mut current = self.token.lock().await;
        if let Some(t) = current.as_ref() {
            if Some(t) != stale {
                return Ok(t.clone());
            }
        }
        let query = http::client_credentials(self.client_id.expose(), self.client_secret.expose());
        let what = "GET /identity/oauth/token";
        self.budget.take().await;
        // The secret is in the URL: errors are shown without it.
        let resp = self
            .http
            .get(format!("{}/identity/oauth/token?{query}", self.base))
            .send()
            .await
            .map_err(|e| Answer::none(format!("{what}: {}", chain(&e.without_url()))))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            Answer::none(format!("{what}: answer cut: {}", chain(&e.without_url())))
        })?;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match json["access_token"].as_str().filter(|t| !t.is_empty()) {
            Some(t) if status == 200 => {
                let t = Token::new(t);
                *current = Some(t.clone());
                Ok(t)
            }
            _ => Err(Answer {
                status: Some(status),
                excerpt: http::excerpt(what, &bytes),
                ..Answer::default()
            }),
        }
    }

    /// Waits for a free concurrent slot, then for the budget: a call may go now.
    pub async fn ready(&self) -> Result<Ready, Answer> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Answer::none("closed"))?;
        self.budget.take().await;
        Ok(Ready { _slot: slot })
    }

    /// One call with the bearer token, sent in the slot `ready` holds; `Ok` with the body when
    /// Marketo says `success: true`.
    pub async fn call(&self, path: &str, body: &Value, ready: Ready) -> Result<Value, Answer> {
        let _slot = ready;
        let url = format!("{}{path}", self.base);
        let what = format!("POST {path}");
        let mut stale: Option<Token> = None;
        let mut rate = 0;
        let mut first = true;
        loop {
            let token = self.access_token(stale.as_ref()).await?;
            if !std::mem::take(&mut first) {
                self.budget.take().await;
            }
            let sent = match self
                .http
                .post(&url)
                .bearer_auth(token.expose())
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).unwrap_or_default())
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.bytes().await.map(|b| (status, b))
                }
                Err(e) => Err(e),
            };
            let (status, bytes) = match sent {
                Ok(x) => x,
                Err(e) if e.is_timeout() => {
                    return Err(Answer::none(format!("{what}: no answer in time")))
                }
                Err(e) => return Err(Answer::none(format!("{what}: {}", chain(&e)))),
            };
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != 200 {
                return Err(Answer {
                    status: Some(status),
                    excerpt: http::excerpt(&what, &bytes),
                    ..Answer::default()
                });
            }
            if json["success"].as_bool() == Some(true) {
                return Ok(json);
            }
            let codes = error_codes(&json);
            let has = |c: &str| codes.iter().any(|x| x == c);
            if (has("601") || has("602")) && stale.is_none() {
                tracing::debug!("Marketo token invalid or expired: fetching a new one");
                stale = Some(token);
                continue;
            }
            if (has("606") || has("615")) && rate < RATE_RETRIES {
                rate += 1;
                tracing::debug!(codes = ?codes, "Marketo rate or concurrency limit: waiting");
                tokio::time::sleep(Duration::from_secs(rate as u64 * 2)).await;
                continue;
            }
            // HTTP 200, yet refused: no status, so the attempt does not count as delivered.
            return Err(Answer {
                status: None,
                excerpt: http::excerpt(
                    &format!("{what}: Marketo error {}", codes.join(",")),
                    &bytes,
                ),
                retry_after: (has("606") || has("615")).then_some(Duration::from_secs(20)),
                dead: false,
            });
        }
    }
}

/// The codes of a Marketo answer's `errors` (strings or numbers).
pub fn error_codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| match &e["code"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}
