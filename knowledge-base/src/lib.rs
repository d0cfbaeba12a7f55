//! A tenant's knowledge: facts in a tantivy index (BM25) with dense vectors from the local encoder,
//! plus the accounts table (company domain → owner rep) and the reps.
//!
//! On disk, one folder per tenant under the data directory:
//! `tenants/<tenant>/{index/, accounts.json, reps.json, intents.yaml, tenant.yaml}`.
//! One index per tenant is the isolation boundary: a search can only ever see its own tenant.

pub mod formats;
pub mod load;
pub mod time;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use closer_models::Embedder;
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING};
use tantivy::{doc, Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        id: b.add_text_field("id", STRING | STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        question: b.add_text_field("question", text.clone()),
        answer: b.add_text_field("answer", text.clone()),
        tags: b.add_text_field("tags", text),
        intents: b.add_text_field("intents", STRING | STORED),
        valid_from: b.add_text_field("valid_from", STORED),
        valid_until: b.add_text_field("valid_until", STORED),
    };
    (b.build(), f)
}

/// What a tenant knows at one moment. Searches and turns hold one snapshot throughout, so a
/// concurrent ingest never shows them half a batch.
#[derive(Default)]
pub struct Snapshot {
    facts: Vec<Fact>,
    /// One unit vector per fact (question + answer), same order as `facts`.
    vectors: Vec<Vec<f32>>,
    by_id: HashMap<String, usize>,
    accounts: HashMap<String, Account>,
    reps: HashMap<String, Rep>,
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

    fn with_facts(&self, facts: Vec<Fact>, vectors: Vec<Vec<f32>>) -> Self {
        let by_id = facts
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        Self {
            facts,
            vectors,
            by_id,
            accounts: self.accounts.clone(),
            reps: self.reps.clone(),
        }
    }
}

/// What an ingested batch changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchSummary {
    pub facts_upserted: usize,
    pub facts_deleted: usize,
    pub accounts_upserted: usize,
    pub reps_upserted: usize,
    /// Facts whose vectors had to be computed (new or changed text).
    pub facts_embedded: usize,
}

/// One all-or-nothing change to a tenant's knowledge.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub facts: Vec<Fact>,
    pub delete_fact_ids: Vec<String>,
    pub accounts: Vec<Account>,
    pub reps: Vec<Rep>,
}

/// One tenant's knowledge, open for search and for ingestion.
pub struct KnowledgeBase {
    pub profile: TenantProfile,
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    state: RwLock<Arc<Snapshot>>,
    /// One writer at a time per tenant.
    writing: Mutex<()>,
    embedder: Arc<dyn Embedder>,
    pub weights: FusionWeights,
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

/// Cached fact vectors, keyed by fact id and a hash of the embedded text, so unchanged facts are
/// not embedded again after a restart or an ingest.
struct VectorCache {
    entries: HashMap<String, (u64, Vec<f32>)>,
}

const VECTORS_FILE: &str = "vectors.bin";

fn text_hash(f: &Fact, model: &str) -> u64 {
    // FNV-1a over the model name and the embedded text.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.bytes().chain([0]).chain(embed_text(f).bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn embed_text(f: &Fact) -> String {
    format!("{} {}", f.question, f.answer)
}

impl VectorCache {
    fn read(path: &Path) -> Self {
        let mut entries = HashMap::new();
        if let Ok(bytes) = std::fs::read(path) {
            let mut at = 0;
            let mut take = |n: usize| -> Option<&[u8]> {
                let s = bytes.get(at..at + n)?;
                at += n;
                Some(s)
            };
            // Entries: id length (u32), id, hash (u64), dim (u32), dim × f32. A torn tail is ignored.
            while let Some(len) = take(4) {
                let Some(parsed) = (|| {
                    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
                    let id = String::from_utf8(take(len)?.to_vec()).ok()?;
                    let hash = u64::from_le_bytes(take(8)?.try_into().ok()?);
                    let dim = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
                    let v = take(4 * dim)?
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    Some((id, hash, v))
                })() else {
                    break;
                };
                entries.insert(parsed.0, (parsed.1, parsed.2));
            }
        }
        Self { entries }
    }

