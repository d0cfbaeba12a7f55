//! Training and calibrating the head: the objective (cross-entropy plus an L2 penalty) with its
//! gradient, L-BFGS, the softmax and the temperature fit.

use super::features::Features;

/// The training objective of the head: mean cross-entropy of the softmax over
/// `W·dense + S·sparse + b`, plus `penalty / 2 · (‖W‖² + ‖S‖²)` (the bias is not penalised).
/// Parameters are one vector: W (labels × dim, row-major), S (n-gram column × labels), b.
pub(crate) struct Problem<'a> {
    pub(crate) x: &'a [Features],
    pub(crate) y: &'a [usize],
    pub(crate) k: usize,
    pub(crate) d: usize,
    pub(crate) vocab: usize,
    pub(crate) penalty: f64,
}

/// Rows are summed in this many fixed chunks (in parallel, added in order), so a result does
/// not depend on the number of threads.
pub(crate) const CHUNKS: usize = 8;

impl Problem<'_> {
    pub(crate) fn len(&self) -> usize {
        self.k * self.d + self.vocab * self.k + self.k
    }

    /// The objective at `theta`; its gradient is written into `grad`.
    pub(crate) fn loss_grad(&self, theta: &[f32], grad: &mut [f32]) -> f64 {
        use rayon::prelude::*;
        let (k, d) = (self.k, self.d);
        let (w, rest) = theta.split_at(k * d);
        let (s, b) = rest.split_at(self.vocab * k);
        let n = self.x.len();
        let size = n.div_ceil(CHUNKS).max(1);
        let parts: Vec<(f64, Vec<f32>)> = (0..n)
            .step_by(size)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| {
                let mut g = vec![0f32; theta.len()];
                let mut loss = 0f64;
                let mut p = vec![0f32; k];
                for i in start..(start + size).min(n) {
                    let f = &self.x[i];
                    linear_logits(w, s, b, f, &mut p);
                    let m = p.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = p.iter().map(|v| (v - m).exp()).sum();
                    loss += f64::from(m + sum.ln() - p[self.y[i]]);
                    p.iter_mut().for_each(|v| *v = (*v - m).exp() / sum);
                    p[self.y[i]] -= 1.0;
                    let (gw, rest) = g.split_at_mut(k * d);
                    let (gs, gb) = rest.split_at_mut(self.vocab * k);
                    for (c, &pc) in p.iter().enumerate() {
                        gb[c] += pc;
                        for (gv, &xv) in gw[c * d..(c + 1) * d].iter_mut().zip(&f.dense) {
                            *gv += pc * xv;
                        }
                    }
                    for &(col, v) in &f.sparse {
                        let j = col as usize;
                        for (gv, &pc) in gs[j * k..(j + 1) * k].iter_mut().zip(&p) {
                            *gv += v * pc;
                        }
                    }
                }
                (loss, g)
            })
            .collect();
        grad.fill(0.0);
        let mut loss = 0f64;
        for (l, g) in parts {
            loss += l;
            grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        let inv_n = 1.0 / n as f32;
        let lam = self.penalty as f32;
        let penalised = k * d + self.vocab * k;
        let mut sq = 0f64;
        for (i, (gv, &t)) in grad.iter_mut().zip(theta).enumerate() {
            *gv *= inv_n;
            if i < penalised {
                *gv += lam * t;
                sq += f64::from(t) * f64::from(t);
            }
        }
        loss / n as f64 + self.penalty / 2.0 * sq
    }
}

/// `out` = W·dense + S·sparse + b, with W row-major (labels × dim) and S one row of
/// `labels` values per n-gram column: the head's logits, at inference and in training.
pub(crate) fn linear_logits(w: &[f32], s: &[f32], b: &[f32], f: &Features, out: &mut [f32]) {
    let k = b.len();
    let d = f.dense.len();
    for (c, o) in out.iter_mut().enumerate() {
        *o = b[c] + crate::dot(&w[c * d..(c + 1) * d], &f.dense);
    }
    for &(col, v) in &f.sparse {
        let j = col as usize;
        for (o, &sw) in out.iter_mut().zip(&s[j * k..(j + 1) * k]) {
            *o += v * sw;
        }
    }
}

