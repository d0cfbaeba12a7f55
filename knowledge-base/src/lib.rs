//! A tenant's knowledge: facts in a tantivy index (BM25) with dense vectors from the local encoder,
//! plus the accounts table (company domain → owner rep) and the reps.
//!
//! On disk, one folder per tenant under the data directory:
//! `tenants/<tenant>/{index/, accounts.json, reps.json, intents.yaml, tenant.yaml}`.
//! One index per tenant is the isolation boundary: a search can only ever see its own tenant.

pub mod formats;
pub mod invisible;
pub use invisible::visible;
pub mod load;
pub mod time;
mod vectors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use closer_models::Embedder;
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::{doc, Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument, Term};
use vectors::{embed_text, text_hash, Vector, VectorLog};

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

/// A fact the assistant may state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    pub id: String,
    pub kind: String,
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Intents this fact answers; retrieval for such an intent prefers it.
    #[serde(default)]
    pub intents: Vec<String>,
    /// First day (or RFC 3339 instant) the fact may be used; none = always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// Last day (inclusive, or an RFC 3339 instant) the fact may be used; none = no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

impl Fact {
    /// All text of the fact that may back a generated claim.
    pub fn evidence_text(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.question,
            self.answer,
            self.tags.join(", ")
        )
    }

    /// Whether the fact may be used at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: i64) -> bool {
        let from = self
            .valid_from
            .as_deref()
            .and_then(|s| time::parse(s, false));
        let until = self
            .valid_until
            .as_deref()
            .and_then(|s| time::parse(s, true));
        from.is_none_or(|f| now >= f) && until.is_none_or(|u| now < u)
    }
}

/// A company the team sells to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub domain: String,
    pub name: String,
    pub owner_rep_id: String,
    #[serde(default)]
    pub segment: String,
    #[serde(default)]
    pub employees: Option<u32>,
    #[serde(default)]
    pub country: String,
    /// A strategic target account.
    #[serde(default)]
    pub target: bool,
    #[serde(default)]
    pub industry: String,
    /// The account has an open opportunity in the CRM.
    #[serde(default)]
    pub open_opportunity: bool,
}

/// A human sales rep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rep {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub region: String,
    /// Languages spoken, separated by `;` (e.g. `en;de`).
    #[serde(default)]
    pub languages: String,
    /// IANA time zone, e.g. `Europe/London`.
    #[serde(default)]
    pub timezone: String,
    /// Working hours in that zone, e.g. `09:00-17:00`.
    #[serde(default)]
    pub working_hours: String,
    #[serde(default)]
    pub meeting_link: String,
}

/// The team's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantProfile {
    pub id: String,
    /// The company name the assistant speaks for.
    pub company: String,
    /// Product and brand names the assistant may say besides facts.
    #[serde(default)]
    pub names: Vec<String>,
}

/// A fact with its scores.
#[derive(Debug, Clone)]
pub struct Hit {
    pub fact: Fact,
    pub score: f32,
    pub bm25: f32,
    pub dense: f32,
}

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

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    kind: Field,
    question: Field,
    answer: Field,
    tags: Field,
    intents: Field,
    valid_from: Field,
    valid_until: Field,
    /// [`id_key`] of the id, a u64 column: resolving a hit to its fact through the id's
    /// string column cost more than the BM25 search itself at 100k facts.
    key: Field,
}

/// A 64-bit key of a fact id (FNV-1a) for the index's `key` column.
pub(crate) fn id_key(id: &str) -> u64 {
    vectors::fnv(vectors::FNV_START, id.as_bytes())
}

