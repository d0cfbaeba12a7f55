//! Causal self-attention whose every query row is computed on its own.
//!
//! The generator batches the rows of several sequences into one pass, reads a prompt whole or
//! as a cached system part and the rest, and checks drafted tokens in the pass that decodes the
//! next one. A visitor's answer must not depend on any of that. Attention through candle's
//! matrix products does: `q · kᵀ` rounds a row differently with one query row than with
//! several, and a row's masked keys (the rest of a longer pass) change how the weighted sum of
//! values is blocked. Those last-bit differences then cross an int8 quantisation step and move
//! logits by tenths.
//!
//! Here each query row's scores are dot products with exactly the keys it may see (positions up
//! to its own), summed in one fixed order; the softmax and the weighted sum of values run over
//! those keys only, in position order. So a row's output is a function of its own query and the
//! keys and values before it, nothing else: not the other rows of the pass, not the threads.

/// `q`: `n_head × rows × d` (row `i` at position `pos + i`); `k`, `v`: `n_kv × len × d` with
/// `len >= pos + rows`, the keys and values of positions `0..len`. Query head `h` reads key
/// head `h / (n_head / n_kv)`. Returns `rows × (n_head × d)`: each row's heads side by side.
pub fn causal(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n_head, n_kv, d): (usize, usize, usize),
    pos: usize,
) -> Vec<f32> {
    assert!(n_kv > 0 && n_head.is_multiple_of(n_kv) && d > 0);
    let rows = q.len() / (n_head * d);
    let len = k.len() / (n_kv * d);
    assert_eq!(q.len(), n_head * rows * d);
    assert_eq!(k.len(), v.len());
    assert!(
        len >= pos + rows,
        "{len} keys for rows {pos}..{}",
        pos + rows
    );
    let group = n_head / n_kv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; rows * n_head * d];
    // One work item: one row, all its heads. Its arithmetic is the same on whichever thread.
    let row = |(i, y): (usize, &mut [f32])| {
        let mut scores = Vec::with_capacity(pos + i + 1);
        for (h, y) in y.chunks_exact_mut(d).enumerate() {
            let qi = &q[(h * rows + i) * d..][..d];
            let kh = &k[(h / group) * len * d..][..len * d];
            let vh = &v[(h / group) * len * d..][..len * d];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for kj in kh.chunks_exact(d).take(pos + i + 1) {
                let s = crate::dot(qi, kj) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for (p, vj) in scores.iter().zip(vh.chunks_exact(d)) {
                let p = p / sum;
                for (y, x) in y.iter_mut().zip(vj) {
                    *y += p * x;
                }
            }
        }
    };
    // Decoding rows are little work: threads would cost more than they save.
    if rows * (pos + rows) < 4096 {
        out.chunks_exact_mut(n_head * d).enumerate().for_each(row);
    } else {
        use rayon::prelude::*;
        out.par_chunks_exact_mut(n_head * d)
            .enumerate()
            .for_each(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency needed for test data).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Straightforward attention in f64 with an explicit mask: what `causal` must agree with.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: (usize, usize, usize),
        pos: usize,
    ) -> Vec<f64> {
        let (n_head, n_kv, d) = shape;
        let rows = q.len() / (n_head * d);
        let len = k.len() / (n_kv * d);
        let mut out = vec![0f64; rows * n_head * d];
        for h in 0..n_head {
            let kv = h / (n_head / n_kv);
            for i in 0..rows {
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        if j > pos + i {
                            f64::NEG_INFINITY
                        } else {
                            (0..d)
                                .map(|c| {
                                    q[(h * rows + i) * d + c] as f64
                                        * k[(kv * len + j) * d + c] as f64
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        }
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    out[(i * n_head + h) * d + c] = (0..len)
                        .map(|j| e[j] / sum * v[(kv * len + j) * d + c] as f64)
                        .sum();
                }
            }
        }
        out
    }

    const SHAPE: (usize, usize, usize) = (6, 2, 20);

    #[test]
    fn matches_masked_softmax_attention() {
        let (n_head, n_kv, d) = SHAPE;
        let (pos, rows, len) = (7, 5, 12);
        let q = values(n_head * rows * d, 1);
        let k = values(n_kv * len * d, 2);
        let v = values(n_kv * len * d, 3);
        let got = causal(&q, &k, &v, SHAPE, pos);
        let want = reference(&q, &k, &v, SHAPE, pos);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn a_rows_output_depends_on_nothing_but_its_query_and_the_keys_before_it() {
        let (n_head, n_kv, d) = SHAPE;
        // 300 rows, so the pass is split over the thread pool.
        let (rows, len) = (300, 340);
        let q = values(n_head * rows * d, 4);
        let k = values(n_kv * len * d, 5);
        let v = values(n_kv * len * d, 6);
        let whole = causal(&q, &k, &v, SHAPE, 0);
        // Rows `from..to` on their own, with the keys up to the last of them, or all of them.
        let rows_of = |from: usize, to: usize, keys: usize| {
            let mut qs = vec![];
            for h in 0..n_head {
                qs.extend_from_slice(&q[(h * rows + from) * d..(h * rows + to) * d]);
            }
            let cut = |t: &[f32]| -> Vec<f32> {
                (0..n_kv)
                    .flat_map(|h| t[h * len * d..(h * len + keys) * d].to_vec())
                    .collect()
            };
            causal(&qs, &cut(&k), &cut(&v), SHAPE, from)
        };
        let width = n_head * d;
        for (from, to, keys) in [
            (0, 1, 1),
            (41, 42, 42),
            (41, 50, 340),
            (250, 300, 300),
            (299, 300, 340),
        ] {
            let part = rows_of(from, to, keys);
            assert_eq!(
                part[..],
                whole[from * width..to * width],
                "rows {from}..{to}, {keys} keys"
            );
        }
    }
}
