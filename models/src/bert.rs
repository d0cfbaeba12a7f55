//! A BERT-family encoder forward pass (as in candle-transformers' `bert`, same weights and
//! maths) that also returns every layer's hidden states: the intent features pool several
//! layers, retrieval uses the last one.
//!
//! Two layouts load: BERT (all-MiniLM-L6-v2: absolute positions from 0, token types) and
//! MPNet (all-mpnet-base-v2: positions from `pad_token_id + 1`, no token types, and a learned
//! bias per attention head for each bucket of relative position, shared by all layers and
//! added to the attention scores, as in Hugging Face's `MPNetEncoder`).

use candle_core::{DType, Module, Result, Tensor, Var, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` that the encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Absent for MPNet (no token types).
    #[serde(default)]
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// MPNet's relative-position buckets.
    #[serde(default)]
    pub relative_attention_num_buckets: Option<usize>,
}

impl Config {
    pub fn is_mpnet(&self) -> bool {
        self.model_type.as_deref() == Some("mpnet")
    }
}

/// MPNet's relative-position bias: a `(buckets, heads)` table.
#[derive(Clone)]
pub struct RelativeBias {
    pub(crate) table: Tensor,
    pub(crate) buckets: usize,
}

/// Longest relative distance MPNet tells apart (Hugging Face's `max_distance`).
const REL_MAX_DISTANCE: f32 = 128.0;

/// The bucket of relative position `rel` (key position − query position), as Hugging Face's
/// `MPNetEncoder.relative_position_bucket` computes it (in f32, so boundaries such as a
/// distance of 16 fall the same way): half the buckets for each direction, exact up to a
/// quarter of them, then logarithmic up to [`REL_MAX_DISTANCE`].
pub fn relative_bucket(rel: i64, buckets: usize) -> usize {
    let half = buckets / 2;
    let n = -rel;
    let base = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    let scaled = (n as f32 / max_exact as f32).ln()
        / ((REL_MAX_DISTANCE as f64 / max_exact as f64).ln() as f32)
        * (half - max_exact) as f32;
    base + (max_exact + scaled as usize).min(half - 1)
}

#[derive(Clone)]
pub struct Layer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) attn_norm: LayerNorm,
    pub(crate) inter: Linear,
    pub(crate) out: Linear,
    pub(crate) out_norm: LayerNorm,
    pub(crate) eps: f64,
}

pub struct Bert {
    pub(crate) word: Embedding,
    pub(crate) position: Embedding,
    /// Row of position 0 (MPNet counts from `pad_token_id + 1`).
    pub(crate) position_offset: usize,
    /// None for MPNet.
    pub(crate) token_type: Option<Embedding>,
    pub(crate) emb_norm: LayerNorm,
    pub(crate) layers: Vec<Layer>,
    pub(crate) heads: usize,
    /// MPNet's relative-position bias.
    pub(crate) relative: Option<RelativeBias>,
}

impl Bert {
    pub fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "gelu") {
            candle_core::bail!(
                "encoder config.json: hidden_act {act:?} (only \"gelu\" is supported)"
            );
        }
        let mpnet = c.is_mpnet();
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let e = vb.pp("embeddings");
        let h = c.hidden_size;
        let eps = c.layer_norm_eps;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                // MPNet: attention.attn.{q,k,v,o} and attention.LayerNorm.
                let (q, k, v, o, ln) = if mpnet {
                    let s = a.pp("attn");
                    (
                        s.pp("q"),
                        s.pp("k"),
                        s.pp("v"),
                        s.pp("o"),
                        a.pp("LayerNorm"),
                    )
                } else {
                    let s = a.pp("self");
                    let out = a.pp("output");
                    (
                        s.pp("query"),
                        s.pp("key"),
                        s.pp("value"),
                        out.pp("dense"),
                        out.pp("LayerNorm"),
                    )
                };
                Ok(Layer {
                    query: linear(h, h, q)?,
                    key: linear(h, h, k)?,
                    value: linear(h, h, v)?,
                    attn_out: linear(h, h, o)?,
                    attn_norm: layer_norm(h, eps, ln)?,
                    inter: linear(h, c.intermediate_size, l.pp("intermediate").pp("dense"))?,
                    out: linear(c.intermediate_size, h, l.pp("output").pp("dense"))?,
                    out_norm: layer_norm(h, eps, l.pp("output").pp("LayerNorm"))?,
                    eps,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let relative = if mpnet {
            let buckets = c.relative_attention_num_buckets.unwrap_or(32);
            let table = vb
                .pp("encoder")
                .pp("relative_attention_bias")
                .get((buckets, c.num_attention_heads), "weight")?;
            Some(RelativeBias { table, buckets })
        } else {
            None
        };
        let token_type = if mpnet {
            None
        } else {
            Some(embedding(
                c.type_vocab_size.max(1),
                h,
                e.pp("token_type_embeddings"),
            )?)
        };
        Ok(Self {
            word: embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))?,
            position_offset: if mpnet { c.pad_token_id + 1 } else { 0 },
            token_type,
            emb_norm: layer_norm(h, eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
            relative,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Word + position (+ token-type) embeddings, normalised. Texts are padded at the end, so
    /// every text's positions count from the first token.
    fn embeddings(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let p0 = self.position_offset as u32;
        let positions = Tensor::arange(p0, p0 + len as u32, ids.device())?;
        let mut x = self.word.forward(ids)?;
        if let Some(tt) = &self.token_type {
            x = (x + tt.forward(&ids.zeros_like()?)?)?;
        }
        let x = x.broadcast_add(&self.position.forward(&positions)?)?;
        self.emb_norm.forward(&x)
    }

    /// What is added to a batch's attention scores: the padding mask `(n, 1, 1, len)`, plus
    /// for MPNet the relative-position bias `(1, heads, len, len)`.
    pub fn attention_bias(&self, mask: &Tensor) -> Result<Tensor> {
        let m = additive_mask(mask)?;
        let Some(rel) = &self.relative else {
            return Ok(m);
        };
        let (_, len) = mask.dims2()?;
        let idx: Vec<u32> = (0..len as i64)
            .flat_map(|i| (0..len as i64).map(move |j| (i, j)))
            .map(|(i, j)| relative_bucket(j - i, rel.buckets) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, len * len, mask.device())?;
        let bias = rel
            .table
            .index_select(&idx, 0)? // (len·len, heads)
            .t()?
            .reshape((1, self.heads, len, len))?;
        m.broadcast_add(&bias)
    }

    /// Hidden states `(n, len, hidden)` after the embeddings (index 0) and after every layer.
    pub fn forward_all(&self, ids: &Tensor, mask: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.embeddings(ids)?;
        let add_mask = self.attention_bias(mask)?;
        let mut out = vec![x.clone()];
        for l in &self.layers {
            x = l.forward(&x, &add_mask, self.heads, false)?;
            out.push(x.clone());
        }
        Ok(out)
    }
}

/// 0 where attended, f32::MIN where padded, shaped (n, 1, 1, len) to add to attention scores.
/// Use [`Bert::attention_bias`], which adds MPNet's relative-position bias.
pub fn additive_mask(mask: &Tensor) -> Result<Tensor> {
    let (n, len) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((m.ones_like()? - m)? * f64::from(f32::MIN))?.reshape((n, 1, 1, len))
}

impl Layer {
    /// One transformer layer. `train` uses the layer norm that supports gradients.
    pub fn forward(
        &self,
        x: &Tensor,
        add_mask: &Tensor,
        heads: usize,
        train: bool,
    ) -> Result<Tensor> {
        let (n, len, hidden) = x.dims3()?;
        let head_dim = hidden / heads;
        let norm = |ln: &LayerNorm, t: &Tensor| -> Result<Tensor> {
            if train {
                candle_nn::ops::layer_norm_slow(
                    t,
                    ln.weight(),
                    ln.bias().expect("BERT layer norms have a bias"),
                    self.eps as f32,
                )
            } else {
                ln.forward(t)
            }
        };
        let split = |t: Tensor| {
            t.reshape((n, len, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores =
            (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?.broadcast_add(add_mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, len, hidden))?;
        let a = norm(&self.attn_norm, &(self.attn_out.forward(&ctx)? + x)?)?;
        let i = self.inter.forward(&a)?.gelu_erf()?;
        norm(&self.out_norm, &(self.out.forward(&i)? + &a)?)
    }

    fn linears(&self) -> [&Linear; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attn_out,
            &self.inter,
            &self.out,
        ]
    }

    /// Every weight, in a fixed order (for storing and for making a trainable copy).
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut v = vec![];
        for l in self.linears() {
            v.push(l.weight().clone());
            v.push(l.bias().expect("BERT linears have a bias").clone());
        }
        for ln in [&self.attn_norm, &self.out_norm] {
            v.push(ln.weight().clone());
            v.push(ln.bias().expect("BERT layer norms have a bias").clone());
        }
        v
    }

    /// A layer from tensors in the order of [`Layer::tensors`].
    pub fn from_tensors(t: &[Tensor], eps: f64) -> Result<Self> {
        if t.len() != 16 {
            candle_core::bail!("a BERT layer has 16 tensors, got {}", t.len());
        }
        let lin = |i: usize| Linear::new(t[2 * i].clone(), Some(t[2 * i + 1].clone()));
        Ok(Self {
            query: lin(0),
            key: lin(1),
            value: lin(2),
            attn_out: lin(3),
            inter: lin(4),
            out: lin(5),
            attn_norm: LayerNorm::new(t[12].clone(), t[13].clone(), eps),
            out_norm: LayerNorm::new(t[14].clone(), t[15].clone(), eps),
            eps,
        })
    }

    /// A copy whose weights are variables (gradients flow into them), and those variables.
    pub fn trainable(&self) -> Result<(Self, Vec<Var>)> {
        let vars = self
            .tensors()
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        Ok((Self::from_tensors(&tensors, self.eps)?, vars))
    }
}

impl Bert {
    /// Hidden states after the embeddings and the first `upto` layers.
    pub fn forward_until(&self, ids: &Tensor, mask: &Tensor, upto: usize) -> Result<Tensor> {
        let mut x = self.embeddings(ids)?;
        let add_mask = self.attention_bias(mask)?;
        for l in self.layers.iter().take(upto) {
            x = l.forward(&x, &add_mask, self.heads, false)?;
        }
        Ok(x)
    }

    pub fn layer(&self, i: usize) -> &Layer {
        &self.layers[i]
    }

    pub fn heads(&self) -> usize {
        self.heads
    }
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    #[test]
    fn relative_buckets_match_hugging_face_mpnet() {
        // From transformers' MPNetEncoder.relative_position_bucket(rel, num_buckets=32).
        let expected = [
            (-300, 15),
            (-128, 15),
            (-127, 15),
            (-64, 14),
            (-63, 13),
            (-32, 12),
            (-31, 11),
            (-16, 10),
            (-15, 9),
            (-8, 8),
            (-7, 7),
            (-1, 1),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (15, 25),
            (16, 26),
            (31, 27),
            (32, 28),
            (63, 29),
            (64, 30),
            (127, 31),
            (128, 31),
            (300, 31),
        ];
        for (rel, bucket) in expected {
            assert_eq!(relative_bucket(rel, 32), bucket, "relative position {rel}");
        }
    }
}
