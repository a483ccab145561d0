//! The 3x3 max-pool windows a register at a time (x86-64 only): eight windows in AVX2 registers,
//! sixteen in AVX-512 ones, through one kernel body ([`interior_3x3`]) over the few vector
//! operations it needs ([`Lanes`]), with the scalar code's compare and scan order, so every path
//! gives the same values and offsets. AVX-512 takes half the instructions of AVX2 per window: the
//! pools are about a fifth of an inference.

use std::arch::x86_64::*;
use std::ops::Range;

/// Safe entry to the AVX2 kernel: checks the CPU feature and the slices
/// ([`super::interior_fits`]).
pub(super) fn interior_3x3_avx2<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) -> bool {
    if !super::interior_fits::<STRIDE, PADDING>(
        rows,
        first_window_row,
        &outputs,
        Avx2::LANES,
        out_row,
        offsets_row,
    ) || !std::arch::is_x86_feature_detected!("avx2")
    {
        return false;
    }
    // SAFETY: AVX2 is present (checked above); `interior_fits` checked that every load reads a
    // column inside its row and every store writes an output inside both output rows.
    unsafe { avx2::<STRIDE, PADDING>(rows, first_window_row, outputs, out_row, offsets_row) };
    true
}

/// Safe entry to the AVX-512 kernel, as [`interior_3x3_avx2`]; fewer windows than a register
/// holds go to one masked pass ([`short_avx512`]).
pub(super) fn interior_3x3_avx512<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) -> bool {
    // A row of fewer windows than a register holds takes the masked pass, which needs the row to
    // hold its windows' columns only, not a whole register's.
    let short = outputs.len() < Avx512::LANES;
    let block = if short { 1 } else { Avx512::LANES };
    if !super::interior_fits::<STRIDE, PADDING>(
        rows,
        first_window_row,
        &outputs,
        block,
        out_row,
        offsets_row,
    ) || !std::arch::is_x86_feature_detected!("avx512f")
    {
        return false;
    }
    // SAFETY: AVX-512 F is present (checked above); `interior_fits` checked that every load reads
    // a column inside its row and every store writes an output inside both output rows (the
    // short pass's masked loads and stores touch nothing past the windows' columns and outputs).
    unsafe {
        if short {
            short_avx512::<STRIDE, PADDING>(rows, first_window_row, outputs, out_row, offsets_row)
        } else {
            avx512::<STRIDE, PADDING>(rows, first_window_row, outputs, out_row, offsets_row)
        }
    };
    true
}

/// [`interior_3x3`] compiled with AVX2.
///
/// # Safety
/// As [`interior_3x3`], with AVX2 available.
#[target_feature(enable = "avx2")]
unsafe fn avx2<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) {
    interior_3x3::<Avx2, STRIDE, PADDING>(rows, first_window_row, outputs, out_row, offsets_row)
}

/// [`interior_3x3`] compiled with AVX-512.
///
/// # Safety
/// As [`interior_3x3`], with AVX-512 F available.
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) {
    interior_3x3::<Avx512, STRIDE, PADDING>(rows, first_window_row, outputs, out_row, offsets_row)
}

/// Fewer than sixteen 3x3 windows of a row (11 at a time for conv1's pool at 48 px, which the
/// AVX2 kernel took as two overlapping blocks of eight): one pass of [`interior_3x3`]'s tree in
/// AVX-512 registers whose loads and stores are masked to the row's columns and the outputs, so
/// the lanes past the last window read and write nothing.
///
/// # Safety
/// AVX-512 F must be available; `1 <= outputs.len() < 16`; each row must hold input column
/// `(outputs.end - 1) * STRIDE + 2 - PADDING`; `outputs.start * STRIDE >= PADDING`; both output
/// rows must hold `outputs.end` values.
#[target_feature(enable = "avx512f")]
unsafe fn short_avx512<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) {
    let count = outputs.len();
    let base = outputs.start * STRIDE - PADDING;
    // Input columns from `base` that the windows read.
    let columns_read = (count - 1) * STRIDE + 3;
    let mut window: Option<(__m512, __m512i)> = None;
    for (row_idx, row) in rows.iter().enumerate() {
        let dy = first_window_row + row_idx;
        let ptr = row.as_ptr().add(base);
        let columns = if STRIDE == 1 {
            [
                masked_load(ptr, 0, count),
                masked_load(ptr, 1, count),
                masked_load(ptr, 2, count),
            ]
        } else {
            let [even, odd] = Avx512::deinterleave(
                masked_load(ptr, 0, columns_read),
                masked_load(
                    ptr,
                    Avx512::LANES,
                    columns_read - Avx512::LANES.min(columns_read),
                ),
            );
            let rest = columns_read - 1;
            let [_, next_odd] = Avx512::deinterleave(
                masked_load(ptr, 1, rest),
                masked_load(ptr, Avx512::LANES + 1, rest - Avx512::LANES.min(rest)),
            );
            [even, odd, next_odd]
        };
        window = Some(fold_row::<Avx512>(window, columns, dy));
    }
    let Some((best, offset)) = window else {
        return;
    };
    let mask = lanes_mask(count);
    _mm512_mask_storeu_ps(out_row.as_mut_ptr().add(outputs.start), mask, best);
    _mm512_mask_cvtepi32_storeu_epi8(
        offsets_row.as_mut_ptr().add(outputs.start) as *mut i8,
        mask,
        offset,
    );
}

