//! int8 linears for x86-64 CPUs with AVX2 but no VNNI (AMD Zen 1–3, Intel before Ice Lake),
//! where candle's int8 kernels do not apply and the encoder's f32 linears were the whole cost of
//! the answer encoder's pass (MPNet: 35 ms a clause on a 2-core AVX2 VM, README "Encoder paths").
//!
//! The arithmetic:
//! - weights quantised once, symmetric int8 with one `f32` scale per output and per block of
//!   [`KB`] inputs (`scale = max |w| / 127`);
//! - inputs quantised per call the same way, per row and per block of [`KB`];
//! - each block's products summed exactly in `i32`, then scaled by the two scales and added in
//!   `f32`.
//!
//! The kernel is ggml's AVX2 trick for a signed × signed byte product: `vpmaddubsw` multiplies
//! unsigned by signed bytes, so it takes `|x|` and `w` with `x`'s sign, and since both are
//! within ±127 (never −128) no pair of products saturates the `i16` sums (2 · 127 · 127 <
//! 2¹⁵). It is register-blocked: [`MR`] input rows × [`NC`] outputs accumulate in registers
//! along a block; weights are packed at load into panels of [`NC`] outputs, 32 inputs at a time,
//! so a pass streams each panel once (a quarter of the f32 weights' bytes).
//!
//! `unsafe` is confined to the SIMD intrinsics, behind the run-time AVX2 check.

#![allow(unsafe_code)]

/// Outputs per weight panel.
const NC: usize = 4;
/// Input rows per register block.
const MR: usize = 3;
/// Inputs per quantisation block.
const KB: usize = 128;
/// Inputs per AVX2 step (one 256-bit register of bytes).
const STEP: usize = 32;
/// Multiply-adds below which a linear runs on the calling thread.
#[cfg(target_arch = "x86_64")]
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// A linear's weights in int8, packed for [`QLinear::forward`].
pub struct QLinear {
    out: usize,
    inp: usize,
    /// `inp` rounded up to a multiple of [`KB`] (the extra weights are zeros).
    k: usize,
    /// Panel `p`, step `s`, output `c`: the 32 weights of output `p·NC + c` for inputs
    /// `s·32 .. s·32 + 32`.
    w: Vec<i8>,
    /// Panel `p`, block `b`, output `c`: the scale of that output's weights in that block.
    scales: Vec<f32>,
}

