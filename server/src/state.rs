//! What the server holds in memory: the models and, per tenant, its knowledge base and trained
//! intent classifier.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use closer_kb::KnowledgeBase;
use closer_models::intent::{HeadClassifier, HeadConfig, IntentSet};
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
        Ok(Self { embedder: Arc::new(embedder), generator: Arc::new(generator) })
    }
}

/// One team's knowledge and intents.
pub struct Tenant {
    pub kb: KnowledgeBase,
    pub intents: IntentSet,
    pub classifier: HeadClassifier,
}

impl Tenant {
    pub fn open(data_dir: &Path, id: &str, embedder: Arc<dyn Embedder>) -> Result<Self> {
        let t = Instant::now();
        let kb = KnowledgeBase::open(data_dir, id, embedder.clone())?;
        let path = closer_kb::tenant_dir(data_dir, id).join("intents.yaml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
        let intents = IntentSet::from_yaml(&text)?;
        let classifier = HeadClassifier::train(embedder, &intents, HeadConfig::default())?;
        tracing::info!(
            tenant = id,
            facts = kb.facts().len(),
            intents = intents.intents.len(),
            ms = t.elapsed().as_millis() as u64,
            "tenant ready (intent head trained)"
        );
        Ok(Self { kb, intents, classifier })
    }
}

/// Models plus every tenant found in the data directory.
pub struct Engine {
    pub models: Models,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
}

impl Engine {
    pub fn open(models: Models, data_dir: &Path) -> Result<Self> {
        let mut tenants = HashMap::new();
        for id in closer_kb::list_tenants(data_dir)? {
            let t = Tenant::open(data_dir, &id, models.embedder.clone())?;
            tenants.insert(id, Arc::new(t));
        }
        if tenants.is_empty() {
            tracing::warn!(data_dir = %data_dir.display(), "no tenants loaded; use `closer kb load`");
        }
        Ok(Self { models, tenants: RwLock::new(tenants) })
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
        let mut v: Vec<String> = self.tenants.read().map(|t| t.keys().cloned().collect()).unwrap_or_default();
        v.sort();
        v
    }
}
