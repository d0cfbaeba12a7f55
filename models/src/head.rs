//! The intent head: one linear softmax layer over [sentence embedding ; n-gram TF-IDF], trained by
//! mini-batch Adam (lazy updates for the sparse n-gram weights), with temperature scaling fitted
//! on held-out examples, and a compact binary artefact.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::ngrams::{NgramConfig, Ngrams, SparseRow};
use crate::{Error, Result};

/// Training settings of the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per Adam step.
    pub batch: usize,
    /// Adam step size at the start; it decays linearly to a tenth by the end.
    pub learning_rate: f32,
    /// L2 penalty on the weights (per example, as in a mean loss).
    pub l2: f32,
    /// Seeds the shuffles and the held-out split.
    pub seed: u64,
    /// Lexical features; `None` uses the embedding alone.
    pub ngrams: Option<NgramConfig>,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch: 32,
            learning_rate: 0.01,
            l2: 1e-5,
            seed: 7,
            ngrams: Some(NgramConfig::default()),
        }
    }
}

/// The input of the head for one text.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub dense: Vec<f32>,
    pub sparse: SparseRow,
}

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
    /// The fitted n-gram featurizer, when the head uses lexical features.
    pub ngrams: Option<Ngrams>,
}

/// A small deterministic PRNG (SplitMix64) for shuffles and splits.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One Adam step on `w[range]` with gradient `g` (same length as the range).
    #[inline]
    fn step(&mut self, w: &mut [f32], g: &[f32], at: usize, lr: f32, c1: f32, c2: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        let (m, v) = (&mut self.m[at..at + g.len()], &mut self.v[at..at + g.len()]);
        for i in 0..g.len() {
            m[i] = B1 * m[i] + (1.0 - B1) * g[i];
            v[i] = B2 * v[i] + (1.0 - B2) * g[i] * g[i];
            w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8);
        }
    }
}

impl LinearHead {
    /// Featurizes `texts` with their embeddings (fitting the n-gram vocabulary on them when the
    /// config asks for lexical features).
    pub fn fit_features(
        texts: &[&str],
        embeddings: Vec<Vec<f32>>,
        cfg: &HeadConfig,
    ) -> (Option<Ngrams>, Vec<Features>) {
        let ngrams = cfg.ngrams.clone().map(|c| Ngrams::fit(texts, c));
        let feats = featurize(ngrams.as_ref(), texts, embeddings);
        (ngrams, feats)
    }

    /// Trains on featurized examples; `progress(epoch, epochs)` is called after each epoch.
    pub fn train(
        x: &[Features],
        y: &[usize],
        labels: Vec<String>,
        ngrams: Option<Ngrams>,
        cfg: &HeadConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Self {
        let k = labels.len();
        let d = x.first().map_or(0, |f| f.dense.len());
        let vocab = ngrams.as_ref().map_or(0, Ngrams::len);
        let mut head = Self {
            labels,
            dim: d,
            weights: vec![0.0; k * d],
            sparse_weights: vec![0.0; vocab * k],
            bias: vec![0.0; k],
            temperature: 1.0,
            ngrams,
        };
        let n = x.len();
        if n == 0 || k == 0 {
            return head;
        }
        let batch = cfg.batch.max(1);
        let steps_total = (cfg.epochs * n.div_ceil(batch)).max(1);
        let (mut adam_w, mut adam_s, mut adam_b) =
            (Adam::new(k * d), Adam::new(vocab * k), Adam::new(k));
        let mut gw = vec![0f32; k * d];
        let mut gs = vec![0f32; vocab * k];
        let mut touched = vec![false; vocab];
        let mut touched_list: Vec<u32> = vec![];
        let mut gb = vec![0f32; k];
        let mut p = vec![0f32; k];
        let mut rng = Rng::new(cfg.seed);
        let mut order: Vec<usize> = (0..n).collect();
        let mut step = 0usize;
        for epoch in 1..=cfg.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(batch) {
                step += 1;
                let lr = cfg.learning_rate * (1.0 - 0.9 * (step - 1) as f32 / steps_total as f32);
                let scale = 1.0 / chunk.len() as f32;
                gw.iter_mut().for_each(|g| *g = 0.0);
                gb.iter_mut().for_each(|g| *g = 0.0);
                for &i in chunk {
                    head.logits_into(&x[i], &mut p);
                    softmax_in_place(&mut p);
                    p[y[i]] -= 1.0;
                    p.iter_mut().for_each(|g| *g *= scale);
                    for c in 0..k {
                        gb[c] += p[c];
                        let row = &mut gw[c * d..(c + 1) * d];
                        for (g, &xv) in row.iter_mut().zip(&x[i].dense) {
                            *g += p[c] * xv;
                        }
                    }
                    for &(col, v) in &x[i].sparse {
                        let j = col as usize;
                        if !touched[j] {
                            touched[j] = true;
                            touched_list.push(col);
                        }
                        for (g, &pc) in gs[j * k..(j + 1) * k].iter_mut().zip(p.iter()) {
                            *g += v * pc;
                        }
                    }
                }
                let t = step as i32;
                let (c1, c2) = (1.0 - 0.9f32.powi(t), 1.0 - 0.999f32.powi(t));
                for (g, w) in gw.iter_mut().zip(&head.weights) {
                    *g += cfg.l2 * w;
                }
                adam_w.step(&mut head.weights, &gw, 0, lr, c1, c2);
                adam_b.step(&mut head.bias, &gb, 0, lr, c1, c2);
                for &col in &touched_list {
                    let j = col as usize;
                    let (w, g) = (
                        &mut head.sparse_weights[j * k..(j + 1) * k],
                        &mut gs[j * k..(j + 1) * k],
                    );
                    for (gv, wv) in g.iter_mut().zip(w.iter()) {
                        *gv += cfg.l2 * wv;
                    }
                    adam_s.step(w, g, j * k, lr, c1, c2);
                    g.iter_mut().for_each(|v| *v = 0.0);
                    touched[j] = false;
                }
                touched_list.clear();
            }
            progress(epoch, cfg.epochs);
        }
        head
    }