/// Symmetric int8 of `v` (at most [`KB`] values): the scale and the values (within ±127).
fn quantize_block(v: &[f32], q: &mut [i8]) -> f32 {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, x) in q.iter_mut().zip(v) {
        *q = (x * id).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

impl QLinear {
    /// Whether this CPU runs the kernel (AVX2).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Quantises and packs `w`, `out` rows of `inp` weights (row-major, as a linear's weight
    /// matrix is stored: `y = x · wᵀ`).
    pub fn new(w: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(w.len(), out * inp, "weights are out × inp");
        let k = inp.div_ceil(KB) * KB;
        let (panels, nb, steps) = (out.div_ceil(NC), k / KB, k / STEP);
        let mut q = vec![0i8; panels * k * NC];
        let mut scales = vec![0f32; panels * nb * NC];
        let mut block = [0i8; KB];
        for (o, row) in w.chunks_exact(inp).enumerate() {
            let (p, c) = (o / NC, o % NC);
            for (b, vals) in row.chunks(KB).enumerate() {
                scales[(p * nb + b) * NC + c] = quantize_block(vals, &mut block);
                for (i, &v) in block[..vals.len()].iter().enumerate() {
                    let kk = b * KB + i;
                    q[((p * steps + kk / STEP) * NC + c) * STEP + kk % STEP] = v;
                }
            }
        }
        Self {
            out,
            inp,
            k,
            w: q,
            scales,
        }
    }

    /// `y = x · wᵀ` (no bias) for `rows` rows of `inp` inputs; `y` becomes `rows × out`.
    /// Panics where [`Self::available`] is false.
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut Vec<f32>) {
        assert!(Self::available(), "the int8 kernel needs AVX2 and FMA");
        assert!(x.len() >= rows * self.inp, "x is rows × inp");
        let (k, nb) = (self.k, self.k / KB);
        let mut xq = vec![0i8; rows * k];
        let mut dx = vec![0f32; rows * nb];
        for r in 0..rows {
            for (b, vals) in x[r * self.inp..(r + 1) * self.inp].chunks(KB).enumerate() {
                dx[r * nb + b] = quantize_block(vals, &mut xq[r * k + b * KB..][..vals.len()]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        super::by_panels(
            self.out,
            NC,
            rows,
            rows * self.out * self.inp >= PARALLEL_MIN_MACS,
            None,
            y,
            |p0, o| {
                let np = o.len() / (rows * NC);
                // SAFETY: `available()` was asserted (AVX2 and FMA); the slices hold exactly
                // `np` panels, `rows` rows of `k` inputs and `np · rows · NC` outputs.
                unsafe {
                    avx2::panels(
                        &self.w[p0 * k * NC..(p0 + np) * k * NC],
                        &self.scales[p0 * nb * NC..(p0 + np) * nb * NC],
                        &xq,
                        &dx,
                        rows,
                        k,
                        o,
                    )
                }
            },
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{KB, MR, NC, STEP};
    use std::arch::x86_64::*;

    /// Every panel of `w` against every row of `xq`: `out[p][r][c]`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panels(
        w: &[i8],
        scales: &[f32],
        xq: &[i8],
        dx: &[f32],
        rows: usize,
        k: usize,
        out: &mut [f32],
    ) {
        let nb = k / KB;
        let np = out.len() / (rows * NC);
        debug_assert_eq!(w.len(), np * k * NC);
        debug_assert_eq!(scales.len(), np * nb * NC);
        debug_assert!(xq.len() >= rows * k && dx.len() >= rows * nb);
        for p in 0..np {
            let wp = w.as_ptr().add(p * k * NC);
            let sp = scales.as_ptr().add(p * nb * NC);
            let mut r = 0;
            while r < rows {
                let o = out.as_mut_ptr().add((p * rows + r) * NC);
                let (x, d) = (xq.as_ptr().add(r * k), dx.as_ptr().add(r * nb));
                if rows - r >= MR {
                    block::<MR>(wp, sp, x, d, k, o);
                    r += MR;
                } else {
                    block::<1>(wp, sp, x, d, k, o);
                    r += 1;
                }
            }
        }
    }

    /// Rows `0..R` of `x` (each `k` bytes, scales `d`) against one panel: `o[r·NC + c]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize>(
        wp: *const i8,
        sp: *const f32,
        x: *const i8,
        d: *const f32,
        k: usize,
        o: *mut f32,
    ) {
        let nb = k / KB;
        let ones = _mm256_set1_epi16(1);
        let mut total = [[_mm256_setzero_ps(); NC]; R];
        for b in 0..nb {
            let mut acc = [[_mm256_setzero_si256(); NC]; R];
            for s in b * (KB / STEP)..(b + 1) * (KB / STEP) {
                let ws: [__m256i; NC] = std::array::from_fn(|c| {
                    _mm256_loadu_si256(wp.add((s * NC + c) * STEP) as *const __m256i)
                });
                for (i, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(x.add(i * k + s * STEP) as *const __m256i);
                    let ax = _mm256_abs_epi8(xv);
                    for (a, wv) in acc.iter_mut().zip(&ws) {
                        // |x| · (w with x's sign): unsigned × signed bytes, pairs summed in
                        // i16 (within ±2·127², no saturation), then pairs of those in i32.
                        let prod = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(*wv, xv));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(prod, ones));
                    }
                }
            }
            for (i, (t, acc)) in total.iter_mut().zip(&acc).enumerate() {
                let dxi = *d.add(i * nb + b);
                for (c, (t, a)) in t.iter_mut().zip(acc).enumerate() {
                    let s = _mm256_set1_ps(dxi * *sp.add(b * NC + c));
                    *t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*a), s, *t);
                }
            }
        }
        for (i, t) in total.iter().enumerate() {
            for (c, t) in t.iter().enumerate() {
                *o.add(i * NC + c) = hsum(*t);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::QLinear;

    /// A small deterministic generator (the tests' own, not the crate's).
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Where every block's largest magnitude is 127 and all values are whole numbers,
    /// quantisation is exact (scale 1), so the kernel must give the integer product exactly:
    /// odd sizes (a partial panel, a partial block, an odd row) and both thread policies.
    #[test]
    fn exact_where_the_values_are_already_int8() {
        if !QLinear::available() {
            return;
        }
        let mut seed = 7;
        for (rows, out, inp) in [(1, 4, 128), (3, 7, 200), (5, 130, 384), (17, 64, 1536)] {
            let mut int = |n: usize| -> Vec<f32> {
                let mut v: Vec<f32> = (0..n)
                    .map(|_| (lcg(&mut seed) % 255) as f32 - 127.0)
                    .collect();
                // Each block of 128 (and the tail) holds a ±127 so its scale is exactly 1.
                for (b, chunk) in v.chunks_mut(128).enumerate() {
                    chunk[0] = if b % 2 == 0 { 127.0 } else { -127.0 };
                }
                v
            };
            let w: Vec<f32> = (0..out).flat_map(|_| int(inp)).collect();
            let x: Vec<f32> = (0..rows).flat_map(|_| int(inp)).collect();
            let q = QLinear::new(&w, out, inp);
            let mut y = vec![];
            q.forward(&x, rows, &mut y);
            assert_eq!(y.len(), rows * out);
            for r in 0..rows {
                for o in 0..out {
                    let want: i64 = (0..inp)
                        .map(|i| x[r * inp + i] as i64 * w[o * inp + i] as i64)
                        .sum();
                    assert_eq!(
                        y[r * out + o],
                        want as f32,
                        "({rows},{out},{inp}) at {r},{o}"
                    );
                }
            }
        }
    }

    /// On real-valued data the result is the f64 product within int8 rounding: each term's
    /// error is at most half a step of each factor, so the bound is per output
    /// Σ (|x|·dw + |w|·dx)/2 + dx·dw/4, with d = max |·| / 127 over the row's whole input (a
    /// looser scale than the kernel's per block, so the bound holds).
    #[test]
    fn within_rounding_of_the_f64_product() {
        if !QLinear::available() {
            return;
        }
        let mut seed = 11;
        let (rows, out, inp) = (9, 96, 768);
        let mut real = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 4.0)
                .collect()
        };
        let w = real(out * inp);
        let mut x = real(rows * inp);
        x[5] = 40.0; // an outlier, as activations have
        let q = QLinear::new(&w, out, inp);
        let mut y = vec![];
        q.forward(&x, rows, &mut y);
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            let dx = xr.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
            for o in 0..out {
                let wr = &w[o * inp..(o + 1) * inp];
                let dw = wr.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                let want: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let bound: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| (a.abs() as f64 * dw + b.abs() as f64 * dx) / 2.0 + dx * dw / 4.0)
                    .sum();
                let got = y[r * out + o] as f64;
                assert!(
                    (got - want).abs() <= bound + 1e-3,
                    "{r},{o}: {got} vs {want} (bound {bound})"
                );
            }
        }
    }
}
