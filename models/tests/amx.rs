//! The AMX-bf16 products (Q8_0, Q4K, Q6K weights) against the same products in f32 on the
//! dequantised weights, and against candle's int8 kernels (where this CPU has AMX; elsewhere
//! there is nothing to run).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use closer_models::kernels::amx;

/// Reproducible values in [-1, 1) (a 64-bit LCG).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Largest difference over the largest magnitude of `want`.
fn error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    diff / want.iter().map(|v| v.abs()).fold(0f32, f32::max)
}

#[test]
fn amx_products_match_the_dequantised_weights() {
    if !amx::available() {
        eprintln!("skipped: this CPU (or OS) has no AMX-BF16");
        return;
    }
    let dev = Device::Cpu;
    // Shapes of the generator's products (qkv and gate/up over 896 inputs, one prompt of 123
    // rows), ragged row counts, and rows widened with zero blocks past the inputs read.
    use amx::Format;
    for (format, m, n, k, wide) in [
        (Format::Q8_0, 16, 32, 64, 64),
        (Format::Q8_0, 1, 64, 96, 96),
        (Format::Q8_0, 17, 64, 96, 96),
        (Format::Q8_0, 37, 96, 896, 1024),
        (Format::Q8_0, 123, 1152, 896, 1024),
        (Format::Q8_0, 64, 9728, 896, 896),
        (Format::Q8_0, 200, 64, 4864, 4864),
        (Format::Q4K, 33, 64, 512, 512),
        (Format::Q4K, 123, 896, 4864, 4864),
        (Format::Q6K, 7, 32, 256, 256),
        (Format::Q6K, 123, 896, 4864, 4864),
    ] {
        let dtype = match format {
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q6K => GgmlDType::Q6K,
        };
        let mut w = vec![0f32; n * wide];
        for (row, src) in w
            .chunks_exact_mut(wide)
            .zip(values(n * k, 7).chunks_exact(k))
        {
            row[..k].copy_from_slice(src);
        }
        let q = QTensor::quantize(&Tensor::from_vec(w, (n, wide), &dev).unwrap(), dtype).unwrap();
        let xs = values(m * k, 11);
        let x = Tensor::from_vec(xs.clone(), (m, k), &dev).unwrap();
        let wd = q.dequantize(&dev).unwrap().narrow(1, 0, k).unwrap();
        let want: Vec<f32> = x
            .matmul(&wd.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let data = q.data().unwrap().to_vec();
        let got = amx::matmul(format, &data, n, data.len() / n, &xs, m, k / 32);
        let ours = error(&got, &want);
        // candle's kernels on the same weights (int8 activations where this CPU has VNNI).
        let x_wide = x.pad_with_zeros(1, 0, wide - k).unwrap();
        let theirs: Vec<f32> = QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&x_wide)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let candle = error(&theirs, &want);
        eprintln!(
            "{format:?} {m}×{k} by {n}×{k} (rows {wide} wide): AMX-bf16 {ours:.4}, candle {candle:.4}"
        );
        assert!(ours < 0.01, "{format:?} {m}×{k} by {n}: error {ours}");
        assert!(ours <= candle.max(0.004), "{ours} vs candle's {candle}");
    }
}
