//! What the server holds in memory: the models and, per tenant, its knowledge base and trained
//! intent classifier. A tenant's intent model is swapped atomically when its set is re-uploaded;
//! the trained artefact is stored next to the set and reloaded at start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use closer_kb::KnowledgeBase;
use closer_models::intent::{
    training_version, ClassifierConfig, HeadClassifier, IntentSet, TrainProgress, TrainedHead,
    TrainingData,
};
use closer_models::{AnswerGenerator, Embedder};

use crate::error::{Error, Result};

/// The two models every tenant shares.
#[derive(Clone)]
pub struct Models {
    pub embedder: Arc<dyn Embedder>,
    pub generator: Arc<dyn AnswerGenerator>,
}

impl Models {
    /// The real candle models from ready files.
    pub fn load(paths: &closer_models::source::ModelPaths) -> Result<Self> {
        paths.check()?;
        let t = Instant::now();
        let embedder = closer_models::encoder::MiniLmEncoder::load(&paths.encoder_dir())?;
        tracing::info!(ms = t.elapsed().as_millis() as u64, "encoder loaded");
        let t = Instant::now();
        let generator = closer_models::generator::QwenGenerator::load(&paths.generator_file())?;
        tracing::info!(ms = t.elapsed().as_millis() as u64, "generator loaded");
        Ok(Self {
            embedder: Arc::new(closer_models::cache::CachedEmbedder::new(
                Arc::new(embedder),
                4096,
            )),
            generator: Arc::new(generator),
        })
    }
}

/// A tenant's intent set and the classifier trained on it.
pub struct IntentModel {
    pub set: IntentSet,
    pub classifier: HeadClassifier,
}

/// One team's knowledge and intents.
pub struct Tenant {
    pub id: String,
    pub kb: KnowledgeBase,
    intents: RwLock<Arc<IntentModel>>,
    /// One retraining at a time per tenant.
    training: Mutex<()>,
    dir: PathBuf,
}

const SET_FILE: &str = "intents.yaml";
const MODEL_FILE: &str = "intent-model.bin";

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Tenant {
    pub fn open(
        data_dir: &Path,
        id: &str,
        embedder: Arc<dyn Embedder>,
        cfg: &ClassifierConfig,
    ) -> Result<Self> {
        let t = Instant::now();
        let kb = KnowledgeBase::open(data_dir, id, embedder.clone())?;
        let dir = closer_kb::tenant_dir(data_dir, id);
        let path = dir.join(SET_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let set = IntentSet::from_yaml(&text)
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let data = TrainingData::from_set(&set);
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
            ms = t.elapsed().as_millis() as u64,
            "tenant ready"
        );
        let classifier = HeadClassifier::from_trained(embedder, trained);
        Ok(Self {
            id: id.to_string(),
            kb,
            intents: RwLock::new(Arc::new(IntentModel { set, classifier })),
            training: Mutex::new(()),
            dir,
        })
    }

    /// The intent model serving now. Hold the `Arc` for a whole turn so one turn never mixes two
    /// models.
    pub fn intents(&self) -> Arc<IntentModel> {
        self.intents
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
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
        let _one_at_a_time = self.training.lock().unwrap_or_else(|p| p.into_inner());
        let classifier = HeadClassifier::train(embedder, &set, cfg, progress)?;
        let trained = classifier.trained();
        trained.save(&self.dir.join(MODEL_FILE))?;
        let path = self.dir.join(SET_FILE);
        write_atomic(&path, set.to_yaml().as_bytes())
            .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let report = trained.report.clone();
        let next = Arc::new(IntentModel { set, classifier });
        *self.intents.write().unwrap_or_else(|p| p.into_inner()) = next;
        tracing::info!(tenant = %self.id, version = %report.version, ms = report.training_ms, "intent model swapped in");
        Ok(report)
    }
}

/// Models plus every tenant found in the data directory.
pub struct Engine {
    pub models: Models,
    pub classifier_config: ClassifierConfig,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
}

impl Engine {
    pub fn open(
        models: Models,
        data_dir: &Path,
        classifier_config: ClassifierConfig,
    ) -> Result<Self> {
        let mut tenants = HashMap::new();
        for id in closer_kb::list_tenants(data_dir)? {
            let t = Tenant::open(data_dir, &id, models.embedder.clone(), &classifier_config)?;
            tenants.insert(id, Arc::new(t));
        }
        if tenants.is_empty() {
            tracing::warn!(data_dir = %data_dir.display(), "no tenants loaded; use `closer kb load`");
        }
        Ok(Self {
            models,
            classifier_config,
            tenants: RwLock::new(tenants),
        })
    }

    pub fn tenant(&self, id: &str) -> Result<Arc<Tenant>> {
        self.tenants
            .read()
            .map_err(|_| Error::Internal("tenant table poisoned".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownTenant(id.to_string()))
    }

    pub fn tenant_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tenants
            .read()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}
