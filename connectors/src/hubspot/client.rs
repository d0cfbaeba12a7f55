//! HubSpot's HTTP API as the connector uses it: the bearer token on every request, the
//! account's request [`Budget`], and 429s by their `policyName`: a rolling ten-second limit
//! (`TEN_SECONDLY_ROLLING`, `SECONDLY`) is waited out (`Retry-After`, else a second) and the
//! request sent again, a few times; the `DAILY` limit pauses every request of the account until
//! the next UTC midnight (the attempt fails, and the retry schedule takes over).

use std::time::{Duration, Instant};

use closer_webhooks::connector::Answer;
use parking_lot::Mutex;
use serde_json::Value;

use crate::budget::Budget;
use crate::config::{HubSpotConfig, Token};
use crate::http::{self, chain};

/// Rolling-limit 429s waited out within one request before the attempt fails.
const ROLLING_RETRIES: u32 = 5;
/// The longest wait for a rolling limit within an attempt.
const MAX_ROLLING_WAIT: Duration = Duration::from_secs(10);

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Token,
    budget: Budget,
    /// The daily limit was reached: nothing is sent before this.
    paused_until: Mutex<Option<Instant>>,
}

/// A 2xx (or 409, which property creation accepts) answer's status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    pub fn new(c: &HubSpotConfig) -> Result<Self, String> {
        let token = c.token.clone().ok_or("no token read")?;
        let http = http::client(Duration::from_secs(c.request_timeout_secs), "HubSpot")?;
        Ok(Client {
            http,
            base: c.base_url.trim_end_matches('/').to_string(),
            token,
            budget: Budget::new(c.requests_per_10s, Duration::from_secs(10)),
            paused_until: Mutex::new(None),
        })
    }

    /// One call: `Ok` for 2xx and 409, else the answer that fails the attempt.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Answer> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {path}");
        let mut rolling = 0;
        loop {
            if let Some(until) = *self.paused_until.lock() {
                let now = Instant::now();
                if now < until {
                    return Err(Answer {
                        status: Some(429),
                        excerpt: "paused: HubSpot's DAILY limit was reached".into(),
                        retry_after: Some(until - now),
                        dead: false,
                    });
                }
            }
            self.budget.take().await;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.token.expose());
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(b).unwrap_or_default());
            }
            let resp = http::send(req, &what).await?;
            let status = resp.status().as_u16();
            let retry_after = http::retry_after(&resp);
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return Err(Answer::none(format!("{what}: answer cut: {}", chain(&e)))),
            };
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if (200..300).contains(&status) || status == 409 {
                return Ok(Reply { status, body: json });
            }
            let excerpt = http::excerpt(&what, &bytes);
            if status == 429 {
                let policy = json["policyName"].as_str().unwrap_or("");
                if policy == "DAILY" {
                    let wait = retry_after.unwrap_or_else(until_utc_midnight);
                    *self.paused_until.lock() = Some(Instant::now() + wait);
                    tracing::warn!(
                        wait_secs = wait.as_secs(),
                        "HubSpot daily limit reached: the connector pauses"
                    );
                    return Err(Answer {
                        status: Some(429),
                        excerpt,
                        retry_after: Some(wait),
                        dead: false,
                    });
                }
                if rolling < ROLLING_RETRIES {
                    rolling += 1;
                    let wait = retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .min(MAX_ROLLING_WAIT);
                    tracing::debug!(
                        policy,
                        wait_ms = wait.as_millis() as u64,
                        "HubSpot rate limit: waiting"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(Answer {
                status: Some(status),
                excerpt,
                retry_after,
                dead: false,
            });
        }
    }
}

/// Until the next midnight UTC (HubSpot resets the daily limit at the account's midnight).
fn until_utc_midnight() -> Duration {
    let now = closer_store::now_ms().max(0) as u64;
    let day = 86_400_000;
    Duration::from_millis(day - now % day + 60_000)
}
