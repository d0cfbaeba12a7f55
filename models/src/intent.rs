//! Intent sets, a softmax head trained on encoder embeddings in seconds, and multi-intent
//! detection over the clauses of a message.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Embedder, Error, IntentClassifier, IntentPrediction, Result};

/// The intent a message gets when nothing fits.
pub const OUT_OF_SCOPE: &str = "out_of_scope";

/// What the server does with an intent, declared per intent in the tenant's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentFlag {
    /// Answered from the knowledge base's facts.
    Knowledge,
    /// Answered from the accounts table: the visitor's company domain → its owner rep.
    AccountOwner,
    /// The visitor wants a person: raise a hand-off.
    Handoff,
    /// Shows buying intent (used by CQL scoring).
    BuyingSignal,
    /// Suggests the visitor is not a lead (student, competitor, job seeker).
    Disqualify,
}

/// One intent of a tenant's set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub flags: Vec<IntentFlag>,
    pub examples: Vec<String>,
}

/// A tenant's intent set, as written in its `intents.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSet {
    pub intents: Vec<IntentDef>,
}

impl IntentSet {
    /// Parses and validates YAML; errors name the line or the intent and field.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let set: IntentSet = serde_yaml::from_str(text).map_err(|e| {
            let at = e.location().map(|l| format!("line {}, column {}: ", l.line(), l.column()));
            Error::IntentSet(format!("{}{e}", at.unwrap_or_default()))
        })?;
        set.validate()?;
        Ok(set)
    }

    pub fn validate(&self) -> Result<()> {
        if self.intents.len() < 2 {
            return Err(Error::IntentSet("`intents` needs at least two intents".into()));
        }
        let mut seen = HashSet::new();
        for (i, def) in self.intents.iter().enumerate() {
            let valid = !def.name.is_empty()
                && def.name.len() <= 64
                && def.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(Error::IntentSet(format!(
                    "intents[{i}].name {:?}: use 1-64 lowercase letters, digits or '_'",
                    def.name
                )));
            }
            if !seen.insert(def.name.as_str()) {
                return Err(Error::IntentSet(format!("intents[{i}].name {:?} is defined twice", def.name)));
            }
            if def.examples.len() < 2 {
                return Err(Error::IntentSet(format!(
                    "intents[{i}] ({}).examples: at least 2 examples are needed, found {}",
                    def.name,
                    def.examples.len()
                )));
            }
            if let Some(j) = def.examples.iter().position(|e| e.trim().is_empty()) {
                return Err(Error::IntentSet(format!("intents[{i}] ({}).examples[{j}] is empty", def.name)));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&IntentDef> {
        self.intents.iter().find(|d| d.name == name)
    }

    pub fn has_flag(&self, name: &str, flag: IntentFlag) -> bool {
        self.get(name).is_some_and(|d| d.flags.contains(&flag))
    }
}

/// Training settings of the head.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
    /// Below this top probability a clause is out of scope.
    pub min_confidence: f32,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { epochs: 1000, learning_rate: 0.05, l2: 1e-5, min_confidence: 0.40 }
    }
}

/// A linear softmax layer over unit-length embeddings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoftmaxHead {
    pub labels: Vec<String>,
    pub dim: usize,
    /// Row-major (labels × dim).
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// Logits are divided by this before the softmax (temperature scaling for calibration).
    #[serde(default = "one")]
    pub temperature: f32,
}

fn one() -> f32 {
    1.0
}

impl SoftmaxHead {
    /// Full-batch Adam on cross-entropy with L2, as matrix products (candle's CPU gemm).
    /// Deterministic: zero init, no shuffling.
    pub fn train(x: &[Vec<f32>], y: &[usize], labels: Vec<String>, cfg: &HeadConfig) -> Self {
        let k = labels.len();
        let d = x.first().map(|v| v.len()).unwrap_or(0);
        match train_dense(x, y, k, d, cfg) {
            Ok((weights, bias)) => Self { labels, dim: d, weights, bias, temperature: 1.0 },
            // Only shape errors can land here, which the callers rule out; an untrained head
            // predicts uniformly, which the out-of-scope threshold then catches.
            Err(e) => {
                tracing::error!(error = %e, "intent head training failed");
                Self { labels, dim: d, weights: vec![0.0; k * d], bias: vec![0.0; k], temperature: 1.0 }
            }
        }
    }