/// Fact index by [`id_key`]; a key two ids share maps to `usize::MAX` (resolved by id).
fn key_map(facts: &[Fact]) -> HashMap<u64, usize> {
    let mut m = HashMap::with_capacity(facts.len());
    for (i, f) in facts.iter().enumerate() {
        m.entry(id_key(&f.id))
            .and_modify(|x| *x = usize::MAX)
            .or_insert(i);
    }
    m
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(tantivy::schema::IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let f = Fields {
        id: b.add_text_field("id", STRING | STORED | FAST),
        kind: b.add_text_field("kind", STRING | STORED),
        question: b.add_text_field("question", text.clone()),
        answer: b.add_text_field("answer", text.clone()),
        tags: b.add_text_field("tags", text),
        intents: b.add_text_field("intents", STRING | STORED),
        valid_from: b.add_text_field("valid_from", STORED),
        valid_until: b.add_text_field("valid_until", STORED),
        key: b.add_u64_field("key", FAST),
    };
    (b.build(), f)
}

/// What a tenant knows at one moment. Searches and turns hold one snapshot throughout, so a
/// concurrent ingest never shows them half a batch. Cloning one is cheap (shared parts).
#[derive(Clone, Default)]
pub struct Snapshot {
    facts: Arc<Vec<Fact>>,
    /// One unit vector per fact (question + answer), same order as `facts`; `None` while the
    /// fact waits for the background embedder.
    vectors: Arc<Vec<Option<Vector>>>,
    by_id: Arc<HashMap<String, usize>>,
    by_key: Arc<HashMap<u64, usize>>,
    accounts: Arc<HashMap<String, Account>>,
    reps: Arc<HashMap<String, Rep>>,
    /// The index generation holding exactly these facts.
    searcher: Option<Searcher>,
}

impl Snapshot {
    /// Every fact, expired ones included, sorted by id.
    pub fn facts(&self) -> &[Fact] {
        &self.facts
    }

    pub fn fact(&self, id: &str) -> Option<&Fact> {
        self.by_id.get(id).map(|&i| &self.facts[i])
    }

    /// The account of a company domain (case-insensitive; a leading `www.` is ignored).
    pub fn account(&self, domain: &str) -> Option<&Account> {
        let d = domain.trim().to_ascii_lowercase();
        let d = d.strip_prefix("www.").unwrap_or(&d);
        self.accounts.get(d)
    }

    pub fn rep(&self, id: &str) -> Option<&Rep> {
        self.reps.get(id)
    }

    /// Accounts sorted by domain.
    pub fn accounts(&self) -> Vec<&Account> {
        let mut v: Vec<&Account> = self.accounts.values().collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        v
    }

    /// Reps sorted by id.
    pub fn reps(&self) -> Vec<&Rep> {
        let mut v: Vec<&Rep> = self.reps.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Facts still waiting for their vector (searchable by BM25 meanwhile).
    pub fn pending_vectors(&self) -> usize {
        self.vectors.iter().filter(|v| v.is_none()).count()
    }
}

/// What an ingested batch changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchSummary {
    pub facts_upserted: usize,
    pub facts_deleted: usize,
    pub accounts_upserted: usize,
    pub reps_upserted: usize,
    /// Facts whose vectors were computed before the batch returned (new or changed text).
    pub facts_embedded: usize,
    /// Facts left to the background embedder (BM25 finds them meanwhile).
    pub facts_pending: usize,
}

/// One all-or-nothing change to a tenant's knowledge.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub facts: Vec<Fact>,
    pub delete_fact_ids: Vec<String>,
    pub accounts: Vec<Account>,
    pub reps: Vec<Rep>,
}

/// Where the background embedder stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingStatus {
    pub facts: usize,
    pub pending: usize,
    pub running: bool,
    /// The last failure of the background embedder; it stops until the next batch.
    pub error: Option<String>,
}

/// Batches with at most this many new or changed facts embed them before returning; larger
/// ones return once BM25 has them and leave the vectors to a background thread.
pub const SYNC_EMBED_LIMIT: usize = 256;
/// Up to this many facts, every valid fact is scored densely (paraphrases with no shared word
/// are found); above it, only the BM25 candidates are reranked.
pub const DENSE_SCAN_MAX: usize = 10_000;
/// BM25 candidates per search.
pub const BM25_CANDIDATES: usize = 100;
/// Facts embedded per background step (one snapshot swap and one log append each).
const EMBED_CHUNK: usize = 64;
/// BM25 weight of a match in the question field relative to the answer and tags.
const QUESTION_BOOST: f32 = 2.0;

#[derive(Default)]
struct WorkerState {
    running: bool,
    /// New work arrived while running.
    dirty: bool,
    stop: bool,
    error: Option<String>,
}

/// The parts the background embedder shares with the knowledge base.
struct Shared {
    state: RwLock<Arc<Snapshot>>,
    /// One writer at a time; it owns the vector log.
    writing: Mutex<VectorLog>,
    embedder: Arc<dyn Embedder>,
    worker: Mutex<WorkerState>,
    worker_idle: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.state
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn swap(&self, next: Snapshot) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// Starts the background embedder unless it runs already (then it looks again when done).
    fn kick(self: &Arc<Self>) {
        let mut w = lock(&self.worker);
        w.error = None;
        if w.running {
            w.dirty = true;
            return;
        }
        w.running = true;
        w.dirty = false;
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("closer-kb-embed".into())
            .spawn(move || me.run_worker());
        if let Err(e) = spawned {
            w.running = false;
            w.error = Some(format!("could not start the embedder thread: {e}"));
        }
    }

