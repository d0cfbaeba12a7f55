//! `closer-eval`: Closer's evaluation suites.
//!
//! `closer-eval intents` trains the intent classifier exactly as the server does (MiniLM
//! embeddings + n-gram TF-IDF, linear head, held-out calibration of temperature and the
//! out-of-scope threshold) and evaluates it; or, with `--server`, sends the test set through a
//! running server's Classify RPC. See README.md, "Evaluating intents".

mod answerability;
mod answers;
mod attacks;
mod augment;
mod data;
mod grounding;
mod metrics;
mod oracle;
mod report;
mod speed;
mod ui;

use ui::{bar, wait_serving};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use closer_models::bert::Layer;
use closer_models::finetune::{finetune_top, FinetuneConfig};
use closer_models::head::{Features, HeadConfig};
use closer_models::intent::{
    ClassifierConfig, Decision, HeadClassifier, TrainProgress, TrainedHead, TrainingData,
    OUT_OF_SCOPE,
};
use closer_models::ngrams::NgramConfig;
use closer_models::{Embedder, IntentClassifier};

use crate::data::{MultiRow, Row};
use crate::report::{ConfusedPair, MultiIntentScores, Report, ThresholdRow};

#[derive(Parser)]
#[command(name = "closer-eval", about = "Closer's evaluation suites")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train and evaluate the intent classifier (or evaluate a running server's).
    Intents(Box<IntentArgs>),
    /// Run a grounding question set through a running server: retrieval recall, answer
    /// correctness, invented spans, refusals.
    Grounding(grounding::GroundingArgs),
    /// The evaluation tenants' visitor messages through a running server, scored on the reply
    /// text: answered correctly, false refusals, unanswerable refused, unbacked claims.
    Answers(answers::AnswersArgs),
    /// Train the answerability judgement on tuning tenants through a running server.
    Answerability(answerability::AnswerabilityArgs),
    /// Prompt-injection corpora through the real models: attack success before and after the guards.
    Attacks(attacks::AttacksArgs),
    /// The encoder's single-message latency (fast path and candle graph) and batch throughput.
    Speed(speed::SpeedArgs),
    /// Write more training messages per intent with the local generator (an experiment; see
    /// `intents --extra`).
    Augment(augment::AugmentArgs),
    /// Write the intent encoder's vectors of a file's texts (raw little-endian f32, one row
    /// per text), for measurements outside Closer (eval/experiments).
    Embed(EmbedArgs),
}

#[derive(Args, Clone)]
struct EmbedArgs {
    /// Rows: JSONL `{"text","intent"}`, or a tenant intent file (.yaml).
    #[arg(long)]
    input: PathBuf,
    /// Where the vectors go.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
    encoder: closer_models::source::IntentEncoder,
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    model_dir: PathBuf,
    #[arg(long, env = "CLOSER_EVAL_CACHE", default_value_os_t = std::env::temp_dir().join("closer-eval-cache"))]
    cache_dir: PathBuf,
}

