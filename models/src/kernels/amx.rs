//! Q8_0 matrix products for prompt passes on Intel AMX (bf16 tiles).
//!
//! candle multiplies Q8_0 weights with int8 dot products: the activations are quantised, and
//! each 32-value block's product is scaled by its two scales in vector registers. Over a prompt
//! (many rows) that scaling, not the multiplies, sets the pace. Here each weight block is
//! dequantised once per pass to bf16 (`scale × q`, rounded), the activations are rounded to
//! bf16, and the tile unit accumulates whole rows in f32 (`tdpbf16ps`), with no per-block work
//! after the multiplies. Its error against the dequantised weights in f32 is about half the
//! int8 path's (tested in `tests/amx.rs`).
//!
//! Layout: the weights are the tiles' A operand (16 output columns × 32 inner values: one
//! dequantised Q8_0 block per tile row, read straight from the GGUF's blocks, so no second
//! copy of the weights is kept); the activations are the B operand (16 pairs of inner values ×
//! 16 rows), laid out once per product. Each result tile is 16 output columns × 16 rows and is
//! transposed on the way out. Work is split over output columns on candle's thread pool.
//!
//! Used only where the CPU has AMX-BF16, AVX512-BF16 and Linux grants the tile state
//! ([`available`]; `CLOSER_AMX=0` turns it off). The tile configuration is per thread and
//! candle's own AMX kernel (Q4K) keeps its configuration loaded between calls, so every call
//! here loads its own and puts candle's back when it is done.

#![allow(unsafe_code)]

use std::sync::OnceLock;

/// Bytes in one Q8_0 block: an f16 scale and 32 int8 values.
const Q8_0_BLOCK: usize = 34;

/// Whether this CPU and OS can run [`matmul_q8_0`] (decided once per process).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| std::env::var("CLOSER_AMX").as_deref() != Ok("0") && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("f16c"))
    {
        return false;
    }
    // AMX-BF16 is CPUID.(7,0):EDX bit 22, AMX-TILE bit 24 (std does not detect them on stable).
    let info = core::arch::x86_64::__cpuid_count(7, 0);
    if info.edx & (1 << 22) == 0 || info.edx & (1 << 24) == 0 {
        return false;
    }
    // Linux hands out the tile state only to processes that ask for it.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether [`matmul_q8_0`] takes a product of these sizes: `n` output columns, `w` inputs.
pub fn fits(n: usize, w: usize) -> bool {
    n > 0 && n.is_multiple_of(32) && w > 0 && w.is_multiple_of(32)
}

/// One tile row: 64 bytes, 32 bf16 values.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

const ZERO_LINE: Line = Line([0; 32]);

/// f32 to bf16, rounded to nearest even (what `vcvtne2ps2bf16` does; NaN does not occur here).
fn bf16(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// How the weight matrix is stored: the GGUF block formats the kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 32 values a block: an f16 scale, 32 int8 values (34 bytes).
    Q8_0,
    /// 256 values a block: f16 scale and minimum, 12 bytes of 6-bit sub-block scales and
    /// minimums, 128 bytes of 4-bit values (144 bytes).
    Q4K,
    /// 256 values a block: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 sub-block scales,
    /// an f16 scale (210 bytes).
    Q6K,
}

