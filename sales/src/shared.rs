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
//! transaction, so a follower applies whole batches. A whole tenant is published by
//! `closer kb load --database-url` ([`publish_tenant`]): its `tenant.yaml` too, from which a
//! replica that does not serve the tenant yet creates it ([`TENANT_FILE`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use closer_kb::{Account, Batch, BatchSummary, Fact, Rep, TenantProfile};
use closer_store::{Document, Store};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Tenant, MODEL_FILE, PLAYBOOK_FILE, SET_FILE};
use crate::{Error, Result};

/// A tenant's profile, as `tenant.yaml`: published with the whole tenant.
pub const TENANT_FILE: &str = "tenant.yaml";

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

/// One stored document: its name and content.
type Doc = (String, Vec<u8>);

/// A fact as shared: with its vector once it has one.
fn fact_doc(tenant: &Tenant, snap: &closer_kb::Snapshot, fact: &Fact) -> Doc {
    let record = Record::Fact {
        fact: fact.clone(),
        vector: snap.vector(&fact.id).map(|v| SharedVector {
            model: tenant.kb.embedder_model().to_string(),
            values: v.to_vec(),
        }),
    };
    (format!("{KB_FACT}{}", fact.id), encode(&record))
}

fn deleted_doc(fact_id: &str) -> Doc {
    (format!("{KB_FACT}{fact_id}"), encode(&Record::Deleted))
}

fn account_doc(a: Account) -> Doc {
    let name = format!("{KB_ACCOUNT}{}", a.domain.to_ascii_lowercase());
    (name, encode(&Record::Account(a)))
}

fn rep_doc(r: Rep) -> Doc {
    (format!("{KB_REP}{}", r.id), encode(&Record::Rep(r)))
}

/// Stores a tenant's documents in one transaction; the last version.
fn put(store: &dyn Store, tenant: &str, docs: &[Doc]) -> Result<u64> {
    let refs: Vec<(&str, &[u8])> = docs
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    Ok(store.put_documents(tenant, &refs)?)
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
    let mut docs: Vec<Doc> = deleted
        .iter()
        .filter(|id| snap.fact(id).is_none())
        .map(|id| deleted_doc(id))
        .collect();
    let mut waiting = HashSet::new();
    for f in fact_ids.iter().filter_map(|id| snap.fact(id)) {
        if snap.vector(&f.id).is_none() {
            waiting.insert(f.id.clone());
        }
        docs.push(fact_doc(tenant, &snap, f));
    }
    docs.extend(accounts.into_iter().map(account_doc));
    docs.extend(reps.into_iter().map(rep_doc));
    put(&*engine.store, &tenant.id, &docs)?;
    if !waiting.is_empty() {
        unshared
            .entry(tenant.id.clone())
            .or_default()
            .extend(waiting);
    }
    Ok(summary)
}

/// What [`publish_tenant`] stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    pub facts: usize,
    pub accounts: usize,
    pub reps: usize,
    /// Facts published before and absent now, published as deletions.
    pub removed: usize,
    /// The version of the last document stored.
    pub version: u64,
}

/// Publishes a whole tenant opened here (`closer kb load --database-url`: the folder just
/// loaded, its intent model trained and every fact embedded): `tenant.yaml`, the intent set
/// with its model, the playbook, every fact with its vector, accounts and reps, and deletions
/// for facts published earlier that are gone now, in one transaction. Every replica on the
/// database serves the tenant within a second (creating it when new), training and embedding
/// nothing that was published here. Waits for the background embedder first.
pub fn publish_tenant(store: &dyn Store, data_dir: &Path, tenant: &Tenant) -> Result<Published> {
    if !tenant.kb.wait_for_vectors(Duration::from_secs(24 * 3600)) {
        return Err(Error::Internal(format!(
            "tenant {}: some facts have no vector (see the log); nothing published",
            tenant.id
        )));
    }
    let dir = closer_kb::tenant_dir(data_dir, &tenant.id);
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        match std::fs::read(dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Internal(format!(
                "{}: {e}",
                dir.join(name).display()
            ))),
        }
    };
    let (set, model) = tenant.intent_files()?;
    let mut docs: Vec<Doc> = vec![(MODEL_FILE.into(), model), (SET_FILE.into(), set)];
    // No playbook file: the one derived from the intents' flags (an empty document says so).
    docs.push((
        PLAYBOOK_FILE.into(),
        read(PLAYBOOK_FILE)?.unwrap_or_default(),
    ));
    let snap = tenant.kb.snapshot();
    let mut out = Published::default();
    for id in store.document_names(&tenant.id, KB_FACT)? {
        let id = &id[KB_FACT.len()..];
        if snap.fact(id).is_none() {
            docs.push(deleted_doc(id));
            out.removed += 1;
        }
    }
    docs.extend(snap.facts().iter().map(|f| fact_doc(tenant, &snap, f)));
    docs.extend(snap.accounts().into_iter().cloned().map(account_doc));
    docs.extend(snap.reps().into_iter().cloned().map(rep_doc));
    (out.facts, out.accounts, out.reps) =
        (snap.facts().len(), snap.accounts().len(), snap.reps().len());
    // Last, so a replica creating the tenant finds everything else in the same read.
    let profile = read(TENANT_FILE)?.ok_or_else(|| Error::UnknownTenant(tenant.id.clone()))?;
    docs.push((TENANT_FILE.into(), profile));
    out.version = put(store, &tenant.id, &docs)?;
    Ok(out)
}

