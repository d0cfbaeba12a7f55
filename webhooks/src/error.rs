//! The webhook layer's one error enum. The gRPC edge maps it to status codes once
//! (`closer-server`'s `error.rs`).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input field is missing or wrong; the message starts with the field's name.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] closer_store::Error),
    #[error("internal: {0}")]
    Internal(String),
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