impl Format {
    /// Values and bytes in one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::Q8_0 => (32, Q8_0_BLOCK),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

/// `x` (`m` rows of `kb × 32` values) times the transpose of `weights` (`n` rows of
/// `row_bytes` bytes of `format` blocks, of which the first `kb × 32` values are read: rows
/// widened with zero blocks keep their width) as `m × n` values.
///
/// Panics when [`available`] is false, [`fits`] does not hold, or the slices are too short.
pub fn matmul(
    format: Format,
    weights: &[u8],
    n: usize,
    row_bytes: usize,
    x: &[f32],
    m: usize,
    kb: usize,
) -> Vec<f32> {
    assert!(available(), "AMX-bf16 is not available on this CPU");
    let w = kb * 32;
    let (values, bytes) = format.block();
    assert!(
        fits(n, w) && w.is_multiple_of(values) && w / values * bytes <= row_bytes,
        "{m}×{w} by {n}×{w} in {format:?}"
    );
    assert!(weights.len() >= n * row_bytes && x.len() >= m * w);

    // The activations as B tiles: tile (row tile t, inner block b) holds 16 lines, line p the
    // pairs (2p, 2p + 1) of inner values of the tile's 16 rows. Rows past `m` stay zero, and the
    // row tiles are padded to an even count (the kernel takes two at a time).
    let m_pairs = m.div_ceil(32);
    let mut acts = vec![ZERO_LINE; m_pairs * 2 * kb * 16];
    for (i, row) in x.chunks_exact(w).take(m).enumerate() {
        let (t, j) = (i / 16, i % 16);
        for (b, block) in row.chunks_exact(32).enumerate() {
            let tile = &mut acts[(t * kb + b) * 16..][..16];
            for (line, pair) in tile.iter_mut().zip(block.chunks_exact(2)) {
                line.0[2 * j] = bf16(pair[0]);
                line.0[2 * j + 1] = bf16(pair[1]);
            }
        }
    }

    let mut out = vec![0f32; m * n];
    let out_at = out.as_mut_ptr() as usize;
    let job = Job {
        format,
        weights,
        row_bytes,
        kb,
        acts: &acts,
        m,
        m_pairs,
        n,
    };
    candle_core::utils::barrier_pool().execute_chunked(n / 32, |pairs| {
        // SAFETY: `available` checked the CPU features and the tile permission; each call
        // writes only the output columns of its own column pairs, and `out` outlives the pool
        // call (execute_chunked returns when every worker is done).
        unsafe { kernel::run(&job, pairs, out_at as *mut f32) }
    });
    out
}

/// What every worker reads.
struct Job<'a> {
    format: Format,
    weights: &'a [u8],
    row_bytes: usize,
    kb: usize,
    acts: &'a [Line],
    m: usize,
    m_pairs: usize,
    n: usize,
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{Job, Line, Q8_0_BLOCK, ZERO_LINE};
    use core::arch::asm;
    use core::arch::x86_64::*;
    use std::cell::RefCell;

    #[repr(C, align(64))]
    struct TileCfg {
        palette: u8,
        start_row: u8,
        _reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const _: () = assert!(std::mem::size_of::<TileCfg>() == 64);

