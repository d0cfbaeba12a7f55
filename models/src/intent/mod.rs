//! Intents: a tenant's intent set ([`set`]), clause splitting ([`clauses`]), the linear head on
//! encoder embeddings and n-grams ([`head`], [`ngrams`]), training with calibration
//! ([`train`]), the stored model ([`artefact`]), the served classifier that finds several
//! intents in one message ([`classifier`]), and fine-tuning the encoder's top layer
//! ([`finetune`], behind the `finetune` cargo feature: only the evaluation suite uses it).

pub mod artefact;
pub mod classifier;
pub mod clauses;
#[cfg(feature = "finetune")]
pub mod finetune;
pub mod head;
pub mod nearest;
pub mod ngrams;
pub mod set;
pub mod train;

pub use classifier::HeadClassifier;
pub use clauses::clauses;
pub use set::{IntentDef, IntentFlag, IntentSet, OUT_OF_SCOPE};
pub use train::{
    name_as_words, stratified_split, training_version, ClassifierConfig, Decision, TrainProgress,
    TrainReport, TrainedHead, TrainingData, NEAREST_REJECT_RATE,
};

#[cfg(test)]
mod tests;
