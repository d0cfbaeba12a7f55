//! The domain's errors. The gRPC edge maps them to status codes once (`closer-server`'s
//! `error.rs`); nothing here knows about transports.

use crate::gate::Stop;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input field is missing or wrong; the message starts with the field's name.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The caller may not do this (a resume token that opens nothing); starts with the field.
    #[error("{field}: {message}")]
    Denied { field: String, message: String },
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
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
    #[error("internal: {0}")]
    Internal(String),
    /// The turn stopped early: its client left or its deadline passed.
    #[error("{}", match .0 { Stop::Gone => "the client went away", Stop::Deadline => "the client's deadline passed before the reply was complete" })]
    Stopped(Stop),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}
