//! The local run's pieces: cached embeddings, dataset label names, the trained classifier.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::ui::bar;
use closer_models::bert::Layer;
use closer_models::intent::finetune::{finetune_top, FinetuneConfig};
use closer_models::intent::head::Features;
use closer_models::intent::{Decision, TrainProgress, TrainedHead, TrainingData, OUT_OF_SCOPE};
use closer_models::Embedder;

use crate::data::Row;

use super::args::IntentArgs;

/// Embeds texts, reusing vectors cached under `dir` for the same model and texts.
pub(crate) fn cached_embed(
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
pub(crate) struct LabelMap {
    pub(crate) oos: Option<String>,
}

impl LabelMap {
    pub(crate) fn to_model<'a>(&self, l: &'a str) -> &'a str {
        if self.oos.as_deref() == Some(l) {
            OUT_OF_SCOPE
        } else {
            l
        }
    }
    pub(crate) fn to_dataset(&self, l: &str) -> String {
        match &self.oos {
            Some(o) if l == OUT_OF_SCOPE => o.clone(),
            _ => l.to_string(),
        }
    }
}

/// What one prediction pass produced, in dataset label names.
pub(crate) struct Predictions {
    /// The served prediction (the out-of-scope label when the decision is out of scope).
    pub(crate) pred: Vec<String>,
    /// The confidence served with `pred`.
    pub(crate) conf: Vec<f32>,
    /// Top class ignoring the out-of-scope threshold (for the sweep).
    pub(crate) top: Vec<String>,
    /// What the threshold is compared with (the head's top probability before temperature
    /// scaling; with --server, the reported confidence), for the sweep.
    pub(crate) score: Vec<f32>,
}

pub(crate) struct Local {
    pub(crate) encoder: Arc<dyn Embedder>,
    pub(crate) text_encoder: Arc<closer_models::encoder::TextEncoder>,
    pub(crate) args: IntentArgs,
    pub(crate) map: LabelMap,
    /// Rows from --extra.
    pub(crate) extra: Vec<Row>,
}

impl Local {
    /// Features of `texts`: cached frozen embeddings, or the fine-tuned encoder's.
    pub(crate) fn features(
        &self,
        texts: &[&str],
        top: Option<&Layer>,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        match top {
            Some(t) => Ok(self.text_encoder.pooled_with_top(texts, t)?),
            None => cached_embed(self.encoder.as_ref(), texts, &self.args.cache_dir),
        }
    }

    pub(crate) fn train(&self, rows: &[Row]) -> anyhow::Result<(TrainedHead, f64, Option<Layer>)> {
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

    pub(crate) fn predict(
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
            // What a visitor is served, and the confidence served with it.
            let (pred, conf) = match trained.decide(&p, &trained.nearest_for(f, &p)) {
                Decision::OutOfScope { confidence } if has_oos => {
                    (self.map.to_dataset(OUT_OF_SCOPE), confidence)
                }
                _ => (top.clone(), bp),
            };
            out.pred.push(pred);
            out.conf.push(conf);
            out.score.push(trained.oos_score(&p));
            out.top.push(top);
        }
        Ok(out)
    }

    pub(crate) fn latency(
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
            let p = trained.head.predict(&f[0]);
            let _ = trained.decide(&p, &trained.nearest_for(&f[0], &p));
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(lat)
    }
}

/// The intent encoder as the server builds it: the first model, and the embedder the head
/// reads (that model, or several side by side).
pub(crate) fn open_encoder(
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
