//! A tenant's knowledge: facts in a tantivy index (BM25) with dense vectors from the local encoder,
//! plus the accounts table (company domain → owner rep) and the reps.
//!
//! On disk, one folder per tenant under the data directory:
//! `tenants/<tenant>/{index/, accounts.json, reps.json, intents.yaml, tenant.yaml}`.
//! One index per tenant is the isolation boundary: a search can only ever see its own tenant.

pub mod load;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[serde(default)]
    pub target: bool,
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
    };
    (b.build(), f)
}

/// One tenant's knowledge, open for search.
pub struct KnowledgeBase {
    pub profile: TenantProfile,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    facts: Vec<Fact>,
    /// One unit vector per fact (question + answer), same order as `facts`.
    vectors: Vec<Vec<f32>>,
    accounts: HashMap<String, Account>,
    reps: HashMap<String, Rep>,
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
}

impl KnowledgeBase {
    /// Opens a tenant's folder written by [`load::load_dir`] and embeds its facts.
    pub fn open(data_dir: &Path, tenant: &str, embedder: Arc<dyn Embedder>) -> Result<Self> {
        let dir = tenant_dir(data_dir, tenant);
        if !dir.join("tenant.yaml").is_file() {
            return Err(Error::UnknownTenant(tenant.to_string()));
        }
        let profile = load::read_profile(&dir.join("tenant.yaml"))?;
        let index = Index::open_in_dir(dir.join("index"))?;
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let accounts: Vec<Account> = read_json(&dir.join("accounts.json"))?;
        let reps: Vec<Rep> = read_json(&dir.join("reps.json"))?;
        let mut kb = Self {
            profile,
            index,
            reader,
            fields,
            facts: vec![],
            vectors: vec![],
            accounts: accounts
                .into_iter()
                .map(|a| (a.domain.to_ascii_lowercase(), a))
                .collect(),
            reps: reps.into_iter().map(|r| (r.id.clone(), r)).collect(),
            embedder,
            weights: FusionWeights::default(),
        };
        kb.refresh()?;
        Ok(kb)
    }

    /// Reloads facts from the index and re-embeds them.
    fn refresh(&mut self) -> Result<()> {
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
        let texts: Vec<String> = facts
            .iter()
            .map(|f| format!("{} {}", f.question, f.answer))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.vectors = self.embedder.embed(&refs)?;
        self.facts = facts;
        Ok(())
    }

    fn to_fact(&self, d: &TantivyDocument) -> Fact {
        let one = |f: Field| {
            d.get_first(f)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
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
        }
    }

    pub fn facts(&self) -> &[Fact] {
        &self.facts
    }

    pub fn fact(&self, id: &str) -> Option<&Fact> {
        self.facts.iter().find(|f| f.id == id)
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

    /// Hybrid search within this tenant.
    ///
    /// Fusion: `score = w_bm25 · bm25 / max_bm25 + w_dense · max(cosine, 0) + bonus`, where the
    /// BM25 part is normalised by the best BM25 score of the query (so it lies in [0, 1]), the
    /// cosine is between the query's and the fact's encoder vectors, and `bonus` is added when
    /// the fact is tagged with `intent`. The question field is boosted ×2 for BM25; visitor text
    /// is parsed leniently, so no input is a syntax error.
    pub fn search(&self, query: &str, limit: usize, intent: Option<&str>) -> Result<Vec<Hit>> {
        let limit = limit.clamp(1, 50);
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
        let mut hits: Vec<Hit> = self
            .facts
            .iter()
            .zip(&self.vectors)
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

    /// Writes facts (upsert by id) and commits; visible to the next search.
    pub fn upsert_facts(&mut self, facts: &[Fact]) -> Result<()> {
        write_facts(&self.index, facts, false)?;
        self.refresh()
    }
}

/// Writes facts into an index: upsert by id, or replace everything when `replace_all`.
pub(crate) fn write_facts(index: &Index, facts: &[Fact], replace_all: bool) -> Result<()> {
    let (_, f) = schema();
    let mut writer: tantivy::IndexWriter = index.writer(32_000_000)?;
    if replace_all {
        writer.delete_all_documents()?;
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
        writer.add_document(d)?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    Ok(())
}

pub(crate) fn create_index(dir: &Path) -> Result<Index> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let (schema, _) = schema();
    match Index::open_in_dir(dir) {
        Ok(i) => Ok(i),
        Err(_) => Ok(Index::create_in_dir(dir, schema)?),
    }
}
