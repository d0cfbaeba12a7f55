//! The encoder's inference path without a tensor library: the same BERT maths as
//! [`crate::bert`] on plain `f32` buffers, written for what an intent or a query is — a handful
//! of messages of 5–30 tokens.
//!
//! What makes it faster than the candle graph (see `models/benches/encoder.rs`):
//! - no padding: the texts of a batch are packed one after another and attention runs per text,
//!   so a batch costs the sum of its lengths, not `n × longest`;
//! - query, key and value are one fused linear; bias, GELU and the residual add are applied in
//!   the same pass over the output; nothing is allocated per op;
//! - the linears are a register-blocked kernel over weights packed once (at load; on first use
//!   where int8 serves) into panels of 16 outputs (each panel streamed front to back; 4 input
//!   rows × 16 outputs accumulated in registers along the input: 8 independent FMA chains, no
//!   horizontal sums), SIMD with run-time dispatch: AVX2+FMA where the CPU has it, plain code
//!   otherwise, so one binary runs on any x86-64;
//! - threads by size: a linear is split over the rayon pool only when it has enough work to
//!   pay for the hand-off (a single short message mostly stays on one core, leaving the other
//!   to a concurrent request).
//!
//! It is the latency path: with a few dozen token rows the linears are bound by streaming the
//! weights, which the packed panels do once per pass. Large batches are compute-bound, where
//! candle's matmul (AVX-512 where the CPU has it) does better: the encoder sends those there
//! (see `TextEncoder::pooled_layers`). Outputs match the candle path within float rounding
//! (test `real_fast_encoder_path_matches_the_candle_graph`).
//!
//! Where the CPU has AVX-512 VNNI or AVX-VNNI, the same pass can run its linears in int8
//! instead: weights as Q8_0 (inputs widened from 384 to 512 zero-padded values so that candle's
//! VNNI kernels apply), activations quantised per 256 values. That is what ONNX Runtime's int8
//! export does too; it is served at every batch size there (faster for one message and for
//! batches: figures in README, "Encoder paths"), and stays within cosine 0.985 of the f32
//! vectors (test `real_int8_encoder_path_stays_close_to_f32`). On AVX2 CPUs without VNNI the
//! int8 linears are [`crate::kernels::int8`]'s (weights and inputs per 128 values), served the
//! same way: on a 2-core AMD EPYC (Zen 3) they take MPNet's pass over a clause from 49–55 to
//! 37–41 ms on one thread, and gain little on two (README, "Encoder paths").

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use pulp::{Arch, Simd, WithSimd};

use crate::bert::Bert;
use crate::kernels::int8::QLinear;

struct Linear {
    /// Packed in panels of [`NR`] outputs: panel `p` holds, for each input `i` in order, the
    /// weights of outputs `p·NR .. p·NR+NR` (zero past `out`), so the kernel streams each
    /// panel once, front to back. Packed at load when the f32 path serves; where int8 serves,
    /// only if the f32 path is asked for (tests, benchmarks), saving about 40 MB.
    packed: OnceLock<Vec<f32>>,
    /// The weights of the parts (shared with the candle model, not copied), to pack from.
    src: Vec<Tensor>,
    b: Vec<f32>,
    out: usize,
    inp: usize,
    /// The same weights in int8, where built.
    int8: Option<Int8>,
}

/// A linear's int8 weights, for the kernels this CPU has.
enum Int8 {
    /// Q8_0 for candle's int8 VNNI kernels, and the input width they take (`inp` rounded up to
    /// a multiple of 256; the extra inputs are zeros).
    Vnni(QMatMul, usize),
    /// Packed for [`crate::kernels::int8`] (AVX2 without VNNI).
    Avx2(QLinear),
}

/// Which int8 kernels this CPU runs, if any: candle's where it has VNNI
/// ([`crate::qwen2::Kernels`]), else [`crate::kernels::int8`] where it has AVX2
/// (`CLOSER_INT8=0` turns int8 off, leaving the f32 linears).
pub fn int8_kernels() -> Option<Int8Kernels> {
    if std::env::var("CLOSER_INT8").as_deref() == Ok("0") {
        return None;
    }
    if crate::qwen2::Kernels::detect().int8() {
        Some(Int8Kernels::Vnni)
    } else if QLinear::available() {
        Some(Int8Kernels::Avx2)
    } else {
        None
    }
}