    fn run_worker(self: Arc<Self>) {
        loop {
            let done = self.embed_pending();
            let mut w = lock(&self.worker);
            match done {
                Err(e) => {
                    tracing::error!(error = %e, "background embedding stopped");
                    w.error = Some(e.to_string());
                }
                Ok(()) if w.dirty && !w.stop => {
                    w.dirty = false;
                    continue;
                }
                Ok(()) => {}
            }
            w.running = false;
            self.worker_idle.notify_all();
            return;
        }
    }

    /// Embeds facts without a vector, a chunk at a time, publishing each chunk.
    fn embed_pending(&self) -> Result<()> {
        let model = self.embedder.name().to_string();
        let dim = self.embedder.dim();
        loop {
            if lock(&self.worker).stop {
                return Ok(());
            }
            let snap = self.snapshot();
            let todo: Vec<(&Fact, u64, String)> = snap
                .facts
                .iter()
                .zip(snap.vectors.iter())
                .filter(|(_, v)| v.is_none())
                .take(EMBED_CHUNK)
                .map(|(f, _)| (f, text_hash(f, &model), embed_text(f)))
                .collect();
            if todo.is_empty() {
                return Ok(());
            }
            let texts: Vec<&str> = todo.iter().map(|t| t.2.as_str()).collect();
            let computed = self.embedder.embed(&texts)?;
            if computed.len() != todo.len() || computed.iter().any(|v| v.len() != dim) {
                return Err(Error::BadInput(format!(
                    "the encoder returned {} vectors of the wrong size for {} texts",
                    computed.len(),
                    todo.len()
                )));
            }
            let mut log = lock(&self.writing);
            let cur = self.snapshot();
            let mut vectors = (*cur.vectors).clone();
            let mut fresh: Vec<(&str, u64, Vector)> = vec![];
            for ((f, h, _), v) in todo.iter().zip(computed) {
                let Some(&i) = cur.by_id.get(&f.id) else {
                    continue; // deleted meanwhile
                };
                if vectors[i].is_none() && text_hash(&cur.facts[i], &model) == *h {
                    let v: Vector = v.into();
                    vectors[i] = Some(v.clone());
                    fresh.push((&f.id, *h, v));
                }
            }
            log.append(fresh.iter().map(|(id, h, v)| (*id, *h, &v[..])))?;
            self.swap(Snapshot {
                vectors: Arc::new(vectors),
                ..(*cur).clone()
            });
        }
    }
}

/// One tenant's knowledge, open for search and for ingestion.
pub struct KnowledgeBase {
    pub profile: TenantProfile,
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    shared: Arc<Shared>,
    pub weights: FusionWeights,
    /// See [`SYNC_EMBED_LIMIT`].
    pub sync_embed_limit: usize,
}

impl Drop for KnowledgeBase {
    fn drop(&mut self) {
        // The background embedder stops after its current chunk.
        lock(&self.shared.worker).stop = true;
    }
}

/// Paths of a tenant's folder.
pub fn tenant_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("tenants").join(tenant)
}

/// Tenant ids found in the data directory.
pub fn list_tenants(data_dir: &Path) -> Result<Vec<String>> {
    let dir = data_dir.join("tenants");
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
        let e = e.map_err(|e| io_err(&dir, e))?;
        if e.path().join("tenant.yaml").is_file() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
}

/// Writes a file atomically: temporary file, fsync, rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let go = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    go().map_err(|e| io_err(path, e))
}

