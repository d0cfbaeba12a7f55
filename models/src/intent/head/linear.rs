//! The trained linear softmax layer: fitting the featurizer, training by L-BFGS, logits and
//! calibrated probabilities.

use super::features::{Features, Featurizer, HeadConfig};
use super::optimise::{lbfgs, linear_logits, softmax_in_place, Problem};
use super::whiten::{mean_row, within_class_whitener};
use crate::intent::ngrams::Ngrams;

/// A trained linear softmax layer.
#[derive(Debug, Clone)]
pub struct LinearHead {
    pub labels: Vec<String>,
    /// Length of the dense part.
    pub dim: usize,
    /// Row-major (labels × dim).
    pub weights: Vec<f32>,
    /// Sparse part, column-major: (n-gram column × labels).
    pub sparse_weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// Logits are divided by this before the softmax.
    pub temperature: f32,
    /// What turns a text and its embedding into the head's input.
    pub featurizer: Featurizer,
}

impl LinearHead {
    /// Featurizes `texts` with their embeddings (fitting the n-gram vocabulary on them when the
    /// config asks for lexical features).
    ///
    /// `y` are the examples' intents; those of intent `skip` (out of scope) are left out of
    /// the whitening scatter.
    pub fn fit_features(
        texts: &[&str],
        embeddings: Vec<Vec<f32>>,
        y: &[usize],
        skip: Option<usize>,
        cfg: &HeadConfig,
    ) -> (Featurizer, Vec<Features>) {
        let ngrams = cfg.ngrams.clone().map(|c| Ngrams::fit(texts, c));
        let center = if cfg.center {
            mean_row(&embeddings)
        } else {
            vec![]
        };
        let mut f = Featurizer {
            ngrams,
            center,
            whiten: vec![],
        };
        let mut feats = f.features(texts, embeddings);
        let rows: Vec<&[f32]> = feats.iter().map(|x| x.dense.as_slice()).collect();
        f.whiten = within_class_whitener(&rows, y, skip, cfg.whiten);
        feats
            .iter_mut()
            .for_each(|x| f.whiten_in_place(&mut x.dense));
        (f, feats)
    }

    /// Trains on featurized examples: multinomial logistic regression with an L2 penalty,
    /// minimised by L-BFGS until no gradient component exceeds `cfg.tolerance` (or
    /// `cfg.max_iter` steps). `progress(step, steps)` is called after each step and once more
    /// with `steps` at the end.
    pub fn train(
        x: &[Features],
        y: &[usize],
        labels: Vec<String>,
        featurizer: Featurizer,
        cfg: &HeadConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Self {
        let k = labels.len();
        let d = x.first().map_or(0, |f| f.dense.len());
        let vocab = featurizer.ngrams.as_ref().map_or(0, Ngrams::len);
        let problem = Problem {
            x,
            y,
            k,
            d,
            vocab,
            penalty: f64::from(cfg.l2.max(0.0)),
        };
        // All zeros: the optimum when there is nothing to learn from.
        let mut theta = vec![0f32; problem.len()];
        if !x.is_empty() && k > 0 {
            lbfgs(
                &mut |t, g| problem.loss_grad(t, g),
                &mut theta,
                cfg.max_iter,
                cfg.tolerance,
                &mut |step| progress(step, cfg.max_iter),
            );
        }
        progress(cfg.max_iter, cfg.max_iter);
        let bias = theta.split_off(k * d + vocab * k);
        let sparse_weights = theta.split_off(k * d);
        Self {
            labels,
            dim: d,
            weights: theta,
            sparse_weights,
            bias,
            temperature: 1.0,
            featurizer,
        }
    }

    fn logits_into(&self, f: &Features, out: &mut [f32]) {
        linear_logits(&self.weights, &self.sparse_weights, &self.bias, f, out);
    }

    /// Raw logits (before temperature).
    pub fn logits(&self, f: &Features) -> Vec<f32> {
        let mut out = vec![0f32; self.labels.len()];
        self.logits_into(f, &mut out);
        out
    }

    /// Calibrated probabilities over `labels`.
    pub fn predict(&self, f: &Features) -> Vec<f32> {
        let mut p = self.logits(f);
        p.iter_mut().for_each(|v| *v /= self.temperature);
        softmax_in_place(&mut p);
        p
    }

    /// Featurizes texts as this head was trained to read them.
    pub fn features(&self, texts: &[&str], embeddings: Vec<Vec<f32>>) -> Vec<Features> {
        self.featurizer.features(texts, embeddings)
    }
}