/// See [`int8_kernels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernels {
    Vnni,
    Avx2,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: (Vec<f32>, Vec<f32>),
    inter: Linear,
    out: Linear,
    out_norm: (Vec<f32>, Vec<f32>),
}

pub struct FastBert {
    /// Shared with the candle model (not copied): rows are gathered per text.
    word: Tensor,
    /// Position rows from the model's first position (MPNet's start past its padding id).
    position: Vec<f32>,
    max_positions: usize,
    /// Token type 0's row, added to every token (zeros where the model has no token types).
    token_type0: Vec<f32>,
    /// MPNet's relative-position bias, `[bucket][head]`, and its bucket count.
    relative: Option<(Vec<f32>, usize)>,
    pad_id: u32,
    emb_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    eps: f32,
    arch: Arch,
}

/// Outputs per weight panel (two AVX2 vectors).
const NR: usize = 16;

/// Inputs per chunk of a panel (64 × 16 floats = 4 KiB, well inside L1).
const KC: usize = 64;

/// Multiply-adds below which a linear runs on the calling thread.
const PARALLEL_MIN_FMA: usize = 1 << 20;

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn linear(ws: &[&candle_nn::Linear], int8: Option<Int8Kernels>) -> Result<Linear> {
    let mut b = vec![];
    let mut out = 0;
    let mut inp = 0;
    for l in ws {
        let (o, i) = l.weight().dims2()?;
        b.extend(flat(l.bias().expect("BERT linears have a bias"))?);
        out += o;
        inp = i;
    }
    let src: Vec<Tensor> = ws.iter().map(|l| l.weight().clone()).collect();
    let int8 = match int8 {
        Some(Int8Kernels::Vnni) => {
            let k_to = inp.div_ceil(256) * 256;
            let wt = Tensor::cat(&src, 0)?.pad_with_zeros(1, 0, k_to - inp)?;
            Some(Int8::Vnni(
                QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0)?)?,
                k_to,
            ))
        }
        Some(Int8Kernels::Avx2) => {
            let w = flat(&Tensor::cat(&src, 0)?)?;
            Some(Int8::Avx2(QLinear::new(&w, out, inp)))
        }
        None => None,
    };
    let l = Linear {
        packed: OnceLock::new(),
        src,
        b,
        out,
        inp,
        int8,
    };
    if l.int8.is_none() {
        l.packed()?;
    }
    Ok(l)
}

impl Linear {
    /// The f32 weights in panels (packed on first use).
    fn packed(&self) -> Result<&[f32]> {
        if let Some(p) = self.packed.get() {
            return Ok(p);
        }
        let inp = self.inp;
        let mut packed = vec![0f32; self.out.div_ceil(NR) * inp * NR];
        let mut o = 0;
        for w in &self.src {
            for row in flat(w)?.chunks_exact(inp) {
                let (p, j) = (o / NR, o % NR);
                for (i, v) in row.iter().enumerate() {
                    packed[(p * inp + i) * NR + j] = *v;
                }
                o += 1;
            }
        }
        Ok(self.packed.get_or_init(|| packed))
    }
}

fn norm(ln: &candle_nn::LayerNorm) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        flat(ln.weight())?,
        flat(ln.bias().expect("BERT layer norms have a bias"))?,
    ))
}

