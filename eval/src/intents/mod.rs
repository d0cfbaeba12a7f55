//! `closer-eval intents`: trains the intent classifier exactly as the server does and
//! evaluates it (`run_local`), or sends the test set through a running server's Classify RPC
//! (`run_server`).

mod args;
mod local;
mod score;

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::Context;

use crate::ui::{bar, wait_serving};
use crate::{data, metrics};
use closer_models::intent::{HeadClassifier, OUT_OF_SCOPE};
use closer_models::IntentClassifier;

use crate::data::Row;
use crate::report::Report;

pub(crate) use args::IntentArgs;
pub(crate) use local::{cached_embed, open_encoder};
use local::{LabelMap, Local, Predictions};
use score::{oos_group_recall, score, score_multi, sorted_set};

pub(crate) fn run_local(args: IntentArgs) -> anyhow::Result<Report> {
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
    let (test_rows, groups) = test_rows(&args, test)?;
    let (trained, secs, top) = local.train(&train_rows)?;
    eprintln!(
        "trained on {} rows in {secs:.1} s (held-out accuracy {:.2} %, L2 {:e}, {}, temperature {:.2}, OOS threshold {:.2}, nearest-example cut {:.3})",
        train_rows.len(),
        trained.report.holdout_accuracy * 100.0,
        trained.report.l2,
        if trained.report.whitened {
            "whitened"
        } else {
            "not whitened"
        },
        trained.report.temperature,
        trained.threshold,
        trained.nearest_threshold
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
    r.oos_groups = oos_group_recall(&groups, &p.pred, args.oos_label.as_deref().unwrap_or(""));
    let mut lat = local.latency(&trained, top.as_ref(), &test_rows)?;
    lat.sort_by(f64::total_cmp);
    r.latency_ms_p50 = metrics::percentile(&lat, 0.5);
    r.latency_ms_p99 = metrics::percentile(&lat, 0.99);
    r.training_seconds = secs;
    r.threshold = args.oos_label.as_ref().map(|_| trained.threshold);
    r.nearest_threshold = args.oos_label.as_ref().map(|_| trained.nearest_threshold);
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

/// Named ranges of the test rows (the `--test-oos` groups).
type Groups = Vec<(String, std::ops::Range<usize>)>;

/// The test rows: `--test` (cut to `--limit`), then each `--test-oos` group with its rows
/// labelled `--oos-label`; and the groups' ranges in the rows.
fn test_rows(args: &IntentArgs, test: &std::path::Path) -> anyhow::Result<(Vec<Row>, Groups)> {
    let mut rows = data::read_rows(test)?;
    if args.limit > 0 {
        rows.truncate(args.limit);
    }
    let mut groups = vec![];
    if !args.test_oos.is_empty() {
        let oos = args
            .oos_label
            .as_deref()
            .context("--test-oos needs --oos-label (the label its rows are scored as)")?;
        for (name, file) in &args.test_oos {
            let start = rows.len();
            rows.extend(data::read_rows(file)?.into_iter().map(|r| Row {
                intent: oos.to_string(),
                ..r
            }));
            groups.push((name.clone(), start..rows.len()));
        }
    }
    Ok((rows, groups))
}

pub(crate) async fn run_server(args: IntentArgs, addr: String) -> anyhow::Result<Report> {
    use closer_proto::v1 as pb;
    let test = args.test.as_ref().context("--server needs --test FILE")?;
    let (rows, groups) = test_rows(&args, test)?;
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
    r.oos_groups = oos_group_recall(&groups, &p.pred, &oos_name);
    r.threshold_sweep.clear();
    r.threshold = served.as_ref().map(|m| m.oos_threshold);
    r.nearest_threshold = served.map(|m| m.nearest_threshold);
    Ok(r)
}