fn run_embed(args: EmbedArgs) -> anyhow::Result<()> {
    let rows = data::read_rows(&args.input)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let (_, encoder) = open_encoder(&args.model_dir, &args.encoder)?;
    let t = Instant::now();
    let v = cached_embed(encoder.as_ref(), &texts, &args.cache_dir)?;
    let bytes: Vec<u8> = v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes).with_context(|| args.out.display().to_string())?;
    eprintln!(
        "{} rows × {} ({}) in {:.1} s -> {}",
        v.len(),
        encoder.dim(),
        encoder.name(),
        t.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

#[derive(Args, Clone)]
struct IntentArgs {
    /// Training rows: JSONL `{"text","intent"}`, or a tenant intent file (.yaml).
    #[arg(long)]
    train: PathBuf,
    /// Test rows (same formats). Without it, use --folds.
    #[arg(long)]
    test: Option<PathBuf>,
    /// K-fold cross-validation on --train (stratified, seeded).
    #[arg(long)]
    folds: Option<usize>,
    /// Train on N examples per intent only (seeded), for few-shot curves.
    #[arg(long)]
    shots: Option<usize>,
    /// Fixes every split, sample and shuffle (the server trains with seed 7).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The label of out-of-scope rows (CLINC150: `oos`); they train the out-of-scope class and
    /// are scored by the CLINC150 convention.
    #[arg(long)]
    oos_label: Option<String>,
    /// A fixed out-of-scope threshold instead of the one calibrated on held-out examples.
    #[arg(long)]
    threshold: Option<f32>,
    /// Held-out in-scope accuracy the calibrated threshold may cost (default the server's).
    #[arg(long)]
    in_scope_loss: Option<f32>,
    /// Also build this many multi-intent messages from the test rows and score them.
    #[arg(long, default_value_t = 0)]
    multi: usize,
    /// Where report.json, report.md, confusion.svg and confidence.svg go.
    #[arg(long, default_value = "eval-report")]
    out: PathBuf,
    /// Evaluate a running server's Classify RPC at this address (e.g. http://127.0.0.1:50051)
    /// instead of training here.
    #[arg(long)]
    server: Option<String>,
    /// The tenant to classify as, with --server.
    #[arg(long, default_value = "applinks")]
    tenant: String,
    /// Evaluate at most this many test rows (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Folder of ready models (`closer models pull`).
    #[arg(long, env = "CLOSER_MODEL_DIR", default_value_os_t = closer_models::source::ModelPaths::default_root())]
    model_dir: PathBuf,
    /// The sentence encoder: `minilm` (the default), `mpnet` or `minilm+mpnet` (as the
    /// server's `--intent-encoder`; `closer models pull --intent-encoder mpnet` first).
    #[arg(long, env = "CLOSER_INTENT_ENCODER", default_value = "minilm")]
    encoder: closer_models::source::IntentEncoder,
    /// Keep embeddings here, keyed by model and texts, so repeated runs skip the encoder.
    #[arg(long, env = "CLOSER_EVAL_CACHE", default_value_os_t = std::env::temp_dir().join("closer-eval-cache"))]
    cache_dir: PathBuf,
    /// Head training overrides (defaults are the server's): the L2 penalty (per example, as
    /// in a mean loss; given, it is not chosen on the held-out share), and the L-BFGS step
    /// limit and gradient tolerance.
    #[arg(long)]
    l2: Option<f32>,
    #[arg(long)]
    max_iter: Option<usize>,
    #[arg(long)]
    tolerance: Option<f32>,
    #[arg(long)]
    word_weight: Option<f32>,
    #[arg(long)]
    char_weight: Option<f32>,
    /// Within-class whitening shrinkage of the embedding (0: off; default the server's).
    #[arg(long)]
    whiten: Option<f32>,
    /// Word features of word stems (Snowball English) instead of the words as written.
    #[arg(long)]
    stem: bool,
    /// Use the sentence embedding alone (no n-gram features).
    #[arg(long)]
    no_ngrams: bool,
    /// Read embeddings as they are, without subtracting the training examples' mean.
    #[arg(long)]
    no_center: bool,
    /// Train on the examples alone, not also on each intent's name read as words.
    #[arg(long)]
    no_name_examples: bool,
    /// Fine-tune the encoder's last layer on the training rows for this many epochs first
    /// (experimental; embeddings are then not cached).
    #[arg(long, default_value_t = 0)]
    finetune_epochs: usize,
    #[arg(long)]
    finetune_lr: Option<f64>,
    /// More training rows (JSONL, e.g. from `closer-eval augment`), added after sampling and
    /// never held out; rows of intents absent from --train are ignored.
    #[arg(long)]
    extra: Option<PathBuf>,
}

impl IntentArgs {
    fn config(&self) -> ClassifierConfig {
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
        cfg
    }
}

/// Embeds texts, reusing vectors cached under `dir` for the same model and texts.
fn cached_embed(
    encoder: &dyn Embedder,
    texts: &[&str],
    dir: &Path,
) -> anyhow::Result<Vec<Vec<f32>>> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(encoder.name().as_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let path = dir.join(format!("{}.f32", hex::encode(h.finalize())));
    let d = encoder.dim();
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == texts.len() * d * 4 {
            let flat: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            return Ok(flat.chunks(d).map(<[f32]>::to_vec).collect());
        }
    }
    let pb = bar(texts.len(), "embedding");
    let mut v = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(128) {
        v.extend(encoder.embed(chunk)?);
        pb.set_position(v.len() as u64);
    }
    pb.finish_and_clear();
    std::fs::create_dir_all(dir)?;
    let bytes: Vec<u8> = v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&path, bytes)?;
    Ok(v)
}

