//! What replicas on one database share through the store besides conversations: a tenant's
//! playbook, its intent set with the model trained for it, and its knowledge (facts with their
//! vectors, accounts, reps). `Playbooks.Upload`, `Intents.Upload` and `Knowledge.Ingest` /
//! `Delete` on one replica put them (after checking, training, embedding and swapping in
//! there); every replica follows the store's documents ([`Follower`]) and swaps in what another
//! put — the model as trained, never training it again; the vectors as computed, never
//! embedding them again (unless their replica stalls for [`VECTOR_WAIT`]).
//!
//! Knowledge is stored a record a document: `kb/fact/<id>` (the fact and its vector, or a
//! deletion), `kb/account/<domain>`, `kb/rep/<id>`; a batch's records are put in one
//! transaction, so a follower applies whole batches. The tenant itself (its folder, made by
//! `closer kb load`) must exist on every replica.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use closer_kb::{Account, Batch, BatchSummary, Fact, Rep};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Tenant, MODEL_FILE, PLAYBOOK_FILE, SET_FILE};
use crate::Result;

const KB_FACT: &str = "kb/fact/";
const KB_ACCOUNT: &str = "kb/account/";
const KB_REP: &str = "kb/rep/";

/// How long a follower waits without news for the vectors of facts another replica ingested
/// before computing them itself (and sharing them).
pub const VECTOR_WAIT: Duration = Duration::from_secs(60);

/// One shared knowledge record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Fact {
        fact: Fact,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vector: Option<SharedVector>,
    },
    Deleted,
    Account(Account),
    Rep(Rep),
}

#[derive(Debug, Serialize, Deserialize)]
struct SharedVector {
    /// The embedder that made it; a replica with another ignores it.
    model: String,
    values: Vec<f32>,
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("knowledge records serialize")
}

/// A fact as shared: with its vector once it has one.
fn fact_record(tenant: &Tenant, snap: &closer_kb::Snapshot, fact: &Fact) -> Record {
    Record::Fact {
        fact: fact.clone(),
        vector: snap.vector(&fact.id).map(|v| SharedVector {
            model: tenant.kb.embedder_model().to_string(),
            values: v.to_vec(),
        }),
    }
}

fn put(engine: &Engine, tenant: &str, docs: &[(String, Vec<u8>)]) -> Result<u64> {
    let refs: Vec<(&str, &[u8])> = docs
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    Ok(engine.store.put_documents(tenant, &refs)?)
}

/// Applies a knowledge batch (`Knowledge.Ingest`, `Knowledge.Delete`) and, on a shared
/// database, stores what it changed for the other replicas: facts with the vectors computed
/// before this returns (the others follow as the background embedder makes them, see
/// [`Follower`]), deletions, accounts and reps.
pub fn ingest(engine: &Engine, tenant: &Tenant, batch: Batch) -> Result<BatchSummary> {
    if !engine.shared {
        return Ok(tenant.kb.apply(batch)?);
    }
    // One sharing ingest at a time, so the records stored follow the order of the batches.
    let mut unshared = engine.unshared_vectors.lock();
    let fact_ids: Vec<String> = batch.facts.iter().map(|f| f.id.clone()).collect();
    let deleted = batch.delete_fact_ids.clone();
    let (accounts, reps) = (batch.accounts.clone(), batch.reps.clone());
    let summary = tenant.kb.apply(batch)?;
    let snap = tenant.kb.snapshot();
    let mut docs = vec![];
    for id in deleted.iter().filter(|id| snap.fact(id).is_none()) {
        docs.push((format!("{KB_FACT}{id}"), encode(&Record::Deleted)));
    }
    let mut waiting = HashSet::new();
    for id in &fact_ids {
        if let Some(f) = snap.fact(id) {
            if snap.vector(id).is_none() {
                waiting.insert(id.clone());
            }
            docs.push((
                format!("{KB_FACT}{id}"),
                encode(&fact_record(tenant, &snap, f)),
            ));
        }
    }
    for a in accounts {
        docs.push((
            format!("{KB_ACCOUNT}{}", a.domain.to_ascii_lowercase()),
            encode(&Record::Account(a)),
        ));
    }
    for r in reps {
        docs.push((format!("{KB_REP}{}", r.id), encode(&Record::Rep(r))));
    }
    put(engine, &tenant.id, &docs)?;
    if !waiting.is_empty() {
        unshared
            .entry(tenant.id.clone())
            .or_default()
            .extend(waiting);
    }
    Ok(summary)
}