    fn logits_into(&self, f: &Features, out: &mut [f32]) {
        let (k, d) = (self.labels.len(), self.dim);
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.bias[c] + crate::dot(&self.weights[c * d..(c + 1) * d], &f.dense);
        }
        for &(col, v) in &f.sparse {
            let j = col as usize;
            for (o, &w) in out.iter_mut().zip(&self.sparse_weights[j * k..(j + 1) * k]) {
                *o += v * w;
            }
        }
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

    /// Featurizes texts with this head's n-gram vocabulary.
    pub fn features(&self, texts: &[&str], embeddings: Vec<Vec<f32>>) -> Vec<Features> {
        featurize(self.ngrams.as_ref(), texts, embeddings)
    }
}

fn featurize(ngrams: Option<&Ngrams>, texts: &[&str], embeddings: Vec<Vec<f32>>) -> Vec<Features> {
    texts
        .iter()
        .zip(embeddings)
        .map(|(t, dense)| Features {
            dense,
            sparse: ngrams.map(|n| n.transform(t)).unwrap_or_default(),
        })
        .collect()
}

pub fn softmax_in_place(v: &mut [f32]) {
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

/// The temperature that minimises the negative log-likelihood of `gold` under `logits / T`
/// (golden-section search on log T in [0.05, 20]).
pub fn fit_temperature(logits: &[Vec<f32>], gold: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let nll = |log_t: f64| -> f64 {
        let t = log_t.exp() as f32;
        logits
            .iter()
            .zip(gold)
            .map(|(l, &g)| {
                let mut p: Vec<f32> = l.iter().map(|v| v / t).collect();
                softmax_in_place(&mut p);
                -(f64::from(p[g]).max(1e-12)).ln()
            })
            .sum()
    };
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - r * (b - a), a + r * (b - a));
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..40 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - r * (b - a);
            fc = nll(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + r * (b - a);
            fd = nll(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
}

/// What a stored classifier needs besides its arrays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArtefactMeta {
    /// Identifies the training input: the intent set, settings and encoder.
    pub version: String,
    pub encoder: String,
    pub labels: Vec<String>,
    pub dim: usize,
    pub vocab: usize,
    pub temperature: f32,
    pub config: HeadConfig,
    /// Below this calibrated top probability a clause is out of scope.
    pub oos_threshold: f32,
    pub holdout_accuracy: f32,
    pub training_ms: u64,
    /// sha256 of the arrays that follow the header.
    pub payload_sha256: String,
}

const MAGIC: &[u8; 8] = b"CLOSERIM";

fn f32s(v: &[f32], out: &mut Vec<u8>) {
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Writes a head and its metadata to one file, atomically (temporary file, fsync, rename).
pub fn save_artefact(path: &Path, head: &LinearHead, meta: &ArtefactMeta) -> Result<()> {
    let mut payload = vec![];
    f32s(&head.weights, &mut payload);
    f32s(&head.sparse_weights, &mut payload);
    f32s(&head.bias, &mut payload);
    if let Some(ng) = &head.ngrams {
        ng.hashes
            .iter()
            .for_each(|h| payload.extend_from_slice(&h.to_le_bytes()));
        f32s(&ng.idf, &mut payload);
    }
    let mut meta = meta.clone();
    meta.payload_sha256 = hex::encode(sha2::Sha256::digest(&payload));
    let header = serde_json::to_vec(&meta).map_err(|e| Error::Other(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        f.write_all(&payload)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(path, e))
}

/// Reads a head written by [`save_artefact`], checking its integrity.
pub fn load_artefact(path: &Path) -> Result<(LinearHead, ArtefactMeta)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |why: &str| {
        Error::Other(format!(
            "{}: not a valid intent model ({why})",
            path.display()
        ))
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("wrong header"));
    }
    let hlen = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad("header"))?) as usize;
    let header = bytes
        .get(16..16 + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let meta: ArtefactMeta = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let payload = &bytes[16 + hlen..];
    if hex::encode(sha2::Sha256::digest(payload)) != meta.payload_sha256 {
        return Err(bad("checksum mismatch"));
    }
    let k = meta.labels.len();
    let has_ngrams = meta.config.ngrams.is_some();
    let expect =
        4 * (k * meta.dim + meta.vocab * k + k) + if has_ngrams { 12 * meta.vocab } else { 0 };
    if payload.len() != expect {
        return Err(bad("wrong size"));
    }
    let mut at = 0;
    let mut take_f32 = |n: usize| -> Vec<f32> {
        let v = payload[at..at + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        at += 4 * n;
        v
    };
    let weights = take_f32(k * meta.dim);
    let sparse_weights = take_f32(meta.vocab * k);
    let bias = take_f32(k);
    let ngrams = match &meta.config.ngrams {
        Some(cfg) => {
            let start = 4 * (k * meta.dim + meta.vocab * k + k);
            let hashes: Vec<u64> = payload[start..start + 8 * meta.vocab]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            let idf = payload[start + 8 * meta.vocab..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(Ngrams::from_parts(cfg.clone(), hashes, idf))
        }
        None => None,
    };
    let head = LinearHead {
        labels: meta.labels.clone(),
        dim: meta.dim,
        weights,
        sparse_weights,
        bias,
        temperature: meta.temperature,
        ngrams,
    };
    Ok((head, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(v: &[f32]) -> Features {
        Features {
            dense: v.to_vec(),
            sparse: vec![],
        }
    }

    #[test]
    fn head_learns_a_separable_problem() {
        let x = vec![
            dense(&[1.0, 0.0]),
            dense(&[0.9, 0.1]),
            dense(&[0.0, 1.0]),
            dense(&[0.1, 0.9]),
        ];
        let y = vec![0, 0, 1, 1];
        let cfg = HeadConfig {
            epochs: 200,
            batch: 2,
            learning_rate: 0.05,
            ngrams: None,
            ..HeadConfig::default()
        };
        let h = LinearHead::train(
            &x,
            &y,
            vec!["a".into(), "b".into()],
            None,
            &cfg,
            &mut |_, _| {},
        );
        assert!(h.predict(&dense(&[1.0, 0.0]))[0] > 0.9);
        assert!(h.predict(&dense(&[0.0, 1.0]))[1] > 0.9);
    }

    #[test]
    fn sparse_features_alone_separate_words() {
        let texts = [
            "card arrival",
            "when will my card arrive",
            "exchange rate",
            "what rate do you use",
        ];
        let cfg = HeadConfig {
            epochs: 100,
            batch: 2,
            learning_rate: 0.05,
            ..HeadConfig::default()
        };
        let (ng, x) = LinearHead::fit_features(&texts, vec![vec![]; 4], &cfg);
        let h = LinearHead::train(
            &x,
            &[0, 0, 1, 1],
            vec!["card".into(), "rate".into()],
            ng,
            &cfg,
            &mut |_, _| {},
        );
        let f = h.features(&["card arriving?"], vec![vec![]]);
        assert!(h.predict(&f[0])[0] > 0.7, "{:?}", h.predict(&f[0]));
    }

    #[test]
    fn temperature_fit_softens_overconfident_logits() {
        // Confident logits (10 vs 0) but right only half the time: T must grow well above 1.
        let logits = vec![
            vec![10.0, 0.0],
            vec![10.0, 0.0],
            vec![0.0, 10.0],
            vec![0.0, 10.0],
        ];
        let t = fit_temperature(&logits, &[0, 1, 1, 0]);
        assert!(t > 5.0, "{t}");
        // Always right: a sharper temperature is no worse.
        let t = fit_temperature(&logits, &[0, 0, 1, 1]);
        assert!(t < 1.0, "{t}");
    }

    #[test]
    fn artefact_round_trips_and_detects_corruption() {
        let texts = ["card arrival", "exchange rate"];
        let cfg = HeadConfig {
            epochs: 5,
            ..HeadConfig::default()
        };
        let (ng, x) = LinearHead::fit_features(&texts, vec![vec![0.5, 0.5], vec![0.1, 0.9]], &cfg);
        let h = LinearHead::train(
            &x,
            &[0, 1],
            vec!["a".into(), "b".into()],
            ng,
            &cfg,
            &mut |_, _| {},
        );
        let meta = ArtefactMeta {
            version: "v".into(),
            encoder: "e".into(),
            labels: h.labels.clone(),
            dim: h.dim,
            vocab: h.ngrams.as_ref().map_or(0, Ngrams::len),
            temperature: 1.5,
            config: cfg,
            oos_threshold: 0.3,
            holdout_accuracy: 1.0,
            training_ms: 1,
            payload_sha256: String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        save_artefact(&path, &h, &meta).unwrap();
        let (back, m2) = load_artefact(&path).unwrap();
        assert_eq!(back.weights, h.weights);
        assert_eq!(back.sparse_weights, h.sparse_weights);
        assert_eq!(m2.oos_threshold, 0.3);
        assert_eq!(
            back.features(&["card arrival"], vec![vec![0.5, 0.5]])[0].sparse,
            x[0].sparse
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(load_artefact(&path)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }
}
