//! What the server holds in memory: the models and, per tenant, its knowledge base and trained
//! intent classifier. A tenant's intent model is swapped atomically when its set is re-uploaded;
//! the trained artefact is stored next to the set and reloaded at start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::Duration;
use std::time::Instant;

use closer_kb::KnowledgeBase;
use closer_models::encoder::TextEncoder;
use closer_models::intent::{
    training_version, ClassifierConfig, HeadClassifier, IntentSet, TrainProgress, TrainedHead,
    TrainingData,
};
use closer_models::source::{AnswerEncoder, EncoderModel, IntentEncoder};
use closer_models::{AnswerGenerator, Embedder};

use crate::error::{Error, Result};
use crate::playbook::Playbook;
use closer_store::bus::Bus;
use closer_store::Store;

/// The models every tenant shares.
#[derive(Clone)]
pub struct Models {
    /// Retrieval, and intents unless `intent_embedder` is set.
    pub embedder: Arc<dyn Embedder>,
    /// A separate encoder for intents (`--intent-encoder mpnet`).
    pub intent_embedder: Option<Arc<dyn Embedder>>,
    /// The larger encoder the answerability judgement reads beside retrieval's
    /// (`--answer-encoder`; see [`crate::answerable`]), cached: a fact's texts are embedded once.
    pub answer_embedder: Option<Arc<dyn Embedder>>,
    pub generator: Arc<dyn AnswerGenerator>,
}

impl Models {
    /// The real candle models from ready files.
    pub fn load(paths: &closer_models::source::ModelPaths) -> Result<Self> {
        Self::load_with(
            paths,
            None,
            &IntentEncoder::default(),
            AnswerEncoder::default(),
        )
    }

    /// The encoder that intent classifiers read.
    pub fn intents(&self) -> Arc<dyn Embedder> {
        self.intent_embedder
            .clone()
            .unwrap_or_else(|| self.embedder.clone())
    }

    /// The real encoder (and `intent_encoder` for intents when it is not the default one),
    /// and the real generator or (with `fake = Some((per word, prefill))`) the fake one that
    /// restates the cited facts at that pace, for load tests.
    pub fn load_with(
        paths: &closer_models::source::ModelPaths,
        fake: Option<(Duration, Duration)>,
        intent_encoder: &IntentEncoder,
        answer_encoder: AnswerEncoder,
    ) -> Result<Self> {
        let mut models = Self::load_encoders(paths, intent_encoder)?;
        models.answer_embedder =
            Self::load_answer_encoder(paths, answer_encoder, models.answer_embedder.take())?;
        models.generator = match fake {
            Some((delay, prefill)) => {
                let mut g = closer_models::fake::ScriptedGenerator::echo_facts();
                g.delay = delay;
                g.prefill = prefill;
                tracing::warn!(
                    ?delay,
                    ?prefill,
                    "FAKE generator: replies restate the cited facts (--generator fake)"
                );
                Arc::new(g)
            }
            None => {
                let t = Instant::now();
                let g = closer_models::generator::QwenGenerator::load(&paths.generator_file())?;
                tracing::info!(ms = t.elapsed().as_millis() as u64, "generator loaded");
                Arc::new(g)
            }
        };
        Ok(models)
    }

    /// The real encoders only, for tools that embed and train but never answer (`closer kb
    /// load --database-url`); the generator refuses.
    pub fn load_encoders(
        paths: &closer_models::source::ModelPaths,
        intent_encoder: &IntentEncoder,
    ) -> Result<Self> {
        paths.check()?;
        let t = Instant::now();
        // Cached: a Converse turn embeds each clause for its intents, then searches the
        // knowledge base with the same clause.
        let embedder: Arc<dyn Embedder> = Arc::new(closer_models::cache::CachedEmbedder::new(
            Arc::new(TextEncoder::open(paths, EncoderModel::MiniLm)?),
            4096,
        ));
        tracing::info!(ms = t.elapsed().as_millis() as u64, "encoder loaded");
        let mut mpnet = None;
        let intent_embedder: Option<Arc<dyn Embedder>> = if intent_encoder.is_default() {
            None
        } else {
            let mut parts = vec![];
            for &m in intent_encoder.models() {
                if m == EncoderModel::MiniLm {
                    // The retrieval encoder and its cache, shared: a clause's MiniLM vector is
                    // computed once for its intents and its search.
                    parts.push(embedder.clone());
                    continue;
                }
                let e = open_encoder(paths, m, "intent encoder loaded")?;
                if m == EncoderModel::MpNet {
                    // The same weights serve the answerability judgement (one copy in memory).
                    mpnet = Some(e.clone());
                }
                parts.push(e);
            }
            let e: Arc<dyn Embedder> = match <[_; 1]>::try_from(parts) {
                Ok([one]) => one,
                Err(parts) => Arc::new(closer_models::concat::ConcatEmbedder::new(parts)?),
            };
            Some(Arc::new(closer_models::cache::CachedEmbedder::new(e, 4096)))
        };
        Ok(Self {
            embedder,
            intent_embedder,
            answer_embedder: mpnet.map(cached_answers),
            generator: Arc::new(NoGenerator),
        })
    }