/// Stores the vectors this replica's background embedder has made since their facts were
/// shared; how many.
fn share_vectors(engine: &Engine) -> Result<usize> {
    let mut unshared = engine.unshared_vectors.lock();
    let mut n = 0;
    for (tenant_id, ids) in unshared.iter_mut() {
        let Ok(tenant) = engine.tenant(tenant_id) else {
            ids.clear();
            continue;
        };
        let snap = tenant.kb.snapshot();
        let mut docs = vec![];
        ids.retain(|id| match snap.fact(id) {
            None => false,
            Some(f) if snap.vector(id).is_some() => {
                docs.push((
                    format!("{KB_FACT}{id}"),
                    encode(&fact_record(&tenant, &snap, f)),
                ));
                false
            }
            Some(_) => true,
        });
        put(engine, tenant_id, &docs)?;
        n += docs.len();
    }
    unshared.retain(|_, ids| !ids.is_empty());
    Ok(n)
}

/// What a follower applies to one tenant's knowledge from one read of the documents.
#[derive(Default)]
struct KnowledgeChange {
    batch: Batch,
    /// Some records carried vectors (the replica computing them is making progress).
    vectors: bool,
}

impl KnowledgeChange {
    /// Adds a record unless this replica has it already.
    fn add(&mut self, tenant: &Tenant, snap: &closer_kb::Snapshot, key: &str, r: Record) {
        match r {
            Record::Fact { fact, vector } => {
                let vector = vector.filter(|v| v.model == tenant.kb.embedder_model());
                let same_fact = snap.fact(&fact.id) == Some(&fact);
                let new_vector = vector.is_some() && snap.vector(&fact.id).is_none();
                if same_fact && !new_vector {
                    return;
                }
                if let Some(v) = vector {
                    self.vectors = true;
                    self.batch.vectors.insert(fact.id.clone(), v.values);
                }
                self.batch.facts.push(fact);
            }
            Record::Deleted => {
                if snap.fact(key).is_some() {
                    self.batch.delete_fact_ids.push(key.to_string());
                }
            }
            Record::Account(a) => {
                if snap.account(&a.domain) != Some(&a) {
                    self.batch.accounts.push(a);
                }
            }
            Record::Rep(r) => {
                if snap.rep(&r.id) != Some(&r) {
                    self.batch.reps.push(r);
                }
            }
        }
    }
}

/// Shares a playbook this replica has just swapped in.
pub fn put_playbook(engine: &Engine, tenant: &str, yaml: &str) -> Result<u64> {
    Ok(engine
        .store
        .put_document(tenant, PLAYBOOK_FILE, yaml.as_bytes())?)
}

/// Shares the intent set and model a tenant has just trained and swapped in: the model first,
/// so a replica that sees the set finds its model.
pub fn put_intents(engine: &Engine, tenant: &str) -> Result<u64> {
    let (set, model) = engine.tenant(tenant)?.intent_files()?;
    engine.store.put_document(tenant, MODEL_FILE, &model)?;
    Ok(engine.store.put_document(tenant, SET_FILE, &set)?)
}

/// Applies one shared document, unless this replica has it already: a tenant's playbook, or
/// its intent set (with the model stored beside it). Whether it changed anything.
fn apply(engine: &Engine, d: &closer_store::Document) -> Result<bool> {
    let tenant = engine.tenant(&d.tenant)?;
    match d.name.as_str() {
        PLAYBOOK_FILE => tenant.set_playbook_if_changed(&String::from_utf8_lossy(&d.content)),
        SET_FILE => {
            let Some(model) = engine.store.document(&d.tenant, MODEL_FILE)? else {
                return Ok(false);
            };
            tenant.adopt_intents(
                &String::from_utf8_lossy(&d.content),
                &model.content,
                engine.models.intents(),
                &engine.classifier_config,
            )
        }
        // The model comes with its set.
        _ => Ok(false),
    }
}

