//! The `intents` command line and the classifier configuration it gives.

use std::path::PathBuf;

use clap::Args;
use closer_models::intent::head::HeadConfig;
use closer_models::intent::ngrams::NgramConfig;
use closer_models::intent::ClassifierConfig;

#[derive(Args, Clone)]
pub(crate) struct IntentArgs {
    /// Training rows: JSONL `{"text","intent"}`, or a tenant intent file (.yaml).
    #[arg(long)]
    pub(crate) train: PathBuf,
    /// Test rows (same formats). Without it, use --folds.
    #[arg(long)]
    pub(crate) test: Option<PathBuf>,
    /// More test rows that are all out of scope, scored as their own group (`NAME=FILE`, e.g.
    /// `near=id_oos_val.jsonl far=ood_oos_val.jsonl`; repeatable): each row's label is replaced
    /// by --oos-label, and the report gives each group's recall of the served decision.
    #[arg(long = "test-oos", value_name = "NAME=FILE", value_parser = oos_group)]
    pub(crate) test_oos: Vec<(String, PathBuf)>,
    /// K-fold cross-validation on --train (stratified, seeded).
    #[arg(long)]
    pub(crate) folds: Option<usize>,
    /// Train on N examples per intent only (seeded), for few-shot curves.
    #[arg(long)]
    pub(crate) shots: Option<usize>,
    /// Fixes every split, sample and shuffle (the server trains with seed 7).
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
    /// The label of out-of-scope rows (CLINC150: `oos`); they train the out-of-scope class and
    /// are scored by the CLINC150 convention.
    #[arg(long)]
    pub(crate) oos_label: Option<String>,
    /// A fixed out-of-scope threshold instead of the one calibrated on held-out examples.
    #[arg(long)]
    pub(crate) threshold: Option<f32>,
    /// Held-out in-scope accuracy the calibrated threshold may cost (default the server's).
    #[arg(long)]
    pub(crate) in_scope_loss: Option<f32>,
    /// Share of the examples, each read against the other folds, the distance gate may reject
    /// (0: no gate, neither cut; default the server's, `--nearest-reject-rate` of `closer serve`).
    #[arg(long, value_parser = closer_models::intent::nearest::parse_share)]
    pub(crate) nearest_reject_rate: Option<f32>,
    /// Also build this many multi-intent messages from the test rows and score them.
    #[arg(long, default_value_t = 0)]
    pub(crate) multi: usize,
    /// Where report.json, report.md, confusion.svg and confidence.svg go.
    #[arg(long, default_value = "eval-report")]
    pub(crate) out: PathBuf,
    /// Evaluate a running server's Classify RPC at this address (e.g. http://127.0.0.1:50051)
    /// instead of training here.
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// The tenant to classify as, with --server.
    #[arg(long, default_value = "applinks")]
    pub(crate) tenant: String,
    /// Evaluate at most this many test rows (0 = all).
    #[arg(long, default_value_t = 0)]
    pub(crate) limit: usize,
    /// Folder of ready models (`closer models pull`).
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    pub(crate) model_dir: PathBuf,
    /// The sentence encoder: `minilm` (the default), `mpnet` or `minilm+mpnet` (as the
    /// server's `--intent-encoder`; `closer models pull --intent-encoder mpnet` first).
    #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
    pub(crate) encoder: closer_models::source::IntentEncoder,
    /// Keep embeddings here, keyed by model and texts, so repeated runs skip the encoder.
    #[arg(long, env = "CLOSER_EVAL_CACHE", default_value_os_t = std::env::temp_dir().join("closer-eval-cache"))]
    pub(crate) cache_dir: PathBuf,
    /// Head training overrides (defaults are the server's): the L2 penalty (per example, as
    /// in a mean loss; given, it is not chosen on the held-out share), and the L-BFGS step
    /// limit and gradient tolerance.
    #[arg(long)]
    l2: Option<f32>,
    #[arg(long)]
    pub(crate) max_iter: Option<usize>,
    #[arg(long)]
    pub(crate) tolerance: Option<f32>,
    #[arg(long)]
    pub(crate) word_weight: Option<f32>,
    #[arg(long)]
    pub(crate) char_weight: Option<f32>,
    /// Within-class whitening shrinkage of the embedding (0: off; default the server's).
    #[arg(long)]
    pub(crate) whiten: Option<f32>,
    /// Word features of word stems (Snowball English) instead of the words as written.
    #[arg(long)]
    pub(crate) stem: bool,
    /// Use the sentence embedding alone (no n-gram features).
    #[arg(long)]
    pub(crate) no_ngrams: bool,
    /// Read embeddings as they are, without subtracting the training examples' mean.
    #[arg(long)]
    pub(crate) no_center: bool,
    /// Train on the examples alone, not also on each intent's name read as words.
    #[arg(long)]
    pub(crate) no_name_examples: bool,
    /// Fine-tune the encoder's last layer on the training rows for this many epochs first
    /// (experimental; embeddings are then not cached).
    #[arg(long, default_value_t = 0)]
    pub(crate) finetune_epochs: usize,
    #[arg(long)]
    pub(crate) finetune_lr: Option<f64>,
    /// More training rows (JSONL, e.g. from `closer-eval augment`), added after sampling and
    /// never held out; rows of intents absent from --train are ignored.
    #[arg(long)]
    pub(crate) extra: Option<PathBuf>,
}

fn oos_group(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.trim().is_empty() && !file.is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(file)))
        }
        _ => Err(format!(
            "{s:?}: expected NAME=FILE, e.g. near=id_oos_val.jsonl"
        )),
    }
}

impl IntentArgs {
    pub(crate) fn config(&self) -> ClassifierConfig {
        let mut cfg = ClassifierConfig::default();
        let h: &mut HeadConfig = &mut cfg.head;
        if let Some(l2) = self.l2 {
            // A penalty given here is used as it is, not chosen on the held-out share.
            h.l2 = l2;
            cfg.l2_choices.clear();
        }
        h.max_iter = self.max_iter.unwrap_or(h.max_iter);
        h.tolerance = self.tolerance.unwrap_or(h.tolerance);
        h.seed = self.seed;
        h.center = !self.no_center;
        if self.no_ngrams {
            h.ngrams = None;
        } else {
            let n: &mut NgramConfig = h.ngrams.get_or_insert_with(NgramConfig::default);
            n.word_weight = self.word_weight.unwrap_or(n.word_weight);
            n.char_weight = self.char_weight.unwrap_or(n.char_weight);
            n.stem = self.stem;
        }
        if let Some(w) = self.whiten {
            // Given, it applies whatever the examples per intent.
            cfg.head.whiten = w;
            cfg.whiten_below = usize::MAX;
        }
        cfg.name_examples = !self.no_name_examples;
        cfg.fixed_threshold = self.threshold;
        cfg.in_scope_loss = self.in_scope_loss.unwrap_or(cfg.in_scope_loss);
        cfg.nearest_reject_rate = self.nearest_reject_rate.unwrap_or(cfg.nearest_reject_rate);
        cfg
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn out_of_scope_groups_are_name_equals_file() {
        assert_eq!(
            super::oos_group("near=a/id_oos_val.jsonl").unwrap(),
            ("near".to_string(), "a/id_oos_val.jsonl".into())
        );
        for bad in ["near", "=x.jsonl", "near="] {
            let e = super::oos_group(bad).unwrap_err();
            assert!(e.contains("NAME=FILE"), "{e}");
        }
    }
}