    fn write(path: &Path, facts: &[Fact], vectors: &[Vec<f32>], hashes: &[u64]) -> Result<()> {
        let mut out = vec![];
        for ((f, v), h) in facts.iter().zip(vectors).zip(hashes) {
            out.extend_from_slice(&(f.id.len() as u32).to_le_bytes());
            out.extend_from_slice(f.id.as_bytes());
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        write_atomic(path, &out)
    }
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

impl KnowledgeBase {
    /// Opens a tenant's folder written by [`load::load_dir`]; facts whose vectors are not cached
    /// are embedded.
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
        let kb = Self {
            profile,
            index,
            reader,
            fields,
            state: RwLock::new(Arc::new(Snapshot {
                accounts: accounts
                    .into_iter()
                    .map(|a| (a.domain.to_ascii_lowercase(), a))
                    .collect(),
                reps: reps.into_iter().map(|r| (r.id.clone(), r)).collect(),
                ..Snapshot::default()
            })),
            writing: Mutex::new(()),
            dir,
            embedder,
            weights: FusionWeights::default(),
        };
        let facts = kb.read_index()?;
        let cache = VectorCache::read(&kb.dir.join(VECTORS_FILE));
        let model = kb.embedder.name().to_string();
        let (vectors, embedded) = kb.vectors_for(&facts, &|f| match cache.entries.get(&f.id) {
            Some((h, v)) if *h == text_hash(f, &model) => Some(v.clone()),
            _ => None,
        })?;
        if embedded > 0 {
            kb.save_vectors(&facts, &vectors)?;
        }
        let next = kb.snapshot().with_facts(facts, vectors);
        kb.swap(next);
        Ok(kb)
    }

    /// The current state; hold it for a whole turn.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn swap(&self, next: Snapshot) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// Every committed fact in the index, sorted by id.
    fn read_index(&self) -> Result<Vec<Fact>> {
        self.reader.reload()?;
        let searcher = self.reader.searcher();
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
                facts.push(self.to_fact(&d));
            }
        }
        facts.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(facts)
    }

    /// Vectors for `facts`: from `known` when it has one for the unchanged text, else embedded now.
    fn vectors_for(
        &self,
        facts: &[Fact],
        known: &dyn Fn(&Fact) -> Option<Vec<f32>>,
    ) -> Result<(Vec<Vec<f32>>, usize)> {
        let dim = self.embedder.dim();
        let mut out: Vec<Option<Vec<f32>>> = facts
            .iter()
            .map(|f| known(f).filter(|v| v.len() == dim))
            .collect();
        let missing: Vec<usize> = (0..facts.len()).filter(|&i| out[i].is_none()).collect();
        let texts: Vec<String> = missing.iter().map(|&i| embed_text(&facts[i])).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for (i, v) in missing.iter().zip(self.embedder.embed(&refs)?) {
            out[*i] = Some(v);
        }
        Ok((
            out.into_iter().map(Option::unwrap_or_default).collect(),
            missing.len(),
        ))
    }

    fn save_vectors(&self, facts: &[Fact], vectors: &[Vec<f32>]) -> Result<()> {
        let model = self.embedder.name().to_string();
        let hashes: Vec<u64> = facts.iter().map(|f| text_hash(f, &model)).collect();
        VectorCache::write(&self.dir.join(VECTORS_FILE), facts, vectors, &hashes)
    }