/// Follows the documents other replicas put: playbooks, intent sets and knowledge; shares
/// this replica's late vectors; and computes vectors another replica left waiting for longer
/// than [`VECTOR_WAIT`]. The server calls [`Follower::step`] every half second on a shared
/// database; from version 0 at start-up, so a replica that starts late catches up.
#[derive(Default)]
pub struct Follower {
    /// The newest document version applied.
    pub seen: u64,
    /// Tenants whose knowledge has facts waiting for another replica's vectors, since when
    /// (reset whenever vectors arrive).
    waiting: HashMap<String, Instant>,
}

impl Follower {
    pub fn step(&mut self, engine: &Engine) -> Result<()> {
        let shared = share_vectors(engine)?;
        if shared > 0 {
            tracing::info!(vectors = shared, "vectors shared");
        }
        self.apply_after(engine)?;
        self.embed_stalled(engine, VECTOR_WAIT);
        Ok(())
    }

    /// Applies every document put after `seen` on this replica (a tenant it does not have, or
    /// a playbook its intents refuse, is logged and skipped).
    fn apply_after(&mut self, engine: &Engine) -> Result<()> {
        let mut knowledge: HashMap<String, KnowledgeChange> = HashMap::new();
        for d in engine.store.documents_after(self.seen)? {
            self.seen = self.seen.max(d.version);
            if let Some(key) = d.name.strip_prefix("kb/") {
                let Ok(tenant) = engine.tenant(&d.tenant) else {
                    continue;
                };
                match serde_json::from_slice::<Record>(&d.content) {
                    Ok(r) => {
                        let key = key.split_once('/').map_or(key, |(_, k)| k);
                        let snap = tenant.kb.snapshot();
                        knowledge
                            .entry(d.tenant.clone())
                            .or_default()
                            .add(&tenant, &snap, key, r);
                    }
                    Err(err) => {
                        tracing::warn!(tenant = %d.tenant, name = %d.name, error = %err, "shared knowledge record not understood")
                    }
                }
                continue;
            }
            match apply(engine, &d) {
                Ok(true) => {
                    tracing::info!(tenant = %d.tenant, name = %d.name, version = d.version, "shared document applied")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(tenant = %d.tenant, name = %d.name, error = %err, "shared document not applied")
                }
            }
        }
        for (tenant_id, mut change) in knowledge {
            let b = &change.batch;
            if b.facts.is_empty()
                && b.delete_fact_ids.is_empty()
                && b.accounts.is_empty()
                && b.reps.is_empty()
            {
                continue;
            }
            let tenant = engine.tenant(&tenant_id)?;
            change.batch.defer_embedding = true;
            match tenant.kb.apply(change.batch) {
                Ok(s) => {
                    tracing::info!(tenant = %tenant_id, facts = s.facts_upserted, deleted = s.facts_deleted, accounts = s.accounts_upserted, reps = s.reps_upserted, waiting = s.facts_pending, "shared knowledge applied");
                    if change.vectors || s.facts_pending == 0 {
                        self.waiting.remove(&tenant_id);
                    }
                    if s.facts_pending > 0 {
                        self.waiting.entry(tenant_id).or_insert_with(Instant::now);
                    }
                }
                Err(err) => {
                    tracing::warn!(tenant = %tenant_id, error = %err, "shared knowledge not applied")
                }
            }
        }
        Ok(())
    }

    /// Starts this replica's embedder on tenants that waited longer than `wait` for another
    /// replica's vectors, and shares what it computes.
    fn embed_stalled(&mut self, engine: &Engine, wait: Duration) {
        self.waiting.retain(|tenant_id, since| {
            let Ok(tenant) = engine.tenant(tenant_id) else {
                return false;
            };
            let snap = tenant.kb.snapshot();
            if snap.pending_vectors() == 0 {
                return false;
            }
            if since.elapsed() < wait {
                return true;
            }
            tracing::info!(tenant = %tenant_id, facts = snap.pending_vectors(), "no replica shared these vectors; computing them here");
            let ids = snap.facts().iter().filter(|f| snap.vector(&f.id).is_none()).map(|f| f.id.clone());
            engine.unshared_vectors.lock().entry(tenant_id.clone()).or_default().extend(ids);
            tenant.kb.embed_pending();
            false
        });
    }
}
