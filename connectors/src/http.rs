//! What the connectors' HTTP clients share: a client without redirects or system proxy, error
//! chains as text, and error answers cut to an excerpt for the delivery's last answer.

use std::future::Future;
use std::time::Duration;

use closer_webhooks::connector::Answer;

/// Bytes of an error answer kept as the delivery's last answer.
pub const EXCERPT_BYTES: usize = 1024;

/// A client with `timeout` per request, no redirects and no system proxy.
pub fn client(timeout: Duration, what: &str) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("closer-connectors/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("{what} client: {e}"))
}

/// "`what`: body", cut to [`EXCERPT_BYTES`] on a character boundary.
pub fn excerpt(what: &str, body: &[u8]) -> String {
    let mut text = format!("{what}: {}", String::from_utf8_lossy(body));
    if text.len() > EXCERPT_BYTES {
        let mut cut = EXCERPT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// An error and its sources, `: `-joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// `Retry-After` of an answer, if any.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| closer_webhooks::schedule::retry_after(v, closer_store::now_ms()))
}

/// One event's writes given `secs` seconds: [`Answer::ok`] with what they wrote, their failure's
/// answer, or no answer when they took longer.
pub async fn within(secs: u64, writes: impl Future<Output = Result<String, Answer>>) -> Answer {
    match tokio::time::timeout(Duration::from_secs(secs), writes).await {
        Ok(Ok(wrote)) => Answer::ok(wrote),
        Ok(Err(answer)) => answer,
        Err(_) => Answer::none(format!("the writes took longer than {secs} s")),
    }
}

/// Sends a request: the response, or no answer (timed out, or the connection's error chain).
pub async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, Answer> {
    match req.send().await {
        Ok(r) => Ok(r),
        Err(e) if e.is_timeout() => Err(Answer::none(format!("{what}: no answer in time"))),
        Err(e) => Err(Answer::none(format!("{what}: {}", chain(&e)))),
    }
}

/// The OAuth 2.0 client-credentials parameters, URL-encoded (a form body or a query).
pub fn client_credentials(client_id: &str, client_secret: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("client_secret", client_secret)
        .finish()
}
