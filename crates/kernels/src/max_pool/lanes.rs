//! Pooling several planes at once, one plane per vector lane: for planes whose rows are too short
//! for the row kernel (`simd.rs` takes eight or sixteen windows of one row at a time, so a 5x5
//! output row leaves all its windows to the scalar code, and an 11-wide one three of them).
//!
//! The planes' pixels are interleaved (pixel `p` of lane `l` at `locate(p) + l`), and each window
//! is scanned once for all lanes, in the scalar kernel's order and with its comparison (strictly
//! greater, or NaN), lane by lane: every plane gets the scalar kernel's value and offset. The
//! windows are clipped to the plane as the scalar kernel clips them, so padding never wins.

use super::kernel::{replaces, window_range};
use super::Pool2d;
use crate::parallel::grown;

/// Planes pooled at once: eight f32 lanes, one AVX2 register (the compiler widens or narrows the
/// loops to the vector extensions in use).
pub(crate) const LANES: usize = 8;

/// Whether planes of `h x w` are better pooled [`LANES`] planes at a time than row by row: when
/// the output rows are shorter than two of the row kernel's vectors and the planes small enough
/// that eight of them stay in the L1 once interleaved (conv1's 24x24 planes at 48 px pooled no
/// faster in lanes than by the row kernel, which takes eight of their eleven windows a row).
pub(crate) fn pools_in_lanes(pool: Pool2d, (h, w): (usize, usize)) -> bool {
    pool.out_side(w) < 2 * LANES && h * w <= MAX_PLANE
}

/// The largest plane pooled in lanes ([`pools_in_lanes`]).
const MAX_PLANE: usize = 256;

/// Pools `lanes` interleaved planes of `h x w` pixels (`values[locate(p) + l]` is pixel `p` of
/// lane `l`) and hands each output to `write(lane, output index, maximum, offset)`; windows of
/// padding alone are skipped, as the scalar kernel skips them. Groups of [`LANES`] planes run in
/// AVX2 registers where the CPU (and the crate's ISA limit) allows, the rest lane by lane.
#[inline(always)]
pub(crate) fn pool_lanes(
    values: &[f32],
    locate: impl Fn(usize) -> usize,
    lanes: usize,
    geometry: (usize, usize, Pool2d),
    write: impl FnMut(usize, usize, f32, u8),
) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::isa() >= crate::isa::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (`isa()` reports no level the CPU lacks).
        return unsafe { x86::pool_lanes_avx2(values, locate, lanes, geometry, write) };
    }
    pool_lanes_with(values, locate, lanes, geometry, write, |window, first| {
        window.max::<LANES>(first)
    })
}

/// [`pool_lanes`], each group of [`LANES`] planes by `max_of_group`.
#[inline(always)]
fn pool_lanes_with<L: Fn(usize) -> usize>(
    values: &[f32],
    locate: L,
    lanes: usize,
    (h, w, pool): (usize, usize, Pool2d),
    mut write: impl FnMut(usize, usize, f32, u8),
    max_of_group: impl Fn(&Window<'_, L>, usize) -> ([f32; LANES], [u32; LANES]),
) {
    let ow = pool.out_side(w);
    for oy in 0..pool.out_side(h) {
        let rows = window_range(oy, h, pool);
        for ox in 0..ow {
            let cols = window_range(ox, w, pool);
            if rows.is_empty() || cols.is_empty() {
                continue;
            }
            let window = Window {
                values,
                locate: &locate,
                w,
                kernel: pool.kernel,
                rows: rows.clone(),
                cols: cols.clone(),
                // Window coordinates of the first pixel, padding counted.
                first: (
                    rows.start + pool.padding - oy * pool.stride,
                    cols.start + pool.padding - ox * pool.stride,
                ),
            };
            let output = oy * ow + ox;
            let mut lane = 0;
            while lane + LANES <= lanes {
                let (best, offset) = max_of_group(&window, lane);
                for (index, (best, offset)) in best.into_iter().zip(offset).enumerate() {
                    write(lane + index, output, best, offset as u8);
                }
                lane += LANES;
            }
            for lane in lane..lanes {
                let ([best], [offset]) = window.max::<1>(lane);
                write(lane, output, best, offset as u8);
            }
        }
    }
}

/// Values interleaved at once by [`pool_planes_in_lanes`], at most: as many planes as fit in 32
/// KiB (64 planes of 11x11), so that each window's clipping and offsets are worked out once for
/// several lane groups while the interleaved copy stays in the L1.
const VALUES_AT_ONCE: usize = 8 << 10;

/// Pools `planes` (`count x h x w`, contiguous) into `out` and `offsets` (`count x OH x OW`)
/// several planes at a time ([`VALUES_AT_ONCE`]), interleaving their pixels into `buffer`.
pub(crate) fn pool_planes_in_lanes(
    planes: &[f32],
    (h, w, pool): (usize, usize, Pool2d),
    out: &mut [f32],
    offsets: &mut [u8],
    buffer: &mut Vec<f32>,
) {
    let (plane, pooled) = (h * w, pool.out_side(h) * pool.out_side(w));
    let at_once = (VALUES_AT_ONCE / plane.max(1)).clamp(LANES, 8 * LANES) / LANES * LANES;
    // No more than the planes there are, in a buffer grown only: callers that spread an image's
    // planes over the threads hand over eight at a time, and a fresh buffer for 64 planes was 31
    // KiB to fill at 11x11 (batch-1 forwards at 48 px 1.012-1.016 times faster without).
    let at_once = at_once.min(planes.len() / plane.max(1)).max(1);
    let buffer = grown(buffer, plane * at_once);
    for ((planes, out), offsets) in planes
        .chunks(plane * at_once)
        .zip(out.chunks_mut(pooled * at_once))
        .zip(offsets.chunks_mut(pooled * at_once))
    {
        let lanes = planes.len() / plane;
        for (lane, pixels) in planes.chunks_exact(plane).enumerate() {
            for (pixel, &value) in pixels.iter().enumerate() {
                buffer[pixel * lanes + lane] = value;
            }
        }
        let write = |lane: usize, output: usize, value: f32, offset: u8| {
            out[lane * pooled + output] = value;
            offsets[lane * pooled + output] = offset;
        };
        pool_lanes(buffer, |pixel| pixel * lanes, lanes, (h, w, pool), write);
    }
}

/// One pooling window over interleaved planes: its rows and columns in the plane, and the window
/// coordinates of its first pixel.
struct Window<'a, L> {
    values: &'a [f32],
    locate: &'a L,
    w: usize,
    kernel: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    first: (usize, usize),
}