impl FastBert {
    /// Copies the weights of a loaded candle model; with `int8`, also in int8 for those
    /// kernels (see [`int8_kernels`]).
    pub fn from_bert(b: &Bert, eps: f64, pad_id: usize, int8: Option<Int8Kernels>) -> Result<Self> {
        let layers = b
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    qkv: linear(&[&l.query, &l.key, &l.value], int8)?,
                    attn_out: linear(&[&l.attn_out], int8)?,
                    attn_norm: norm(&l.attn_norm)?,
                    inter: linear(&[&l.inter], int8)?,
                    out: linear(&[&l.out], int8)?,
                    out_norm: norm(&l.out_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (rows, hidden) = b.position.embeddings().dims2()?;
        let token_type0 = match &b.token_type {
            Some(tt) => tt.embeddings().get(0)?.to_vec1::<f32>()?,
            None => vec![0.0; hidden],
        };
        let relative = match &b.relative {
            Some(r) => Some((flat(&r.table)?, r.buckets)),
            None => None,
        };
        Ok(Self {
            word: b.word.embeddings().clone(),
            position: flat(b.position.embeddings())?[b.position_offset * hidden..].to_vec(),
            max_positions: rows.saturating_sub(b.position_offset),
            token_type0,
            relative,
            pad_id: pad_id as u32,
            emb_norm: norm(&b.emb_norm)?,
            layers,
            heads: b.heads,
            hidden,
            eps: eps as f32,
            arch: Arch::new(),
        })
    }

    /// Whether the int8 linears are there.
    pub fn has_int8(&self) -> bool {
        self.layers.first().is_some_and(|l| l.qkv.int8.is_some())
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// For each text (its token ids, unpadded), the mean over its tokens of the hidden states
    /// at each of `layers` (0 = embeddings, `num_layers()` = last), each scaled to unit length
    /// and concatenated.
    /// With `int8`, the linears run as int8 (when built with them).
    pub fn pooled(&self, texts: &[&[u32]], layers: &[usize], int8: bool) -> Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        let lens: Vec<usize> = texts
            .iter()
            .map(|t| t.len().clamp(1, self.max_positions))
            .collect();
        let rows: usize = lens.iter().sum();
        let vocab = self.word.dim(0)?;
        let mut ids = Vec::with_capacity(rows);
        for (t, &len) in texts.iter().zip(&lens) {
            // An empty text reads as one padding token.
            ids.extend((0..len).map(|p| {
                t.get(p)
                    .copied()
                    .unwrap_or(self.pad_id)
                    .min(vocab as u32 - 1)
            }));
        }
        let ids = Tensor::new(ids.as_slice(), self.word.device())?;
        let mut x = flat(&self.word.index_select(&ids, 0)?)?;
        let mut r = 0;
        for &len in &lens {
            for p in 0..len {
                let row = &mut x[r * h..(r + 1) * h];
                let pos = &self.position[p * h..(p + 1) * h];
                for j in 0..h {
                    row[j] += pos[j] + self.token_type0[j];
                }
                r += 1;
            }
        }
        layer_norm(&mut x, h, &self.emb_norm, self.eps);
        // Pooled vectors per model layer asked for, put in the caller's order at the end.
        let mut at: Vec<Option<Vec<Vec<f32>>>> = vec![None; self.layers.len() + 1];
        let pool = |x: &[f32]| -> Vec<Vec<f32>> {
            let mut r = 0;
            lens.iter()
                .map(|&len| {
                    let mut mean = vec![0f32; h];
                    for row in x[r * h..(r + len) * h].chunks_exact(h) {
                        for (m, v) in mean.iter_mut().zip(row) {
                            *m += v;
                        }
                    }
                    r += len;
                    let n = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    mean.iter().map(|v| v / n).collect()
                })
                .collect()
        };
        if layers.contains(&0) {
            at[0] = Some(pool(&x));
        }
        let bias = self.relative_bias(&lens);
        let mut qkv = vec![];
        let mut ctx = vec![0f32; rows * h];
        let mut inter = vec![];
        let mut tmp = vec![0f32; rows * h];
        for (i, l) in self.layers.iter().enumerate() {
            self.linear(&l.qkv, &x, rows, int8, &mut qkv)?;
            self.attention(&qkv, &lens, &bias, &mut ctx);
            self.linear(&l.attn_out, &ctx, rows, int8, &mut tmp)?;
            for (t, v) in tmp.iter_mut().zip(&x) {
                *t += v;
            }
            layer_norm(&mut tmp, h, &l.attn_norm, self.eps);
            std::mem::swap(&mut x, &mut tmp); // x = attention block's output
            self.linear(&l.inter, &x, rows, int8, &mut inter)?;
            for v in inter.iter_mut() {
                *v = gelu(*v);
            }
            self.linear(&l.out, &inter, rows, int8, &mut tmp)?;
            for (t, v) in tmp.iter_mut().zip(&x) {
                *t += v;
            }
            layer_norm(&mut tmp, h, &l.out_norm, self.eps);
            std::mem::swap(&mut x, &mut tmp);
            if layers.contains(&(i + 1)) {
                at[i + 1] = Some(pool(&x));
            }
        }
        Ok((0..texts.len())
            .map(|t| {
                layers
                    .iter()
                    .flat_map(|&l| {
                        at.get(l)
                            .and_then(|p| p.as_ref())
                            .map_or(&[][..], |p| &p[t])
                    })
                    .copied()
                    .collect()
            })
            .collect())
    }

    /// `y = x · Wᵀ + b` for `rows` rows of `x`.
    fn linear(
        &self,
        l: &Linear,
        x: &[f32],
        rows: usize,
        int8: bool,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let (n, k) = (l.out, l.inp);
        if let (true, Some(q)) = (int8, &l.int8) {
            match q {
                Int8::Vnni(q, k_to) => {
                    // Inputs quantised per 256 values, weights per 32; int32 sums (candle's
                    // kernels).
                    let xt =
                        Tensor::from_slice(&x[..rows * k], (rows, k), &candle_core::Device::Cpu)?
                            .pad_with_zeros(1, 0, k_to - k)?;
                    *y = q.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                }
                Int8::Avx2(q) => q.forward(x, rows, y),
            }
            for row in y.chunks_exact_mut(n) {
                for (v, b) in row.iter_mut().zip(&l.b) {
                    *v += b;
                }
            }
            return Ok(());
        }
        let packed = l.packed()?;
        super::by_panels(
            n,
            NR,
            rows,
            rows * n * k >= PARALLEL_MIN_FMA,
            Some(&l.b),
            y,
            |p0, out| {
                let np = out.len() / (rows * NR);
                self.arch.dispatch(Kernel {
                    x,
                    rows,
                    k,
                    packed: &packed[p0 * k * NR..(p0 + np) * k * NR],
                    out,
                });
            },
        );
        Ok(())
    }

    /// MPNet's relative-position bias for texts of `lens` tokens (empty for BERT): per text,
    /// per head, the bias of each relative position `j − i + len − 1`. The same in every layer.
    fn relative_bias(&self, lens: &[usize]) -> Vec<Vec<f32>> {
        let Some((table, buckets)) = &self.relative else {
            return vec![];
        };
        lens.iter()
            .map(|&len| {
                let rows: Vec<usize> = (0..2 * len - 1)
                    .map(|r| crate::bert::relative_bucket(r as i64 - (len as i64 - 1), *buckets))
                    .collect();
                (0..self.heads)
                    .flat_map(|head| rows.iter().map(move |&b| table[b * self.heads + head]))
                    .collect()
            })
            .collect()
    }

    /// Self-attention of each text over its own tokens; `qkv` rows are `[q | k | v]`; `bias`
    /// from [`Self::relative_bias`].
    fn attention(&self, qkv: &[f32], lens: &[usize], bias: &[Vec<f32>], ctx: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut start = 0;
        let mut scores = vec![];
        for (t, &len) in lens.iter().enumerate() {
            let bias = bias.get(t).map_or(&[][..], Vec::as_slice);
            for head in 0..self.heads {
                let q = |i: usize| &qkv[(start + i) * 3 * h + head * d..][..d];
                let k = |i: usize| &qkv[(start + i) * 3 * h + h + head * d..][..d];
                let v = |i: usize| &qkv[(start + i) * 3 * h + 2 * h + head * d..][..d];
                for i in 0..len {
                    scores.clear();
                    scores.extend((0..len).map(|j| dot(q(i), k(j)) * scale));
                    if !bias.is_empty() {
                        let b = &bias[head * (2 * len - 1) + len - 1 - i..][..len];
                        for (s, b) in scores.iter_mut().zip(b) {
                            *s += b;
                        }
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let out = &mut ctx[(start + i) * h + head * d..][..d];
                    out.fill(0.0);
                    for (j, p) in scores.iter().enumerate() {
                        let p = p / sum;
                        for (o, vv) in out.iter_mut().zip(v(j)) {
                            *o += p * vv;
                        }
                    }
                }
            }
            start += len;
        }
    }
}

/// For each packed panel and input row `r`: `out[panel][r][j] = x[r] · W[panel·NR + j]`, in
/// blocks of up to 4 rows × NR outputs accumulated in registers along the input.
struct Kernel<'a> {
    x: &'a [f32],
    rows: usize,
    k: usize,
    packed: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Kernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) -> Self::Output {
        match std::mem::size_of::<S::f32s>() / 4 {
            16 => self.panels::<S, 1>(simd),
            8 => self.panels::<S, 2>(simd),
            4 => self.panels::<S, 4>(simd),
            2 => self.panels::<S, 8>(simd),
            _ => self.panels::<S, 16>(simd),
        }
    }
}

