//! The 3x3 max-pool windows eight at a time in AVX2 registers (x86-64 only), with the scalar
//! code's compare and scan order, so both give the same values and offsets.

use std::ops::Range;

/// Safe entry to [`intrinsics::interior_3x3`]: checks the CPU feature and the slices
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
        8,
        out_row,
        offsets_row,
    ) || !std::arch::is_x86_feature_detected!("avx2")
    {
        return false;
    }
    // SAFETY: AVX2 is present (checked above); `interior_fits` checked that every load reads a
    // column inside its row and every store writes an output inside both output rows.
    unsafe {
        intrinsics::interior_3x3::<STRIDE, PADDING>(
            rows,
            first_window_row,
            outputs,
            out_row,
            offsets_row,
        )
    };
    true
}

mod intrinsics {
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Eight 3x3 windows at a time, in the scalar code's scan order and with its compare (strictly
    /// greater, or NaN), so the results, offsets included, are the scalar code's. The last block
    /// overlaps the one before it when the count is not a multiple of eight.
    ///
    /// # Safety
    /// AVX2 must be available; `outputs.len() >= 8`; each row must hold input column
    /// `(outputs.end - 1) * STRIDE + 2 - PADDING`; `outputs.start * STRIDE >= PADDING`; both output
    /// rows must hold `outputs.end` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interior_3x3<const STRIDE: usize, const PADDING: usize>(
        rows: &[&[f32]],
        first_window_row: usize,
        outputs: Range<usize>,
        out_row: &mut [f32],
        offsets_row: &mut [u8],
    ) {
        let last_block = outputs.end - 8;
        let mut block = outputs.start;
        loop {
            let block_start = block.min(last_block);
            let base = block_start * STRIDE - PADDING;
            // A pairwise tree over the window in scan order (each row, then the rows): `later`
            // wins when strictly greater or NaN, which picks the same element as the sequential
            // scan (the first maximum, or the last NaN) with half its chain of dependent steps.
            let mut window: Option<(__m256, __m256)> = None;
            for (row_idx, row) in rows.iter().enumerate() {
                let dy = first_window_row + row_idx;
                let ptr = row.as_ptr().add(base);
                let columns = if STRIDE == 1 {
                    [
                        _mm256_loadu_ps(ptr),
                        _mm256_loadu_ps(ptr.add(1)),
                        _mm256_loadu_ps(ptr.add(2)),
                    ]
                } else {
                    // Columns 2i, 2i + 1 and 2i + 2 of sixteen (seventeen) inputs.
                    let (low, high) = (_mm256_loadu_ps(ptr), _mm256_loadu_ps(ptr.add(8)));
                    let (low1, high1) = (_mm256_loadu_ps(ptr.add(1)), _mm256_loadu_ps(ptr.add(9)));
                    [even(low, high), odd(low, high), odd(low1, high1)]
                };
                let at = |dx: usize| _mm256_set1_ps((dy * 3 + dx) as f32);
                let row_best = later_wins(
                    later_wins((columns[0], at(0)), (columns[1], at(1))),
                    (columns[2], at(2)),
                );
                window = Some(match window {
                    None => row_best,
                    Some(earlier) => later_wins(earlier, row_best),
                });
            }
            let Some((best, offset)) = window else {
                return;
            };
            _mm256_storeu_ps(out_row.as_mut_ptr().add(block_start), best);
            let offsets = _mm256_cvttps_epi32(offset);
            let words = _mm_packus_epi32(
                _mm256_castsi256_si128(offsets),
                _mm256_extracti128_si256::<1>(offsets),
            );
            let bytes = _mm_packus_epi16(words, words);
            _mm_storel_epi64(
                offsets_row.as_mut_ptr().add(block_start) as *mut __m128i,
                bytes,
            );
            if block_start == last_block {
                break;
            }
            block += 8;
        }
    }

    /// The maximum of two windows' parts with its offset, `later` following `earlier` in scan
    /// order: `later` wins where it is strictly greater or NaN (as the scalar `replaces`).
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

    /// Elements 0, 2, 4, ... of the sixteen values `low, high`.
    #[inline(always)]
    unsafe fn even(low: __m256, high: __m256) -> __m256 {
        let mixed = _mm256_shuffle_ps::<0b10_00_10_00>(low, high);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
            mixed,
        )))
    }

    /// Elements 1, 3, 5, ... of the sixteen values `low, high`.
    #[inline(always)]
    unsafe fn odd(low: __m256, high: __m256) -> __m256 {
        let mixed = _mm256_shuffle_ps::<0b11_01_11_01>(low, high);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
            mixed,
        )))
    }
}
