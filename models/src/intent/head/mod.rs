//! The intent head: one linear softmax layer over [sentence embedding ; n-gram TF-IDF], trained
//! as L2-penalised logistic regression by L-BFGS to convergence, with temperature scaling
//! fitted on held-out examples.

pub mod features;
pub mod linear;
pub mod optimise;
pub mod whiten;

pub use features::{Features, Featurizer, HeadConfig};
pub use linear::LinearHead;
pub use optimise::{fit_temperature, softmax_in_place};
pub use whiten::within_class_whitener;

#[cfg(test)]
mod tests;
