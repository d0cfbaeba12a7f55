//! A sentence encoder (all-MiniLM-L6-v2 by default, all-mpnet-base-v2 as the larger option) on
//! the BERT-family forward pass in [`crate::bert`]: tokenize, forward, mean-pool over the
//! attention mask, L2-normalise.

use std::path::Path;

use crate::bert::{Bert, Config, Layer};
use crate::kernels::fastbert::FastBert;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{Embedder, Error, Result};

/// Longest input the encoder sees, in tokens; longer texts are truncated.
pub const MAX_TOKENS: usize = 256;
/// Token rows up to which a batch takes the fast path (see [`crate::kernels::fastbert`]): single
/// messages are faster there, batches of 32 messages or facts through candle. The figures that
/// chose it are in README ("Encoder paths"), from `cargo bench -p closer-models --bench encoder`.
const FAST_MAX_ROWS: usize = 128;
/// Texts per forward pass when embedding many.
const BATCH: usize = 32;

pub struct TextEncoder {
    /// What serves short inputs (visitor messages, queries).
    fast: FastBert,
    /// The candle graph of the same weights: large batches, fine-tuning experiments, and the
    /// reference the fast path is tested and benchmarked against.
    model: Bert,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    /// The model's name (part of a trained head's version).
    name: String,
}

