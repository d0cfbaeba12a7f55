//! [`KnowledgeBase`]: one tenant's knowledge, opened from its folder. Searching is in
//! `search`, changing it in `ingest`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use closer_models::Embedder;
use tantivy::{Index, IndexReader, ReloadPolicy};

use crate::disk::{read_json, tenant_dir};
use crate::embedder::{EmbeddingStatus, Shared, SYNC_EMBED_LIMIT};
use crate::error::{Error, Result};
use crate::index::{key_map, open_or_upgrade, read_facts, schema, Fields};
use crate::load;
use crate::records::{Account, Fact, Rep, TenantProfile};
use crate::snapshot::{index_map, Snapshot};
use crate::vectors::{text_hash, Vector, VectorLog};

/// How the parts of a hybrid score add up; see [`KnowledgeBase::search`].
#[derive(Debug, Clone, Copy)]
pub struct FusionWeights {
    pub bm25: f32,
    pub dense: f32,
    pub intent_bonus: f32,
}

impl Default for FusionWeights {
    fn default() -> Self {
        Self {
            bm25: 0.4,
            dense: 0.6,
            intent_bonus: 0.15,
        }
    }
}

/// One tenant's knowledge, open for search and for ingestion.
pub struct KnowledgeBase {
    pub profile: TenantProfile,
    pub(crate) dir: PathBuf,
    pub(crate) index: Index,
    pub(crate) reader: IndexReader,
    pub(crate) fields: Fields,
    pub(crate) shared: Arc<Shared>,
    pub weights: FusionWeights,
    /// See [`SYNC_EMBED_LIMIT`].
    pub sync_embed_limit: usize,
}

impl Drop for KnowledgeBase {
    fn drop(&mut self) {
        // The background embedder stops after its current chunk.
        self.shared.stop();
    }
}

impl KnowledgeBase {
    /// Opens a tenant's folder written by [`load::load_dir`]. Facts whose vectors are not in the
    /// vector log are embedded: before this returns when they are few, else in the background.
    pub fn open(data_dir: &Path, tenant: &str, embedder: Arc<dyn Embedder>) -> Result<Self> {
        let dir = tenant_dir(data_dir, tenant);
        if !dir.join("tenant.yaml").is_file() {
            return Err(Error::UnknownTenant(tenant.to_string()));
        }
        let profile = load::read_profile(&dir.join("tenant.yaml"))?;
        let index = open_or_upgrade(&dir.join("index"))?;
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let accounts: Vec<Account> = read_json(&dir.join("accounts.json"))?;
        let reps: Vec<Rep> = read_json(&dir.join("reps.json"))?;
        let (log, cached) = VectorLog::open(&dir)?;
        let searcher = reader.searcher();
        let facts = read_facts(&searcher, fields)?;
        let model = embedder.name().to_string();
        let dim = embedder.dim();
        let vectors: Vec<Option<Vector>> = facts
            .iter()
            .map(|f| match cached.get(&f.id) {
                Some((h, v)) if *h == text_hash(f, &model) && v.len() == dim => Some(v.clone()),
                _ => None,
            })
            .collect();
        let missing = vectors.iter().filter(|v| v.is_none()).count();
        let snapshot = Snapshot {
            by_id: Arc::new(index_map(&facts)),
            by_key: Arc::new(key_map(&facts)),
            facts: Arc::new(facts),
            vectors: Arc::new(vectors),
            accounts: Arc::new(
                accounts
                    .into_iter()
                    .map(|a| (a.domain.to_ascii_lowercase(), a))
                    .collect(),
            ),
            reps: Arc::new(reps.into_iter().map(|r| (r.id.clone(), r)).collect()),
            searcher: Some(searcher),
        };
        let kb = Self {
            profile,
            dir,
            index,
            reader,
            fields,
            shared: Arc::new(Shared::new(snapshot, log, embedder)),
            weights: FusionWeights::default(),
            sync_embed_limit: SYNC_EMBED_LIMIT,
        };
        if missing > 0 && missing <= kb.sync_embed_limit {
            kb.shared.embed_pending()?;
        } else if missing > 0 {
            tracing::info!(tenant, facts = missing, "embedding facts in the background");
            kb.shared.kick();
        }
        kb.shared.compact_vectors()?;
        Ok(kb)
    }

    /// The current state; hold it for a whole turn.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Where the background embedder stands.
    pub fn embedding_status(&self) -> EmbeddingStatus {
        self.shared.status()
    }

    /// Waits until the background embedder is idle or `timeout` passes; true when every fact
    /// has its vector.
    pub fn wait_for_vectors(&self, timeout: std::time::Duration) -> bool {
        self.shared.wait_for_vectors(timeout)
    }

    /// Every fact, expired ones included, sorted by id.
    pub fn facts(&self) -> Vec<Fact> {
        self.snapshot().facts.to_vec()
    }
}
