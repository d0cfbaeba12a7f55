//! What every service file shares: request checks, page tokens, status helpers, the lead's
//! proto form, and the prelude of imports.

use closer_proto::v1 as pb;
use closer_store::Lead;
use tonic::{Response, Status};

use crate::error::{Error, Result};

/// What every service file uses.
pub(crate) mod prelude {
    pub use std::pin::Pin;
    pub use std::sync::{Arc, OnceLock};
    pub use std::time::{Duration, Instant};

    pub use closer_proto::v1 as pb;
    pub use closer_sales::engine::Engine;
    pub use closer_store::{EventFilter, LeadFilter, ManualScore, Presence};
    pub use tokio::sync::mpsc;
    pub use tokio_stream::wrappers::ReceiverStream;
    pub use tokio_stream::Stream;
    pub use tonic::{Request, Response, Status, Streaming};

    pub use super::super::convert::*;
    pub use super::{
        check_id, check_start, check_tenant_field, check_text, code_name, oversize, page, pb_lead,
        R, RETRY_AFTER_MS,
    };
    pub use crate::app::{blocking, AppState};
    pub use crate::error::{Api, Error, Result};
}

/// How long a refused visitor's client should wait before retrying (`ConverseError.retry_after_ms`).
pub const RETRY_AFTER_MS: u32 = 1000;

/// A gRPC code's canonical name, e.g. `RESOURCE_EXHAUSTED`.
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// tonic refuses a request message over the size limit with OUT_OF_RANGE; callers expect
/// RESOURCE_EXHAUSTED for that.
pub fn oversize(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "request message too large: {} (--max-request-bytes)",
            status.message().trim_start_matches("Error, ")
        ))
    } else {
        status
    }
}

/// A visitor's text: not blank, at most `max_chars` characters (after invisible characters are
/// stripped, which callers do first).
pub fn check_text(max_chars: usize, field: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let n = text.chars().count();
    if n > max_chars {
        return Err(Error::invalid(
            field,
            format!("{n} characters, more than the limit of {max_chars}"),
        ));
    }
    Ok(())
}

/// The checks on a conversation's `start` event that need no state: the tenant id's form and
/// the conversation id's length.
pub fn check_start(start: &pb::Start) -> Result<()> {
    if start.tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(&start.tenant).map_err(|m| Error::invalid("tenant", m))?;
    if start.conversation_id.chars().count() > 128 {
        return Err(Error::invalid(
            "start.conversation_id",
            "must be at most 128 characters",
        ));
    }
    if start.resume_token.as_ref().is_some_and(|t| t.len() > 256) {
        return Err(Error::invalid(
            "start.resume_token",
            "must be at most 256 characters",
        ));
    }
    Ok(())
}

pub fn check_tenant_field(tenant: &str) -> Result<()> {
    if tenant.is_empty() {
        return Err(Error::invalid("tenant", "must not be empty"));
    }
    closer_kb::load::validate_tenant_id(tenant).map_err(|m| Error::invalid("tenant", m))?;
    // With keys required, the caller's key must belong to this tenant.
    crate::auth::check_tenant(tenant)
}

/// Offset-based page tokens: the decimal offset of the next item.
pub fn page(token: &str, size: u32, total: usize) -> Result<(usize, usize, String)> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Error::invalid("page_token", "not a token from a previous response"))?
    };
    if size > 1000 {
        return Err(Error::invalid("page_size", "must be 0 to 1000"));
    }
    let size = if size == 0 { 100 } else { size as usize };
    let end = (start + size).min(total);
    let next = if end < total {
        end.to_string()
    } else {
        String::new()
    };
    Ok((start.min(total), end, next))
}

pub type R<T> = std::result::Result<Response<T>, Status>;

pub fn pb_lead(l: Lead) -> pb::Lead {
    pb::Lead {
        tenant: l.tenant,
        conversation_id: l.conversation_id,
        domain: l.domain,
        email: l.email,
        score: l.score,
        bot_score: l.bot_score,
        reasons: l
            .reasons
            .into_iter()
            .map(|r| pb::ScoreReason {
                rule: r.rule,
                turn: r.turn,
                detail: r.detail,
                points: r.points,
            })
            .collect(),
        manual: l.manual.map(|m| pb::ManualScore {
            score: m.score,
            rep_id: m.rep_id,
            note: m.note,
            at_ms: m.at_ms,
        }),
        rep_id: l.rep_id,
        team: l.team,
        slots: l.slots.into_iter().collect(),
        turns: l.turns,
        identity: l.identity.unwrap_or_default(),
        created_ms: l.created_ms,
        updated_ms: l.updated_ms,
    }
}

pub fn check_id(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() || v.chars().count() > 128 {
        return Err(Error::invalid(field, "must be 1 to 128 characters"));
    }
    Ok(())
}
