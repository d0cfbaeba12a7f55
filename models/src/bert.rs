//! A BERT encoder forward pass (as in candle-transformers' `bert`, same weights and maths) that
//! also returns every layer's hidden states: the intent features pool several layers, retrieval
//! uses the last one.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::Config;

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
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
            head_dim: h / c.num_attention_heads,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Hidden states `(n, len, hidden)` after the embeddings (index 0) and after every layer.
    pub fn forward_all(&self, ids: &Tensor, mask: &Tensor) -> Result<Vec<Tensor>> {
        let (n, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(&ids.zeros_like()?)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        // 0 where attended, f32::MIN where padded: (n, 1, 1, len).
        let add_mask = ((mask.to_dtype(DType::F32)?.ones_like()? - mask.to_dtype(DType::F32)?)?
            * f64::from(f32::MIN))?
        .reshape((n, 1, 1, len))?;
        let mut out = vec![x.clone()];
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for l in &self.layers {
            let split = |t: Tensor| {
                t.reshape((n, len, self.heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = ((q.matmul(&k.t()?)? * scale)?).broadcast_add(&add_mask)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((
                n,
                len,
                self.heads * self.head_dim,
            ))?;
            let a = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let i = l.inter.forward(&a)?.gelu_erf()?;
            x = l.out_norm.forward(&(l.out.forward(&i)? + &a)?)?;
            out.push(x.clone());
        }
        Ok(out)
    }
}