impl TextEncoder {
    /// Loads from a folder holding `model.safetensors`, `config.json` and `tokenizer.json`;
    /// `name` names the model in trained heads' versions.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let device = Device::Cpu;
        let (config, model) = Self::load_candle(dir)?;
        let kernels = crate::kernels::fastbert::int8_kernels();
        let int8 = kernels.is_some();
        let fast =
            FastBert::from_bert(&model, config.layer_norm_eps, config.pad_token_id, kernels)?;
        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        // The packaged tokenizer pads every text to 128 tokens; with that, cosines collapse.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self {
            fast,
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            name: if int8 {
                format!("{name} int8")
            } else {
                name.to_string()
            },
        })
    }

    /// Loads `model` from the model folder (see [`crate::source::ModelPaths`]).
    pub fn open(
        paths: &crate::source::ModelPaths,
        model: crate::source::EncoderModel,
    ) -> Result<Self> {
        paths.check_encoder(model)?;
        Self::load(&paths.encoder_dir_of(model), model.name())
    }

    fn load_candle(dir: &Path) -> Result<(Config, Bert)> {
        let config: Config = serde_json::from_slice(&read(dir, "config.json")?)
            .map_err(|e| Error::Other(format!("encoder config.json: {e}")))?;
        let weights = read(dir, "model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
        let model = Bert::load(vb, &config)?;
        Ok((config, model))
    }

    /// Mean-pooled (over the attention mask), unit-length vectors of the hidden states at
    /// `layers` (0 = embeddings output, 6 = last layer), concatenated per text. A forward
    /// chunk of at most [`FAST_MAX_ROWS`] tokens takes the fast path, a larger one candle's;
    /// where the int8 linears are built ([`Self::int8`]), every chunk takes them.
    pub fn pooled_layers(&self, texts: &[&str], layers: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.pooled_by(texts, layers, Route::BySize)
    }

    /// As [`Self::pooled_layers`], always through the int8 linears (f32 where this CPU has
    /// none: see [`Self::int8`]).
    pub fn pooled_layers_int8(&self, texts: &[&str], layers: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.pooled_by(texts, layers, Route::Int8)
    }

    /// Whether inputs are served through int8 linears: candle's on CPUs with AVX-512 VNNI or
    /// AVX-VNNI, [`crate::kernels::int8`]'s on the other AVX2 CPUs; f32 elsewhere or with
    /// `CLOSER_INT8=0` (see [`crate::kernels::fastbert::int8_kernels`]).
    pub fn int8(&self) -> bool {
        self.fast.has_int8()
    }

    /// As [`Self::pooled_layers`], always through the f32 fast path.
    pub fn pooled_layers_fast(&self, texts: &[&str], layers: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.pooled_by(texts, layers, Route::Fast)
    }

    /// As [`Self::pooled_layers`], always through the candle graph with padded batches: the
    /// reference for the fast path.
    pub fn pooled_layers_candle(&self, texts: &[&str], layers: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.pooled_by(texts, layers, Route::Candle)
    }

    fn pooled_by(&self, texts: &[&str], layers: &[usize], route: Route) -> Result<Vec<Vec<f32>>> {
        if let Some(l) = layers.iter().find(|&&l| l > self.last_layer()) {
            return Err(Error::Other(format!("no encoder layer {l}")));
        }
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            let encodings = self.encode(chunk)?;
            // Unpadded: each text's own tokens.
            let ids: Vec<&[u32]> = encodings
                .iter()
                .map(|e| {
                    let n = e.get_attention_mask().iter().filter(|&&m| m != 0).count();
                    &e.get_ids()[..n]
                })
                .collect();
            let rows: usize = ids.iter().map(|t| t.len()).sum();
            let fast = match route {
                Route::BySize => rows <= FAST_MAX_ROWS || self.fast.has_int8(),
                Route::Fast | Route::Int8 => true,
                Route::Candle => false,
            };
            let int8 = match route {
                Route::BySize | Route::Int8 => self.fast.has_int8(),
                Route::Fast | Route::Candle => false,
            };
            if fast {
                out.extend(self.fast.pooled(&ids, layers, int8)?);
            } else {
                out.extend(self.pooled_batch(&encodings, layers)?);
            }
        }
        Ok(out)
    }

    /// A text's token ids as the encoder reads it (with [CLS] and [SEP], truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(&[text])?.remove(0).get_ids().to_vec())
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<tokenizers::Encoding>> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Token ids and attention mask of a batch, padded to its longest text.
    fn batch_tensors(&self, encodings: &[tokenizers::Encoding]) -> Result<(Tensor, Tensor)> {
        let n = encodings.len();
        let len = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        Ok((ids, mask))
    }

    /// Hidden states of a batch after all but the last layer, and its mask: the input of a
    /// fine-tuned top layer.
    pub fn below_top(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let (ids, mask) = self.batch_tensors(&self.encode(texts)?)?;
        let h = self
            .model
            .forward_until(&ids, &mask, self.last_layer() - 1)?;
        Ok((h, mask))
    }

    /// The encoder's own last layer.
    pub fn top_layer(&self) -> &Layer {
        self.model.layer(self.last_layer() - 1)
    }

    pub fn heads(&self) -> usize {
        self.fast.heads()
    }

    /// What a batch's attention scores get added: the padding mask, and MPNet's
    /// relative-position bias (see [`Bert::attention_bias`]).
    pub fn attention_bias(&self, mask: &Tensor) -> Result<Tensor> {
        Ok(self.model.attention_bias(mask)?)
    }

    /// Pooled unit vectors with `top` in place of the last layer.
    pub fn pooled_with_top(&self, texts: &[&str], top: &Layer) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            let (h, mask) = self.below_top(chunk)?;
            let h = top.forward(&h, &self.attention_bias(&mask)?, self.heads(), false)?;
            out.extend(mean_pool_unit(&h, &mask)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    fn pooled_batch(
        &self,
        encodings: &[tokenizers::Encoding],
        layers: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        let (ids, mask) = self.batch_tensors(encodings)?;
        let hidden = self.model.forward_all(&ids, &mask)?;
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let counts = maskf.sum(1)?.clamp(1e-9, f64::MAX)?; // (n, 1)
        let mut parts = vec![];
        for &l in layers {
            let h = hidden
                .get(l)
                .ok_or_else(|| Error::Other(format!("no encoder layer {l}")))?;
            let mean = h.broadcast_mul(&maskf)?.sum(1)?.broadcast_div(&counts)?; // (n, dim)
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            parts.push(mean.broadcast_div(&norm)?);
        }
        Ok(Tensor::cat(&parts, 1)?.to_vec2::<f32>()?)
    }

    fn last_layer(&self) -> usize {
        self.fast.num_layers()
    }
}

#[derive(Clone, Copy)]
enum Route {
    BySize,
    Fast,
    Int8,
    Candle,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Missing(p.display().to_string())
        } else {
            Error::io(&p, e)
        }
    })
}

/// Mean over the attention mask of `(n, len, dim)` hidden states, scaled to unit length: `(n, dim)`.
pub fn mean_pool_unit(h: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
    let counts = maskf.sum(1)?.clamp(1e-9, f64::MAX)?; // (n, 1)
    let mean = h.broadcast_mul(&maskf)?.sum(1)?.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}

impl Embedder for TextEncoder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.pooled_layers(texts, &[self.last_layer()])
    }

    fn name(&self) -> &str {
        // Part of a trained head's version: a head trained on f32 vectors is retrained for
        // int8 ones (and back), and one trained on another encoder's, rather than reused.
        &self.name
    }
}
