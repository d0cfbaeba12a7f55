//! Qwen2 (quantised GGUF) forward pass with the KV cache outside the weights.
//!
//! Adapted from candle-transformers 0.11.1 `models::quantized_qwen2` (MIT OR Apache-2.0, the
//! candle authors). What differs:
//! - the per-layer key/value cache is a [`KvCache`] the caller owns, so one copy of the weights
//!   can serve several sequences and the generator can interleave them token by token (see
//!   `generator.rs`);
//! - the token table stays quantised (rows are dequantised as they are looked up) and is the
//!   same tensor as the tied output head, instead of a second, 544 MB f32 copy;
//! - [`Kernels::Vnni`]: where the CPU has AVX-512 VNNI or AVX-VNNI, candle multiplies Q8_0
//!   matrices with int8 dot-product kernels, but only when the inner dimension is a multiple of
//!   256. Qwen2.5-0.5B's is 896, so at load every Q8_0 matrix that reads the hidden state is
//!   widened to 1024 columns of zeros, and its input to 1024 zeros-padded values. The product is
//!   the same sum; what changes is how the activations are quantised (one int8 scale per 256
//!   values instead of per 32), so logits move by about 1 % (tested against the reference
//!   kernels, see `tests/api.rs`).

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_transformers::quantized_nn::RmsNorm;

/// Which matrix kernels the weights are laid out for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// As stored: candle's per-32 block kernels (AVX2 where present). The reference arithmetic.
    Reference,
    /// Q8_0 matrices widened to a multiple of 256 columns so candle's int8 VNNI kernels apply.
    Vnni,
    /// [`Self::Vnni`], and the prompt's products (Q8_0, Q4K, Q6K) on the AMX tile unit in bf16
    /// ([`crate::kernels::amx`]; decoding stays on the int8 kernels, which read a few rows faster).
    Amx,
}

impl Kernels {
    /// Whether the Q8_0 matrices are laid out for the int8 kernels (widened).
    pub fn int8(self) -> bool {
        self != Self::Reference
    }

    /// The fastest this CPU supports (candle's own dispatch, which `MISTRALRS_FORCE_AVX2=1`
    /// also turns off, decides whether the VNNI kernels run; `CLOSER_AMX=0` turns AMX off).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let forced_off = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
            let vnni = (is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vnni"))
                || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"));
            if vnni && !forced_off {
                return if crate::kernels::amx::available() {
                    Self::Amx
                } else {
                    Self::Vnni
                };
            }
        }
        Self::Reference
    }
}

/// The block formats [`crate::kernels::amx`] reads.
fn amx_format(dtype: GgmlDType) -> Option<crate::kernels::amx::Format> {
    match dtype {
        GgmlDType::Q8_0 => Some(crate::kernels::amx::Format::Q8_0),
        GgmlDType::Q4K => Some(crate::kernels::amx::Format::Q4K),
        GgmlDType::Q6K => Some(crate::kernels::amx::Format::Q6K),
        _ => None,
    }
}

/// The rows of a pass as runs of `(rows, amx)`, one a segment (sequence) in order. With
/// [`Kernels::Amx`], prompt rows (segments that want only their last logits) take the AMX
/// kernels and decoding rows (a token and its drafts) candle's: a row's arithmetic depends
/// neither on how the prompt was cut into passes nor on which other sequences ride in its pass,
/// so answers are the same alone and under load.
type Runs = [(usize, bool)];

/// A quantised matrix and the input width it takes (wider than the activations when padded).
struct Linear {
    mm: QMatMul,
    k: usize,
    /// Whether its prompt rows go through [`crate::kernels::amx`] (Q8_0, Q4K and Q6K with [`Kernels::Amx`]).
    amx: bool,
}

impl Linear {
    fn new(t: QTensor, kernels: Kernels) -> Result<Self> {
        let k = t.shape().dims2()?.1;
        let amx = kernels == Kernels::Amx
            && amx_format(t.dtype()).is_some()
            && crate::kernels::amx::available()
            && crate::kernels::amx::fits(t.shape().dims2()?.0, 32);
        Ok(Self {
            mm: QMatMul::from_qtensor(t)?,
            k,
            amx,
        })
    }

