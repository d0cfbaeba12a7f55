//! The distance gate beside the softmax threshold: how close a clause comes to the nearest
//! in-scope training example (cosine of the head's dense input), and the cut below which it is
//! out of scope, calibrated without any out-of-scope example: each example is read against the
//! examples of the other folds (as a visitor's message is new to all of them), and the cut
//! rejects a set share of them.
//!
//! Why: a softmax only compares intents with each other, so a message unlike every example can
//! still get a confident top intent ("can I pay in bitcoin?" on a pricing set). How far the
//! message is from everything a team wrote is a second, independent reading. On the shared
//! near-domain development sets it took far out-of-scope recall from 78–90 % to 97–99 % (README,
//! "Near-domain out-of-scope").

use super::head::Features;

/// The in-scope training examples' dense features at unit length, one row each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Examples {
    pub dim: usize,
    /// Row-major, `len() × dim`.
    pub rows: Vec<f32>,
}

impl Examples {
    /// The rows of `x` whose label `y` is not `oos` (out-of-scope examples are no evidence of
    /// being in scope).
    pub fn from_features(x: &[Features], y: &[usize], oos: Option<usize>) -> Self {
        let dim = x.first().map_or(0, |f| f.dense.len());
        let mut rows = Vec::with_capacity(x.len() * dim);
        for (f, &c) in x.iter().zip(y) {
            if Some(c) == oos || f.dense.len() != dim {
                continue;
            }
            rows.extend(unit_copy(&f.dense));
        }
        Self { dim, rows }
    }

    /// For each row of `probes` (row indices), the cosine with its nearest row of another
    /// fold (`fold[row]`; rows past its end are in none, so every probe reads them).
    pub fn nearest_in_other_folds(&self, probes: &[usize], fold: &[usize]) -> Vec<f32> {
        let rows: Vec<&[f32]> = self.rows.chunks_exact(self.dim.max(1)).collect();
        let fold_of = |j: usize| fold.get(j).copied().unwrap_or(usize::MAX);
        probes
            .iter()
            .filter(|&&i| i < rows.len())
            .map(|&i| {
                rows.iter()
                    .enumerate()
                    .filter(|&(j, _)| fold_of(j) != fold_of(i))
                    .map(|(_, r)| crate::dot(r, rows[i]))
                    .fold(-1.0f32, f32::max)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cosine of `dense` with its nearest example; 1 when there are no examples (or the
    /// sizes disagree), so that the gate never rejects what it cannot read.
    pub fn nearest(&self, dense: &[f32]) -> f32 {
        if self.is_empty() || dense.len() != self.dim {
            return 1.0;
        }
        let q = unit_copy(dense);
        self.rows
            .chunks_exact(self.dim)
            .map(|r| crate::dot(r, &q))
            .fold(-1.0f32, f32::max)
    }
}

/// Examples read against the other folds to calibrate the cut, at most: the quantile is stable
/// long before (BANKING77: 8,998 examples, 3,000 probes read in about a second on 2 cores).
pub const MAX_PROBES: usize = 3000;

/// Folds of the calibration: each example is read against the other 80 %, as the held-out
/// share of [`crate::intent::ClassifierConfig::holdout`] is.
pub const FOLDS: usize = 5;

/// `0..n` when `n <= max`, else `max` of them drawn without replacement (seeded), sorted.
pub fn sample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    if n > max {
        crate::rng::Rng::new(seed ^ 0x4EA7).shuffle(&mut all);
        all.truncate(max);
        all.sort_unstable();
    }
    all
}

fn unit_copy(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 1e-12 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

/// The distance cut from in-scope examples' nearest-example cosines: the highest that rejects
/// at most `share` of them. −1 (nothing rejected) without rows or with `share` 0.
pub fn calibrate(mut nearest: Vec<f32>, share: f32) -> f32 {
    if nearest.is_empty() || share <= 0.0 {
        return -1.0;
    }
    nearest.sort_by(f32::total_cmp);
    let k = (nearest.len() as f32 * share).floor() as usize;
    nearest.get(k).copied().unwrap_or(-1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(dense: &[f32]) -> Features {
        Features {
            dense: dense.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn nearest_is_the_best_cosine_over_in_scope_examples() {
        let x = [f(&[1.0, 0.0]), f(&[0.0, 2.0]), f(&[-1.0, 0.0])];
        // The third example is out of scope: it is not kept.
        let e = Examples::from_features(&x, &[0, 1, 2], Some(2));
        assert_eq!(e.len(), 2);
        assert!((e.nearest(&[3.0, 3.0]) - 0.5f32.sqrt()).abs() < 1e-6);
        assert!(
            (e.nearest(&[0.0, -1.0]) - 0.0).abs() < 1e-6,
            "orthogonal to the first, opposite the second"
        );
        assert!(
            (e.nearest(&[-1.0, 0.0]) - 0.0).abs() < 1e-6,
            "the out-of-scope example does not count"
        );
        assert_eq!(
            Examples::default().nearest(&[1.0, 0.0]),
            1.0,
            "no examples: never rejects"
        );
        assert_eq!(
            e.nearest(&[1.0, 0.0, 0.0]),
            1.0,
            "another encoder's size: never rejects"
        );
    }

    #[test]
    fn probes_read_only_the_rows_of_other_folds() {
        let x = [f(&[1.0, 0.0]), f(&[1.0, 0.1]), f(&[0.0, 1.0])];
        let e = Examples::from_features(&x, &[0, 0, 1], None);
        // Each row its own fold: leave one out.
        let loo = e.nearest_in_other_folds(&[0, 2], &[0, 1, 2]);
        assert!((loo[0] - 1.0 / 1.01f32.sqrt()).abs() < 1e-6, "{loo:?}");
        assert!((loo[1] - 0.1 / 1.01f32.sqrt()).abs() < 1e-6, "{loo:?}");
        // The first two in one fold: the first reads only the third.
        let two = e.nearest_in_other_folds(&[0], &[0, 0, 1]);
        assert!(two[0].abs() < 1e-6, "{two:?}");
        // A row past the folds (an intent's name) is read by every probe.
        let named = e.nearest_in_other_folds(&[0], &[0, 0]);
        assert!(named[0].abs() < 1e-6, "{named:?}");
        assert_eq!(sample(5, 10, 7), vec![0, 1, 2, 3, 4]);
        let s = sample(100, 10, 7);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s[9] < 100);
        assert_eq!(s, sample(100, 10, 7), "seeded");
    }

    #[test]
    fn the_cut_rejects_at_most_the_share_of_held_out_rows() {
        let scores: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let t = calibrate(scores.clone(), 0.02);
        assert_eq!(scores.iter().filter(|&&s| s < t).count(), 2);
        assert_eq!(calibrate(scores.clone(), 0.0), -1.0);
        assert_eq!(calibrate(vec![], 0.5), -1.0);
        // Fewer rows than one share: nothing is rejected.
        let t = calibrate(vec![0.3, 0.9], 0.02);
        assert_eq!(t, 0.3);
    }
}
