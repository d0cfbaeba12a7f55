//! Classification metrics, each checked against small hand-computed cases.

use serde::Serialize;

/// Per-label precision, recall, F1 and support.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LabelScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Row = gold, column = predicted.
pub fn confusion(gold: &[usize], pred: &[usize], k: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; k]; k];
    for (&g, &p) in gold.iter().zip(pred) {
        m[g][p] += 1;
    }
    m
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

pub fn per_label(m: &[Vec<usize>], labels: &[String]) -> Vec<LabelScore> {
    let k = m.len();
    (0..k)
        .map(|c| {
            let tp = m[c][c] as f64;
            let predicted: f64 = (0..k).map(|r| m[r][c] as f64).sum();
            let support: usize = m[c].iter().sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support as f64);
            let f1 = ratio(2.0 * precision * recall, precision + recall);
            LabelScore {
                label: labels[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// Macro F1 (mean over labels with support) and weighted F1 (weighted by support).
pub fn f1_averages(scores: &[LabelScore]) -> (f64, f64) {
    let present: Vec<&LabelScore> = scores.iter().filter(|s| s.support > 0).collect();
    let total: usize = present.iter().map(|s| s.support).sum();
    let macro_f1 = ratio(present.iter().map(|s| s.f1).sum(), present.len() as f64);
    let weighted = ratio(
        present.iter().map(|s| s.f1 * s.support as f64).sum(),
        total as f64,
    );
    (macro_f1, weighted)
}

pub fn accuracy(gold: &[usize], pred: &[usize]) -> f64 {
    ratio(
        gold.iter().zip(pred).filter(|(g, p)| g == p).count() as f64,
        gold.len() as f64,
    )
}

/// Expected calibration error of the top-class confidence, over equal-width bins.
pub fn expected_calibration_error(conf: &[f32], correct: &[bool], bins: usize) -> f64 {
    let mut sum_c = vec![0f64; bins];
    let mut sum_a = vec![0f64; bins];
    let mut count = vec![0usize; bins];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = bin_of(c, bins);
        sum_c[b] += c as f64;
        sum_a[b] += if ok { 1.0 } else { 0.0 };
        count[b] += 1;
    }
    let n = conf.len().max(1) as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (count[b] as f64 / n) * ((sum_a[b] - sum_c[b]) / count[b] as f64).abs())
        .sum()
}

fn bin_of(c: f32, bins: usize) -> usize {
    // The epsilon keeps 0.9f32 (0.89999997) in the 0.9 bin.
    ((c.max(0.0) as f64 * bins as f64 + 1e-6) as usize).min(bins - 1)
}

/// Counts of (correct, wrong) predictions per confidence bin.
pub fn confidence_histogram(conf: &[f32], correct: &[bool], bins: usize) -> Vec<(usize, usize)> {
    let mut h = vec![(0, 0); bins];
    for (&c, &ok) in conf.iter().zip(correct) {
        let b = bin_of(c, bins);
        if ok {
            h[b].0 += 1;
        } else {
            h[b].1 += 1;
        }
    }
    h
}

/// The most frequent off-diagonal cells: (gold, predicted, count), largest first.
pub fn confused_pairs(m: &[Vec<usize>], top: usize) -> Vec<(usize, usize, usize)> {
    let mut v: Vec<(usize, usize, usize)> = vec![];
    for (g, row) in m.iter().enumerate() {
        for (p, &n) in row.iter().enumerate() {
            if g != p && n > 0 {
                v.push((g, p, n));
            }
        }
    }
    v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    v.truncate(top);
    v
}

/// CLINC150 convention: in-scope accuracy over in-scope rows (an in-scope row predicted
/// out-of-scope is wrong), and out-of-scope precision, recall and F1.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OosScores {
    pub in_scope_accuracy: f64,
    pub oos_precision: f64,
    pub oos_recall: f64,
    pub oos_f1: f64,
}

pub fn oos_scores(gold: &[usize], pred: &[usize], oos: usize) -> OosScores {
    let (mut ins, mut ins_ok, mut tp, mut flagged, mut out) = (0, 0, 0, 0, 0);
    for (&g, &p) in gold.iter().zip(pred) {
        if p == oos {
            flagged += 1;
        }
        if g == oos {
            out += 1;
            tp += usize::from(p == oos);
        } else {
            ins += 1;
            ins_ok += usize::from(p == g);
        }
    }
    let precision = ratio(tp as f64, flagged as f64);
    let recall = ratio(tp as f64, out as f64);
    OosScores {
        in_scope_accuracy: ratio(ins_ok as f64, ins as f64),
        oos_precision: precision,
        oos_recall: recall,
        oos_f1: ratio(2.0 * precision * recall, precision + recall),
    }
}

/// The value at quantile `q` (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn per_label_and_f1_match_a_hand_computed_case() {
        // gold 0 0 1 1 1 2, pred 0 1 1 1 0 2
        let m = confusion(&[0, 0, 1, 1, 1, 2], &[0, 1, 1, 1, 0, 2], 3);
        assert_eq!(m, vec![vec![1, 1, 0], vec![1, 2, 0], vec![0, 0, 1]]);
        let s = per_label(&m, &labels(3));
        // l0: p 1/2, r 1/2, f1 1/2; l1: p 2/3, r 2/3, f1 2/3; l2: 1, 1, 1
        assert!((s[0].f1 - 0.5).abs() < 1e-12);
        assert!((s[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s[1].support, 3);
        let (mac, w) = f1_averages(&s);
        assert!((mac - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((w - (0.5 * 2.0 + 2.0 / 3.0 * 3.0 + 1.0) / 6.0).abs() < 1e-12);
        assert!((accuracy(&[0, 0, 1, 1, 1, 2], &[0, 1, 1, 1, 0, 2]) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(confused_pairs(&m, 5), vec![(0, 1, 1), (1, 0, 1)]);
    }

    #[test]
    fn ece_and_histogram_match_a_hand_computed_case() {
        // bin 0.9: two at 0.9, one right -> |0.5 - 0.9| * 2/4; bin 0.6: two at 0.6, both right -> |1 - 0.6| * 2/4
        let conf = [0.9, 0.9, 0.6, 0.6];
        let ok = [true, false, true, true];
        let e = expected_calibration_error(&conf, &ok, 10);
        assert!((e - (0.4 * 0.5 + 0.4 * 0.5)).abs() < 1e-6, "{e}");
        let h = confidence_histogram(&conf, &ok, 10);
        assert_eq!(h[9], (1, 1));
        assert_eq!(h[6], (2, 0));
        assert_eq!(confidence_histogram(&[1.0], &[true], 10)[9], (1, 0));
    }

    #[test]
    fn oos_scores_follow_the_clinc_convention() {
        // label 2 is oos. gold: 0 1 2 2, pred: 0 2 2 0
        let s = oos_scores(&[0, 1, 2, 2], &[0, 2, 2, 0], 2);
        assert!((s.in_scope_accuracy - 0.5).abs() < 1e-12);
        assert!((s.oos_precision - 0.5).abs() < 1e-12);
        assert!((s.oos_recall - 0.5).abs() < 1e-12);
        assert!((s.oos_f1 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