    /// `x` (`[1, rows, width]`) times the matrix; `runs` splits the rows into the segments of
    /// the pass, each with whether it takes the AMX kernels (see [`Runs`]).
    fn forward(&self, x: &Tensor, runs: &Runs) -> Result<Tensor> {
        if !self.amx || runs.iter().all(|&(_, amx)| !amx) {
            return self.forward_candle(x);
        }
        let mut merged: Vec<(usize, bool)> = vec![];
        for &(n, amx) in runs {
            match merged.last_mut() {
                Some(last) if last.1 == amx => last.0 += n,
                _ => merged.push((n, amx)),
            }
        }
        if let [(_, true)] = merged[..] {
            return self.forward_amx(x);
        }
        let mut parts = Vec::with_capacity(merged.len());
        let mut at = 0;
        for (n, amx) in merged {
            let part = x.narrow(1, at, n)?;
            parts.push(if amx {
                self.forward_amx(&part)?
            } else {
                self.forward_candle(&part)?
            });
            at += n;
        }
        Tensor::cat(&parts, 1)
    }

    /// Through [`crate::kernels::amx`] (candle's kernels where the width does not fit it).
    fn forward_amx(&self, x: &Tensor) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        let rows = x.elem_count() / w.max(1);
        match &self.mm {
            QMatMul::QTensor(t)
                if crate::kernels::amx::fits(32, w)
                    && amx_format(t.dtype()).is_some_and(|f| w.is_multiple_of(f.block().0)) =>
            {
                let format = amx_format(t.dtype()).expect("checked");
                let n = t.shape().dims2()?.0;
                let data = t.data()?;
                let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let y = crate::kernels::amx::matmul(
                    format,
                    &data,
                    n,
                    data.len() / n,
                    &xs,
                    rows,
                    w / 32,
                );
                let mut dims = x.dims().to_vec();
                *dims.last_mut().expect("a matrix has dimensions") = n;
                Tensor::from_vec(y, dims, x.device())
            }
            _ => self.forward_candle(x),
        }
    }

    /// Through candle's kernels, with every row computed the way it would be in any other
    /// pass. candle picks kernels by row count: one row of a Q6K matrix goes through a compact
    /// dot product and several through repacked tiles, and 32 or more rows of a Q4K matrix
    /// through its AMX int8 kernel where the CPU has one; those round differently. So a lone
    /// Q6K row rides with a zero row, and Q4K rows go at most 31 at a time.
    fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        let x = if w < self.k {
            x.pad_with_zeros(D::Minus1, 0, self.k - w)?
        } else {
            x.clone()
        };
        let rows = x.elem_count() / self.k.max(1);
        let dtype = match &self.mm {
            QMatMul::QTensor(t) => Some(t.dtype()),
            _ => None,
        };
        let flat = |x: &Tensor| x.reshape((1, rows, self.k));
        let shaped = |y: Tensor| {
            let mut dims = x.dims().to_vec();
            *dims.last_mut().expect("a matrix has dimensions") = y.dim(D::Minus1)?;
            y.reshape(dims)
        };
        match dtype {
            Some(GgmlDType::Q6K) if rows == 1 => {
                let two = Tensor::cat(&[&flat(&x)?, &flat(&x)?.zeros_like()?], 1)?;
                shaped(self.mm.forward(&two)?.narrow(1, 0, 1)?)
            }
            Some(GgmlDType::Q4K) if rows > Q4K_ROWS => {
                let x = flat(&x)?;
                let parts = (0..rows)
                    .step_by(Q4K_ROWS)
                    .map(|at| self.mm.forward(&x.narrow(1, at, Q4K_ROWS.min(rows - at))?))
                    .collect::<Result<Vec<_>>>()?;
                shaped(Tensor::cat(&parts, 1)?)
            }
            _ => self.mm.forward(&x),
        }
    }
}