/// Label names as the classifier sees them: the dataset's OOS label becomes `out_of_scope`.
struct LabelMap {
    oos: Option<String>,
}

impl LabelMap {
    fn to_model<'a>(&self, l: &'a str) -> &'a str {
        if self.oos.as_deref() == Some(l) {
            OUT_OF_SCOPE
        } else {
            l
        }
    }
    fn to_dataset(&self, l: &str) -> String {
        match &self.oos {
            Some(o) if l == OUT_OF_SCOPE => o.clone(),
            _ => l.to_string(),
        }
    }
}

/// What one prediction pass produced, in dataset label names.
struct Predictions {
    pred: Vec<String>,
    /// Top-class calibrated probability.
    conf: Vec<f32>,
    /// Top class ignoring the out-of-scope threshold (for the sweep).
    top: Vec<String>,
    /// What the threshold is compared with (the head's top probability before temperature
    /// scaling; with --server, the reported confidence), for the sweep.
    score: Vec<f32>,
}

struct Local {
    encoder: Arc<dyn Embedder>,
    text_encoder: Arc<closer_models::encoder::TextEncoder>,
    args: IntentArgs,
    map: LabelMap,
    /// Rows from --extra.
    extra: Vec<Row>,
}

impl Local {
    /// Features of `texts`: cached frozen embeddings, or the fine-tuned encoder's.
    fn features(&self, texts: &[&str], top: Option<&Layer>) -> anyhow::Result<Vec<Vec<f32>>> {
        match top {
            Some(t) => Ok(self.text_encoder.pooled_with_top(texts, t)?),
            None => cached_embed(self.encoder.as_ref(), texts, &self.args.cache_dir),
        }
    }

