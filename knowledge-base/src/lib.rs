//! A tenant's knowledge: facts in a tantivy index (BM25) with dense vectors from the local encoder,
//! plus the accounts table (company domain → owner rep) and the reps.
//!
//! On disk, one folder per tenant under the data directory:
//! `tenants/<tenant>/{index/, accounts.json, reps.json, intents.yaml, tenant.yaml}`.
//! One index per tenant is the isolation boundary: a search can only ever see its own tenant.
//!
//! Modules, each importing only those before it: `error`, `time`, `invisible`, `records`
//! (facts, accounts, reps, profile), `disk` (the tenant folder, atomic writes), `vectors` (the
//! vector log), `index` (tantivy schema and writes), `formats` and `load` (files teams bring),
//! `snapshot`, `embedder` (background embedding), `knowledge_base` (open), then `search` and
//! `ingest` (both `impl KnowledgeBase`).

mod disk;
mod embedder;
mod error;
pub mod formats;
mod index;
mod ingest;
pub mod invisible;
mod knowledge_base;
pub mod load;
mod records;
mod search;
mod snapshot;
pub mod time;
mod vectors;

#[cfg(test)]
mod tests;

pub use disk::{list_tenants, tenant_dir, write_atomic};
pub use embedder::{EmbeddingStatus, SYNC_EMBED_LIMIT};
pub use error::{Error, Result};
pub use ingest::{Batch, BatchSummary};
pub use invisible::visible;
pub use knowledge_base::{FusionWeights, KnowledgeBase};
pub use records::{Account, Fact, IdentityMode, Rep, Secret, TenantProfile};
pub use search::{Hit, BM25_CANDIDATES, DENSE_SCAN_MAX};
pub use snapshot::Snapshot;
