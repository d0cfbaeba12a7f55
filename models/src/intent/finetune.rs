//! Fine-tuning the encoder's last transformer layer on a tenant's examples (candle autograd,
//! AdamW, cross-entropy through a temporary linear head on the pooled, unit-length output).
//! The layers below stay frozen and shared; their outputs are computed once.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use crate::bert::Layer;
use crate::encoder::{mean_pool_unit, TextEncoder};
use crate::rng::Rng;
use crate::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub epochs: usize,
    /// AdamW step for the layer's weights.
    pub lr: f64,
    /// AdamW step for the temporary head.
    pub head_lr: f64,
    pub batch: usize,
    /// Pooled vectors have unit length; logits are scaled by this (a fixed inverse temperature).
    pub scale: f64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: 5e-5,
            head_lr: 5e-3,
            batch: 32,
            scale: 20.0,
        }
    }
}

/// Returns a tuned copy of the encoder's last layer. `progress(step, steps)` after each step.
pub fn finetune_top(
    enc: &TextEncoder,
    texts: &[&str],
    y: &[usize],
    k: usize,
    cfg: &FinetuneConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Layer> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(seed ^ 0xF1E7);
    let mut order: Vec<usize> = (0..texts.len()).collect();
    rng.shuffle(&mut order);
    // Fixed batches (their order is reshuffled each epoch), inputs computed once.
    let mut batches = vec![];
    for chunk in order.chunks(cfg.batch.max(1)) {
        let t: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let (h, mask) = enc.below_top(&t)?;
        let labels = Tensor::new(chunk.iter().map(|&i| y[i] as u32).collect::<Vec<_>>(), &dev)?;
        batches.push((h, enc.attention_bias(&mask)?, mask, labels));
    }
    let (layer, vars) = enc.top_layer().trainable()?;
    let dim = crate::Embedder::dim(enc);
    let w = Var::from_tensor(&Tensor::zeros((k, dim), DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(k, DType::F32, &dev)?)?;
    let mut opt_layer = AdamW::new(
        vars,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut opt_head = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: cfg.head_lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let steps = cfg.epochs * batches.len();
    let mut step = 0;
    let mut idx: Vec<usize> = (0..batches.len()).collect();
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut idx);
        for &bi in &idx {
            let (h, add_mask, mask, labels) = &batches[bi];
            let out = layer.forward(h, add_mask, enc.heads(), true)?;
            let pooled = mean_pool_unit(&out, mask)?;
            let logits = (pooled
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?
                * cfg.scale)?;
            let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
            let grads = loss.backward()?;
            opt_layer.step(&grads)?;
            opt_head.step(&grads)?;
            step += 1;
            progress(step, steps);
        }
    }
    // Detach: plain tensors for inference.
    let tensors: Vec<Tensor> = layer.tensors().iter().map(|t| t.detach()).collect();
    Ok(Layer::from_tensors(&tensors, layer.eps)?)
}