    fn train(&self, rows: &[Row]) -> anyhow::Result<(TrainedHead, f64, Option<Layer>)> {
        let t = Instant::now();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for r in rows {
            names.insert(self.map.to_model(&r.intent));
        }
        let labels: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let y: Vec<usize> = rows
            .iter()
            .map(|r| index[self.map.to_model(&r.intent)])
            .collect();
        let top = if self.args.finetune_epochs > 0 {
            let mut fc = FinetuneConfig {
                epochs: self.args.finetune_epochs,
                ..FinetuneConfig::default()
            };
            fc.lr = self.args.finetune_lr.unwrap_or(fc.lr);
            let pb = bar(1, "fine-tuning");
            let layer = finetune_top(
                &self.text_encoder,
                &texts,
                &y,
                labels.len(),
                &fc,
                self.args.seed,
                &mut |s, n| {
                    pb.set_length(n as u64);
                    pb.set_position(s as u64);
                },
            )?;
            pb.finish_and_clear();
            eprintln!(
                "fine-tuned the last encoder layer in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            Some(layer)
        } else {
            None
        };
        let cfg = self.args.config();
        let mut data = TrainingData::new(texts, y, labels, cfg.name_examples);
        for r in &self.extra {
            if let Some(&i) = index.get(self.map.to_model(&r.intent)) {
                data.texts.push(r.text.as_str().into());
                data.y.push(i);
            }
        }
        let x = self.features(&data.text_refs(), top.as_ref())?;
        let pb = bar(cfg.head.max_iter * 2, "training");
        let trained = TrainedHead::train(&data, x, self.encoder.name(), &cfg, &mut |p| {
            if let TrainProgress::Training { step, steps } = p {
                pb.set_length(steps as u64);
                pb.set_position(step as u64);
            }
        });
        pb.finish_and_clear();
        Ok((trained, t.elapsed().as_secs_f64(), top))
    }

    fn predict(
        &self,
        trained: &TrainedHead,
        top: Option<&Layer>,
        rows: &[Row],
    ) -> anyhow::Result<Predictions> {
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let x = self.features(&texts, top)?;
        let feats: Vec<Features> = trained.head.features(&texts, x);
        let mut out = Predictions {
            pred: vec![],
            conf: vec![],
            top: vec![],
            score: vec![],
        };
        let has_oos = self.map.oos.is_some();
        for f in &feats {
            let p = trained.head.predict(f);
            let (best, bp) =
                p.iter()
                    .enumerate()
                    .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
            let top = self.map.to_dataset(&trained.head.labels[best]);
            let pred = match trained.decide(&p) {
                Decision::OutOfScope { .. } if has_oos => self.map.to_dataset(OUT_OF_SCOPE),
                _ => top.clone(),
            };
            out.pred.push(pred);
            out.conf.push(bp);
            out.score.push(trained.oos_score(&p));
            out.top.push(top);
        }
        Ok(out)
    }

    fn latency(
        &self,
        trained: &TrainedHead,
        top: Option<&Layer>,
        rows: &[Row],
    ) -> anyhow::Result<Vec<f64>> {
        let mut lat = vec![];
        for r in rows.iter().take(200) {
            let t = Instant::now();
            let v = match top {
                Some(l) => self.text_encoder.pooled_with_top(&[r.text.as_str()], l)?,
                None => self.encoder.embed(&[r.text.as_str()])?,
            };
            let f = trained.head.features(&[r.text.as_str()], v);
            let _ = trained.decide(&trained.head.predict(&f[0]));
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(lat)
    }
}

/// Scores predictions and fills a report.
fn score(
    args: &IntentArgs,
    mode: &str,
    gold_rows: &[Row],
    p: &Predictions,
    train_rows: usize,
) -> Report {
    let mut labels: BTreeSet<String> = gold_rows.iter().map(|r| r.intent.clone()).collect();
    labels.extend(p.pred.iter().cloned());
    let labels: Vec<String> = labels.into_iter().collect();
    let idx: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let gold: Vec<usize> = gold_rows.iter().map(|r| idx[r.intent.as_str()]).collect();
    let pred: Vec<usize> = p.pred.iter().map(|l| idx[l.as_str()]).collect();
    let m = metrics::confusion(&gold, &pred, labels.len());
    let per = metrics::per_label(&m, &labels);
    let (macro_f1, weighted_f1) = metrics::f1_averages(&per);
    let correct: Vec<bool> = gold_rows
        .iter()
        .zip(&p.top)
        .map(|(r, t)| &r.intent == t)
        .collect();
    let oos_idx = args.oos_label.as_deref().and_then(|l| idx.get(l).copied());
    let mut sweep = vec![];
    if let Some(o) = oos_idx {
        for step in 0..=9 {
            let t = step as f32 / 10.0;
            let pr: Vec<usize> = p
                .top
                .iter()
                .zip(&p.score)
                .map(|(l, &c)| {
                    if c < t {
                        o
                    } else {
                        idx.get(l.as_str()).copied().unwrap_or(o)
                    }
                })
                .collect();
            let s = metrics::oos_scores(&gold, &pr, o);
            sweep.push(ThresholdRow {
                threshold: t,
                in_scope_accuracy: s.in_scope_accuracy,
                oos_recall: s.oos_recall,
                oos_precision: s.oos_precision,
            });
        }
    }
    Report {
        mode: mode.into(),
        train: args.train.display().to_string(),
        test: args.test.as_ref().map_or_else(
            || format!("{} folds of --train", args.folds.unwrap_or(0)),
            |t| t.display().to_string(),
        ),
        seed: args.seed,
        train_rows,
        test_rows: gold_rows.len(),
        accuracy: metrics::accuracy(&gold, &pred),
        macro_f1,
        weighted_f1,
        most_confused: metrics::confused_pairs(&m, 15)
            .into_iter()
            .map(|(g, p, count)| ConfusedPair {
                gold: labels[g].clone(),
                predicted: labels[p].clone(),
                count,
            })
            .collect(),
        per_intent: per,
        confusion: m,
        oos: oos_idx.map(|o| metrics::oos_scores(&gold, &pred, o)),
        threshold: None,
        threshold_sweep: sweep,
        expected_calibration_error: metrics::expected_calibration_error(&p.conf, &correct, 10),
        confidence_histogram: metrics::confidence_histogram(&p.conf, &correct, 10)
            .into_iter()
            .enumerate()
            .map(|(i, (a, b))| (i as f32 / 10.0, a, b))
            .collect(),
        fold_accuracies: vec![],
        training_seconds: 0.0,
        latency_ms_p50: f64::NAN,
        latency_ms_p99: f64::NAN,
        multi_intent: None,
        labels,
        settings: serde_json::to_value(args.config()).unwrap_or_default(),
    }
}

fn score_multi(rows: &[MultiRow], got: Vec<Vec<String>>) -> MultiIntentScores {
    let mut exact = 0;
    let mut recall: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut errors = vec![];
    for (r, g) in rows.iter().zip(got) {
        for want in &r.intents {
            let e = recall.entry(want.clone()).or_default();
            e.1 += 1;
            e.0 += usize::from(g.contains(want));
        }
        if g == r.intents {
            exact += 1;
        } else if errors.len() < 25 {
            errors.push((r.text.clone(), r.intents.clone(), g));
        }
    }
    MultiIntentScores {
        messages: rows.len(),
        exact_set_accuracy: exact as f64 / rows.len().max(1) as f64,
        per_intent_recall: recall
            .into_iter()
            .map(|(l, (hit, n))| (l, hit as f64 / n.max(1) as f64, n))
            .collect(),
        errors,
    }
}

fn sorted_set(names: impl Iterator<Item = String>, skip: &str) -> Vec<String> {
    let s: BTreeSet<String> = names.filter(|n| n != skip).collect();
    s.into_iter().collect()
}

/// The intent encoder as the server builds it: the first model, and the embedder the head
/// reads (that model, or several side by side).
fn open_encoder(
    model_dir: &Path,
    which: &closer_models::source::IntentEncoder,
) -> anyhow::Result<(Arc<closer_models::encoder::TextEncoder>, Arc<dyn Embedder>)> {
    let paths = closer_models::source::ModelPaths::new(model_dir.to_path_buf());
    let models = which.models();
    let first = Arc::new(closer_models::encoder::TextEncoder::open(
        &paths, models[0],
    )?);
    if models.len() == 1 {
        return Ok((first.clone(), first));
    }
    let mut parts: Vec<Arc<dyn Embedder>> = vec![first.clone()];
    for &m in &models[1..] {
        parts.push(Arc::new(closer_models::encoder::TextEncoder::open(
            &paths, m,
        )?));
    }
    Ok((
        first,
        Arc::new(closer_models::concat::ConcatEmbedder::new(parts)?),
    ))
}

fn run_local(args: IntentArgs) -> anyhow::Result<Report> {
    if args.finetune_epochs > 0 && args.encoder.models().len() > 1 {
        anyhow::bail!("--finetune-epochs takes one encoder, not {}", args.encoder);
    }
    let (text_encoder, encoder) = open_encoder(&args.model_dir, &args.encoder)?;
    let mut train_rows = data::read_rows(&args.train)?;
    if let Some(n) = args.shots {
        train_rows = data::shots(&train_rows, n, args.seed);
    }
    let local = Local {
        encoder,
        text_encoder,
        map: LabelMap {
            oos: args.oos_label.clone(),
        },
        args: args.clone(),
        extra: match &args.extra {
            Some(p) => data::read_rows(p)?,
            None => vec![],
        },
    };
    if let Some(k) = args.folds {
        anyhow::ensure!(k >= 2, "--folds must be 2 or more");
        // Rows written from the training file would carry test folds' rows into training.
        anyhow::ensure!(args.extra.is_none(), "--extra takes --test, not --folds");
        anyhow::ensure!(args.test.is_none(), "use either --test or --folds");
        let fold = data::folds(&train_rows, k, args.seed);
        let mut pred = Predictions {
            pred: vec![String::new(); train_rows.len()],
            conf: vec![0.0; train_rows.len()],
            top: vec![String::new(); train_rows.len()],
            score: vec![0.0; train_rows.len()],
        };
        let (mut secs, mut accs, mut threshold, mut lat) = (0.0, vec![], 0.0, vec![]);
        for f in 0..k {
            let tr: Vec<Row> = train_rows
                .iter()
                .zip(&fold)
                .filter(|(_, &g)| g != f)
                .map(|(r, _)| r.clone())
                .collect();
            let te_idx: Vec<usize> = (0..train_rows.len()).filter(|&i| fold[i] == f).collect();
            let te: Vec<Row> = te_idx.iter().map(|&i| train_rows[i].clone()).collect();
            let (trained, s, top) = local.train(&tr)?;
            secs += s;
            threshold += trained.threshold / k as f32;
            let p = local.predict(&trained, top.as_ref(), &te)?;
            if f + 1 == k {
                lat = local.latency(&trained, top.as_ref(), &te)?;
            }
            accs.push(
                te.iter()
                    .zip(&p.pred)
                    .filter(|(r, l)| &r.intent == *l)
                    .count() as f64
                    / te.len().max(1) as f64,
            );
            for (j, &i) in te_idx.iter().enumerate() {
                pred.pred[i] = p.pred[j].clone();
                pred.conf[i] = p.conf[j];
                pred.score[i] = p.score[j];
                pred.top[i] = p.top[j].clone();
            }
            eprintln!("fold {}/{k}: accuracy {:.2} %", f + 1, accs[f] * 100.0);
        }
        let mut r = score(
            &args,
            "local, cross-validation",
            &train_rows,
            &pred,
            train_rows.len() * (k - 1) / k,
        );
        r.fold_accuracies = accs;
        lat.sort_by(f64::total_cmp);
        r.latency_ms_p50 = metrics::percentile(&lat, 0.5);
        r.latency_ms_p99 = metrics::percentile(&lat, 0.99);
        r.training_seconds = secs / k as f64;
        r.threshold = args.oos_label.as_ref().map(|_| threshold);
        return Ok(r);
    }
    let test = args
        .test
        .as_ref()
        .context("give --test FILE or --folds K")?;
    let mut test_rows = data::read_rows(test)?;
    if args.limit > 0 {
        test_rows.truncate(args.limit);
    }
    let (trained, secs, top) = local.train(&train_rows)?;
    eprintln!(
        "trained on {} rows in {secs:.1} s (held-out accuracy {:.2} %, L2 {:e}, {}, temperature {:.2}, OOS threshold {:.2})",
        train_rows.len(),
        trained.report.holdout_accuracy * 100.0,
        trained.report.l2,
        if trained.report.whitened {
            "whitened"
        } else {
            "not whitened"
        },
        trained.report.temperature,
        trained.threshold
    );
    let known: BTreeSet<&str> = train_rows.iter().map(|r| r.intent.as_str()).collect();
    let unknown = test_rows
        .iter()
        .filter(|r| !known.contains(r.intent.as_str()))
        .count();
    if unknown > 0 {
        eprintln!(
            "warning: {unknown} test rows have intents absent from training; they count as errors"
        );
    }
    let p = local.predict(&trained, top.as_ref(), &test_rows)?;
    let mut r = score(&args, "local", &test_rows, &p, train_rows.len());
    let mut lat = local.latency(&trained, top.as_ref(), &test_rows)?;
    lat.sort_by(f64::total_cmp);
    r.latency_ms_p50 = metrics::percentile(&lat, 0.5);
    r.latency_ms_p99 = metrics::percentile(&lat, 0.99);
    r.training_seconds = secs;
    r.threshold = args.oos_label.as_ref().map(|_| trained.threshold);
    if args.multi > 0 {
        let multi =
            data::multi_intent(&test_rows, args.multi, args.seed, args.oos_label.as_deref());
        let clf = HeadClassifier::from_trained(local.encoder.clone(), trained);
        let pb = bar(multi.len(), "multi-intent");
        let mut got = vec![];
        for m in &multi {
            let found = clf.classify(&m.text)?;
            got.push(sorted_set(
                found.into_iter().map(|i| local.map.to_dataset(&i.name)),
                &local.map.to_dataset(OUT_OF_SCOPE),
            ));
            pb.inc(1);
        }
        pb.finish_and_clear();
        r.multi_intent = Some(score_multi(&multi, got));
    }
    Ok(r)
}

async fn run_server(args: IntentArgs, addr: String) -> anyhow::Result<Report> {
    use closer_proto::v1 as pb;
    let test = args.test.as_ref().context("--server needs --test FILE")?;
    let mut rows = data::read_rows(test)?;
    if args.limit > 0 {
        rows.truncate(args.limit);
    }
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    wait_serving(channel.clone(), &addr).await?;
    let served = pb::intents_client::IntentsClient::new(channel.clone())
        .get(pb::GetIntentsRequest {
            tenant: args.tenant.clone(),
        })
        .await
        .with_context(|| format!("Intents.Get for tenant {:?}", args.tenant))?
        .into_inner()
        .model;
    let mut client = pb::assistant_client::AssistantClient::new(channel);
    let map = LabelMap {
        oos: args.oos_label.clone(),
    };
    let oos_name = map.to_dataset(OUT_OF_SCOPE);
    let mut classify = async |text: &str| -> anyhow::Result<(Vec<pb::Intent>, f64)> {
        let t = Instant::now();
        let resp = client
            .classify(pb::ClassifyRequest {
                tenant: args.tenant.clone(),
                text: text.to_string(),
            })
            .await
            .with_context(|| format!("Classify {text:?}"))?;
        Ok((resp.into_inner().intents, t.elapsed().as_secs_f64() * 1e3))
    };
    let pb_ = bar(rows.len(), "classifying");
    let mut p = Predictions {
        pred: vec![],
        conf: vec![],
        top: vec![],
        score: vec![],
    };
    let mut lat = vec![];
    for r in &rows {
        let (intents, ms) = classify(&r.text).await?;
        lat.push(ms);
        let top = intents
            .first()
            .map_or_else(|| oos_name.clone(), |i| map.to_dataset(&i.name));
        p.conf.push(intents.first().map_or(0.0, |i| i.confidence));
        p.score.push(intents.first().map_or(0.0, |i| i.confidence));
        p.pred.push(top.clone());
        p.top.push(top);
        pb_.inc(1);
    }
    pb_.finish_and_clear();
    let mut multi_scores = None;
    if args.multi > 0 {
        let multi = data::multi_intent(&rows, args.multi, args.seed, args.oos_label.as_deref());
        let mut got = vec![];
        for m in &multi {
            let (intents, _) = classify(&m.text).await?;
            got.push(sorted_set(
                intents.into_iter().map(|i| map.to_dataset(&i.name)),
                &oos_name,
            ));
        }
        multi_scores = Some(score_multi(&multi, got));
    }
    let mut r = score(
        &args,
        &format!("server {addr}, tenant {}", args.tenant),
        &rows,
        &p,
        0,
    );
    lat.sort_by(f64::total_cmp);
    r.latency_ms_p50 = metrics::percentile(&lat, 0.5);
    r.latency_ms_p99 = metrics::percentile(&lat, 0.99);
    r.multi_intent = multi_scores;
    r.threshold_sweep.clear();
    r.threshold = served.map(|m| m.oos_threshold);
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Intents(args) => {
            let out = args.out.clone();
            let report = match args.server.clone() {
                Some(_) if args.extra.is_some() => {
                    anyhow::bail!("--extra trains here; a --server is evaluated as deployed")
                }
                Some(addr) => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(run_server(*args, addr))?,
                None => run_local(*args)?,
            };
            report.write(&out)?;
            println!("{}", report.summary());
            eprintln!(
                "report written to {}/report.{{json,md}}, confusion.svg, confidence.svg",
                out.display()
            );
            Ok(())
        }
        Command::Grounding(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(grounding::run(args)),
        Command::Answers(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(answers::run(args)),
        Command::Answerability(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(answerability::run(args)),
        Command::Attacks(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(attacks::run(args)),
        Command::Speed(args) => speed::run(args),
        Command::Augment(args) => augment::run(args),
        Command::Embed(args) => run_embed(args),
    }
}