    /// The answer encoder `choice` asks for: MPNet (`auto`: where its files are pulled), the
    /// intent encoder's copy when it is one.
    fn load_answer_encoder(
        paths: &closer_models::source::ModelPaths,
        choice: AnswerEncoder,
        loaded: Option<Arc<dyn Embedder>>,
    ) -> Result<Option<Arc<dyn Embedder>>> {
        let m = EncoderModel::MpNet;
        match choice {
            AnswerEncoder::Off => return Ok(None),
            _ if loaded.is_some() => {
                tracing::info!("answer encoder: the intent encoder's all-mpnet-base-v2");
                return Ok(loaded);
            }
            AnswerEncoder::Auto if paths.check_encoder(m).is_err() => {
                tracing::warn!(
                    "answerability without the answer encoder (MPNet is not pulled): weaker \
                     judgement; `closer models pull --intent-encoder minilm+mpnet` fetches it"
                );
                return Ok(None);
            }
            _ => {}
        }
        Ok(Some(cached_answers(open_encoder(
            paths,
            m,
            "answer encoder loaded",
        )?)))
    }
}

/// Loads encoder `m`, logging how long it took.
fn open_encoder(
    paths: &closer_models::source::ModelPaths,
    m: EncoderModel,
    what: &'static str,
) -> Result<Arc<dyn Embedder>> {
    let t = Instant::now();
    let e: Arc<dyn Embedder> = Arc::new(TextEncoder::open(paths, m)?);
    tracing::info!(
        ms = t.elapsed().as_millis() as u64,
        encoder = m.name(),
        "{what}"
    );
    Ok(e)
}

/// The answer encoder behind its own cache: a fact's texts are embedded once.
fn cached_answers(e: Arc<dyn Embedder>) -> Arc<dyn Embedder> {
    Arc::new(closer_models::cache::CachedEmbedder::new(e, 16_384))
}

/// The generator of a process that loaded none ([`Models::load_encoders`]).
struct NoGenerator;

impl AnswerGenerator for NoGenerator {
    fn generate(
        &self,
        _: &closer_models::GenerationRequest,
        _: &mut dyn FnMut(&str) -> std::ops::ControlFlow<()>,
    ) -> closer_models::Result<closer_models::GenerationStats> {
        Err(closer_models::Error::Other(
            "this process loaded no generator".into(),
        ))
    }

    fn name(&self) -> &str {
        "none"
    }
}

/// A tenant's intent set and the classifier trained on it.
pub struct IntentModel {
    pub set: IntentSet,
    pub classifier: HeadClassifier,
}

/// One team's knowledge, intents and playbook.
pub struct Tenant {
    pub id: String,
    pub kb: KnowledgeBase,
    intents: RwLock<Arc<IntentModel>>,
    /// The playbook in force and whether it is derived from the intent flags (no file).
    playbook: RwLock<(Arc<Playbook>, bool)>,
    /// One retraining at a time per tenant.
    training: Mutex<()>,
    dir: PathBuf,
    /// The answerability judgement's larger encoder, when the server has one.
    pub answer_embedder: Option<Arc<dyn Embedder>>,
}

pub const SET_FILE: &str = "intents.yaml";
pub const PLAYBOOK_FILE: &str = "playbook.yaml";
pub const MODEL_FILE: &str = "intent-model.bin";

