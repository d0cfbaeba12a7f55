//! Scoring predictions into a report.

use std::collections::{BTreeMap, BTreeSet};

use crate::metrics;

use crate::data::{MultiRow, Row};
use crate::report::{ConfusedPair, MultiIntentScores, Report, ThresholdRow};

use super::args::IntentArgs;
use super::local::Predictions;

pub(crate) fn score(
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
    // Calibration of the served decision (threshold and distance gate applied), out-of-scope
    // decisions and rows included: `conf` is the confidence served with `pred`.
    let correct: Vec<bool> = gold_rows
        .iter()
        .zip(&p.pred)
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
        oos_groups: vec![],
        threshold: None,
        nearest_threshold: None,
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

/// Each `--test-oos` group's recall: the share of its rows (a range of the test rows) whose
/// served prediction is the out-of-scope label.
pub(crate) fn oos_group_recall(
    groups: &[(String, std::ops::Range<usize>)],
    pred: &[String],
    oos: &str,
) -> Vec<(String, usize, f64)> {
    groups
        .iter()
        .map(|(name, r)| {
            let hit = pred[r.clone()].iter().filter(|p| *p == oos).count();
            (name.clone(), r.len(), hit as f64 / r.len().max(1) as f64)
        })
        .collect()
}

pub(crate) fn score_multi(rows: &[MultiRow], got: Vec<Vec<String>>) -> MultiIntentScores {
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

pub(crate) fn sorted_set(names: impl Iterator<Item = String>, skip: &str) -> Vec<String> {
    let s: BTreeSet<String> = names.filter(|n| n != skip).collect();
    s.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_out_of_scope_group_is_scored_on_its_own_rows() {
        let pred: Vec<String> = ["a", "oos", "oos", "b", "oos", "oos", "oos"]
            .map(String::from)
            .to_vec();
        // Rows 0-1 are in scope; 2-3 the near group, 4-6 the far one.
        let groups = vec![("near".to_string(), 2..4), ("far".to_string(), 4..7)];
        assert_eq!(
            oos_group_recall(&groups, &pred, "oos"),
            [("near".to_string(), 2, 0.5), ("far".to_string(), 3, 1.0)]
        );
        assert!(oos_group_recall(&[], &pred, "oos").is_empty());
    }
}