impl Kernel<'_> {
    /// `NV` vectors make one panel's `NR` outputs. The input is walked in chunks of [`KC`]:
    /// every row block runs over a chunk while it is in L1, so the panel streams from memory
    /// once while the other blocks compute.
    #[inline(always)]
    fn panels<S: Simd, const NV: usize>(&mut self, simd: S) {
        let np = self.packed.len() / (self.k * NR);
        for p in 0..np {
            let mut k0 = 0;
            while k0 < self.k {
                let k1 = (k0 + KC).min(self.k);
                let mut r = 0;
                while r < self.rows {
                    let mr = (self.rows - r).min(4);
                    match mr {
                        4 => self.block::<S, 4, NV>(simd, p, r, k0, k1),
                        3 => self.block::<S, 3, NV>(simd, p, r, k0, k1),
                        2 => self.block::<S, 2, NV>(simd, p, r, k0, k1),
                        _ => self.block::<S, 1, NV>(simd, p, r, k0, k1),
                    }
                    r += mr;
                }
                k0 = k1;
            }
        }
    }

    /// Adds inputs `k0..k1` of rows `r..r+MR` to their outputs in panel `p`.
    #[inline(always)]
    fn block<S: Simd, const MR: usize, const NV: usize>(
        &mut self,
        simd: S,
        p: usize,
        r: usize,
        k0: usize,
        k1: usize,
    ) {
        let k = self.k;
        let base = p * self.rows * NR;
        let mut acc: [[S::f32s; NV]; MR] = std::array::from_fn(|i| {
            let (v, _) = S::as_simd_f32s(&self.out[base + (r + i) * NR..base + (r + i + 1) * NR]);
            std::array::from_fn(|j| v[j])
        });
        let panel = &self.packed[(p * k + k0) * NR..(p * k + k1) * NR];
        let xs: [&[f32]; MR] = std::array::from_fn(|i| &self.x[(r + i) * k + k0..(r + i) * k + k1]);
        for (kk, w) in panel.chunks_exact(NR).enumerate() {
            let (wv, _) = S::as_simd_f32s(w);
            for (i, a) in acc.iter_mut().enumerate() {
                let xb = simd.splat_f32s(xs[i][kk]);
                for v in 0..NV {
                    a[v] = simd.mul_add_e_f32s(xb, wv[v], a[v]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let dst = &mut self.out[base + (r + i) * NR..base + (r + i + 1) * NR];
            let (dv, _) = S::as_mut_simd_f32s(dst);
            dv[..NV].copy_from_slice(a);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, at) = a.split_at(a.len() / 8 * 8);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + at.iter().zip(bt).map(|(x, y)| x * y).sum::<f32>()
}

fn gelu(v: f32) -> f32 {
    (erf(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
}

/// erf as a rational function of x (odd degree 13 over even degree 8, the coefficients of
/// Eigen's and XLA's f32 erf), clamped to ±4 where erf is ±1 in f32. Arithmetic only, so the
/// GELU loop vectorises (a libm call per value was a tenth of a message's time); within 1e-6 of
/// candle's erf (test).
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ]
    .iter()
    .fold(0.0, |acc, c| acc * x2 + c);
    let q = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ]
    .iter()
    .fold(0.0, |acc, c| acc * x2 + c);
    x * p / q
}

fn layer_norm(x: &mut [f32], h: usize, (w, b): &(Vec<f32>, Vec<f32>), eps: f32) {
    for row in x.chunks_exact_mut(h) {
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn erf_matches_candles_within_1e_6() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            let d = (super::erf(x) - candle_core::cpu::erf::erf_f32(x)).abs();
            worst = worst.max(d);
        }
        assert!(worst < 1e-6, "erf differs by {worst}");
        assert_eq!(super::erf(0.0), 0.0);
        // Past ±4 it stays at ±1 (within a float step), not wandering off with the polynomials.
        assert!((super::erf(9.0) - 1.0).abs() < 1e-6 && (super::erf(-9.0) + 1.0).abs() < 1e-6);
    }
}
