//! Changing a tenant's knowledge: a [`Batch`] of facts to upsert or delete, accounts and reps,
//! applied all-or-nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::disk::{to_json, write_atomic};
use crate::error::{Error, Result};
use crate::index::{key_map, write_facts};
use crate::knowledge_base::KnowledgeBase;
use crate::records::{Account, Fact, Rep};
use crate::snapshot::{index_map, Snapshot};
use crate::vectors::{embed_text, text_hash, Vector};

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
    /// Vectors computed elsewhere (another replica) for some of `facts`, by fact id, made by
    /// this knowledge base's embedder ([`KnowledgeBase::embedder_model`]); a vector of the wrong
    /// length is ignored.
    pub vectors: HashMap<String, Vec<f32>>,
    /// Leave the facts without a vector to whoever computes them (another replica shares them
    /// later): nothing is embedded here, BM25 finds them meanwhile. See
    /// [`KnowledgeBase::embed_pending`].
    pub defer_embedding: bool,
}

impl KnowledgeBase {
    /// Applies a batch all-or-nothing: every part is checked first; then accounts and reps are
    /// written (atomic renames) and the facts committed in one index commit. Readers see the new
    /// state when this returns, never a part of it. New or changed facts are embedded before
    /// returning when there are at most [`Self::sync_embed_limit`] of them, else in the
    /// background (BM25 finds them as soon as this returns).
    pub fn apply(&self, batch: Batch) -> Result<BatchSummary> {
        let mut log = self.shared.writing.lock();
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
        let dim = self.shared.embedder.dim();
        let mut given: Vec<&str> = vec![];
        for f in &batch.facts {
            let kept = match batch.vectors.get(&f.id).filter(|v| v.len() == dim) {
                Some(v) => {
                    given.push(f.id.as_str());
                    Some(Vector::from(&v[..]))
                }
                None => merged
                    .get(f.id.as_str())
                    .filter(|(old, _)| old.question == f.question && old.answer == f.answer)
                    .and_then(|(_, v)| v.clone()),
            };
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
        // Vectors given with the batch are kept in the vector log as if computed here.
        let mut fresh: Vec<usize> = given
            .iter()
            .filter_map(|id| by_id.get(*id).copied())
            .collect();
        let given_count = fresh.len();
        if !batch.defer_embedding && !todo.is_empty() && todo.len() <= self.sync_embed_limit {
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
        if pending > 0 && !batch.defer_embedding {
            self.shared.kick();
        }
        self.shared.compact_vectors()?;
        Ok(BatchSummary {
            facts_upserted: batch.facts.len(),
            facts_deleted: deleted,
            accounts_upserted: batch.accounts.len(),
            reps_upserted: batch.reps.len(),
            facts_embedded: fresh.len() - given_count,
            facts_pending: pending,
        })
    }

    /// Starts the background embedder on the facts still without a vector (those a batch
    /// deferred, when no other replica shared their vectors in time).
    pub fn embed_pending(&self) {
        if self.snapshot().pending_vectors() > 0 {
            self.shared.kick();
        }
    }

    /// The name of the model this knowledge base's vectors come from.
    pub fn embedder_model(&self) -> &str {
        self.shared.embedder.name()
    }

    /// Writes facts (upsert by id) and commits; visible to the next search.
    pub fn upsert_facts(&self, facts: &[Fact]) -> Result<BatchSummary> {
        self.apply(Batch {
            facts: facts.to_vec(),
            ..Batch::default()
        })
    }
}
