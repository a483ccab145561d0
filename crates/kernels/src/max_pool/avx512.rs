//! The 3x3 max-pool windows sixteen at a time in AVX-512 registers (x86-64 only), with the scalar
//! code's compare and scan order, so all paths give the same values and offsets. Half the
//! instructions of the AVX2 kernel per window: the pools are about a fifth of an inference.

use std::ops::Range;

/// Safe entry to [`intrinsics::interior_3x3`]: checks the CPU feature and the slices
/// ([`super::interior_fits`]); fewer than sixteen windows go to the AVX2 kernel.
pub(super) fn interior_3x3_avx512<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) -> bool {
    if outputs.len() < 16 {
        return super::avx2::interior_3x3_avx2::<STRIDE, PADDING>(
            rows,
            first_window_row,
            outputs,
            out_row,
            offsets_row,
        );
    }
    if !super::interior_fits::<STRIDE, PADDING>(
        rows,
        first_window_row,
        &outputs,
        16,
        out_row,
        offsets_row,
    ) || !std::arch::is_x86_feature_detected!("avx512f")
    {
        return false;
    }
    // SAFETY: AVX-512 F is present (checked above); `interior_fits` checked that every load reads
    // a column inside its row and every store writes an output inside both output rows.
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

    /// Sixteen 3x3 windows at a time, as the AVX2 kernel does eight (see there): the same pairwise
    /// tree in scan order, `later` winning when strictly greater or NaN. The last block overlaps
    /// the one before it when the count is not a multiple of sixteen.
    ///
    /// # Safety
    /// AVX-512 F must be available; `outputs.len() >= 16`; each row must hold input column
    /// `(outputs.end - 1) * STRIDE + 2 - PADDING`; `outputs.start * STRIDE >= PADDING`; both output
    /// rows must hold `outputs.end` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn interior_3x3<const STRIDE: usize, const PADDING: usize>(
        rows: &[&[f32]],
        first_window_row: usize,
        outputs: Range<usize>,
        out_row: &mut [f32],
        offsets_row: &mut [u8],
    ) {
        let even_index =
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd_index =
            _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let last_block = outputs.end - 16;
        let mut block = outputs.start;
        loop {
            let block_start = block.min(last_block);
            let base = block_start * STRIDE - PADDING;
            let mut window: Option<(__m512, __m512i)> = None;
            for (row_idx, row) in rows.iter().enumerate() {
                let dy = first_window_row + row_idx;
                let ptr = row.as_ptr().add(base);
                let columns = if STRIDE == 1 {
                    [
                        _mm512_loadu_ps(ptr),
                        _mm512_loadu_ps(ptr.add(1)),
                        _mm512_loadu_ps(ptr.add(2)),
                    ]
                } else {
                    // Columns 2i, 2i + 1 and 2i + 2 of thirty-two (thirty-three) inputs.
                    let (low, high) = (_mm512_loadu_ps(ptr), _mm512_loadu_ps(ptr.add(16)));
                    let (low1, high1) = (_mm512_loadu_ps(ptr.add(1)), _mm512_loadu_ps(ptr.add(17)));
                    [
                        _mm512_permutex2var_ps(low, even_index, high),
                        _mm512_permutex2var_ps(low, odd_index, high),
                        _mm512_permutex2var_ps(low1, odd_index, high1),
                    ]
                };
                let at = |dx: usize| _mm512_set1_epi32((dy * 3 + dx) as i32);
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
            _mm512_storeu_ps(out_row.as_mut_ptr().add(block_start), best);
            _mm_storeu_si128(
                offsets_row.as_mut_ptr().add(block_start) as *mut __m128i,
                _mm512_cvtepi32_epi8(offset),
            );
            if block_start == last_block {
                break;
            }
            block += 16;
        }
    }

    /// The maximum of two windows' parts with its offset, `later` following `earlier` in scan
    /// order: `later` wins where it is strictly greater or NaN (as the scalar `replaces`).
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
}