/// `closer kb load DIR --database-url`: loads a tenant folder into a scratch directory, opens
/// it there with `models` (the intent model trained, every fact embedded: `progress` sees the
/// embedder's status meanwhile) and publishes it ([`publish_tenant`]).
pub fn publish_folder(
    src: &Path,
    tenant: Option<&str>,
    store: &dyn Store,
    models: &crate::engine::Models,
    progress: &mut dyn FnMut(&closer_kb::EmbeddingStatus),
) -> Result<(closer_kb::load::LoadSummary, Published)> {
    let scratch =
        tempfile::tempdir().map_err(|e| Error::Internal(format!("a scratch folder: {e}")))?;
    let loaded = closer_kb::load::load_dir(src, scratch.path(), tenant)?;
    // The ambiguity margin, the one setting `serve` changes, is not part of what is trained.
    let cfg = closer_models::intent::ClassifierConfig::default();
    let t = Tenant::open(scratch.path(), &loaded.tenant, models, &cfg)?;
    while !t.kb.wait_for_vectors(Duration::from_millis(500)) {
        let status = t.kb.embedding_status();
        progress(&status);
        if status.error.is_some() {
            break;
        }
    }
    let published = publish_tenant(store, scratch.path(), &t)?;
    Ok((loaded, published))
}

/// Creates a tenant another replica published and this one does not serve: its folder from
/// the published profile, intent set, model and playbook, then opened (the model loaded, not
/// trained; the knowledge follows in the same read of the documents). A tenant this replica
/// serves already keeps its profile until restart (logged).
fn create_tenant(engine: &Engine, d: &Document) -> Result<Option<Tenant>> {
    if engine.tenant(&d.tenant).is_ok() {
        tracing::info!(tenant = %d.tenant, "a new tenant.yaml was published; restart this replica to use its profile");
        return Ok(None);
    }
    closer_kb::load::validate_tenant_id(&d.tenant).map_err(Error::Internal)?;
    let text = String::from_utf8_lossy(&d.content);
    let mut profile: TenantProfile = serde_norway::from_str(&text)
        .map_err(|e| Error::Internal(format!("published tenant.yaml of {}: {e}", d.tenant)))?;
    profile.id = d.tenant.clone();
    let dir = closer_kb::tenant_dir(&engine.data_dir, &d.tenant);
    if !dir.join(TENANT_FILE).is_file() {
        closer_kb::load::create_empty(&engine.data_dir, &profile)?;
    }
    let doc = |name: &str| engine.store.document(&d.tenant, name);
    let set = doc(SET_FILE)?
        .ok_or_else(|| Error::Internal(format!("tenant {}: no intent set published", d.tenant)))?;
    closer_kb::write_atomic(&dir.join(SET_FILE), &set.content)?;
    if let Some(model) = doc(MODEL_FILE)? {
        closer_kb::write_atomic(&dir.join(MODEL_FILE), &model.content)?;
    }
    match doc(PLAYBOOK_FILE)? {
        Some(p) if !p.content.is_empty() => {
            closer_kb::write_atomic(&dir.join(PLAYBOOK_FILE), &p.content)?
        }
        _ => {
            let _ = std::fs::remove_file(dir.join(PLAYBOOK_FILE));
        }
    }
    Ok(Some(Tenant::open(
        &engine.data_dir,
        &d.tenant,
        &engine.models,
        &engine.classifier_config,
    )?))
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
                docs.push(fact_doc(&tenant, &snap, f));
                false
            }
            Some(_) => true,
        });
        put(&*engine.store, tenant_id, &docs)?;
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

