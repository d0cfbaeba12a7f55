//! The distance gate beside the softmax threshold: how close a clause comes to the nearest
//! in-scope training example (cosine of the head's dense input), and the cut below which it is
//! out of scope, calibrated without any out-of-scope example: each example is read against the
//! examples of the other folds (as a visitor's message is new to all of them), and the cut
//! rejects a set share of them.
//!
//! Two cuts: one on the nearest example of any intent, and one per intent on the nearest example
//! of the intent the head chose (an intent whose examples lie close together gets a higher cut
//! than a broad one; see [`calibrate_all`]): a clause below either is out of scope.
//!
//! Why: a softmax only compares intents with each other, so a message unlike every example can
//! still get a confident top intent ("can I pay in bitcoin?" on a pricing set). How far the
//! message is from everything a team wrote is a second, independent reading. On the shared
//! near-domain development sets it took far out-of-scope recall from 78–90 % to 93–99 %, and
//! near-domain recall from 14–37 % to 21–54 % (README, "Near-domain out-of-scope: the served
//! decision").

use super::head::whiten::unit;
use super::head::Features;

/// The in-scope training examples' dense features at unit length, one row each, with their
/// intents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Examples {
    pub dim: usize,
    /// Row-major, `len() × dim`.
    pub rows: Vec<f32>,
    /// Each row's intent (label index).
    pub labels: Vec<u32>,
}

/// How close a clause comes to the examples: the cosine with the nearest of all, and with the
/// nearest of each intent (−1 for an intent without examples).
#[derive(Debug, Clone, PartialEq)]
pub struct Near {
    pub any: f32,
    pub by_intent: Vec<f32>,
}

impl Near {
    /// As close as can be: no gate rejects it (no examples to compare with).
    pub fn open() -> Self {
        Self {
            any: 1.0,
            by_intent: vec![],
        }
    }

    /// The cosine with intent `i`'s nearest example (1 when unknown: never gated).
    pub fn to_intent(&self, i: usize) -> f32 {
        self.by_intent.get(i).copied().unwrap_or(1.0)
    }
}

impl Examples {
    /// The rows of `x` whose label `y` is not `oos` (out-of-scope examples are no evidence of
    /// being in scope).
    pub fn from_features(x: &[Features], y: &[usize], oos: Option<usize>) -> Self {
        let dim = x.first().map_or(0, |f| f.dense.len());
        let mut rows = Vec::with_capacity(x.len() * dim);
        let mut labels = vec![];
        for (f, &c) in x.iter().zip(y) {
            if Some(c) == oos || f.dense.len() != dim {
                continue;
            }
            rows.extend(unit_copy(&f.dense));
            labels.push(c as u32);
        }
        Self { dim, rows, labels }
    }

