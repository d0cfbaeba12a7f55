//! The web pages the service serves next to gRPC (same port; HTTP/1.1 for browsers):
//! `GET /leaderboard?tenant=T&period=today|week|month&timezone=Zone&team=X` — the rep leaderboard
//! for an office TV — and `GET /leaderboard/events?…` — its live updates as server-sent events
//! (one JSON `LeaderboardUpdate` per event); `GET /metrics` — the reply path's figures
//! (permits in use, refusals, dropped and timed-out turns) for Prometheus.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::grpc::AppState;
use crate::reports::{self, BoardRequest};

const PAGE: &str = include_str!("leaderboard.html");

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/leaderboard", get(page))
        .route("/leaderboard/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The reply path's figures in the Prometheus text format (an admin key when keys are on).
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::prometheus(&state.metrics, &state.snapshot()),
    )
        .into_response()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// `a=1&b=x%2Fy` → the value of `name`, percent-decoded ('+' is a space).
pub(crate) fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let pair = (b[i] == b'%' && i + 2 < b.len())
            .then(|| Some(hex(b[i + 1])? * 16 + hex(b[i + 2])?))
            .flatten();
        match (b[i], pair) {
            (_, Some(x)) => {
                out.push(x);
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bad(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn events(State(state): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let req = match BoardRequest::check(
        &engine,
        &param(&q, "tenant").unwrap_or_default(),
        &param(&q, "period").unwrap_or_default(),
        &param(&q, "timezone").unwrap_or_default(),
        param(&q, "team"),
    ) {
        Ok(r) => r,
        Err(e) => {
            let status = match e.kind() {
                "unknown_tenant" => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            return bad(status, e.to_string());
        }
    };
    let rx = reports::watch(engine, req);
    let stream = ReceiverStream::new(rx).map(|r| -> Result<Event, Infallible> {
        Ok(match r {
            Ok(u) => Event::default()
                .event("board")
                .data(reports::update_json(&u).to_string()),
            Err(e) => Event::default().event("failure").data(e.to_string()),
        })
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = "tenant=applinks&timezone=Europe%2FLondon&team=north+america&x";
        assert_eq!(param(q, "tenant").as_deref(), Some("applinks"));
        assert_eq!(param(q, "timezone").as_deref(), Some("Europe/London"));
        assert_eq!(param(q, "team").as_deref(), Some("north america"));
        assert_eq!(param(q, "x").as_deref(), Some(""));
        assert_eq!(param(q, "period"), None);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