    /// Loads a configuration: `shapes[t]` = (rows, bytes per row) of tile register `t`.
    unsafe fn load_config(shapes: [(u8, u16); 8]) {
        let mut cfg = TileCfg {
            palette: 1,
            start_row: 0,
            _reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (t, (rows, colsb)) in shapes.into_iter().enumerate() {
            cfg.rows[t] = rows;
            cfg.colsb[t] = colsb;
        }
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    }

    /// Ours: four 16 × 16 f32 results (tmm0–3), two weight tiles (tmm4–5, 16 × 32 bf16) and two
    /// activation tiles (tmm6–7, 16 pairs × 16 rows).
    const OURS: [(u8, u16); 8] = [(16, 64); 8];
    /// candle 0.11.1's (`quantized::repack_x86::amx::configure`), which it loads once per
    /// thread and expects to find: tmm0–3 16 × 64 bytes, tmm4–5 16 × 32, tmm6–7 8 × 64.
    const CANDLES: [(u8, u16); 8] = [
        (16, 64),
        (16, 64),
        (16, 64),
        (16, 64),
        (16, 32),
        (16, 32),
        (8, 64),
        (8, 64),
    ];

    #[repr(C, align(64))]
    struct Results([f32; 4 * 256]);

    thread_local! {
        /// The dequantised weight tiles of one column pair (kept per thread across calls).
        static WEIGHT_TILES: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    }

    /// Column pairs `pairs` (32 output columns each) of the product into `out` (`m × n`).
    ///
    /// # Safety
    /// The CPU must have AMX-BF16 and AVX512-BF16 and the process the tile permission
    /// ([`super::available`]); no other thread may write the same output columns.
    pub(super) unsafe fn run(job: &Job, pairs: std::ops::Range<usize>, out: *mut f32) {
        WEIGHT_TILES.with(|tiles| {
            let mut tiles = tiles.borrow_mut();
            // Every line is written before it is read, so the buffer only grows.
            let need = job.kb * 2 * 16;
            if tiles.len() < need {
                tiles.resize(need, ZERO_LINE);
            }
            let tiles = &mut tiles[..need];
            unsafe {
                load_config(OURS);
                for pair in pairs {
                    dequantise(job, pair, tiles);
                    multiply(job, pair, tiles, out);
                }
                load_config(CANDLES);
            }
        })
    }

    /// The 32 weight rows of column pair `pair` in bf16, row after row (line `kb × i + b` is
    /// values `32 b ..` of row `32 pair + i`), so that A tile (b, half) is every `kb`th line
    /// from `16 kb × half + b`. Row by row, the stores are sequential.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    unsafe fn dequantise(job: &Job, pair: usize, tiles: &mut [Line]) {
        for (i, lines) in tiles.chunks_exact_mut(job.kb).enumerate().take(32) {
            let row = &job.weights[(pair * 32 + i) * job.row_bytes..][..job.row_bytes];
            // SAFETY: the caller's CPU features; the row holds `kb × 32` values (checked by
            // `matmul`).
            unsafe {
                match job.format {
                    super::Format::Q8_0 => q8_0_row(row, lines),
                    super::Format::Q4K => q4k_row(row, lines),
                    super::Format::Q6K => q6k_row(row, lines),
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn f16(bytes: &[u8]) -> f32 {
        let bits = u16::from_le_bytes([bytes[0], bytes[1]]);
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
    }

    /// 16 int32 values times `scale` (plus `offset`), and 16 more times `scale2`, as one line.
    #[inline(always)]
    unsafe fn store_line(
        line: &mut Line,
        lo: __m512i,
        hi: __m512i,
        (scale, scale2): (f32, f32),
        (offset, offset2): (f32, f32),
    ) {
        unsafe {
            let lo = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(lo),
                _mm512_set1_ps(scale),
                _mm512_set1_ps(offset),
            );
            let hi = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(hi),
                _mm512_set1_ps(scale2),
                _mm512_set1_ps(offset2),
            );
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_store_si512(line.0.as_mut_ptr() as *mut __m512i, v);
        }
    }

    /// 32 bytes of `v` as two halves of 16 values, sign- (`signed`) or zero-extended.
    #[inline(always)]
    unsafe fn widen(v: __m256i, signed: bool) -> (__m512i, __m512i) {
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        if signed {
            (_mm512_cvtepi8_epi32(lo), _mm512_cvtepi8_epi32(hi))
        } else {
            (_mm512_cvtepu8_epi32(lo), _mm512_cvtepu8_epi32(hi))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    unsafe fn q8_0_row(row: &[u8], lines: &mut [Line]) {
        for (block, line) in row.chunks_exact(Q8_0_BLOCK).zip(lines) {
            // SAFETY: `block` has 2 + 32 bytes.
            unsafe {
                let d = f16(block);
                let q = _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i);
                let (lo, hi) = widen(q, true);
                store_line(line, lo, hi, (d, d), (0.0, 0.0));
            }
        }
    }

    /// Sub-block `j`'s 6-bit scale and minimum (as ggml packs them in 12 bytes).
    fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
        if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    unsafe fn q4k_row(row: &[u8], lines: &mut [Line]) {
        let nibble = _mm256_set1_epi8(0x0f);
        for (block, lines) in row.chunks_exact(144).zip(lines.chunks_exact_mut(8)) {
            // SAFETY: `block` has 144 bytes: d, dmin, scales (12), qs (128).
            unsafe {
                let (d, dmin) = (f16(block), f16(&block[2..]));
                let scales = &block[4..16];
                for c in 0..4 {
                    let q = _mm256_loadu_si256(block.as_ptr().add(16 + 32 * c) as *const __m256i);
                    let low = _mm256_and_si256(q, nibble);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble);
                    for (j, v) in [(2 * c, low), (2 * c + 1, high)] {
                        let (sc, mn) = scale_min_k4(j, scales);
                        let (scale, offset) = (d * sc as f32, -dmin * mn as f32);
                        let (lo, hi) = widen(v, false);
                        store_line(&mut lines[j], lo, hi, (scale, scale), (offset, offset));
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    unsafe fn q6k_row(row: &[u8], lines: &mut [Line]) {
        let (nibble, two) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
        let bias = _mm256_set1_epi8(32);
        for (block, lines) in row.chunks_exact(210).zip(lines.chunks_exact_mut(8)) {
            // SAFETY: `block` has 210 bytes: ql (128), qh (64), scales (16, int8), d.
            unsafe {
                let d = f16(&block[208..]);
                for half in 0..2 {
                    let ql = block.as_ptr().add(64 * half);
                    let qh = block.as_ptr().add(128 + 32 * half);
                    let sc = |i: usize| d * (block[192 + 8 * half + i] as i8) as f32;
                    let a = _mm256_loadu_si256(ql as *const __m256i);
                    let b = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                    let h = _mm256_loadu_si256(qh as *const __m256i);
                    let high = |shift: i32| {
                        let bits = match shift {
                            0 => h,
                            2 => _mm256_srli_epi16::<2>(h),
                            4 => _mm256_srli_epi16::<4>(h),
                            _ => _mm256_srli_epi16::<6>(h),
                        };
                        _mm256_slli_epi16::<4>(_mm256_and_si256(bits, two))
                    };
                    let qs = [
                        _mm256_or_si256(_mm256_and_si256(a, nibble), high(0)),
                        _mm256_or_si256(_mm256_and_si256(b, nibble), high(2)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(a), nibble),
                            high(4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(b), nibble),
                            high(6),
                        ),
                    ];
                    for (j, q) in qs.into_iter().enumerate() {
                        let (lo, hi) = widen(_mm256_sub_epi8(q, bias), true);
                        let scales = (sc(2 * j), sc(2 * j + 1));
                        store_line(&mut lines[4 * half + j], lo, hi, scales, (0.0, 0.0));
                    }
                }
            }
        }
    }

    /// Column pair `pair` of the product, two row tiles at a time.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn multiply(job: &Job, pair: usize, tiles: &[Line], out: *mut f32) {
        let mut results = Results([0.0; 4 * 256]);
        // Column j of a 16 × 16 result tile: every 16th value from j.
        let column = _mm512_setr_epi32(
            0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
        );
        let (stride, a_stride) = (64usize, 64 * job.kb);
        for mp in 0..job.m_pairs {
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for b in 0..job.kb {
                    let a0 = tiles.as_ptr().add(b);
                    let a1 = tiles.as_ptr().add(16 * job.kb + b);
                    let b0 = job.acts.as_ptr().add((2 * mp * job.kb + b) * 16);
                    let b1 = job.acts.as_ptr().add(((2 * mp + 1) * job.kb + b) * 16);
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {s}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a1,
                        b0 = in(reg) b0,
                        b1 = in(reg) b1,
                        s = in(reg) stride,
                        sa = in(reg) a_stride,
                        options(nostack, readonly)
                    );
                }
                let c = results.0.as_mut_ptr();
                asm!(
                    "tilestored [{c} + {s}*1], tmm0",
                    "tilestored [{c} + {s}*1 + 1024], tmm1",
                    "tilestored [{c} + {s}*1 + 2048], tmm2",
                    "tilestored [{c} + {s}*1 + 3072], tmm3",
                    c = in(reg) c,
                    s = in(reg) stride,
                    options(nostack)
                );
                // Result tile (half, t): output columns 32 pair + 16 half, rows of row tile
                // 2 mp + t; its line r is column r, so rows come out as its columns.
                for (tile, (half, t)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let first = (2 * mp + t) * 16;
                    for j in 0..16.min(job.m.saturating_sub(first)) {
                        let idx = _mm512_add_epi32(column, _mm512_set1_epi32(j as i32));
                        let v = _mm512_i32gather_ps::<4>(idx, results.0.as_ptr().add(tile * 256));
                        let at = out.add((first + j) * job.n + pair * 32 + half * 16);
                        _mm512_storeu_ps(at, v);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) unsafe fn run(_: &super::Job, _: std::ops::Range<usize>, _: *mut f32) {
        unreachable!("AMX is x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        assert_eq!(bf16(-2.0), 0xc000);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
    }
}