    /// For each row of `probes` (row indices): (its intent, the cosine with its nearest row of
    /// another fold, the same among its own intent's rows, −1 if none) (`fold[row]`; rows past
    /// its end are in none, so every probe reads them).
    pub fn nearest_in_other_folds(
        &self,
        probes: &[usize],
        fold: &[usize],
    ) -> Vec<(usize, f32, f32)> {
        let rows: Vec<&[f32]> = self.rows.chunks_exact(self.dim.max(1)).collect();
        let fold_of = |j: usize| fold.get(j).copied().unwrap_or(usize::MAX);
        probes
            .iter()
            .filter(|&&i| i < rows.len())
            .map(|&i| {
                let (mut any, mut own) = (-1.0f32, -1.0f32);
                for (j, r) in rows.iter().enumerate() {
                    if fold_of(j) != fold_of(i) {
                        let c = crate::dot(r, rows[i]);
                        any = any.max(c);
                        if self.labels[j] == self.labels[i] {
                            own = own.max(c);
                        }
                    }
                }
                (self.labels[i] as usize, any, own)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How close `dense` comes to the examples of each of `intents` intents and to any;
    /// [`Near::open`] when there are no examples (or the sizes disagree), so that the gate
    /// never rejects what it cannot read.
    pub fn nearest(&self, dense: &[f32], intents: usize) -> Near {
        if self.is_empty() || dense.len() != self.dim {
            return Near::open();
        }
        let q = unit_copy(dense);
        let mut near = Near {
            any: -1.0,
            by_intent: vec![-1.0; intents],
        };
        for (r, &c) in self.rows.chunks_exact(self.dim).zip(&self.labels) {
            let v = crate::dot(r, &q);
            near.any = near.any.max(v);
            if let Some(b) = near.by_intent.get_mut(c as usize) {
                *b = b.max(v);
            }
        }
        near
    }

    /// What [`crate::intent::TrainedHead::decide`] reads for a clause whose top intent is `top`,
    /// for less: the cosine with `top`'s nearest example exactly, and with the nearest of all
    /// only when it can matter. When `top`'s nearest already reaches `any_cut`, the nearest of
    /// all (at least as near) does too, and `any` is that lower bound; otherwise every row is
    /// read. Other intents read −1. The gate decides as with [`Examples::nearest`]; on a
    /// BANKING77-sized tenant an in-scope clause reads one intent's rows, not 9,000.
    pub fn nearest_for(&self, dense: &[f32], intents: usize, top: usize, any_cut: f32) -> Near {
        if self.is_empty() || dense.len() != self.dim {
            return Near::open();
        }
        let q = unit_copy(dense);
        let rows = || self.rows.chunks_exact(self.dim);
        let own = rows()
            .zip(&self.labels)
            .filter(|(_, &c)| c as usize == top)
            .map(|(r, _)| crate::dot(r, &q))
            .fold(-1.0f32, f32::max);
        let mut by_intent = vec![-1.0; intents];
        if let Some(b) = by_intent.get_mut(top) {
            *b = own;
        }
        let any = if own >= any_cut {
            own
        } else {
            rows().map(|r| crate::dot(r, &q)).fold(-1.0f32, f32::max)
        };
        Near { any, by_intent }
    }
}

/// Examples read against the other folds to calibrate the cuts, at most: all of BANKING77's
/// 8,998 and CLINC150's 15,000. Each intent's cut is the lowest of its examples' readings, so a
/// sample would set it higher than all of them would.
pub const MAX_PROBES: usize = 20_000;

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
    let mut v = v.to_vec();
    unit(&mut v);
    v
}

/// Parses a share for [`crate::intent::ClassifierConfig::nearest_reject_rate`] from a command
/// line: 0 (off) up to below one half, an error naming the value otherwise.
pub fn parse_share(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..0.5).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a share from 0 to below 0.5, e.g. 0.015"
        )),
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