    /// Probabilities over `labels`.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let mut p = vec![0f32; self.labels.len()];
        logits_into(&self.weights, &self.bias, x, &mut p);
        if self.temperature != 1.0 {
            p.iter_mut().for_each(|v| *v /= self.temperature);
        }
        softmax_in_place(&mut p);
        p
    }

    /// Raw logits (before temperature).
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let mut p = vec![0f32; self.labels.len()];
        logits_into(&self.weights, &self.bias, x, &mut p);
        p
    }
}

fn train_dense(
    x: &[Vec<f32>],
    y: &[usize],
    k: usize,
    d: usize,
    cfg: &HeadConfig,
) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    use candle_core::{DType, Device, Tensor, D};
    let dev = Device::Cpu;
    let n = x.len();
    if n == 0 || k == 0 {
        return Ok((vec![0.0; k * d], vec![0.0; k]));
    }
    let flat: Vec<f32> = x.iter().flat_map(|v| v.iter().copied()).collect();
    let xt = Tensor::from_vec(flat, (n, d), &dev)?;
    let mut onehot = vec![0f32; n * k];
    for (i, &c) in y.iter().enumerate() {
        onehot[i * k + c] = 1.0;
    }
    let yt = Tensor::from_vec(onehot, (n, k), &dev)?;
    let mut w = Tensor::zeros((k, d), DType::F32, &dev)?;
    let mut b = Tensor::zeros(k, DType::F32, &dev)?;
    let (mut mw, mut vw) = (w.zeros_like()?, w.zeros_like()?);
    let (mut mb, mut vb) = (b.zeros_like()?, b.zeros_like()?);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let lr = f64::from(cfg.learning_rate);
    for epoch in 1..=cfg.epochs {
        let logits = xt.matmul(&w.t()?)?.broadcast_add(&b)?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let g = ((p - &yt)? / n as f64)?;
        let gw = (g.t()?.matmul(&xt)? + (&w * f64::from(cfg.l2))?)?;
        let gb = g.sum(0)?;
        let t = epoch as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        mw = ((&mw * b1)? + (&gw * (1.0 - b1))?)?;
        vw = ((&vw * b2)? + (gw.sqr()? * (1.0 - b2))?)?;
        w = (&w - (((&mw / c1)? / ((&vw / c2)?.sqrt()? + eps)?)? * lr)?)?;
        mb = ((&mb * b1)? + (&gb * (1.0 - b1))?)?;
        vb = ((&vb * b2)? + (gb.sqr()? * (1.0 - b2))?)?;
        b = (&b - (((&mb / c1)? / ((&vb / c2)?.sqrt()? + eps)?)? * lr)?)?;
    }
    Ok((w.flatten_all()?.to_vec1()?, b.to_vec1()?))
}

fn logits_into(w: &[f32], b: &[f32], x: &[f32], out: &mut [f32]) {
    let d = x.len();
    for (c, o) in out.iter_mut().enumerate() {
        *o = b[c] + crate::dot(&w[c * d..(c + 1) * d], x);
    }
}

fn softmax_in_place(v: &mut [f32]) {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

/// Splits a message into clauses that may each carry an intent: at sentence punctuation, line
/// breaks and semicolons. Returns byte spans, trimmed, without leading conjunctions.
pub fn clauses(text: &str) -> Vec<(usize, usize)> {
    let mut spans = vec![];
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let boundary = match c {
            b'?' | b'!' | b';' | b'\n' => true,
            // A period ends a clause only before whitespace or the end ("$9.50" does not).
            b'.' => i + 1 >= bytes.len() || bytes[i + 1].is_ascii_whitespace(),
            _ => false,
        };
        if boundary {
            spans.push((start, i + 1));
            start = i + 1;
        }
        i += 1;
    }
    if start < text.len() {
        spans.push((start, text.len()));
    }
    spans
        .into_iter()
        .filter_map(|(s, e)| trim_span(text, s, e))
        .collect()
}

const LEADING: [&str; 6] = ["and ", "also ", "plus ", "but ", "so ", "oh and "];