fn index_map(facts: &[Fact]) -> HashMap<String, usize> {
    facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id.clone(), i))
        .collect()
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
        let kb = Self {
            profile,
            dir,
            index,
            reader,
            fields,
            shared: Arc::new(Shared {
                state: RwLock::new(Arc::new(Snapshot {
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
                })),
                writing: Mutex::new(log),
                embedder,
                worker: Mutex::new(WorkerState::default()),
                worker_idle: Condvar::new(),
            }),
            weights: FusionWeights::default(),
            sync_embed_limit: SYNC_EMBED_LIMIT,
        };
        if missing > 0 && missing <= kb.sync_embed_limit {
            kb.shared.embed_pending()?;
        } else if missing > 0 {
            tracing::info!(tenant, facts = missing, "embedding facts in the background");
            kb.shared.kick();
        }
        kb.compact_vectors()?;
        Ok(kb)
    }

    /// The current state; hold it for a whole turn.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Where the background embedder stands.
    pub fn embedding_status(&self) -> EmbeddingStatus {
        let snap = self.snapshot();
        let w = lock(&self.shared.worker);
        EmbeddingStatus {
            facts: snap.facts.len(),
            pending: snap.pending_vectors(),
            running: w.running,
            error: w.error.clone(),
        }
    }

    /// Waits until the background embedder is idle or `timeout` passes; true when every fact
    /// has its vector.
    pub fn wait_for_vectors(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut w = lock(&self.shared.worker);
        while w.running {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            w = self
                .shared
                .worker_idle
                .wait_timeout(w, left.min(std::time::Duration::from_millis(200)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(w);
        self.snapshot().pending_vectors() == 0
    }

    /// Rewrites the vector log when superseded entries dominate it.
    fn compact_vectors(&self) -> Result<()> {
        let mut log = lock(&self.shared.writing);
        let snap = self.snapshot();
        let model = self.shared.embedder.name().to_string();
        let live: Vec<(&str, u64, &[f32])> = snap
            .facts
            .iter()
            .zip(snap.vectors.iter())
            .filter_map(|(f, v)| Some((f.id.as_str(), text_hash(f, &model), &v.as_ref()?[..])))
            .collect();
        log.compact_if_large(live.len(), live.iter().copied())
    }

    /// Every fact, expired ones included, sorted by id.
    pub fn facts(&self) -> Vec<Fact> {
        self.snapshot().facts.to_vec()
    }

    /// Hybrid search within this tenant, over facts valid now.
    pub fn search(&self, query: &str, limit: usize, intent: Option<&str>) -> Result<Vec<Hit>> {
        self.search_at(query, limit, intent, time::now())
    }

    /// Hybrid search over the facts valid at `now` (Unix seconds); embeds the query.
    pub fn search_at(
        &self,
        query: &str,
        limit: usize,
        intent: Option<&str>,
        now: i64,
    ) -> Result<Vec<Hit>> {
        let qv = self
            .shared
            .embedder
            .embed(&[query])?
            .pop()
            .unwrap_or_default();
        Ok(self.search_vector_at(&self.snapshot(), query, &qv, limit, intent, now))
    }

    /// Hybrid search in `snap` with the query's encoder vector already computed.
    ///
    /// Candidates: the top [`BM25_CANDIDATES`] BM25 hits, plus every valid fact while the tenant
    /// has at most [`DENSE_SCAN_MAX`] facts. Fusion:
    /// `score = w_bm25 · bm25 / max_bm25 + w_dense · max(cosine, 0) + bonus`, where the BM25 part
    /// is normalised by the best BM25 score of the query (so it lies in [0, 1]), the cosine is
    /// between the query's and the fact's encoder vectors (0 while a fact waits for its vector),
    /// and `bonus` is added when the fact is tagged with `intent`. The question field is boosted
    /// ×2 for BM25; visitor text is reduced to words, so no input is a syntax error.
    pub fn search_vector_at(
        &self,
        snap: &Snapshot,
        query: &str,
        qv: &[f32],
        limit: usize,
        intent: Option<&str>,
        now: i64,
    ) -> Vec<Hit> {
        let limit = limit.clamp(1, 50);
        let bm25 = self.bm25(snap, query);
        let max_bm25 = bm25.iter().map(|x| x.1).fold(0f32, f32::max);
        let candidates: Vec<(usize, f32)> = if snap.facts.len() <= DENSE_SCAN_MAX {
            let mut b = vec![0f32; snap.facts.len()];
            for &(i, s) in &bm25 {
                b[i] = s;
            }
            b.into_iter().enumerate().collect()
        } else {
            bm25
        };
        let w = self.weights;
        let mut scored: Vec<(f32, f32, f32, usize)> = candidates
            .into_iter()
            .filter(|&(i, _)| snap.facts[i].is_valid_at(now))
            .map(|(i, b)| {
                let f = &snap.facts[i];
                let dense = snap.vectors[i]
                    .as_ref()
                    .map_or(0.0, |v| closer_models::dot(qv, v));
                let bonus = match intent {
                    Some(x) if f.intents.iter().any(|y| y == x) => w.intent_bonus,
                    _ => 0.0,
                };
                let nb = if max_bm25 > 0.0 { b / max_bm25 } else { 0.0 };
                (w.bm25 * nb + w.dense * dense.max(0.0) + bonus, b, dense, i)
            })
            .collect();
        let order = |a: &(f32, f32, f32, usize), b: &(f32, f32, f32, usize)| {
            b.0.total_cmp(&a.0)
                .then_with(|| snap.facts[a.3].id.cmp(&snap.facts[b.3].id))
        };
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit - 1, order);
            scored.truncate(limit);
        }
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|(score, bm25, dense, i)| Hit {
                fact: snap.facts[i].clone(),
                score,
                bm25,
                dense,
            })
            .collect()
    }

    /// One flat disjunction of term queries over the question (boosted), answer and tags fields.
    /// Flat on purpose: tantivy prunes a union of plain (or boosted) term queries with
    /// block-max WAND, while the query parser's nesting (one boolean per word) scores every
    /// posting of every word — at 100k facts common words made that the slowest part of search.
    fn bm25_query(&self, words: &str) -> BooleanQuery {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (field, boost) in [
            (self.fields.question, QUESTION_BOOST),
            (self.fields.answer, 1.0),
            (self.fields.tags, 1.0),
        ] {
            let Ok(mut analyzer) = self.index.tokenizer_for_field(field) else {
                continue;
            };
            let mut stream = analyzer.token_stream(words);
            while let Some(token) = stream.next() {
                if !seen.insert((field, token.text.clone())) {
                    continue;
                }
                let term = Term::from_field_text(field, &token.text);
                let tq: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                let q: Box<dyn Query> = if boost == 1.0 {
                    tq
                } else {
                    Box::new(BoostQuery::new(tq, boost))
                };
                clauses.push((Occur::Should, q));
            }
        }
        BooleanQuery::new(clauses)
    }

    /// The top BM25 hits of `query` in `snap`, as (fact index, score).
    fn bm25(&self, snap: &Snapshot, query: &str) -> Vec<(usize, f32)> {
        let Some(searcher) = &snap.searcher else {
            return vec![];
        };
        // Only words reach the parser: query syntax typed by a visitor has no meaning here.
        let words: String = query
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect::<String>()
            .to_lowercase();
        if words.trim().is_empty() {
            return vec![];
        }
        let q = self.bm25_query(&words);
        let top = match searcher.search(&q, &TopDocs::with_limit(BM25_CANDIDATES)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "BM25 search failed; dense scores only");
                return vec![];
            }
        };
        let mut keys: HashMap<u32, Option<Column<u64>>> = HashMap::new();
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let seg = searcher.segment_reader(addr.segment_ord);
            let key = keys
                .entry(addr.segment_ord)
                .or_insert_with(|| seg.fast_fields().u64("key").ok())
                .as_ref()
                .and_then(|c| c.first(addr.doc_id));
            match key.and_then(|k| snap.by_key.get(&k)) {
                Some(&i) if i != usize::MAX => out.push((i, score)),
                // Two ids share the key: read the id itself.
                Some(_) => {
                    let mut id = String::new();
                    let column = seg.fast_fields().str("id").ok().flatten();
                    let ord = column
                        .as_ref()
                        .and_then(|c| c.term_ords(addr.doc_id).next());
                    if let (Some(c), Some(ord)) = (column.as_ref(), ord) {
                        if matches!(c.ord_to_str(ord, &mut id), Ok(true)) {
                            if let Some(&i) = snap.by_id.get(&id) {
                                out.push((i, score));
                            }
                        }
                    }
                }
                None => {}
            }
        }
        out
    }

    /// Applies a batch all-or-nothing: every part is checked first; then accounts and reps are
    /// written (atomic renames) and the facts committed in one index commit. Readers see the new
    /// state when this returns, never a part of it. New or changed facts are embedded before
    /// returning when there are at most [`Self::sync_embed_limit`] of them, else in the
    /// background (BM25 finds them as soon as this returns).
    pub fn apply(&self, batch: Batch) -> Result<BatchSummary> {
        let mut log = lock(&self.shared.writing);
        let snap = self.snapshot();
        // Check rep references against the reps after this batch.
        let mut reps = (*snap.reps).clone();
        for r in &batch.reps {
            reps.insert(r.id.clone(), r.clone());
        }
        for (i, a) in batch.accounts.iter().enumerate() {
            if !reps.contains_key(&a.owner_rep_id) {
                return Err(Error::Invalid {
                    file: "accounts".into(),
                    line: i + 2,
                    field: "owner_rep_id".into(),
                    message: format!("no rep with id {:?}", a.owner_rep_id),
                });
            }
        }
        let mut accounts = (*snap.accounts).clone();
        for a in &batch.accounts {
            accounts.insert(a.domain.to_ascii_lowercase(), a.clone());
        }
        // The new fact list; a fact whose embedded text is unchanged keeps its vector.
        let mut merged: HashMap<&str, (&Fact, Option<Vector>)> = snap
            .facts
            .iter()
            .zip(snap.vectors.iter())
            .map(|(f, v)| (f.id.as_str(), (f, v.clone())))
            .collect();
        let mut deleted = 0;
        for id in &batch.delete_fact_ids {
            deleted += usize::from(merged.remove(id.as_str()).is_some());
        }
        for f in &batch.facts {
            let kept = merged
                .get(f.id.as_str())
                .filter(|(old, _)| old.question == f.question && old.answer == f.answer)
                .and_then(|(_, v)| v.clone());
            merged.insert(f.id.as_str(), (f, kept));
        }
        let mut merged: Vec<(&Fact, Option<Vector>)> = merged.into_values().collect();
        merged.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let (facts, mut vectors): (Vec<Fact>, Vec<Option<Vector>>) =
            merged.into_iter().map(|(f, v)| (f.clone(), v)).unzip();
        // Embed the batch's new texts now when they are few (before anything is written).
        let by_id = index_map(&facts);
        let mut todo: Vec<usize> = batch
            .facts
            .iter()
            .filter_map(|f| by_id.get(&f.id).copied())
            .filter(|&i| vectors[i].is_none())
            .collect();
        todo.sort_unstable();
        todo.dedup();
        let model = self.shared.embedder.name().to_string();
        let mut fresh: Vec<usize> = vec![];
        if !todo.is_empty() && todo.len() <= self.sync_embed_limit {
            let texts: Vec<String> = todo.iter().map(|&i| embed_text(&facts[i])).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (&i, v) in todo.iter().zip(self.shared.embedder.embed(&refs)?) {
                vectors[i] = Some(v.into());
                fresh.push(i);
            }
        }

        if !batch.reps.is_empty() {
            let mut v: Vec<&Rep> = reps.values().collect();
            v.sort_by(|a, b| a.id.cmp(&b.id));
            write_atomic(&self.dir.join("reps.json"), &to_json(&v)?)?;
        }
        if !batch.accounts.is_empty() {
            let mut v: Vec<&Account> = accounts.values().collect();
            v.sort_by(|a, b| a.domain.cmp(&b.domain));
            write_atomic(&self.dir.join("accounts.json"), &to_json(&v)?)?;
        }
        let mut searcher = snap.searcher.clone();
        if !batch.facts.is_empty() || deleted > 0 {
            write_facts(&self.index, &batch.facts, &batch.delete_fact_ids, false)?;
            self.reader.reload()?;
            searcher = Some(self.reader.searcher());
            log.append(fresh.iter().filter_map(|&i| {
                let v = vectors[i].as_ref()?;
                Some((facts[i].id.as_str(), text_hash(&facts[i], &model), &v[..]))
            }))?;
        }
        let pending = vectors.iter().filter(|v| v.is_none()).count();
        self.shared.swap(Snapshot {
            by_id: Arc::new(by_id),
            by_key: Arc::new(key_map(&facts)),
            facts: Arc::new(facts),
            vectors: Arc::new(vectors),
            accounts: Arc::new(accounts),
            reps: Arc::new(reps),
            searcher,
        });
        drop(log);
        if pending > 0 {
            self.shared.kick();
        }
        self.compact_vectors()?;
        Ok(BatchSummary {
            facts_upserted: batch.facts.len(),
            facts_deleted: deleted,
            accounts_upserted: batch.accounts.len(),
            reps_upserted: batch.reps.len(),
            facts_embedded: fresh.len(),
            facts_pending: pending,
        })
    }

    /// Writes facts (upsert by id) and commits; visible to the next search.
    pub fn upsert_facts(&self, facts: &[Fact]) -> Result<BatchSummary> {
        self.apply(Batch {
            facts: facts.to_vec(),
            ..Batch::default()
        })
    }
}

