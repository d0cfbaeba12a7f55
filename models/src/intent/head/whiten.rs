//! Linear algebra on plain rows for the head's input: unit length, the mean row, and the
//! within-class whitening transform (a packed lower triangle).

pub(crate) fn unit(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 1e-12 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Length of a packed lower triangle of a d×d matrix.
pub(crate) fn packed_len(d: usize) -> usize {
    d * (d + 1) / 2
}

/// `L·x` for a lower-triangular `L` packed by rows.
pub(crate) fn lower_mul(l: &[f32], x: &[f32]) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let row = &l[packed_len(i)..packed_len(i) + i + 1];
            crate::dot(row, &x[..=i])
        })
        .collect()
}

/// The within-class whitening transform of [`HeadConfig::whiten`]: L⁻¹ (packed lower
/// triangle) where L·Lᵀ = S / (tr S / d) + `shrink`·I and S is the scatter of `rows` around
/// their class means (rows of class `skip` left out). Empty when there is nothing to whiten
/// (no dense part, or no row differs from its class mean).
pub fn within_class_whitener(
    rows: &[&[f32]],
    y: &[usize],
    skip: Option<usize>,
    shrink: f32,
) -> Vec<f32> {
    use rayon::prelude::*;
    let d = rows.first().map_or(0, |r| r.len());
    if d == 0 || shrink <= 0.0 {
        return vec![];
    }
    // Class means, then the deviations column by column (d × n), so each entry of S is one
    // dot product (computed on its own: the result does not depend on the threads).
    let k = y.iter().copied().max().map_or(0, |m| m + 1);
    let mut sums = vec![vec![0f64; d]; k];
    let mut counts = vec![0usize; k];
    for (r, &c) in rows.iter().zip(y) {
        if Some(c) == skip {
            continue;
        }
        counts[c] += 1;
        sums[c]
            .iter_mut()
            .zip(*r)
            .for_each(|(a, &b)| *a += f64::from(b));
    }
    let kept: Vec<usize> = (0..rows.len()).filter(|&i| Some(y[i]) != skip).collect();
    let n = kept.len();
    let mut cols = vec![0f32; d * n];
    for (j, &i) in kept.iter().enumerate() {
        let c = y[i];
        for (a, (&v, m)) in rows[i].iter().zip(&sums[c]).enumerate() {
            cols[a * n + j] = v - (m / counts[c] as f64) as f32;
        }
    }
    let s: Vec<Vec<f64>> = (0..d)
        .into_par_iter()
        .map(|a| {
            (0..=a)
                .map(|b| {
                    f64::from(crate::dot(
                        &cols[a * n..(a + 1) * n],
                        &cols[b * n..(b + 1) * n],
                    ))
                })
                .collect()
        })
        .collect();
    let trace: f64 = (0..d).map(|a| s[a][a]).sum();
    if trace <= 1e-12 {
        return vec![];
    }
    let scale = d as f64 / trace;
    // Cholesky of M = S·scale + shrink·I (positive definite: shrink > 0), lower triangle.
    let mut l: Vec<Vec<f64>> = (0..d).map(|a| vec![0f64; a + 1]).collect();
    for a in 0..d {
        for b in 0..=a {
            let mut v = s[a][b] * scale + if a == b { f64::from(shrink) } else { 0.0 };
            v -= (0..b).map(|c| l[a][c] * l[b][c]).sum::<f64>();
            l[a][b] = if a == b {
                v.max(1e-12).sqrt()
            } else {
                v / l[b][b]
            };
        }
    }
    // L⁻¹, one column at a time by forward substitution.
    let inv_cols: Vec<Vec<f64>> = (0..d)
        .into_par_iter()
        .map(|b| {
            let mut x = vec![0f64; d];
            for a in b..d {
                let mut v = if a == b { 1.0 } else { 0.0 };
                v -= (b..a).map(|c| l[a][c] * x[c]).sum::<f64>();
                x[a] = v / l[a][a];
            }
            x
        })
        .collect();
    (0..d)
        .flat_map(|a| inv_cols[..=a].iter().map(move |col| col[a] as f32))
        .collect()
}

/// The mean of `rows` (all of one length).
pub(crate) fn mean_row(rows: &[Vec<f32>]) -> Vec<f32> {
    let d = rows.first().map_or(0, Vec::len);
    let mut m = vec![0f64; d];
    for r in rows {
        m.iter_mut().zip(r).for_each(|(a, &b)| *a += f64::from(b));
    }
    let n = rows.len().max(1) as f64;
    m.into_iter().map(|a| (a / n) as f32).collect()
}
