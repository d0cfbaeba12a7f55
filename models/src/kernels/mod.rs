//! Hand-written CPU kernels under the models: Intel AMX tile matmuls over GGUF blocks
//! ([`amx`]), causal attention that gives the same result in any pass ([`attention`]), the
//! plain-`f32` BERT forward pass for short texts ([`fastbert`]), and int8 linears for AVX2 CPUs
//! without VNNI ([`int8`]).

pub mod amx;
pub mod attention;
pub mod fastbert;
pub mod int8;

use rayon::prelude::*;

/// Runs a panel kernel over `n` outputs in panels of `width`, for `rows` input rows, and writes
/// `y` (`rows × n`, plus `bias` where given). `kernel(first, out)` fills `out` with panels
/// `first..` (each `rows × width`, row by row); with `parallel` the panels are split over the
/// rayon pool, two runs per thread.
pub(crate) fn by_panels(
    n: usize,
    width: usize,
    rows: usize,
    parallel: bool,
    bias: Option<&[f32]>,
    y: &mut Vec<f32>,
    kernel: impl Fn(usize, &mut [f32]) + Sync,
) {
    let panels = n.div_ceil(width);
    let mut outs = vec![0f32; panels * rows * width];
    let threads = rayon::current_num_threads();
    let per = if parallel && threads > 1 {
        panels.div_ceil(threads * 2)
    } else {
        panels
    };
    if per < panels {
        outs.par_chunks_mut(per * rows * width)
            .enumerate()
            .for_each(|(c, o)| kernel(c * per, o));
    } else {
        kernel(0, &mut outs);
    }
    y.clear();
    y.resize(rows * n, 0.0);
    for (p, panel) in outs.chunks_exact(rows * width).enumerate() {
        let o0 = p * width;
        let w = width.min(n - o0);
        for (r, prow) in panel.chunks_exact(width).enumerate() {
            let yrow = &mut y[r * n + o0..r * n + o0 + w];
            match bias {
                Some(b) => {
                    for ((yv, pv), b) in yrow.iter_mut().zip(prow).zip(&b[o0..o0 + w]) {
                        *yv = pv + b;
                    }
                }
                None => yrow.copy_from_slice(&prow[..w]),
            }
        }
    }
}