/// The first `count` (at most sixteen) of the values from `ptr + from`; the other lanes zero and
/// not read.
#[inline(always)]
unsafe fn masked_load(ptr: *const f32, from: usize, count: usize) -> __m512 {
    _mm512_maskz_loadu_ps(lanes_mask(count), ptr.wrapping_add(from))
}

/// A mask of the first `count` lanes (all sixteen from sixteen on).
#[inline(always)]
fn lanes_mask(count: usize) -> __mmask16 {
    if count >= 16 {
        u16::MAX
    } else {
        (1u16 << count) - 1
    }
}

/// The vector operations of the window kernel, for one register width. Every method is inlined
/// into a function compiled with the width's extensions ([`avx2`], [`avx512`]), where its
/// intrinsics compile to single instructions.
trait Lanes {
    /// Windows per register.
    const LANES: usize;
    /// A register of values.
    type Values: Copy;
    /// A register of window offsets (`dy * 3 + dx`).
    type Offsets: Copy;
    /// `LANES` values from `ptr`.
    unsafe fn load(ptr: *const f32) -> Self::Values;
    /// The even and the odd elements of the `2 * LANES` values `low, high`.
    unsafe fn deinterleave(low: Self::Values, high: Self::Values) -> [Self::Values; 2];
    /// `offset` in every lane.
    unsafe fn offsets(offset: usize) -> Self::Offsets;
    /// The maximum of two windows' parts with its offset, `later` following `earlier` in scan
    /// order: `later` wins where it is strictly greater or NaN (as the scalar `replaces`).
    unsafe fn later_wins(
        earlier: (Self::Values, Self::Offsets),
        later: (Self::Values, Self::Offsets),
    ) -> (Self::Values, Self::Offsets);
    /// Stores the maxima at `out` and their offsets, one byte each, at `offsets`.
    unsafe fn store(best: (Self::Values, Self::Offsets), out: *mut f32, offsets: *mut u8);
}

/// `LANES` 3x3 windows at a time, in the scalar code's scan order and with its compare (strictly
/// greater, or NaN), so the results, offsets included, are the scalar code's: a pairwise tree
/// over the window in scan order (each row, then the rows), which picks the same element as the
/// sequential scan (the first maximum, or the last NaN) with half its chain of dependent steps.
/// The last block overlaps the one before it when the count is not a multiple of `LANES`.
///
/// # Safety
/// `L`'s extensions must be available; `outputs.len() >= L::LANES`; each row must hold input
/// column `(outputs.end - 1) * STRIDE + 2 - PADDING`; `outputs.start * STRIDE >= PADDING`; both
/// output rows must hold `outputs.end` values.
#[inline(always)]
unsafe fn interior_3x3<L: Lanes, const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) {
    let last_block = outputs.end - L::LANES;
    let mut block = outputs.start;
    loop {
        let block_start = block.min(last_block);
        let base = block_start * STRIDE - PADDING;
        let mut window: Option<(L::Values, L::Offsets)> = None;
        for (row_idx, row) in rows.iter().enumerate() {
            let dy = first_window_row + row_idx;
            let ptr = row.as_ptr().add(base);
            let columns = if STRIDE == 1 {
                [L::load(ptr), L::load(ptr.add(1)), L::load(ptr.add(2))]
            } else {
                // Columns 2i, 2i + 1 and 2i + 2 of 2 * LANES (+ 1) inputs.
                let [even, odd] = L::deinterleave(L::load(ptr), L::load(ptr.add(L::LANES)));
                let [_, next_odd] =
                    L::deinterleave(L::load(ptr.add(1)), L::load(ptr.add(L::LANES + 1)));
                [even, odd, next_odd]
            };
            window = Some(fold_row::<L>(window, columns, dy));
        }
        let Some(best) = window else {
            return;
        };
        L::store(
            best,
            out_row.as_mut_ptr().add(block_start),
            offsets_row.as_mut_ptr().add(block_start),
        );
        if block_start == last_block {
            break;
        }
        block += L::LANES;
    }
}

