//! Closer's selling domain, free of any transport: a tenant's models, knowledge and playbook
//! ([`engine`]), a conversation's selling state ([`conversation`]), the playbook's scoring and
//! routing ([`playbook`]), slots and meetings, the fact guard, and one visitor turn as a pipeline
//! of phases ([`turn`]). The gRPC server (`closer-server`) converts to and from `closer.v1` at
//! its edge.

// A function over 100 lines is a sign it does several things: split it (issue 27).
#![warn(clippy::too_many_lines)]

pub mod answerable;
pub mod attacks;
pub mod conversation;
pub mod coverage;
pub mod engine;
pub mod error;
pub mod gate;
pub mod guard;
pub mod identity;
pub mod meetings;
pub mod ownership;
pub mod playbook;
pub mod qualify;
pub mod shared;
pub mod slots;
pub mod transcript;
pub mod turn;
pub mod visitor;

pub use error::{Error, Result};
