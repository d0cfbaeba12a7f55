//! Salesforce's REST API as the connector uses it: an OAuth 2.0 client-credentials access token
//! (`POST /services/oauth2/token` with the connected app's consumer key and secret), fetched
//! when first needed and again once when a call answers 401 `INVALID_SESSION_ID` (the call is
//! then sent again; a second 401 fails the attempt); and the org's daily API usage read from
//! `Sforce-Limit-Info: api-usage=N/M` on every answer: at `pause_at_share` of M every call of
//! the org pauses for `pause_secs` (the attempt fails and the retry schedule takes over).

use std::time::{Duration, Instant};

use closer_webhooks::connector::Answer;
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::{SalesforceConfig, Token};
use crate::http::{self, chain};

pub struct Client {
    http: reqwest::Client,
    base: String,
    client_id: Token,
    client_secret: Token,
    /// The access token in use (none: fetch one).
    token: tokio::sync::Mutex<Option<Token>>,
    pause_share: f64,
    pause: Duration,
    /// The last `api-usage` seen: (used, allowed).
    usage: Mutex<Option<(u64, u64)>>,
    paused_until: Mutex<Option<Instant>>,
}

/// A 2xx answer's status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    pub fn new(c: &SalesforceConfig) -> Result<Self, String> {
        Ok(Client {
            http: http::client(Duration::from_secs(c.request_timeout_secs), "Salesforce")?,
            base: c.base_url.trim_end_matches('/').to_string(),
            client_id: c.client_id.clone().ok_or("no client id read")?,
            client_secret: c.client_secret.clone().ok_or("no client secret read")?,
            token: tokio::sync::Mutex::new(None),
            pause_share: c.pause_at_share,
            pause: Duration::from_secs(c.pause_secs),
            usage: Mutex::new(None),
            paused_until: Mutex::new(None),
        })
    }

    /// The last daily API usage the org reported: (used, allowed).
    pub fn usage(&self) -> Option<(u64, u64)> {
        *self.usage.lock()
    }

    /// The token in use, or a new one when there is none or `stale` is the one in use.
    async fn access_token(&self, stale: Option<&Token>) -> Result<Token, Answer> {
        let mut current = self.token.lock().await;
        if let Some(t) = current.as_ref() {
            if Some(t) != stale {
                return Ok(t.clone());
            }
        }
        let form = http::client_credentials(self.client_id.expose(), self.client_secret.expose());
        let what = "POST /services/oauth2/token";
        let resp = self
            .http
            .post(format!("{}/services/oauth2/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| Answer::none(format!("{what}: {}", chain(&e))))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Answer::none(format!("{what}: answer cut: {}", chain(&e))))?;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let token = json["access_token"].as_str().filter(|t| !t.is_empty());
        match token {
            Some(t) if (200..300).contains(&status) => {
                let t = Token::new(t);
                *current = Some(t.clone());
                tracing::debug!("Salesforce access token fetched");
                Ok(t)
            }
            _ => Err(Answer {
                status: Some(status),
                excerpt: http::excerpt(what, &bytes),
                ..Answer::default()
            }),
        }
    }

    /// One call with the bearer token: `Ok` for 2xx, else the answer that fails the attempt.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Answer> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut stale: Option<Token> = None;
        loop {
            if let Some(until) = *self.paused_until.lock() {
                let now = Instant::now();
                if now < until {
                    let (used, max) = self.usage().unwrap_or_default();
                    return Err(Answer {
                        status: None,
                        excerpt: format!(
                            "paused: the org has used {used} of its {max} daily API requests \
                             (pause_at_share {})",
                            self.pause_share
                        ),
                        retry_after: Some(until - now),
                        dead: false,
                    });
                }
            }
            let token = self.access_token(stale.as_ref()).await?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .header("accept", "application/json");
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(b).unwrap_or_default());
            }
            let resp = http::send(req, &what).await?;
            let status = resp.status().as_u16();
            self.track(&resp);
            let retry_after = http::retry_after(&resp);
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return Err(Answer::none(format!("{what}: answer cut: {}", chain(&e)))),
            };
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if (200..300).contains(&status) {
                return Ok(Reply { status, body: json });
            }
            if status == 401
                && stale.is_none()
                && error_codes(&json).contains(&"INVALID_SESSION_ID")
            {
                tracing::debug!("Salesforce session expired: fetching a new token");
                stale = Some(token);
                continue;
            }
            return Err(Answer {
                status: Some(status),
                excerpt: http::excerpt(&what, &bytes),
                retry_after,
                dead: false,
            });
        }
    }

    /// Reads `Sforce-Limit-Info`; pauses the org at the configured share.
    fn track(&self, resp: &reqwest::Response) {
        let Some((used, max)) = resp
            .headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(api_usage)
        else {
            return;
        };
        *self.usage.lock() = Some((used, max));
        if max > 0 && used as f64 >= self.pause_share * max as f64 {
            let mut paused = self.paused_until.lock();
            if paused.is_none_or(|u| u <= Instant::now()) {
                *paused = Some(Instant::now() + self.pause);
                tracing::warn!(
                    used,
                    max,
                    pause_secs = self.pause.as_secs(),
                    "Salesforce API usage at its pause share: the connector pauses"
                );
            }
        }
    }
}

/// `api-usage=N/M` of a `Sforce-Limit-Info` header (other entries, such as
/// `per-app-api-usage=…`, are skipped).
pub fn api_usage(header: &str) -> Option<(u64, u64)> {
    header.split(',').find_map(|part| {
        let (used, max) = part.trim().strip_prefix("api-usage=")?.split_once('/')?;
        Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
    })
}

/// The `errorCode`s of a Salesforce error body (`[{"errorCode": …, "message": …}]`).
pub fn error_codes(body: &Value) -> Vec<&str> {
    body.as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["errorCode"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_usage_is_read_from_the_limit_header() {
        assert_eq!(api_usage("api-usage=18/5000"), Some((18, 5000)));
        assert_eq!(
            api_usage("per-app-api-usage=17/250(appName=sample), api-usage=4500/5000"),
            Some((4500, 5000))
        );
        assert_eq!(api_usage("nothing"), None);
    }
}