/// The cuts of [`Examples::nearest_in_other_folds`]' readings: over the nearest of any intent,
/// the one rejecting `share` of them; per intent (of `intents`), the lowest of its examples'
/// nearest of their own intent: no clause is served as an intent while it is farther from the
/// intent's examples than each of them is from the others. (A share per intent too cost
/// CLINC150, 100 examples an intent, 4 points of in-scope accuracy where the lowest cost 0.8;
/// below 67 examples an intent the two are the same.) −1 (no cut) for an intent without
/// readings, or with an example that has no other-fold example of its own.
pub fn calibrate_all(
    readings: &[(usize, f32, f32)],
    intents: usize,
    share: f32,
) -> (f32, Vec<f32>) {
    let any = calibrate(readings.iter().map(|r| r.1).collect(), share);
    let mut own = vec![f32::INFINITY; intents];
    for &(c, _, o) in readings {
        if let Some(v) = own.get_mut(c) {
            *v = v.min(o);
        }
    }
    let own = own
        .into_iter()
        .map(|v| if v.is_finite() { v } else { -1.0 })
        .collect();
    (any, own)
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
        assert_eq!((e.len(), e.labels.clone()), (2, vec![0, 1]));
        let n = e.nearest(&[3.0, 3.0], 3);
        assert!((n.any - 0.5f32.sqrt()).abs() < 1e-6);
        assert!((n.to_intent(0) - 0.5f32.sqrt()).abs() < 1e-6 && n.to_intent(2) == -1.0);
        let n = e.nearest(&[0.0, -1.0], 3);
        assert!(
            n.any.abs() < 1e-6,
            "orthogonal to the first, opposite the second"
        );
        assert!((n.to_intent(1) + 1.0).abs() < 1e-6, "{n:?}");
        assert!(
            e.nearest(&[-1.0, 0.0], 3).any.abs() < 1e-6,
            "the out-of-scope example does not count"
        );
        assert_eq!(
            Examples::default().nearest(&[1.0, 0.0], 3),
            Near::open(),
            "no examples: never rejects"
        );
        assert_eq!(
            e.nearest(&[1.0, 0.0, 0.0], 3),
            Near::open(),
            "another encoder's size: never rejects"
        );
        assert_eq!(Near::open().to_intent(5), 1.0);
    }

    #[test]
    fn the_lazy_reading_gates_exactly_as_the_full_one() {
        // Pseudo-random rows of 3 intents; every probe, top intent and cut.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let x: Vec<Features> = (0..60)
            .map(|_| f(&[next(), next(), next(), next()]))
            .collect();
        let y: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let e = Examples::from_features(&x, &y, None);
        for _ in 0..50 {
            let probe = [next(), next(), next(), next()];
            let full = e.nearest(&probe, 3);
            for top in 0..3 {
                for cut in [-1.0, 0.2, 0.6, 0.9, 0.99] {
                    let lazy = e.nearest_for(&probe, 3, top, cut);
                    assert_eq!(lazy.to_intent(top), full.to_intent(top));
                    assert_eq!(lazy.any < cut, full.any < cut, "top {top}, cut {cut}");
                    assert!(lazy.any <= full.any);
                }
            }
        }
    }

    #[test]
    fn probes_read_only_the_rows_of_other_folds() {
        let x = [f(&[1.0, 0.0]), f(&[1.0, 0.1]), f(&[0.0, 1.0])];
        let e = Examples::from_features(&x, &[0, 0, 1], None);
        // Each row its own fold: leave one out.
        let loo = e.nearest_in_other_folds(&[0, 2], &[0, 1, 2]);
        let s = 1.0 / 1.01f32.sqrt();
        assert_eq!((loo[0].0, loo[1].0), (0, 1));
        assert!(
            (loo[0].1 - s).abs() < 1e-6 && (loo[0].2 - s).abs() < 1e-6,
            "{loo:?}"
        );
        // The third is the only example of its intent: no nearest of its own.
        assert!(
            (loo[1].1 - 0.1 * s).abs() < 1e-6 && loo[1].2 == -1.0,
            "{loo:?}"
        );
        // The first two in one fold: the first reads only the third.
        let two = e.nearest_in_other_folds(&[0], &[0, 0, 1]);
        assert!(two[0].1.abs() < 1e-6 && two[0].2 == -1.0, "{two:?}");
        // A row past the folds (an intent's name) is read by every probe.
        let named = e.nearest_in_other_folds(&[0], &[0, 0]);
        assert!(named[0].1.abs() < 1e-6, "{named:?}");
        let (any, own) = calibrate_all(&loo, 3, 0.5);
        assert_eq!(any, loo[0].1.max(loo[1].1));
        assert_eq!(own, vec![loo[0].2, -1.0, -1.0]);
        // Per intent, the lowest reading of its examples; none without readings.
        let readings = [(0, 0.9, 0.8), (0, 0.9, 0.6), (0, 0.9, 0.7), (1, 0.5, -1.0)];
        let (_, own) = calibrate_all(&readings, 3, 0.015);
        assert_eq!(own, vec![0.6, -1.0, -1.0]);
        assert_eq!(sample(5, 10, 7), vec![0, 1, 2, 3, 4]);
        let s = sample(100, 10, 7);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s[9] < 100);
        assert_eq!(s, sample(100, 10, 7), "seeded");
    }

    #[test]
    fn a_share_is_from_0_to_below_one_half() {
        assert_eq!(parse_share("0.015"), Ok(0.015));
        assert_eq!(parse_share("0"), Ok(0.0));
        for bad in ["-0.1", "0.5", "2", "lots"] {
            let e = parse_share(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("share"), "{e}");
        }
    }

    #[test]
    fn the_cut_rejects_at_most_the_share_of_the_readings() {
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
