//! The server's errors and their one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong; the message starts with the field's name.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("the service is starting: models are loading")]
    NotReady,
    #[error("model: {0}")]
    Model(#[from] closer_models::Error),
    #[error("knowledge base: {0}")]
    Kb(#[from] closer_kb::Error),
    #[error("{0}")]
    Playbook(#[from] crate::playbook::PlaybookError),
    #[error("{0}")]
    Store(#[from] closer_store::Error),
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller's API key may not do this (wrong role or another tenant's).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("internal: {0}")]
    Internal(String),
    /// The turn stopped early: its client left or its deadline passed.
    #[error("{}", match .0 { crate::sched::Stop::Gone => "the client went away", crate::sched::Stop::Deadline => "the client's deadline passed before the reply was complete" })]
    Stopped(crate::sched::Stop),
    /// The server is shutting down.
    #[error("the server is shutting down; retry on another replica")]
    Draining,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A stable label, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid { .. } | Error::Model(closer_models::Error::IntentSet(_)) => {
                "invalid_argument"
            }
            Error::UnknownTenant(_) => "unknown_tenant",
            Error::Overloaded(_) => "overloaded",
            Error::NotReady => "not_ready",
            Error::Model(_) => "model",
            Error::Kb(closer_kb::Error::UnknownTenant(_)) => "unknown_tenant",
            Error::Kb(closer_kb::Error::Invalid { .. } | closer_kb::Error::BadInput(_)) => {
                "invalid_argument"
            }
            Error::Kb(_) => "knowledge_base",
            Error::Playbook(_) => "invalid_argument",
            Error::Store(closer_store::Error::NotFound(_)) | Error::NotFound(_) => "not_found",
            Error::Store(closer_store::Error::Conflict(_)) => "failed_precondition",
            Error::Store(_) => "storage",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Internal(_) => "internal",
            Error::Stopped(crate::sched::Stop::Gone) => "cancelled",
            Error::Stopped(crate::sched::Stop::Deadline) => "deadline_exceeded",
            Error::Draining => "draining",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Invalid { .. }
            | Error::Model(closer_models::Error::IntentSet(_))
            | Error::Kb(closer_kb::Error::Invalid { .. } | closer_kb::Error::BadInput(_)) => {
                Code::InvalidArgument
            }
            Error::UnknownTenant(_) | Error::Kb(closer_kb::Error::UnknownTenant(_)) => {
                Code::NotFound
            }
            Error::Playbook(_) => Code::InvalidArgument,
            Error::Store(closer_store::Error::NotFound(_)) | Error::NotFound(_) => Code::NotFound,
            Error::Store(closer_store::Error::Conflict(_)) => Code::FailedPrecondition,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::NotReady | Error::Draining => Code::Unavailable,
            Error::Stopped(crate::sched::Stop::Gone) => Code::Cancelled,
            Error::Stopped(crate::sched::Stop::Deadline) => Code::DeadlineExceeded,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Model(_) | Error::Kb(_) | Error::Store(_) | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        if e.code() == Code::Internal {
            tracing::error!(kind = e.kind(), error = %e, "request failed");
        }
        Status::new(e.code(), e.to_string())
    }
}
