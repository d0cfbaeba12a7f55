//! The served intent classifier: an embedder plus a trained head, applied to every clause of a
//! message, the best-scoring clause per intent kept.

use std::sync::Arc;

use super::clauses::clauses;
use super::set::{IntentSet, OUT_OF_SCOPE};
use super::train::{ClassifierConfig, Decision, TrainProgress, TrainedHead, TrainingData};
use crate::{Embedder, IntentClassifier, IntentPrediction, Result};

/// The intent classifier: an [`Embedder`] plus a [`TrainedHead`], applied per clause.
pub struct HeadClassifier {
    embedder: Arc<dyn Embedder>,
    trained: TrainedHead,
}

impl HeadClassifier {
    /// Embeds every example and trains (with calibration).
    pub fn train(
        embedder: Arc<dyn Embedder>,
        set: &IntentSet,
        cfg: &ClassifierConfig,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<Self> {
        set.validate()?;
        let data = TrainingData::from_set(set, cfg.name_examples);
        let total = data.texts.len();
        let mut embeddings = Vec::with_capacity(total);
        for chunk in data.text_refs().chunks(64) {
            embeddings.extend(embedder.embed(chunk)?);
            progress(TrainProgress::Embedding {
                done: embeddings.len(),
                total,
            });
        }
        let trained = TrainedHead::train(&data, embeddings, embedder.name(), cfg, progress);
        Ok(Self { embedder, trained })
    }

    /// Wraps a head trained (or loaded) earlier.
    pub fn from_trained(embedder: Arc<dyn Embedder>, trained: TrainedHead) -> Self {
        Self { embedder, trained }
    }

    pub fn trained(&self) -> &TrainedHead {
        &self.trained
    }
}

impl IntentClassifier for HeadClassifier {
    fn classify(&self, text: &str) -> Result<Vec<IntentPrediction>> {
        let mut spans = clauses(text);
        if spans.is_empty() {
            spans.push((0, text.len()));
        }
        let pieces: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
        let embeddings = self.embedder.embed(&pieces)?;
        let head = &self.trained.head;
        let feats = head.features(&pieces, embeddings);
        let mut found: Vec<IntentPrediction> = vec![];
        let mut best_oos: Option<IntentPrediction> = None;
        for (span, f) in spans.iter().zip(&feats) {
            let probs = head.predict(f);
            match self
                .trained
                .decide(&probs, &self.trained.nearest_for(f, &probs))
            {
                Decision::OutOfScope { confidence } => {
                    if best_oos.as_ref().is_none_or(|b| confidence > b.confidence) {
                        best_oos = Some(IntentPrediction::new(OUT_OF_SCOPE, confidence, *span));
                    }
                }
                Decision::Intent {
                    index,
                    confidence,
                    alternative,
                } => {
                    let name = &head.labels[index];
                    let alternative = alternative.map(|(j, q)| (head.labels[j].clone(), q));
                    match found.iter_mut().find(|f| &f.name == name) {
                        Some(f) if f.confidence < confidence => {
                            f.confidence = confidence;
                            f.span = *span;
                            f.alternative = alternative;
                        }
                        Some(_) => {}
                        None => found.push(IntentPrediction {
                            alternative,
                            ..IntentPrediction::new(name, confidence, *span)
                        }),
                    }
                }
            }
        }
        if found.is_empty() {
            found.push(best_oos.unwrap_or(IntentPrediction::new(
                OUT_OF_SCOPE,
                1.0,
                (0, text.len()),
            )));
        }
        found.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        Ok(found)
    }

    fn labels(&self) -> Vec<String> {
        self.trained.head.labels.clone()
    }
}
