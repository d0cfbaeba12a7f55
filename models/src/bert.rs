//! A BERT encoder forward pass (as in candle-transformers' `bert`, same weights and maths) that
//! also returns every layer's hidden states: the intent features pool several layers, retrieval
//! uses the last one.

use candle_core::{DType, Module, Result, Tensor, Var, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::Config;

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
}

pub struct Bert {
    pub(crate) word: Embedding,
    pub(crate) position: Embedding,
    pub(crate) token_type: Embedding,
    pub(crate) emb_norm: LayerNorm,
    pub(crate) layers: Vec<Layer>,
    pub(crate) heads: usize,
}

impl Bert {
    pub fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let e = vb.pp("embeddings");
        let h = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    query: linear(h, h, a.pp("self").pp("query"))?,
                    key: linear(h, h, a.pp("self").pp("key"))?,
                    value: linear(h, h, a.pp("self").pp("value"))?,
                    attn_out: linear(h, h, a.pp("output").pp("dense"))?,
                    attn_norm: layer_norm(h, c.layer_norm_eps, a.pp("output").pp("LayerNorm"))?,
                    inter: linear(h, c.intermediate_size, l.pp("intermediate").pp("dense"))?,
                    out: linear(c.intermediate_size, h, l.pp("output").pp("dense"))?,
                    out_norm: layer_norm(h, c.layer_norm_eps, l.pp("output").pp("LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))?,
            token_type: embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            emb_norm: layer_norm(h, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Word + position + token-type embeddings, normalised.
    fn embeddings(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(&ids.zeros_like()?)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        self.emb_norm.forward(&x)
    }

    /// Hidden states `(n, len, hidden)` after the embeddings (index 0) and after every layer.
    pub fn forward_all(&self, ids: &Tensor, mask: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.embeddings(ids)?;
        let add_mask = additive_mask(mask)?;
        let mut out = vec![x.clone()];
        for l in &self.layers {
            x = l.forward(&x, &add_mask, self.heads, false)?;
            out.push(x.clone());
        }
        Ok(out)
    }
}

/// 0 where attended, f32::MIN where padded, shaped (n, 1, 1, len) to add to attention scores.
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
                    1e-12,
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
        Ok((Self::from_tensors(&tensors, 1e-12)?, vars))
    }
}

impl Bert {
    /// Hidden states after the embeddings and the first `upto` layers.
    pub fn forward_until(&self, ids: &Tensor, mask: &Tensor, upto: usize) -> Result<Tensor> {
        let mut x = self.embeddings(ids)?;
        let add_mask = additive_mask(mask)?;
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
