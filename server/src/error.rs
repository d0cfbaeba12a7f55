//! The transport layer's errors, and the one mapping of every error (domain errors included) to
//! a gRPC status.

use closer_sales::gate::Stop;
use tonic::{Code, Status};

/// What a call can fail with at the gRPC edge: a request field, the server's own state, or the
/// domain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong; the message starts with the field's name.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Overloaded(String),
    #[error("the service is starting: models are loading")]
    NotReady,
    /// The caller's API key may not do this (wrong role or another tenant's).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("internal: {0}")]
    Internal(String),
    /// The server is shutting down.
    #[error("the server is shutting down; retry on another replica")]
    Draining,
    #[error(transparent)]
    Domain(#[from] closer_sales::Error),
    #[error(transparent)]
    Webhooks(#[from] closer_webhooks::Error),
}

impl From<closer_store::Error> for Error {
    fn from(e: closer_store::Error) -> Self {
        Error::Domain(e.into())
    }
}

impl From<closer_kb::Error> for Error {
    fn from(e: closer_kb::Error) -> Self {
        Error::Domain(e.into())
    }
}

impl From<closer_models::Error> for Error {
    fn from(e: closer_models::Error) -> Self {
        Error::Domain(e.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::Domain(closer_sales::Error::NotFound(what.into()))
    }

    /// Whether this is the turn stopping because of `why`.
    pub fn is_stop(&self, why: Stop) -> bool {
        matches!(self, Error::Domain(closer_sales::Error::Stopped(w)) if *w == why)
    }

    /// A stable label, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        use closer_sales::Error as D;
        use closer_webhooks::Error as W;
        match self {
            Error::Invalid { .. } => "invalid_argument",
            Error::Overloaded(_) => "overloaded",
            Error::NotReady => "not_ready",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Internal(_) => "internal",
            Error::Draining => "draining",
            Error::Webhooks(w) => match w {
                W::Invalid { .. } => "invalid_argument",
                W::NotFound(_) | W::Store(closer_store::Error::NotFound(_)) => "not_found",
                W::Store(closer_store::Error::Conflict(_)) => "failed_precondition",
                W::Store(_) => "storage",
                W::Internal(_) => "internal",
            },
            Error::Domain(d) => match d {
                D::Invalid { .. } | D::Model(closer_models::Error::IntentSet(_)) => {
                    "invalid_argument"
                }
                D::Denied { .. } => "permission_denied",
                D::UnknownTenant(_) | D::Kb(closer_kb::Error::UnknownTenant(_)) => "unknown_tenant",
                D::Model(_) => "model",
                D::Kb(closer_kb::Error::Invalid { .. } | closer_kb::Error::BadInput(_)) => {
                    "invalid_argument"
                }
                D::Kb(_) => "knowledge_base",
                D::Playbook(_) => "invalid_argument",
                D::Store(closer_store::Error::NotFound(_)) | D::NotFound(_) => "not_found",
                D::Store(closer_store::Error::Conflict(_)) => "failed_precondition",
                D::Store(e) if e.is_transient() => "unavailable",
                D::Store(_) => "storage",
                D::Internal(_) => "internal",
                D::Stopped(Stop::Gone) => "cancelled",
                D::Stopped(Stop::Deadline) => "deadline_exceeded",
            },
        }
    }

    pub fn code(&self) -> Code {
        use closer_sales::Error as D;
        use closer_webhooks::Error as W;
        match self {
            Error::Invalid { .. } => Code::InvalidArgument,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::NotReady | Error::Draining => Code::Unavailable,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Internal(_) => Code::Internal,
            Error::Webhooks(w) => match w {
                W::Invalid { .. } => Code::InvalidArgument,
                W::NotFound(_) | W::Store(closer_store::Error::NotFound(_)) => Code::NotFound,
                W::Store(closer_store::Error::Conflict(_)) => Code::FailedPrecondition,
                W::Store(_) | W::Internal(_) => Code::Internal,
            },
            Error::Domain(d) => match d {
                D::Invalid { .. }
                | D::Model(closer_models::Error::IntentSet(_))
                | D::Kb(closer_kb::Error::Invalid { .. } | closer_kb::Error::BadInput(_))
                | D::Playbook(_) => Code::InvalidArgument,
                D::Denied { .. } => Code::PermissionDenied,
                D::UnknownTenant(_) | D::Kb(closer_kb::Error::UnknownTenant(_)) => Code::NotFound,
                D::Store(closer_store::Error::NotFound(_)) | D::NotFound(_) => Code::NotFound,
                D::Store(closer_store::Error::Conflict(_)) => Code::FailedPrecondition,
                D::Store(e) if e.is_transient() => Code::Unavailable,
                D::Stopped(Stop::Gone) => Code::Cancelled,
                D::Stopped(Stop::Deadline) => Code::DeadlineExceeded,
                D::Model(_) | D::Kb(_) | D::Store(_) | D::Internal(_) => Code::Internal,
            },
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

/// Domain results at the edge: `.api()?` turns a domain error into a status like any other.
pub trait Api<T> {
    fn api(self) -> Result<T>;
}

impl<T> Api<T> for closer_sales::Result<T> {
    fn api(self) -> Result<T> {
        self.map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_one_code_with_the_field_first() {
        let s = Status::from(Error::invalid("message.text", "must not be empty"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "message.text: must not be empty");
        let d = |e: closer_sales::Error| Status::from(Error::from(e)).code();
        assert_eq!(
            d(closer_sales::Error::UnknownTenant("x".into())),
            Code::NotFound
        );
        assert_eq!(
            d(closer_sales::Error::invalid("fields[email]", "bad")),
            Code::InvalidArgument
        );
        assert_eq!(
            d(closer_sales::Error::Stopped(Stop::Deadline)),
            Code::DeadlineExceeded
        );
        assert_eq!(d(closer_sales::Error::Stopped(Stop::Gone)), Code::Cancelled);
        assert_eq!(
            d(closer_store::Error::Conflict("taken".into()).into()),
            Code::FailedPrecondition
        );
        let db = |transient| closer_store::Error::Database {
            message: "connection reset".into(),
            transient,
        };
        assert_eq!(d(db(true).into()), Code::Unavailable);
        assert_eq!(d(db(false).into()), Code::Internal);
        assert_eq!(Status::from(Error::Draining).code(), Code::Unavailable);
    }
}