impl<L: Fn(usize) -> usize> Window<'_, L> {
    /// The maximum and its offset (`row * kernel + column` in the window) in lanes `first..first
    /// + N`, each lane scanning as the scalar kernel does (`kernel::window_max_at`).
    #[inline(always)]
    fn max<const N: usize>(&self, first: usize) -> ([f32; N], [u32; N]) {
        let lanes = |pixel: usize| -> &[f32; N] {
            let at = (self.locate)(pixel) + first;
            self.values[at..at + N].try_into().expect("N lanes")
        };
        let mut best = *lanes(self.rows.start * self.w + self.cols.start);
        let mut offset = [(self.first.0 * self.kernel + self.first.1) as u32; N];
        for (dy, y) in (self.first.0..).zip(self.rows.clone()) {
            for (dx, x) in (self.first.1..).zip(self.cols.clone()) {
                let values = lanes(y * self.w + x);
                let here = (dy * self.kernel + dx) as u32;
                for lane in 0..N {
                    let take = replaces(values[lane], best[lane]);
                    best[lane] = if take { values[lane] } else { best[lane] };
                    offset[lane] = if take { here } else { offset[lane] };
                }
            }
        }
        (best, offset)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{pool_lanes_with, Pool2d, Window, LANES};

    /// [`super::pool_lanes`] with each group of eight planes in AVX2 registers.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pool_lanes_avx2(
        values: &[f32],
        locate: impl Fn(usize) -> usize,
        lanes: usize,
        geometry: (usize, usize, Pool2d),
        write: impl FnMut(usize, usize, f32, u8),
    ) {
        pool_lanes_with(values, locate, lanes, geometry, write, |window, first| {
            // SAFETY: this closure runs inside this function, compiled with AVX2.
            unsafe { max_avx2(window, first) }
        })
    }

    /// [`Window::max`] for eight lanes: the same scan and compare, the offsets kept as floats so
    /// that one blend instruction serves values and offsets alike (as `simd.rs` does).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    unsafe fn max_avx2<L: Fn(usize) -> usize>(
        window: &Window<'_, L>,
        first: usize,
    ) -> ([f32; LANES], [u32; LANES]) {
        let load = |pixel: usize| {
            let at = (window.locate)(pixel) + first;
            let lanes: &[f32; LANES] = window.values[at..at + LANES]
                .try_into()
                .expect("eight lanes");
            // SAFETY: eight floats at `lanes`, checked just above.
            unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
        };
        let (first_dy, first_dx) = window.first;
        let mut best = load(window.rows.start * window.w + window.cols.start);
        let mut offset = _mm256_set1_ps((first_dy * window.kernel + first_dx) as f32);
        for (dy, y) in (first_dy..).zip(window.rows.clone()) {
            for (dx, x) in (first_dx..).zip(window.cols.clone()) {
                let values = load(y * window.w + x);
                let here = _mm256_set1_ps((dy * window.kernel + dx) as f32);
                // Strictly greater, or NaN: the scalar `replaces`.
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(values, best),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(values, values),
                );
                best = _mm256_blendv_ps(best, values, take);
                offset = _mm256_blendv_ps(offset, here, take);
            }
        }
        let mut maxima = [0f32; LANES];
        let mut offsets = [0u32; LANES];
        // SAFETY: eight floats and eight 32-bit integers, the arrays' sizes.
        unsafe {
            _mm256_storeu_ps(maxima.as_mut_ptr(), best);
            _mm256_storeu_si256(
                offsets.as_mut_ptr().cast::<__m256i>(),
                _mm256_cvttps_epi32(offset),
            );
        }
        (maxima, offsets)
    }
}