/// Every committed fact in a searcher's generation, sorted by id.
fn read_facts(searcher: &Searcher, fields: Fields) -> Result<Vec<Fact>> {
    let mut facts = vec![];
    for seg in searcher.segment_readers() {
        let store = seg
            .get_store_reader(64)
            .map_err(|e| io_err(Path::new("store"), e))?;
        for doc_id in 0..seg.max_doc() {
            if seg.is_deleted(doc_id) {
                continue;
            }
            let d: TantivyDocument = store.get(doc_id)?;
            facts.push(to_fact(&d, fields));
        }
    }
    facts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(facts)
}

fn to_fact(d: &TantivyDocument, fields: Fields) -> Fact {
    let one = |f: Field| {
        d.get_first(f)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let opt = |f: Field| d.get_first(f).and_then(|v| v.as_str()).map(str::to_string);
    let all = |f: Field| {
        d.get_all(f)
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    Fact {
        id: one(fields.id),
        kind: one(fields.kind),
        question: one(fields.question),
        answer: one(fields.answer),
        tags: all(fields.tags),
        intents: all(fields.intents),
        valid_from: opt(fields.valid_from),
        valid_until: opt(fields.valid_until),
    }
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::BadInput(e.to_string()))
}

/// Writes facts into an index in one commit: upsert by id and delete `delete_ids`, or replace
/// everything when `replace_all`.
pub(crate) fn write_facts(
    index: &Index,
    facts: &[Fact],
    delete_ids: &[String],
    replace_all: bool,
) -> Result<()> {
    let (_, f) = schema();
    let mut writer: tantivy::IndexWriter = index.writer(32_000_000)?;
    if replace_all {
        writer.delete_all_documents()?;
    }
    for id in delete_ids {
        writer.delete_term(Term::from_field_text(f.id, id));
    }
    for fact in facts {
        writer.delete_term(Term::from_field_text(f.id, &fact.id));
        let mut d = doc!(
            f.id => fact.id.as_str(),
            f.kind => fact.kind.as_str(),
            f.question => fact.question.as_str(),
            f.answer => fact.answer.as_str(),
            f.key => id_key(&fact.id),
        );
        for t in &fact.tags {
            d.add_text(f.tags, t);
        }
        for i in &fact.intents {
            d.add_text(f.intents, i);
        }
        if let Some(v) = &fact.valid_from {
            d.add_text(f.valid_from, v);
        }
        if let Some(v) = &fact.valid_until {
            d.add_text(f.valid_until, v);
        }
        writer.add_document(d)?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    Ok(())
}

/// Opens or creates an index for a full replacement (an index of an older schema is replaced).
pub(crate) fn create_index(dir: &Path) -> Result<Index> {
    let (schema, _) = schema();
    if let Ok(i) = Index::open_in_dir(dir) {
        if i.schema() == schema {
            return Ok(i);
        }
        std::fs::remove_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    Ok(Index::create_in_dir(dir, schema)?)
}

/// Opens an index; one written before fact validity dates existed is copied into the current
/// schema first (a new folder swapped in by renames, so a crash leaves one of the two intact).
pub(crate) fn open_or_upgrade(dir: &Path) -> Result<Index> {
    let (schema, _) = schema();
    let upgrade = dir.with_extension("upgrade");
    let old_dir = dir.with_extension("old");
    if !dir.exists() && old_dir.exists() {
        // A crash between the two renames below: the old folder is still whole.
        std::fs::rename(&old_dir, dir).map_err(|e| io_err(dir, e))?;
    }
    let index = Index::open_in_dir(dir)?;
    if index.schema() == schema {
        return Ok(index);
    }
    let old = index.schema();
    let reader = index.reader()?;
    let searcher = reader.searcher();
    let mut facts = vec![];
    for seg in searcher.segment_readers() {
        let store = seg.get_store_reader(64).map_err(|e| io_err(dir, e))?;
        for doc_id in 0..seg.max_doc() {
            if seg.is_deleted(doc_id) {
                continue;
            }
            let d: TantivyDocument = store.get(doc_id)?;
            let one = |n: &str| {
                old.get_field(n)
                    .ok()
                    .and_then(|f| d.get_first(f))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let all = |n: &str| -> Vec<String> {
                old.get_field(n)
                    .map(|f| {
                        d.get_all(f)
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            facts.push(Fact {
                id: one("id"),
                kind: one("kind"),
                question: one("question"),
                answer: one("answer"),
                tags: all("tags"),
                intents: all("intents"),
                valid_from: None,
                valid_until: None,
            });
        }
    }
    drop((searcher, reader, index));
    if upgrade.exists() {
        std::fs::remove_dir_all(&upgrade).map_err(|e| io_err(&upgrade, e))?;
    }
    std::fs::create_dir_all(&upgrade).map_err(|e| io_err(&upgrade, e))?;
    let fresh = Index::create_in_dir(&upgrade, schema)?;
    write_facts(&fresh, &facts, &[], true)?;
    drop(fresh);
    std::fs::rename(dir, &old_dir).map_err(|e| io_err(dir, e))?;
    std::fs::rename(&upgrade, dir).map_err(|e| io_err(dir, e))?;
    std::fs::remove_dir_all(&old_dir).map_err(|e| io_err(&old_dir, e))?;
    tracing::info!(index = %dir.display(), facts = facts.len(), "index upgraded to the current schema");
    Ok(Index::open_in_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts the texts it embeds.
    struct Counting {
        inner: closer_models::fake::HashEmbedder,
        texts: AtomicUsize,
    }

    impl Embedder for Counting {
        fn dim(&self) -> usize {
            self.inner.dim()
        }
        fn embed(&self, texts: &[&str]) -> closer_models::Result<Vec<Vec<f32>>> {
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            self.inner.embed(texts)
        }
        fn name(&self) -> &str {
            "counting"
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting {
            inner: closer_models::fake::HashEmbedder::new(64),
            texts: AtomicUsize::new(0),
        })
    }

    fn demo(data: &Path) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/applinks");
        load::load_dir(&src, data, None).unwrap();
    }

    fn fact(i: usize) -> Fact {
        Fact {
            id: format!("bulk-{i:05}"),
            kind: "faq".into(),
            question: format!("What is widget number {i}?"),
            answer: format!("Widget {i} is a zebraphone accessory."),
            tags: vec![],
            intents: vec![],
            valid_from: None,
            valid_until: None,
        }
    }

    #[test]
    fn large_batches_are_searchable_at_once_and_embedded_in_the_background() {
        let data = tempfile::tempdir().unwrap();
        demo(data.path());
        let emb = counting();
        let mut kb = KnowledgeBase::open(data.path(), "applinks", emb.clone()).unwrap();
        kb.sync_embed_limit = 10;
        let before = kb.snapshot().facts().len();

        // A small batch is embedded before it returns.
        let s = kb.upsert_facts(&[fact(0)]).unwrap();
        assert_eq!((s.facts_embedded, s.facts_pending), (1, 0));

        // A large one is left to the background, but BM25 finds it at once.
        let bulk: Vec<Fact> = (1..=300).map(fact).collect();
        let s = kb.upsert_facts(&bulk).unwrap();
        assert_eq!(s.facts_embedded, 0);
        assert!(s.facts_pending > 0 && s.facts_pending <= 300);
        let hits = kb.search("widget number 217", 3, None).unwrap();
        assert_eq!(hits[0].fact.id, "bulk-00217");
        assert!(kb.wait_for_vectors(Duration::from_secs(60)));
        let status = kb.embedding_status();
        assert_eq!((status.facts, status.pending), (before + 301, 0));
        let hits = kb.search("widget number 217", 3, None).unwrap();
        assert_eq!(hits[0].fact.id, "bulk-00217");
        assert!(hits[0].dense > 0.3, "vector arrived: {}", hits[0].dense);

        // Reopening reuses every logged vector.
        drop(kb);
        let emb2 = counting();
        let kb = KnowledgeBase::open(data.path(), "applinks", emb2.clone()).unwrap();
        assert_eq!(kb.embedding_status().pending, 0);
        assert_eq!(emb2.texts.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_restart_mid_embedding_resumes_where_the_log_ends() {
        let data = tempfile::tempdir().unwrap();
        demo(data.path());
        let kb = KnowledgeBase::open(data.path(), "applinks", counting()).unwrap();
        kb.wait_for_vectors(Duration::from_secs(60));
        let total = kb.snapshot().facts().len() + 400;
        drop(kb);
        // Facts written to the index but not yet embedded, as after a crash mid-embedding.
        let dir = tenant_dir(data.path(), "applinks");
        let index = open_or_upgrade(&dir.join("index")).unwrap();
        let bulk: Vec<Fact> = (0..400).map(fact).collect();
        write_facts(&index, &bulk, &[], false).unwrap();
        drop(index);
        let emb = counting();
        let kb = KnowledgeBase::open(data.path(), "applinks", emb.clone()).unwrap();
        assert!(kb.wait_for_vectors(Duration::from_secs(60)));
        assert_eq!(kb.snapshot().facts().len(), total);
        assert_eq!(emb.texts.load(Ordering::SeqCst), 400, "only the new facts");
    }

    #[test]
    fn deletes_and_changes_reach_bm25_at_once() {
        let data = tempfile::tempdir().unwrap();
        demo(data.path());
        let kb = KnowledgeBase::open(data.path(), "applinks", counting()).unwrap();
        kb.upsert_facts(&[fact(7)]).unwrap();
        let hit = &kb.search("zebraphone", 1, None).unwrap()[0];
        assert!(hit.fact.id == "bulk-00007" && hit.bm25 > 0.0);
        let mut changed = fact(7);
        changed.answer = "Widget 7 is a quokkaphone accessory.".into();
        kb.upsert_facts(&[changed]).unwrap();
        let hit = &kb.search("quokkaphone", 1, None).unwrap()[0];
        assert!(hit.fact.id == "bulk-00007" && hit.bm25 > 0.0);
        assert!(kb
            .search("zebraphone", 5, None)
            .unwrap()
            .iter()
            .all(|h| h.bm25 == 0.0));
        kb.apply(Batch {
            delete_fact_ids: vec!["bulk-00007".into()],
            ..Batch::default()
        })
        .unwrap();
        assert!(kb
            .search("quokkaphone", 50, None)
            .unwrap()
            .iter()
            .all(|h| h.fact.id != "bulk-00007"));
    }
}