impl Tenant {
    /// Opens a tenant: its knowledge base read through `models.embedder`, its intent model
    /// through `models.intents()`.
    pub fn open(
        data_dir: &Path,
        id: &str,
        models: &Models,
        cfg: &ClassifierConfig,
    ) -> Result<Self> {
        let t = Instant::now();
        let kb = KnowledgeBase::open(data_dir, id, models.embedder.clone())?;
        let embedder = models.intents();
        let dir = closer_kb::tenant_dir(data_dir, id);
        let path = dir.join(SET_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let set = IntentSet::from_yaml(&text)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let data = TrainingData::from_set(&set, cfg.name_examples);
        let version = training_version(&data, embedder.name(), cfg);
        let model_path = dir.join(MODEL_FILE);
        let stored = match TrainedHead::load(&model_path) {
            Ok(h) if h.report.version == version => Some(h),
            Ok(_) => {
                tracing::info!(
                    tenant = id,
                    "intent set or settings changed since the stored model; retraining"
                );
                None
            }
            Err(e) if model_path.exists() => {
                tracing::warn!(tenant = id, error = %e, "stored intent model unusable; retraining");
                None
            }
            Err(_) => None,
        };
        let (trained, how) = match stored {
            Some(mut h) => {
                h.config.ambiguity_margin = cfg.ambiguity_margin;
                (h, "loaded")
            }
            None => {
                let c = HeadClassifier::train(embedder.clone(), &set, cfg, &mut |_| {})?;
                let h = c.trained().clone();
                h.save(&model_path)?;
                (h, "trained")
            }
        };
        tracing::info!(
            tenant = id,
            facts = kb.facts().len(),
            intents = set.intents.len(),
            model = how,
            version = %trained.report.version,
            oos_threshold = trained.threshold,
            nearest_threshold = trained.nearest_threshold,
            ms = t.elapsed().as_millis() as u64,
            "tenant ready"
        );
        let playbook = read_playbook(&dir, &set, &kb)?;
        let classifier = HeadClassifier::from_trained(embedder, trained);
        Ok(Self {
            id: id.to_string(),
            kb,
            playbook: RwLock::new((Arc::new(playbook.0), playbook.1)),
            intents: RwLock::new(Arc::new(IntentModel { set, classifier })),
            training: Mutex::new(()),
            dir,
            answer_embedder: models.answer_embedder.clone(),
        })
    }

    /// The intent model serving now. Hold the `Arc` for a whole turn so one turn never mixes two
    /// models.
    pub fn intents(&self) -> Arc<IntentModel> {
        self.intents.read().clone()
    }

    /// The stored intent set and trained model, as files (to share with other replicas).
    pub fn intent_files(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            std::fs::read(&path).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
        };
        Ok((read(SET_FILE)?, read(MODEL_FILE)?))
    }

    /// Swaps in an intent set with a model another replica trained, when the model was trained
    /// for exactly this set, encoder and settings (else `Ok(false)`: nothing changes, and this
    /// replica keeps what it has). Trains nothing. Whether it swapped.
    pub fn adopt_intents(
        &self,
        set_yaml: &str,
        model: &[u8],
        encoder: Arc<dyn Embedder>,
        cfg: &ClassifierConfig,
    ) -> Result<bool> {
        let set = IntentSet::from_yaml(set_yaml)?;
        let data = TrainingData::from_set(&set, cfg.name_examples);
        let version = training_version(&data, encoder.name(), cfg);
        if self.intents().classifier.trained().report.version == version {
            return Ok(false);
        }
        let _one_at_a_time = self.training.lock();
        let mut trained = TrainedHead::from_bytes(model, "the shared intent model")?;
        if trained.report.version != version {
            tracing::warn!(tenant = %self.id, "a shared intent model was trained for another encoder or settings; not adopted");
            return Ok(false);
        }
        // Stored only once it is known to fit, so this replica's own model file stays.
        closer_kb::write_atomic(&self.dir.join(MODEL_FILE), model)?;
        trained.config.ambiguity_margin = cfg.ambiguity_margin;
        closer_kb::write_atomic(&self.dir.join(SET_FILE), set.to_yaml().as_bytes())?;
        let classifier = HeadClassifier::from_trained(encoder, trained);
        *self.intents.write() = Arc::new(IntentModel { set, classifier });
        tracing::info!(tenant = %self.id, version = %version, "shared intent model swapped in (not retrained)");
        Ok(true)
    }

    /// The playbook in force; hold it for a whole turn.
    pub fn playbook(&self) -> Arc<Playbook> {
        self.playbook.read().0.clone()
    }

    /// The playbook in force and whether it is derived from the intent flags.
    pub fn playbook_source(&self) -> (Arc<Playbook>, bool) {
        self.playbook.read().clone()
    }

    /// Validates a playbook against the tenant's intents and reps, stores it and swaps it in.
    pub fn set_playbook(&self, yaml: &str) -> Result<Arc<Playbook>> {
        let model = self.intents();
        let kb = self.kb.snapshot();
        let p = Arc::new(Playbook::from_yaml(yaml, &model.set, &kb.reps())?);
        self.swap_playbook(yaml, p)
    }

    /// As [`Tenant::set_playbook`], unless the playbook in force is this one already (another
    /// replica's, applied here); whether it swapped.
    pub fn set_playbook_if_changed(&self, yaml: &str) -> Result<bool> {
        let model = self.intents();
        let kb = self.kb.snapshot();
        let p = Playbook::from_yaml(yaml, &model.set, &kb.reps())?;
        let (current, derived) = self.playbook_source();
        if !derived && *current == p {
            return Ok(false);
        }
        self.swap_playbook(yaml, Arc::new(p))?;
        Ok(true)
    }

