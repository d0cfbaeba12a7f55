//! Qwen2 (quantised GGUF) forward pass with the KV cache outside the weights.
//!
//! Adapted from candle-transformers 0.11.1 `models::quantized_qwen2` (MIT OR Apache-2.0, the
//! candle authors). The arithmetic is unchanged; what differs is that the per-layer key/value
//! cache is a [`KvCache`] the caller owns, so one copy of the weights can serve several
//! sequences and the generator can interleave them token by token (see `generator.rs`).

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

struct Mlp {
    w1: QMatMul,
    w2: QMatMul,
    w3: QMatMul,
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let w1 = self.w1.forward(xs)?;
        let w3 = self.w3.forward(xs)?;
        self.w2.forward(&(candle_nn::ops::silu(&w1)? * w3)?)
    }
}

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    bq: Tensor,
    bk: Tensor,
    bv: Tensor,
    wo: QMatMul,
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
    tok_embeddings: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
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
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
        device: &Device,
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
        let tok = ct.tensor(reader, "token_embd.weight", device)?;
        let tok = tok.dequantize(device)?;
        let norm = RmsNorm::from_qtensor(ct.tensor(reader, "output_norm.weight", device)?, eps)?;
        let output = match ct.tensor(reader, "output.weight", device) {
            Ok(v) => QMatMul::from_qtensor(v)?,
            // Tied word embeddings.
            _ => QMatMul::from_qtensor(ct.tensor(reader, "token_embd.weight", device)?)?,
        };
        let (cos, sin) = rope_tables(head_dim, freq_base, context, device)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut t = |name: &str| ct.tensor(reader, &format!("blk.{i}.{name}"), device);
            let q = |t: candle_core::quantized::QTensor| QMatMul::from_qtensor(t);
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
            tok_embeddings: Embedding::new(tok, embedding),
            layers,
            norm,
            output,
            cos,
            sin,
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
        })
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
        let (_b, seq_len) = x.dims2()?;
        let mask = if seq_len == 1 {
            None
        } else {
            Some(build_causal_mask(seq_len, index_pos, x.device())?)
        };
        let mut h = self.tok_embeddings.forward(x)?;
        for (l, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let residual = h.clone();
            let x = l.attention_norm.forward(&h)?;
            let x = (self.attention(l, &x, mask.as_ref(), index_pos, c)? + residual)?;
            let residual = x.clone();
            let y = l.mlp.forward(&l.ffn_norm.forward(&x)?)?;
            h = (y + residual)?;
        }
        let x = self.norm.forward(&h)?;
        let x = x.i((.., seq_len - 1, ..))?;
        self.output.forward(&x)
    }
}
