//! Signed webhooks from Closer's event outbox, after Standard Webhooks 1.0: a tenant's
//! endpoints ([`manage`]), the signature ([`secret`]), the body ([`payload`]), where deliveries
//! may go ([`target`]), when failed ones are tried again ([`schedule`]), and the delivery
//! worker ([`worker`], which also drives [`connector`]s) with its figures ([`metrics`]), and every outbox consumer's progress for
//! operators ([`status`]). Durable state lives in the store
//! (`closer_store::WebhookStore`); no transport types of the gRPC edge appear here.

pub mod connector;
pub mod error;
pub mod manage;
pub mod metrics;
pub mod payload;
pub mod schedule;
pub mod secret;
pub mod status;
pub mod target;
pub mod worker;

pub use error::{Error, Result};
