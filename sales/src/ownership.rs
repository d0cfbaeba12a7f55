//! Conversations owned by their visitor: the server names each new conversation and hands its
//! visitor a resume token; only that token continues it. A client's own id is a reference,
//! never a key to someone else's conversation.

use closer_store::Store;
use rand::RngCore;
use sha2::Digest;

use crate::error::{Error, Result};

/// What opening a `Converse` stream gave the visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The conversation's id (the server's).
    pub id: String,
    /// The token that continues it; only its hash is stored.
    pub resume_token: String,
    /// An existing conversation was continued.
    pub resumed: bool,
    /// The id the client asked for, when the conversation got another.
    pub external_ref: Option<String>,
}

/// Hex SHA-256 of a resume token (what the store keeps).
pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Opens the conversation a visitor's `Start` asks for. With `resume_token`: the conversation
/// it was issued for in `tenant` (an unknown or revoked token is refused, naming the field).
/// Without: a new conversation, named `wanted` when no conversation of the tenant has that id
/// yet (claimed atomically), else a server-issued id with `wanted` kept as its external
/// reference.
pub fn open(
    store: &dyn Store,
    tenant: &str,
    wanted: &str,
    resume_token: Option<&str>,
) -> Result<Opened> {
    if let Some(token) = resume_token {
        return match store.conversation_by_token(tenant, &token_hash(token))? {
            Some(id) => Ok(Opened {
                id,
                resume_token: token.to_string(),
                resumed: true,
                external_ref: None,
            }),
            None => Err(Error::Denied {
                field: "start.resume_token".into(),
                message: format!("not a live resume token of tenant {tenant:?}"),
            }),
        };
    }
    let token = format!("closer_rt_{}", random_hex(32));
    let hash = token_hash(&token);
    if !wanted.is_empty() && store.claim_conversation(tenant, wanted, &hash, None)? {
        return Ok(Opened {
            id: wanted.to_string(),
            resume_token: token,
            resumed: false,
            external_ref: None,
        });
    }
    let external = (!wanted.is_empty()).then(|| wanted.to_string());
    for _ in 0..4 {
        let id = format!("cv-{}", random_hex(12));
        if store.claim_conversation(tenant, &id, &hash, external.as_deref())? {
            return Ok(Opened {
                id,
                resume_token: token,
                resumed: false,
                external_ref: external,
            });
        }
    }
    Err(Error::Internal(
        "could not issue a free conversation id".into(),
    ))
}
