//! [`Snapshot`]: what a tenant knows at one moment, swapped whole by each batch.

use std::collections::HashMap;
use std::sync::Arc;

use tantivy::Searcher;

use crate::records::{Account, Fact, Rep};
use crate::vectors::Vector;

/// What a tenant knows at one moment. Searches and turns hold one snapshot throughout, so a
/// concurrent ingest never shows them half a batch. Cloning one is cheap (shared parts).
#[derive(Clone, Default)]
pub struct Snapshot {
    pub(crate) facts: Arc<Vec<Fact>>,
    /// One unit vector per fact (question + answer), same order as `facts`; `None` while the
    /// fact waits for the background embedder.
    pub(crate) vectors: Arc<Vec<Option<Vector>>>,
    pub(crate) by_id: Arc<HashMap<String, usize>>,
    pub(crate) by_key: Arc<HashMap<u64, usize>>,
    pub(crate) accounts: Arc<HashMap<String, Account>>,
    pub(crate) reps: Arc<HashMap<String, Rep>>,
    /// The index generation holding exactly these facts.
    pub(crate) searcher: Option<Searcher>,
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

    /// A fact's vector, once it has one.
    pub fn vector(&self, id: &str) -> Option<&[f32]> {
        let i = *self.by_id.get(id)?;
        self.vectors[i].as_deref()
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

/// Fact index by id.
pub(crate) fn index_map(facts: &[Fact]) -> HashMap<String, usize> {
    facts
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id.clone(), i))
        .collect()
}