/// The window maxima so far (`None` before the first row) with window row `dy`'s three columns
/// added, in scan order: the row's own tree (each row, then the rows), as [`interior_3x3`] says.
#[inline(always)]
unsafe fn fold_row<L: Lanes>(
    window: Option<(L::Values, L::Offsets)>,
    columns: [L::Values; 3],
    dy: usize,
) -> (L::Values, L::Offsets) {
    let at = |dx: usize| L::offsets(dy * 3 + dx);
    let row_best = L::later_wins(
        L::later_wins((columns[0], at(0)), (columns[1], at(1))),
        (columns[2], at(2)),
    );
    match window {
        None => row_best,
        Some(earlier) => L::later_wins(earlier, row_best),
    }
}

/// Eight windows in 256-bit registers; the offsets are kept as floats, so that one blend
/// instruction serves values and offsets alike.
struct Avx2;

impl Lanes for Avx2 {
    const LANES: usize = 8;
    type Values = __m256;
    type Offsets = __m256;

    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> __m256 {
        _mm256_loadu_ps(ptr)
    }

    #[inline(always)]
    unsafe fn deinterleave(low: __m256, high: __m256) -> [__m256; 2] {
        // Within each 128-bit half, then the halves put in order.
        let order = |mixed: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                mixed,
            )))
        };
        [
            order(_mm256_shuffle_ps::<0b10_00_10_00>(low, high)),
            order(_mm256_shuffle_ps::<0b11_01_11_01>(low, high)),
        ]
    }

    #[inline(always)]
    unsafe fn offsets(offset: usize) -> __m256 {
        _mm256_set1_ps(offset as f32)
    }

    #[inline(always)]
    unsafe fn later_wins(earlier: (__m256, __m256), later: (__m256, __m256)) -> (__m256, __m256) {
        let take = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(later.0, earlier.0),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(later.0, later.0),
        );
        (
            _mm256_blendv_ps(earlier.0, later.0, take),
            _mm256_blendv_ps(earlier.1, later.1, take),
        )
    }

    #[inline(always)]
    unsafe fn store((best, offset): (__m256, __m256), out: *mut f32, offsets: *mut u8) {
        _mm256_storeu_ps(out, best);
        let offset = _mm256_cvttps_epi32(offset);
        let words = _mm_packus_epi32(
            _mm256_castsi256_si128(offset),
            _mm256_extracti128_si256::<1>(offset),
        );
        _mm_storel_epi64(offsets as *mut __m128i, _mm_packus_epi16(words, words));
    }
}

/// Sixteen windows in 512-bit registers, blended under compare masks.
struct Avx512;

impl Lanes for Avx512 {
    const LANES: usize = 16;
    type Values = __m512;
    type Offsets = __m512i;

    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> __m512 {
        _mm512_loadu_ps(ptr)
    }

    #[inline(always)]
    unsafe fn deinterleave(low: __m512, high: __m512) -> [__m512; 2] {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        [
            _mm512_permutex2var_ps(low, even, high),
            _mm512_permutex2var_ps(low, odd, high),
        ]
    }

    #[inline(always)]
    unsafe fn offsets(offset: usize) -> __m512i {
        _mm512_set1_epi32(offset as i32)
    }

    #[inline(always)]
    unsafe fn later_wins(
        earlier: (__m512, __m512i),
        later: (__m512, __m512i),
    ) -> (__m512, __m512i) {
        let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(later.0, earlier.0)
            | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(later.0, later.0);
        (
            _mm512_mask_blend_ps(take, earlier.0, later.0),
            _mm512_mask_blend_epi32(take, earlier.1, later.1),
        )
    }

    #[inline(always)]
    unsafe fn store((best, offset): (__m512, __m512i), out: *mut f32, offsets: *mut u8) {
        _mm512_storeu_ps(out, best);
        _mm_storeu_si128(offsets as *mut __m128i, _mm512_cvtepi32_epi8(offset));
    }
}