fn trim_span(text: &str, mut s: usize, mut e: usize) -> Option<(usize, usize)> {
    let seg = &text[s..e];
    let lead = seg.len() - seg.trim_start().len();
    s += lead;
    e -= seg.len() - seg.trim_end().len();
    loop {
        let lower = text[s..e].to_ascii_lowercase();
        match LEADING.iter().find(|w| lower.starts_with(*w)) {
            Some(w) => s += w.len(),
            None => break,
        }
    }
    if text[s..e].chars().any(|c| c.is_alphanumeric()) {
        Some((s, e))
    } else {
        None
    }
}

/// The intent classifier: an [`Embedder`] plus a trained [`SoftmaxHead`], applied per clause.
pub struct HeadClassifier {
    embedder: Arc<dyn Embedder>,
    head: SoftmaxHead,
    cfg: HeadConfig,
}

impl HeadClassifier {
    /// Embeds every example and trains the head.
    pub fn train(embedder: Arc<dyn Embedder>, set: &IntentSet, cfg: HeadConfig) -> Result<Self> {
        set.validate()?;
        let mut texts = vec![];
        let mut y = vec![];
        for (i, def) in set.intents.iter().enumerate() {
            for e in &def.examples {
                texts.push(e.as_str());
                y.push(i);
            }
        }
        let x = embedder.embed(&texts)?;
        let labels = set.intents.iter().map(|d| d.name.clone()).collect();
        let head = SoftmaxHead::train(&x, &y, labels, &cfg);
        Ok(Self { embedder, head, cfg })
    }

    pub fn head(&self) -> &SoftmaxHead {
        &self.head
    }

    fn top(&self, probs: &[f32]) -> (usize, f32) {
        probs
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc })
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
        let mut found: Vec<IntentPrediction> = vec![];
        let mut best_oos: Option<IntentPrediction> = None;
        for (span, emb) in spans.iter().zip(&embeddings) {
            let probs = self.head.predict(emb);
            let (i, p) = self.top(&probs);
            let name = &self.head.labels[i];
            if name == OUT_OF_SCOPE || p < self.cfg.min_confidence {
                let conf = if name == OUT_OF_SCOPE { p } else { 1.0 - p };
                if best_oos.as_ref().is_none_or(|b| conf > b.confidence) {
                    best_oos = Some(IntentPrediction { name: OUT_OF_SCOPE.into(), confidence: conf, span: *span });
                }
                continue;
            }
            match found.iter_mut().find(|f| &f.name == name) {
                Some(f) if f.confidence < p => {
                    f.confidence = p;
                    f.span = *span;
                }
                Some(_) => {}
                None => found.push(IntentPrediction { name: name.clone(), confidence: p, span: *span }),
            }
        }
        if found.is_empty() {
            found.push(best_oos.unwrap_or(IntentPrediction {
                name: OUT_OF_SCOPE.into(),
                confidence: 1.0,
                span: (0, text.len()),
            }));
        }
        found.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        Ok(found)
    }

    fn labels(&self) -> Vec<String> {
        self.head.labels.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_split_questions_and_drop_conjunctions() {
        let t = "How much does each seat cost? Are you SOC II compliant? And who would be our rep?";
        let got: Vec<&str> = clauses(t).into_iter().map(|(s, e)| &t[s..e]).collect();
        assert_eq!(got, ["How much does each seat cost?", "Are you SOC II compliant?", "who would be our rep?"]);
    }

    #[test]
    fn clauses_keep_decimal_amounts_whole() {
        let t = "Is it $9.50 a month";
        assert_eq!(clauses(t), vec![(0, t.len())]);
    }

    #[test]
    fn head_learns_a_separable_problem() {
        let x = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0], vec![0.1, 0.9]];
        let y = vec![0, 0, 1, 1];
        let h = SoftmaxHead::train(&x, &y, vec!["a".into(), "b".into()], &HeadConfig::default());
        assert!(h.predict(&[1.0, 0.0])[0] > 0.9);
        assert!(h.predict(&[0.0, 1.0])[1] > 0.9);
    }

    #[test]
    fn bad_intent_files_name_the_field() {
        let err = IntentSet::from_yaml("intents:\n  - name: Pricing!\n    examples: [a, b]\n  - name: x\n    examples: [a, b]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("intents[0].name"), "{err}");
        let err = IntentSet::from_yaml("intents:\n  - name: a\n    examples: [a]\n  - name: b\n    examples: [a, b]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("intents[0] (a).examples"), "{err}");
        let err = IntentSet::from_yaml("intents:\n  - name: a\n    exmples: [a]\n").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