/// Most rows of a Q4K matrix given to candle at once (see [`Linear::forward_candle`]).
const Q4K_ROWS: usize = 31;

/// `t` (rows × k) with zero columns appended up to `k_to`; blocks of zeros are zero in every
/// block-quantised format (all-zero bytes: scale 0).
fn widened(t: QTensor, k_to: usize) -> Result<QTensor> {
    let (n, k) = t.shape().dims2()?;
    let dtype = t.dtype();
    let (block, size) = (dtype.block_size(), dtype.type_size());
    if k >= k_to || !k.is_multiple_of(block) || !k_to.is_multiple_of(block) {
        return Ok(t);
    }
    let data = t.data()?;
    let (row, wide) = (k / block * size, k_to / block * size);
    let mut out = vec![0u8; n * wide];
    for (dst, src) in out.chunks_exact_mut(wide).zip(data.chunks_exact(row)) {
        dst[..row].copy_from_slice(src);
    }
    drop(data);
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &t.device(), dtype)?;
    QTensor::new(storage, (n, k_to))
}

/// Matrices that read the same input (query, key and value; gate and up). When they share a
/// quantisation type and width, their rows are stacked into one matrix at load: one product
/// instead of several, and the input padded and quantised once instead of once per matrix. Each
/// output row is the same dot product either way.
struct Group {
    fused: Option<(Linear, Vec<usize>)>,
    parts: Vec<Linear>,
}

impl Group {
    fn new(parts: Vec<QTensor>, kernels: Kernels) -> Result<Self> {
        let same = parts.windows(2).all(|w| {
            w[0].dtype() == w[1].dtype()
                && w[0].shape().dims2().ok().map(|d| d.1) == w[1].shape().dims2().ok().map(|d| d.1)
        });
        if !same || parts.len() < 2 {
            let parts = parts
                .into_iter()
                .map(|p| Linear::new(p, kernels))
                .collect::<Result<_>>()?;
            return Ok(Self { fused: None, parts });
        }
        let (mut rows, mut data) = (vec![], vec![]);
        let k = parts[0].shape().dims2()?.1;
        for p in &parts {
            rows.push(p.shape().dims2()?.0);
            data.extend_from_slice(&p.data()?);
        }
        let device = parts[0].device();
        let storage =
            QStorage::from_data(std::borrow::Cow::Owned(data), &device, parts[0].dtype())?;
        let t = QTensor::new(storage, (rows.iter().sum::<usize>(), k))?;
        Ok(Self {
            fused: Some((Linear::new(t, kernels)?, rows)),
            parts: vec![],
        })
    }

    fn forward(&self, x: &Tensor, runs: &Runs) -> Result<Vec<Tensor>> {
        match &self.fused {
            Some((l, rows)) => {
                let y = l.forward(x, runs)?;
                let mut at = 0;
                rows.iter()
                    .map(|&n| {
                        at += n;
                        y.narrow(D::Minus1, at - n, n)
                    })
                    .collect()
            }
            None => self.parts.iter().map(|l| l.forward(x, runs)).collect(),
        }
    }
}

struct Mlp {
    /// Gate and up.
    w13: Group,
    w2: Linear,
}

impl Mlp {
    fn forward(&self, xs: &Tensor, runs: &Runs) -> Result<Tensor> {
        let gu = self.w13.forward(xs, runs)?;
        self.w2
            .forward(&(candle_nn::ops::silu(&gu[0])? * &gu[1])?, runs)
    }
}