    /// Drops the playbook file and scores by the intents' flags (a tenant published without a
    /// playbook); whether anything changed.
    pub fn use_derived_playbook(&self) -> Result<bool> {
        if self.playbook_source().1 {
            return Ok(false);
        }
        let path = self.dir.join(PLAYBOOK_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Internal(format!("{}: {e}", path.display()))),
        }
        *self.playbook.write() = (Arc::new(Playbook::from_intents(&self.intents().set)), true);
        tracing::info!(tenant = %self.id, "playbook derived from the intents' flags");
        Ok(true)
    }

    fn swap_playbook(&self, yaml: &str, p: Arc<Playbook>) -> Result<Arc<Playbook>> {
        let path = self.dir.join(PLAYBOOK_FILE);
        closer_kb::write_atomic(&path, yaml.as_bytes())?;
        *self.playbook.write() = (p.clone(), false);
        tracing::info!(tenant = %self.id, rules = p.score_rules.len(), "playbook swapped in");
        Ok(p)
    }

    /// Trains a classifier on `set`, stores set and model, then swaps them in. While this runs
    /// (seconds) the previous model keeps serving; on any error it stays.
    pub fn retrain(
        &self,
        set: IntentSet,
        embedder: Arc<dyn Embedder>,
        cfg: &ClassifierConfig,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<closer_models::intent::TrainReport> {
        let _one_at_a_time = self.training.lock();
        let classifier = HeadClassifier::train(embedder, &set, cfg, progress)?;
        let trained = classifier.trained();
        trained.save(&self.dir.join(MODEL_FILE))?;
        let path = self.dir.join(SET_FILE);
        closer_kb::write_atomic(&path, set.to_yaml().as_bytes())?;
        let report = trained.report.clone();
        let next = Arc::new(IntentModel { set, classifier });
        *self.intents.write() = next;
        tracing::info!(tenant = %self.id, version = %report.version, ms = report.training_ms, "intent model swapped in");
        Ok(report)
    }
}

/// A tenant's playbook file, checked; the one derived from its intents when it has none.
pub fn read_playbook(dir: &Path, set: &IntentSet, kb: &KnowledgeBase) -> Result<(Playbook, bool)> {
    let path = dir.join(PLAYBOOK_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Playbook::from_yaml(&text, set, &kb.snapshot().reps())
            .map(|p| (p, false))
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((Playbook::from_intents(set), true))
        }
        Err(e) => Err(Error::Internal(format!("{}: {e}", path.display()))),
    }
}

/// Models, durable state, and every tenant found in the data directory.
pub struct Engine {
    pub models: Models,
    pub classifier_config: ClassifierConfig,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    /// Replicas share this database (PostgreSQL): knowledge changes are stored for the others
    /// (see `shared`).
    pub shared: bool,
    /// Where the tenants' folders are.
    pub data_dir: PathBuf,
    /// Facts this replica ingested whose vectors the background embedder is still computing,
    /// by tenant: `shared::share_vectors` stores each once it exists.
    pub(crate) unshared_vectors: Mutex<HashMap<String, std::collections::HashSet<String>>>,
}

impl Engine {
    /// Opens every tenant under `data_dir`, with the store at `database_url` (PostgreSQL) or,
    /// without one, the SQLite file under `data_dir`.
    pub fn open(
        models: Models,
        data_dir: &Path,
        database_url: Option<&str>,
        classifier_config: ClassifierConfig,
    ) -> Result<Self> {
        let mut tenants = HashMap::new();
        for id in closer_kb::list_tenants(data_dir)? {
            let t = Tenant::open(data_dir, &id, &models, &classifier_config)?;
            tenants.insert(id, Arc::new(t));
        }
        if tenants.is_empty() {
            tracing::warn!(data_dir = %data_dir.display(), "no tenants loaded; use `closer kb load`");
        }
        let store = closer_store::backend::open(database_url, data_dir)?;
        let bus = closer_store::bus::LocalBus::new(store.last_cursor()?);
        Ok(Self {
            models,
            classifier_config,
            tenants: RwLock::new(tenants),
            store,
            bus: Arc::new(bus),
            shared: database_url.is_some(),
            data_dir: data_dir.to_path_buf(),
            unshared_vectors: Mutex::default(),
        })
    }

    pub fn tenant(&self, id: &str) -> Result<Arc<Tenant>> {
        self.tenants
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownTenant(id.to_string()))
    }

    /// Serves a tenant opened after start-up (one another replica published), unless one of
    /// that id is served already; whether it was added.
    pub(crate) fn add_tenant(&self, t: Arc<Tenant>) -> bool {
        let mut tenants = self.tenants.write();
        if tenants.contains_key(&t.id) {
            return false;
        }
        tenants.insert(t.id.clone(), t);
        true
    }

    pub fn tenant_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tenants.read().keys().cloned().collect();
        v.sort();
        v
    }
}
