//! The crate's one error enum.

use std::path::Path;

/// Errors of the knowledge-base layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    #[error("{file}: line {line}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    #[error("{0}")]
    BadInput(String),
    #[error("index error: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("embedding failed: {0}")]
    Embed(#[from] closer_models::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}
