//! 3x3 windows at stride 1 with one pixel of padding (FeatEx's pool branch, `pool2a` and
//! `pool3a`, which keep the side), as two passes of three: each row's maximum over three columns,
//! then the output's over three rows' results.
//!
//! A window's first maximum in row-major order (or its last NaN, [`replaces`]) is the first row
//! maximum in row order of each row's first maximum (or last NaN): the first row that holds the
//! window's maximum, and its first column there. So the two passes give the scalar kernel's
//! values and offsets bit for bit, while each pass is one loop over the plane that the compiler
//! vectorises; only the first and last column (first pass) and row (second pass) are apart. The
//! row kernel and the lanes took 2-3 ns an output at 23x23 and 11x11 (most windows touch a
//! border there).

use super::kernel::replaces;
use super::Pool2d;
use crate::parallel::grown;

/// Whether [`pool_planes_same`] takes planes `w` wide under `pool`: 3x3 windows, stride 1,
/// padding 1 (either rounding: at stride 1 both keep the side), rows of 8 pixels or more. In
/// narrower planes the first and last columns and rows, done apart, are most of the plane: at
/// 5x5 the lanes took 0.7 ms where this took 1.3 (32 x 272 planes).
pub(crate) fn applies(pool: Pool2d, w: usize) -> bool {
    pool.kernel == 3 && pool.stride == 1 && pool.padding == 1 && w >= MIN_WIDTH
}

/// The narrowest rows [`pool_planes_same`] takes ([`applies`]); tests take every width.
const MIN_WIDTH: usize = if cfg!(test) { 1 } else { 8 };

/// Takes `value` (at window offset `offset`) as the maximum if it [`replaces`] `best`, without a
/// branch.
#[inline(always)]
fn take(value: f32, offset: u32, best: f32, best_offset: u32) -> (f32, u32) {
    let replace = replaces(value, best);
    (
        if replace { value } else { best },
        if replace { offset } else { best_offset },
    )
}

/// Pools each `h x w` plane of `planes` with 3x3 windows at stride 1 and padding 1 into `out` and
/// `offsets` (`h x w` each; offsets `row * 3 + column` within the window), with `buffer` for the
/// row maxima. A [`super::kernel::PlanesKernel`].
pub(crate) fn pool_planes_same(
    planes: &[f32],
    (h, w, pool): (usize, usize, Pool2d),
    out: &mut [f32],
    offsets: &mut [u8],
    buffer: &mut Vec<f32>,
) {
    debug_assert!(applies(pool, w) && pool.out_side(h) == h && pool.out_side(w) == w);
    let plane = h * w;
    if plane == 0 {
        return;
    }
    let row_max = grown(buffer, plane);
    let mut row_offset = vec![0u32; plane];
    for ((input, out), offsets) in planes
        .chunks_exact(plane)
        .zip(out.chunks_exact_mut(plane))
        .zip(offsets.chunks_exact_mut(plane))
    {
        crate::isa::vectorised(
            #[inline(always)]
            || {
                rows_of_three(input, w, row_max, &mut row_offset);
                columns_of_three((row_max, &row_offset), w, out, offsets);
            },
        );
    }
}

/// Each pixel's maximum over its row's window columns (`x - 1 ..= x + 1`, clipped) and the
/// column within the window (0, 1, 2) it came from.
#[inline(always)]
fn rows_of_three(input: &[f32], w: usize, max: &mut [f32], offset: &mut [u32]) {
    let len = input.len();
    // Every pixel but the first and last of the plane as if its row went on both sides: right
    // for all but each row's first and last pixel, which are redone below.
    if len > 2 {
        let inner = len - 2;
        let (left, centre, right) = (&input[..inner], &input[1..inner + 1], &input[2..]);
        let (max, offset) = (&mut max[1..inner + 1], &mut offset[1..inner + 1]);
        for i in 0..inner {
            let (best, best_offset) = take(centre[i], 1, left[i], 0);
            (max[i], offset[i]) = take(right[i], 2, best, best_offset);
        }
    }
    for (row_idx, row) in input.chunks_exact(w).enumerate() {
        let at = row_idx * w;
        // The first column: window columns 1 and 2 (column 0 is padding).
        (max[at], offset[at]) = if w > 1 {
            take(row[1], 2, row[0], 1)
        } else {
            (row[0], 1)
        };
        // The last column: window columns 0 and 1.
        if w > 1 {
            (max[at + w - 1], offset[at + w - 1]) = take(row[w - 1], 1, row[w - 2], 0);
        }
    }
}

/// Each output's maximum over its window rows' maxima (`y - 1 ..= y + 1`, clipped), with its
/// offset `row * 3 + column`.
#[inline(always)]
fn columns_of_three(
    (max, offset): (&[f32], &[u32]),
    w: usize,
    out: &mut [f32],
    offsets: &mut [u8],
) {
    let len = max.len();
    let h = len / w;
    // The first row: window rows 1 and 2 (or 1 alone).
    if h < 2 {
        for x in 0..w {
            out[x] = max[x];
            offsets[x] = 3 + offset[x] as u8;
        }
        return;
    }
    for x in 0..w {
        let (best, best_offset) = take(max[w + x], 6 + offset[w + x], max[x], 3 + offset[x]);
        out[x] = best;
        offsets[x] = best_offset as u8;
    }
    // The rows between: window rows 0, 1 and 2.
    let inner = len - 2 * w;
    let (above, centre, below) = (&max[..inner], &max[w..w + inner], &max[2 * w..]);
    let (above_at, centre_at, below_at) =
        (&offset[..inner], &offset[w..w + inner], &offset[2 * w..]);
    let (middle, middle_at) = (&mut out[w..w + inner], &mut offsets[w..w + inner]);
    for i in 0..inner {
        let (best, best_offset) = take(centre[i], 3 + centre_at[i], above[i], above_at[i]);
        let (best, best_offset) = take(below[i], 6 + below_at[i], best, best_offset);
        middle[i] = best;
        middle_at[i] = best_offset as u8;
    }
    // The last row: window rows 0 and 1.
    let last = len - w;
    for x in 0..w {
        let (best, best_offset) = take(
            max[last + x],
            3 + offset[last + x],
            max[last - w + x],
            offset[last - w + x],
        );
        out[last + x] = best;
        offsets[last + x] = best_offset as u8;
    }
}
