//! The web pages the service serves next to gRPC (same port; HTTP/1.1 for browsers):
//! `GET /leaderboard?tenant=T&period=today|week|month&timezone=Zone&team=X` — the rep leaderboard
//! for an office TV — and `GET /leaderboard/events?…` — its live updates as server-sent events
//! (one JSON `LeaderboardUpdate` per event); `GET /metrics` — the reply path's figures
//! (permits in use, refusals, dropped and timed-out turns) for Prometheus; `GET /widget.js` — the
//! chat widget's bundle — and `GET /` — a demo page with the widget on it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::app::AppState;
use crate::reports::{self, BoardRequest};

const PAGE: &str = include_str!("leaderboard.html");
const DEMO: &str = include_str!("demo.html");

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(demo))
        .route("/widget.js", get(widget))
        .route("/leaderboard", get(page))
        .route("/leaderboard/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The reply path's figures in the OpenMetrics text format (an admin key when keys are on).
/// Every tenant's and the server's figures for the operator (or when keys are off); a tenant
/// admin's key reads its own tenant's series only.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(c) = crate::auth::caller().filter(|c| c.role < crate::auth::Role::Operator) {
        return (
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            state.metrics.tenant_text(&c.tenant),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::prometheus(&state.metrics, &state.snapshot()),
    )
        .into_response()
}

/// The demo page: the chat widget on a page of the demo team's.
async fn demo() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DEMO,
    )
        .into_response()
}

/// The widget's bundle, read from `--widget-js` (built by `make widget`).
async fn widget(State(state): State<Arc<AppState>>) -> Response {
    let path = state.config.widget_js.clone();
    match tokio::fs::read(&path).await {
        Ok(js) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            js,
        )
            .into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!(
                "the chat widget is not built ({}: {e}); run `make widget` or set --widget-js\n",
                path.display()
            ),
        )
            .into_response(),
    }
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

/// The leaderboard stream's query: `tenant`, `period`, optional `timezone` and `team` (the
/// rep `key` is read by the auth layer).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct BoardQuery {
    tenant: String,
    period: String,
    timezone: String,
    team: Option<String>,
}

fn bad(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn events(
    State(state): State<Arc<AppState>>,
    q: Result<Query<BoardQuery>, QueryRejection>,
) -> Response {
    // The rejection is taken here so that a bad query gets this page's plain-text error.
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())),
    };
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let req = match BoardRequest::check(&engine, &q.tenant, &q.period, &q.timezone, q.team) {
        Ok(r) => r,
        Err(e) => {
            let status = match e.kind() {
                "unknown_tenant" => StatusCode::NOT_FOUND,
                "permission_denied" => StatusCode::FORBIDDEN,
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
    fn board_queries_are_decoded_and_missing_fields_are_empty() {
        let uri: axum::http::Uri =
            "/leaderboard/events?tenant=applinks&timezone=Europe%2FLondon&team=north+america&x"
                .parse()
                .unwrap();
        let Query(q) = Query::<BoardQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(q.tenant, "applinks");
        assert_eq!(q.timezone, "Europe/London");
        assert_eq!(q.team.as_deref(), Some("north america"));
        assert_eq!(q.period, "");
    }
}