pub(crate) fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Limited-memory BFGS (ten correction pairs) with a backtracking (Armijo) line search.
/// Minimises `f` (which returns the value and writes the gradient) from `theta`, in place;
/// stops when no gradient component exceeds `tol`, when a step no longer lowers the value, or
/// after `max_iter` steps. Returns the steps taken.
pub(crate) fn lbfgs(
    f: &mut dyn FnMut(&[f32], &mut [f32]) -> f64,
    theta: &mut Vec<f32>,
    max_iter: usize,
    tol: f32,
    progress: &mut dyn FnMut(usize),
) -> usize {
    const MEMORY: usize = 10;
    let n = theta.len();
    let mut g = vec![0f32; n];
    let mut fx = f(theta, &mut g);
    let mut hist: std::collections::VecDeque<(Vec<f32>, Vec<f32>, f64)> = Default::default();
    let mut q = vec![0f32; n];
    let mut next = vec![0f32; n];
    let mut g_next = vec![0f32; n];
    let mut alpha = [0f64; MEMORY];
    for step in 1..=max_iter {
        if g.iter().all(|v| v.abs() <= tol) {
            return step - 1;
        }
        // Two-loop recursion: q = H·g.
        q.copy_from_slice(&g);
        for (i, (s, y, rho)) in hist.iter().enumerate().rev() {
            alpha[i] = rho * dot64(s, &q);
            let a = alpha[i] as f32;
            q.iter_mut().zip(y).for_each(|(qv, &yv)| *qv -= a * yv);
        }
        let gamma = match hist.back() {
            Some((s, y, _)) => dot64(s, y) / dot64(y, y).max(1e-30),
            // First step: unit length.
            None => 1.0 / dot64(&g, &g).sqrt().max(1e-30),
        };
        q.iter_mut().for_each(|v| *v *= gamma as f32);
        for (i, (s, y, rho)) in hist.iter().enumerate() {
            let beta = rho * dot64(y, &q);
            let c = (alpha[i] - beta) as f32;
            q.iter_mut().zip(s).for_each(|(qv, &sv)| *qv += c * sv);
        }
        // Direction -q; its slope must be negative.
        let mut slope = -dot64(&g, &q);
        if slope >= 0.0 {
            hist.clear();
            let scale = 1.0 / dot64(&g, &g).sqrt().max(1e-30);
            q.iter_mut()
                .zip(&g)
                .for_each(|(qv, &gv)| *qv = gv * scale as f32);
            slope = -dot64(&g, &q);
        }
        let mut t = 1.0f32;
        let mut accepted = None;
        for _ in 0..40 {
            next.iter_mut()
                .zip(theta.iter().zip(&q))
                .for_each(|(nv, (&tv, &qv))| *nv = tv - t * qv);
            let fnext = f(&next, &mut g_next);
            if fnext.is_finite() && fnext <= fx + 1e-4 * f64::from(t) * slope {
                accepted = Some(fnext);
                break;
            }
            t *= 0.5;
        }
        let Some(fnext) = accepted else {
            return step - 1;
        };
        let s: Vec<f32> = next.iter().zip(theta.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f32> = g_next.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot64(&s, &y);
        if sy > 1e-12 {
            if hist.len() == MEMORY {
                hist.pop_front();
            }
            hist.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(theta, &mut next);
        std::mem::swap(&mut g, &mut g_next);
        let decrease = fx - fnext;
        fx = fnext;
        progress(step);
        if decrease <= 1e-14 * fx.abs().max(1.0) {
            return step;
        }
    }
    max_iter
}

pub fn softmax_in_place(v: &mut [f32]) {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

/// The temperature that minimises the negative log-likelihood of `gold` under `logits / T`
/// (golden-section search on log T in [0.05, 20]).
pub fn fit_temperature(logits: &[Vec<f32>], gold: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let nll = |log_t: f64| -> f64 {
        let t = log_t.exp() as f32;
        logits
            .iter()
            .zip(gold)
            .map(|(l, &g)| {
                let mut p: Vec<f32> = l.iter().map(|v| v / t).collect();
                softmax_in_place(&mut p);
                -(f64::from(p[g]).max(1e-12)).ln()
            })
            .sum()
    };
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - r * (b - a), a + r * (b - a));
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..40 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - r * (b - a);
            fc = nll(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + r * (b - a);
            fd = nll(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
}