    fn to_fact(&self, d: &TantivyDocument) -> Fact {
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
            id: one(self.fields.id),
            kind: one(self.fields.kind),
            question: one(self.fields.question),
            answer: one(self.fields.answer),
            tags: all(self.fields.tags),
            intents: all(self.fields.intents),
            valid_from: opt(self.fields.valid_from),
            valid_until: opt(self.fields.valid_until),
        }
    }

    /// Every fact, expired ones included, sorted by id.
    pub fn facts(&self) -> Vec<Fact> {
        self.snapshot().facts.clone()
    }

    /// Hybrid search within this tenant, over facts valid now.
    pub fn search(&self, query: &str, limit: usize, intent: Option<&str>) -> Result<Vec<Hit>> {
        self.search_at(query, limit, intent, time::now())
    }

    /// Hybrid search over the facts valid at `now` (Unix seconds).
    ///
    /// Fusion: `score = w_bm25 · bm25 / max_bm25 + w_dense · max(cosine, 0) + bonus`, where the
    /// BM25 part is normalised by the best BM25 score of the query (so it lies in [0, 1]), the
    /// cosine is between the query's and the fact's encoder vectors, and `bonus` is added when
    /// the fact is tagged with `intent`. The question field is boosted ×2 for BM25; visitor text
    /// is parsed leniently, so no input is a syntax error.
    pub fn search_at(
        &self,
        query: &str,
        limit: usize,
        intent: Option<&str>,
        now: i64,
    ) -> Result<Vec<Hit>> {
        let limit = limit.clamp(1, 50);
        let snap = self.snapshot();
        let searcher = self.reader.searcher();
        let mut parser = QueryParser::for_index(
            &self.index,
            vec![self.fields.question, self.fields.answer, self.fields.tags],
        );
        parser.set_field_boost(self.fields.question, 2.0);
        // Only words reach the parser: query syntax typed by a visitor has no meaning here.
        let words: String = query
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect::<String>()
            .to_lowercase();
        let mut bm25: HashMap<String, f32> = HashMap::new();
        if !words.trim().is_empty() {
            let (q, _errors) = parser.parse_query_lenient(&words);
            for (score, addr) in searcher.search(&q, &TopDocs::with_limit(100))? {
                let d: TantivyDocument = searcher.doc(addr)?;
                if let Some(id) = d.get_first(self.fields.id).and_then(|v| v.as_str()) {
                    bm25.insert(id.to_string(), score);
                }
            }
        }
        let max_bm25 = bm25.values().cloned().fold(0f32, f32::max);
        let qv = self.embedder.embed(&[query])?.pop().unwrap_or_default();
        let w = self.weights;
        let mut hits: Vec<Hit> = snap
            .facts
            .iter()
            .zip(&snap.vectors)
            .filter(|(f, _)| f.is_valid_at(now))
            .map(|(f, v)| {
                let b = bm25.get(&f.id).copied().unwrap_or(0.0);
                let dense = closer_models::dot(&qv, v);
                let bonus = match intent {
                    Some(i) if f.intents.iter().any(|x| x == i) => w.intent_bonus,
                    _ => 0.0,
                };
                let nb = if max_bm25 > 0.0 { b / max_bm25 } else { 0.0 };
                Hit {
                    fact: f.clone(),
                    score: w.bm25 * nb + w.dense * dense.max(0.0) + bonus,
                    bm25: b,
                    dense,
                }
            })
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.fact.id.cmp(&b.fact.id))
        });
        hits.truncate(limit);
        Ok(hits)
    }

    /// Applies a batch all-or-nothing: every part is checked first; then accounts and reps are
    /// written (atomic renames) and the facts committed in one index commit. Readers see the new
    /// state when this returns, never a part of it.
    pub fn apply(&self, batch: Batch) -> Result<BatchSummary> {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let snap = self.snapshot();
        // Check rep references against the reps after this batch.
        let mut reps = snap.reps.clone();
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
        let mut accounts = snap.accounts.clone();
        for a in &batch.accounts {
            accounts.insert(a.domain.to_ascii_lowercase(), a.clone());
        }
        // New fact list and vectors (embedding before anything is written).
        let mut by_id: HashMap<String, Fact> = snap
            .facts
            .iter()
            .map(|f| (f.id.clone(), f.clone()))
            .collect();
        let mut deleted = 0;
        for id in &batch.delete_fact_ids {
            deleted += usize::from(by_id.remove(id).is_some());
        }
        for f in &batch.facts {
            by_id.insert(f.id.clone(), f.clone());
        }
        let mut facts: Vec<Fact> = by_id.into_values().collect();
        facts.sort_by(|a, b| a.id.cmp(&b.id));
        // A fact whose embedded text is unchanged keeps its vector.
        let (vectors, embedded) = self.vectors_for(&facts, &|f| {
            let i = *snap.by_id.get(&f.id)?;
            (embed_text(&snap.facts[i]) == embed_text(f)).then(|| snap.vectors[i].clone())
        })?;

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
        if !batch.facts.is_empty() || deleted > 0 {
            write_facts(&self.index, &batch.facts, &batch.delete_fact_ids, false)?;
            self.save_vectors(&facts, &vectors)?;
        }
        let by_id = facts
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        self.swap(Snapshot {
            facts,
            vectors,
            by_id,
            accounts,
            reps,
        });
        Ok(BatchSummary {
            facts_upserted: batch.facts.len(),
            facts_deleted: deleted,
            accounts_upserted: batch.accounts.len(),
            reps_upserted: batch.reps.len(),
            facts_embedded: embedded,
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
