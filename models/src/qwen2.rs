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
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

/// Which matrix kernels the weights are laid out for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// As stored: candle's per-32 block kernels (AVX2 where present). The reference arithmetic.
    Reference,
    /// Q8_0 matrices widened to a multiple of 256 columns so candle's int8 VNNI kernels apply.
    Vnni,
}

impl Kernels {
    /// The fastest this CPU supports (candle's own dispatch, which `MISTRALRS_FORCE_AVX2=1`
    /// also turns off, decides whether the VNNI kernels run).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let forced_off = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
            let vnni = (is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vnni"))
                || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"));
            if vnni && !forced_off {
                return Self::Vnni;
            }
        }
        Self::Reference
    }
}

/// A quantised matrix and the input width it takes (wider than the activations when padded).
struct Linear {
    mm: QMatMul,
    k: usize,
}

impl Linear {
    fn new(t: QTensor) -> Result<Self> {
        let k = t.shape().dims2()?.1;
        Ok(Self {
            mm: QMatMul::from_qtensor(t)?,
            k,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        if w < self.k {
            self.mm
                .forward(&x.pad_with_zeros(D::Minus1, 0, self.k - w)?)
        } else {
            self.mm.forward(x)
        }
    }
}

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

struct Mlp {
    w1: Linear,
    w2: Linear,
    w3: Linear,
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w1 = self.w1.forward(xs)?;
        let w3 = self.w3.forward(xs)?;
        self.w2.forward(&(candle_nn::ops::silu(&w1)? * w3)?)
    }
}

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
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
    neg_inf: Tensor,
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
            Kernels::Vnni => embedding.div_ceil(256) * 256,
            Kernels::Reference => embedding,
        };
        let q = |t: QTensor| -> Result<Linear> {
            let k = t.shape().dims2()?.1;
            if t.dtype() == GgmlDType::Q8_0 && k == embedding {
                Linear::new(widened(t, k_to)?)
            } else {
                Linear::new(t)
            }
        };
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
                wq: q(t("attn_q.weight")?)?,
                wk: q(t("attn_k.weight")?)?,
                wv: q(t("attn_v.weight")?)?,
                bq: t("attn_q.bias")?.dequantize(device)?,
                bk: t("attn_k.bias")?.dequantize(device)?,
                bv: t("attn_v.bias")?.dequantize(device)?,
                wo: q(t("attn_output.weight")?)?,
                attention_norm: RmsNorm::from_qtensor(t("attn_norm.weight")?, eps)?,
                mlp: Mlp {
                    w1: q(t("ffn_gate.weight")?)?,
                    w2: q(t("ffn_down.weight")?)?,
                    w3: q(t("ffn_up.weight")?)?,
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
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
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

    fn attention(
        &self,
        l: &Layer,
        x: &Tensor,
        mask: Option<&Tensor>,
        index_pos: usize,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, seq_len, n_embd) = x.dims3()?;
        let q = l.wq.forward(x)?.broadcast_add(&l.bq)?;
        let k = l.wk.forward(x)?.broadcast_add(&l.bk)?;
        let v = l.wv.forward(x)?.broadcast_add(&l.bv)?;
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
        *cache = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, l.n_head / l.n_kv_head)?;
        let v = repeat_kv(v, l.n_head / l.n_kv_head)?;
        let att = (q.matmul(&k.t()?)? / (l.head_dim as f64).sqrt())?;
        let att = match mask {
            None => att,
            Some(mask) => {
                let mask = mask.broadcast_as(att.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(mask.shape().dims())?, &att)?
            }
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape(&[b, seq_len, n_embd])?;
        l.wo.forward(&y)
    }

    /// Logits of the token after `x` (shape `[batch, tokens]`), whose first token sits at
    /// `index_pos`; `cache` holds the sequence's earlier tokens and gains these.
    pub fn forward(&self, x: &Tensor, index_pos: usize, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.hidden(x, index_pos, cache)?;
        let seq_len = h.dim(1)?;
        self.output.forward(&h.i((.., seq_len - 1, ..))?)
    }

    /// Logits after every token of `x` (`[batch, tokens, vocabulary]`): what verifying drafted
    /// tokens needs. Otherwise as [`Weights::forward`].
    pub fn forward_all(&self, x: &Tensor, index_pos: usize, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.hidden(x, index_pos, cache)?;
        self.output.forward(&h)
    }

    /// The final-normed hidden states of `x`.
    fn hidden(&self, x: &Tensor, index_pos: usize, cache: &mut KvCache) -> Result<Tensor> {
        let (_b, seq_len) = x.dims2()?;
        let mask = if seq_len == 1 {
            None
        } else {
            Some(build_causal_mask(seq_len, index_pos, x.device())?)
        };
        let mut h = self.embed(x)?;
        for (l, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let residual = h.clone();
            let x = l.attention_norm.forward(&h)?;
            let x = (self.attention(l, &x, mask.as_ref(), index_pos, c)? + residual)?;
            let residual = x.clone();
            let y = l.mlp.forward(&l.ffn_norm.forward(&x)?)?;
            h = (y + residual)?;
        }
        self.norm.forward(&h)
    }
}