/// Shares the intent set and model a tenant has just trained and swapped in, in one
/// transaction (the model first, so a replica that sees the set finds its model).
pub fn put_intents(engine: &Engine, tenant: &str) -> Result<u64> {
    let (set, model) = engine.tenant(tenant)?.intent_files()?;
    put(
        &*engine.store,
        tenant,
        &[(MODEL_FILE.into(), model), (SET_FILE.into(), set)],
    )
}

/// Applies one shared document, unless this replica has it already: a tenant's playbook, or
/// its intent set (with the model stored beside it). Whether it changed anything.
fn apply(engine: &Engine, d: &closer_store::Document) -> Result<bool> {
    let tenant = engine.tenant(&d.tenant)?;
    match d.name.as_str() {
        // Empty: published without a playbook (scored by the intents' flags).
        PLAYBOOK_FILE if d.content.is_empty() => tenant.use_derived_playbook(),
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
pub struct Follower {
    /// The newest document version applied.
    pub seen: u64,
    /// Tenants whose knowledge has facts waiting for another replica's vectors, since when
    /// (reset whenever vectors arrive).
    waiting: HashMap<String, Instant>,
    /// This replica's name for leases.
    holder: String,
}

impl Default for Follower {
    fn default() -> Self {
        Self {
            seen: 0,
            waiting: HashMap::new(),
            holder: format!(
                "replica-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ),
        }
    }
}

/// How long the replica computing a stalled tenant's vectors holds the work; while its vectors
/// keep arriving the others do not stall, so they never take it over.
const VECTOR_LEASE: Duration = Duration::from_secs(300);

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
        let docs = engine.store.documents_after(self.seen)?;
        // New tenants first, served only once their knowledge in this read is in.
        let mut created: HashMap<String, Arc<Tenant>> = HashMap::new();
        for d in docs.iter().filter(|d| d.name == TENANT_FILE) {
            match create_tenant(engine, d) {
                Ok(Some(t)) => {
                    created.insert(d.tenant.clone(), Arc::new(t));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(tenant = %d.tenant, error = %err, "published tenant not created")
                }
            }
        }
        let find = |id: &str| created.get(id).cloned().or_else(|| engine.tenant(id).ok());
        for d in docs {
            self.seen = self.seen.max(d.version);
            if let Some(key) = d.name.strip_prefix("kb/") {
                let Some(tenant) = find(&d.tenant) else {
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
            if created.contains_key(&d.tenant) {
                // Its intents and playbook made it.
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
            let Some(tenant) = find(&tenant_id) else {
                continue;
            };
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
        for (id, t) in created {
            if engine.add_tenant(t) {
                tracing::info!(tenant = %id, "published tenant created and served");
            }
        }
        Ok(())
    }

    /// Starts this replica's embedder on tenants that waited longer than `wait` for another
    /// replica's vectors, and shares what it computes.
    fn embed_stalled(&mut self, engine: &Engine, wait: Duration) {
        let holder = &self.holder;
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
            // One replica takes the work (a lease in the database); the others wait again.
            let until = closer_store::now_ms() + VECTOR_LEASE.as_millis() as i64;
            match engine.store.claim_lease(&format!("vectors/{tenant_id}"), holder, until) {
                Ok(true) => {}
                Ok(false) => {
                    *since = Instant::now();
                    return true;
                }
                Err(err) => {
                    tracing::warn!(tenant = %tenant_id, error = %err, "vector lease not taken; retrying");
                    return true;
                }
            }
            tracing::info!(tenant = %tenant_id, facts = snap.pending_vectors(), "no replica shared these vectors; computing them here");
            let ids = snap
                .facts()
                .iter()
                .filter(|f| snap.vector(&f.id).is_none())
                .map(|f| f.id.clone());
            engine
                .unshared_vectors
                .lock()
                .entry(tenant_id.clone())
                .or_default()
                .extend(ids);
            tenant.kb.embed_pending();
            false
        });
    }
}