struct Layer {
    /// Query, key and value.
    wqkv: Group,
    bq: Tensor,
    bk: Tensor,
    bv: Tensor,
    wo: Linear,
    attention_norm: RmsNorm,
    mlp: Mlp,
    ffn_norm: RmsNorm,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

/// One sequence's keys and values, layer by layer. Cloning shares the tensors (a forward pass
/// appends by making new ones), so a cached prompt prefix can start many sequences.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dims4().ok())
            .map_or(0, |d| d.2)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of the first `n` tokens only.
    pub fn truncated(&self, n: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

/// The model's weights, shared by every sequence.
pub struct Weights {
    /// The token table (vocabulary × width, maybe widened), quantised.
    tok_embeddings: Arc<QTensor>,
    hidden: usize,
    kernels: Kernels,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
}

fn rope_tables(
    head_dim: usize,
    freq_base: f32,
    context: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let theta: Vec<_> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / freq_base.powf(i as f32 / head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx_theta = Tensor::arange(0, context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((context, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((idx_theta.cos()?, idx_theta.sin()?))
}

impl Weights {
    /// Loads with the fastest kernels this CPU has ([`Kernels::detect`]).
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        Self::from_gguf_for(ct, reader, device, Kernels::detect())
    }

    pub fn from_gguf_for<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self> {
        let md = |s: &str| match ct.metadata.get(s) {
            None => candle_core::bail!("cannot find {s} in metadata"),
            Some(v) => Ok(v),
        };
        let n_head = md("qwen2.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("qwen2.attention.head_count_kv")?.to_u32()? as usize;
        let embedding = md("qwen2.embedding_length")?.to_u32()? as usize;
        let context = md("qwen2.context_length")?.to_u32()? as usize;
        let blocks = md("qwen2.block_count")?.to_u32()? as usize;
        let eps = md("qwen2.attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let freq_base = md("qwen2.rope.freq_base")
            .and_then(|m| m.to_f32())
            .unwrap_or(10000f32);
        let head_dim = embedding / n_head;
        // Widen only the Q8_0 matrices that read the hidden state: those are what the VNNI
        // kernels take (the feed-forward down projection reads 4864 = 19 × 256 values already).
        let k_to = match kernels {
            Kernels::Vnni | Kernels::Amx => embedding.div_ceil(256) * 256,
            Kernels::Reference => embedding,
        };
        let wide = |t: QTensor| -> Result<QTensor> {
            let k = t.shape().dims2()?.1;
            if t.dtype() == GgmlDType::Q8_0 && k == embedding {
                widened(t, k_to)
            } else {
                Ok(t)
            }
        };
        let q = |t: QTensor| Linear::new(wide(t)?, kernels);
        let tok = ct.tensor(reader, "token_embd.weight", device)?;
        let norm = RmsNorm::from_qtensor(ct.tensor(reader, "output_norm.weight", device)?, eps)?;
        let (tok_embeddings, output) = match ct.tensor(reader, "output.weight", device) {
            Ok(v) => (Arc::new(tok), q(v)?),
            // Tied word embeddings: one tensor is both the table and the head.
            _ => {
                let head = q(tok)?;
                let table = match &head.mm {
                    QMatMul::QTensor(t) => t.clone(),
                    _ => candle_core::bail!("token_embd.weight is not quantised"),
                };
                (table, head)
            }
        };
        let (cos, sin) = rope_tables(head_dim, freq_base, context, device)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut t = |name: &str| ct.tensor(reader, &format!("blk.{i}.{name}"), device);
            layers.push(Layer {
                wqkv: Group::new(
                    vec![
                        wide(t("attn_q.weight")?)?,
                        wide(t("attn_k.weight")?)?,
                        wide(t("attn_v.weight")?)?,
                    ],
                    kernels,
                )?,
                bq: t("attn_q.bias")?.dequantize(device)?,
                bk: t("attn_k.bias")?.dequantize(device)?,
                bv: t("attn_v.bias")?.dequantize(device)?,
                wo: q(t("attn_output.weight")?)?,
                attention_norm: RmsNorm::from_qtensor(t("attn_norm.weight")?, eps)?,
                mlp: Mlp {
                    w13: Group::new(
                        vec![wide(t("ffn_gate.weight")?)?, wide(t("ffn_up.weight")?)?],
                        kernels,
                    )?,
                    w2: q(t("ffn_down.weight")?)?,
                },
                ffn_norm: RmsNorm::from_qtensor(t("ffn_norm.weight")?, eps)?,
                n_head,
                n_kv_head,
                head_dim,
            });
        }
        Ok(Self {
            tok_embeddings,
            hidden: embedding,
            kernels,
            layers,
            norm,
            output,
            cos,
            sin,
        })
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The embeddings of `x` (`[batch, tokens]`): rows of the quantised table, dequantised.
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let e = self.tok_embeddings.embedding(x)?;
        if e.dim(D::Minus1)? > self.hidden {
            e.narrow(D::Minus1, 0, self.hidden)?.contiguous()
        } else {
            Ok(e)
        }
    }

    /// Runs a prompt-sized and a token-sized pass once, so that candle lays out its repacked
    /// kernel tiles (built on first use) at load rather than in a visitor's first answer.
    pub fn warm_up(&self) -> Result<()> {
        let device = self.cos.device();
        let mut cache = self.new_cache();
        let ids: Vec<u32> = (0..32).collect();
        self.forward(
            &Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?,
            0,
            &mut cache,
        )?;
        self.forward(
            &Tensor::new(&[32u32], device)?.unsqueeze(0)?,
            32,
            &mut cache,
        )?;
        Ok(())
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.layers.len()],
        }
    }

    fn rope(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_b, _h, seq_len, _d) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }

    /// Self-attention of one sequence's rows (`q`, `k`, `v`: `[1, rows, width]`, projected and
    /// biased), whose first row sits at `index_pos`; `cache` gains the rows' keys and values.
    /// Returns `[1, rows, n_embd]`, before the output projection. Each row is computed on its
    /// own ([`crate::kernels::attention`]), so it comes out the same in any pass.
    fn attend(
        &self,
        l: &Layer,
        (q, k, v): (Tensor, Tensor, Tensor),
        index_pos: usize,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, seq_len, n_embd) = q.dims3()?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, seq_len, n, l.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = self.rope(&heads(q, l.n_head)?, index_pos)?;
        let k = self.rope(&heads(k, l.n_kv_head)?, index_pos)?;
        let v = heads(v, l.n_kv_head)?;
        let (k, v) = match cache.as_ref() {
            Some((kc, vc)) if index_pos > 0 => {
                (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?)
            }
            _ => (k, v),
        };
        let len = k.dim(2)?;
        // The cache must hold exactly the positions before these rows.
        if b != 1 || len - seq_len != index_pos {
            candle_core::bail!(
                "{seq_len} rows at position {index_pos} over a cache of {} (batch {b})",
                len - seq_len
            );
        }
        *cache = Some((k.clone(), v.clone()));
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let y = crate::kernels::attention::causal(
            &flat(&q)?,
            &flat(&k)?,
            &flat(&v)?,
            (l.n_head, l.n_kv_head, l.head_dim),
            len - seq_len,
        );
        Tensor::from_vec(y, (b, seq_len, n_embd), q.device())
    }

    /// Logits of the token after `x` (shape `[1, tokens]`), whose first token sits at
    /// `index_pos`; `cache` holds the sequence's earlier tokens and gains these.
    pub fn forward(&self, x: &Tensor, index_pos: usize, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_one(x, index_pos, cache, false)
    }

    /// Logits after every token of `x` (`[1, tokens, vocabulary]`): what verifying drafted
    /// tokens needs. Otherwise as [`Weights::forward`].
    pub fn forward_all(&self, x: &Tensor, index_pos: usize, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_one(x, index_pos, cache, true)
    }

    fn forward_one(
        &self,
        x: &Tensor,
        index_pos: usize,
        cache: &mut KvCache,
        all: bool,
    ) -> Result<Tensor> {
        let (b, _) = x.dims2()?;
        if b != 1 {
            candle_core::bail!("one sequence per call, got a batch of {b}");
        }
        let ids = x.squeeze(0)?.to_vec1::<u32>()?;
        let mut seg = [Segment {
            ids: &ids,
            pos: index_pos,
            cache,
            all,
        }];
        let logits = self.forward_batch(&mut seg)?.pop();
        let logits = logits.ok_or_else(|| candle_core::Error::Msg("no logits".into()))?;
        if all {
            logits.unsqueeze(0)
        } else {
            logits.squeeze(0)?.unsqueeze(0)
        }
    }

    /// One forward pass over the rows of several sequences at once: the matrix products take
    /// every row together (a pass over a few rows costs little more than over one), attention
    /// runs per sequence against its own cache. For each segment, its logits: `[rows,
    /// vocabulary]` when `all`, else `[1, vocabulary]` (after its last row).
    pub fn forward_batch(&self, segs: &mut [Segment<'_>]) -> Result<Vec<Tensor>> {
        let device = self.cos.device();
        let ids: Vec<u32> = segs.iter().flat_map(|s| s.ids.iter().copied()).collect();
        if segs.iter().any(|s| s.ids.is_empty()) {
            candle_core::bail!("a segment without tokens");
        }
        let runs: Vec<_> = segs.iter().map(|s| (s.ids.len(), !s.all)).collect();
        let mut h = self.embed(&Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?)?;
        for (li, l) in self.layers.iter().enumerate() {
            let residual = h.clone();
            let x = l.attention_norm.forward(&h)?;
            let qkv = l.wqkv.forward(&x, &runs)?;
            let q = qkv[0].broadcast_add(&l.bq)?;
            let k = qkv[1].broadcast_add(&l.bk)?;
            let v = qkv[2].broadcast_add(&l.bv)?;
            let y = if segs.len() == 1 {
                let s = &mut segs[0];
                self.attend(l, (q, k, v), s.pos, &mut s.cache.layers[li])?
            } else {
                let mut ys = Vec::with_capacity(segs.len());
                let mut at = 0;
                for s in segs.iter_mut() {
                    let n = s.ids.len();
                    let part = |t: &Tensor| t.narrow(1, at, n);
                    ys.push(self.attend(
                        l,
                        (part(&q)?, part(&k)?, part(&v)?),
                        s.pos,
                        &mut s.cache.layers[li],
                    )?);
                    at += n;
                }
                Tensor::cat(&ys, 1)?
            };
            let x = (l.wo.forward(&y, &runs)? + residual)?;
            let residual = x.clone();
            let y = l.mlp.forward(&l.ffn_norm.forward(&x)?, &runs)?;
            h = (y + residual)?;
        }
        // Only the rows whose logits are wanted go through the norm and the (large) head.
        let mut rows = Vec::new();
        let mut at = 0u32;
        for s in segs.iter() {
            let n = s.ids.len() as u32;
            if s.all {
                rows.extend(at..at + n);
            } else {
                rows.push(at + n - 1);
            }
            at += n;
        }
        let h = if rows.len() == ids.len() {
            h
        } else {
            h.index_select(&Tensor::new(rows.as_slice(), device)?, 1)?
        };
        // The head stays on candle's kernels: in serving it reads a row per sequence, or a token
        // and its drafts, and a row's logits are then the same whichever rows come with it.
        let head_rows = h.dim(1)?;
        let logits = self
            .output
            .forward(&self.norm.forward(&h)?, &[(head_rows, false)])?
            .squeeze(0)?;
        let mut out = Vec::with_capacity(segs.len());
        let mut at = 0;
        for s in segs.iter() {
            let n = if s.all { s.ids.len() } else { 1 };
            out.push(logits.narrow(0, at, n)?);
            at += n;
        }
        Ok(out)
    }
}

/// One sequence's part of a batched forward pass ([`Weights::forward_batch`]).
pub struct Segment<'a> {
    /// Its new tokens.
    pub ids: &'a [u32],
    /// Where the first of them sits in the sequence.
    pub pos: usize,
    /// Its earlier tokens' keys and values; gains these.
    pub cache: &'a mut KvCache,
    /// Logits after every token (checking drafts) rather than after the last only.
    pub all: bool,
}
