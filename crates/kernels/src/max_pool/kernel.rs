//! The pool's CPU kernels: the forward over whole planes (scalar windows at the borders, the
//! vectorised kernel inside), and both backward paths (a scatter from the recorded offsets, or a
//! second search for each window's first maximum).

use std::ops::Range;

use candle_core::WithDType;
use rayon::prelude::*;

use super::lanes::{pool_planes_in_lanes, pools_in_lanes, LANES};
use super::{plane_vectors, same};
use super::{Pool2d, PoolGeometry};
use crate::parallel::{filled, par_build, with_spare_buffer, SharedMut};

/// No window offset: the window holds only padding.
pub(crate) const NO_OFFSET: u8 = u8::MAX;

/// The rows or columns of a window along one axis, clipped to the image: padding is never the
/// maximum (it acts as minus infinity), so it is simply skipped.
#[inline]
pub(super) fn window_range(out_idx: usize, size: usize, pool: Pool2d) -> Range<usize> {
    let start = (out_idx * pool.stride).saturating_sub(pool.padding);
    let end = (out_idx * pool.stride + pool.kernel)
        .saturating_sub(pool.padding)
        .min(size);
    start..end.max(start)
}

/// Whether `value` replaces `best` as a window's maximum: strictly greater, or NaN (as in
/// PyTorch); a NaN never equals itself, which is how the test is written for any element type.
#[inline(always)]
pub(super) fn replaces<T: WithDType>(value: T, best: T) -> bool {
    #[allow(clippy::eq_op)]
    let is_nan = value != value;
    value > best || is_nan
}

/// A kernel for the interior outputs of one output row (windows wholly inside the image along
/// the row): the window's input rows (`rows[i]` is window row `first_window_row + i`), the
/// outputs, and the row of outputs and offsets to write. Returns false when it does not apply.
pub(crate) type InteriorKernel<T> = fn(&[&[T]], usize, Range<usize>, &mut [T], &mut [u8]) -> bool;

/// Pools several whole planes at once (`lanes.rs`): planes (`count x h x w`), geometry, outputs,
/// offsets and a working buffer.
// Outside the tests only the f32 kernels' signatures follow it; the tests pass kernels by it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) type PlanesKernel<T> =
    fn(&[T], (usize, usize, Pool2d), &mut [T], &mut [u8], &mut Vec<T>);

/// A [`PlanesKernel`] that finds its own working buffer, as [`pool_forward`] takes it.
pub(crate) type PlanesKernelOwnBuffer<T> = fn(&[T], (usize, usize, Pool2d), &mut [T], &mut [u8]);

/// Pools `data` (contiguous `N x C x H x W`) into an `N x C x OH x OW` output and the offsets of
/// each window's maximum, with the row kernel `interior` and, for planes whose output rows are
/// short, the several-planes kernel `lanes` where they are given.
pub(super) fn pool_forward<T: WithDType>(
    data: &[T],
    geometry: PoolGeometry,
    (interior, lanes): (Option<InteriorKernel<T>>, Option<PlanesKernelOwnBuffer<T>>),
) -> (Vec<T>, Vec<u8>) {
    let PoolGeometry { pool, n, c, h, w } = geometry;
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let plane_len = oh * ow;
    let len = n * c * plane_len;
    // Offsets first (one byte per output), then the values, each plane written by one thread.
    let mut offsets = filled(len, NO_OFFSET);
    let offsets_ptr = SharedMut(offsets.as_mut_ptr());
    // Several planes per task when planes are many and small: a task costs about a microsecond.
    // With the fast kernels, planes whose output rows are short go [`LANES`] at a time.
    let in_lanes = lanes.filter(|_| pools_planes_at_once(pool, (h, w)));
    let planes_per_task = (n * c / (8 * rayon::current_num_threads().max(1))).clamp(1, 16);
    let planes_per_task = if in_lanes.is_some() {
        planes_per_task.next_multiple_of(LANES)
    } else {
        planes_per_task
    };
    let out = par_build(
        len,
        planes_per_task * plane_len,
        T::from_f64(f64::NEG_INFINITY),
        |task_idx, out| {
            let first_plane = task_idx * planes_per_task;
            // SAFETY: each task index comes once, so the offset ranges handed out never overlap,
            // and they lie inside `offsets` (the same length as the output), which outlives
            // this call.
            let offsets = unsafe {
                std::slice::from_raw_parts_mut(
                    offsets_ptr.get().add(first_plane * plane_len),
                    out.len(),
                )
            };
            if let Some(lanes) = in_lanes {
                let planes = &data[first_plane * h * w..][..out.len() / plane_len * h * w];
                return lanes(planes, (h, w, pool), out, offsets);
            }
            for (plane_idx, (out, offsets)) in
                (first_plane..).zip(out.chunks_mut(plane_len).zip(offsets.chunks_mut(plane_len)))
            {
                let plane = &data[plane_idx * h * w..(plane_idx + 1) * h * w];
                pool_plane(plane, h, w, pool, out, offsets, interior);
            }
        },
    );
    (out, offsets)
}

/// Pools every `h x w` plane of `planes` (one image's channels) into `out` and `offsets`, with the
/// vectorised kernels where they apply (several planes at once where the output rows are short);
/// the channels run on every thread when `parallel`.
pub(crate) fn pool_planes(
    planes: &[f32],
    (h, w): (usize, usize),
    pool: Pool2d,
    out: &mut [f32],
    offsets: &mut [u8],
    parallel: bool,
) {
    let (plane, pooled) = (h * w, pool.out_side(h) * pool.out_side(w));
    // Several planes at once: 3x3 windows at stride 1 and padding 1 always, short rows if there
    // are enough planes to fill the lanes (conv1's bands hand over one plane at a time).
    let at_once = plane_vectors::applies(pool, (h, w))
        || same::applies(pool, w)
        || (pools_in_lanes(pool, (h, w)) && planes.len() >= LANES * plane);
    if at_once {
        let several = |((out, offsets), planes): ((&mut [f32], &mut [u8]), &[f32])| {
            pool_planes_f32_spare_buffer(planes, (h, w, pool), out, offsets)
        };
        if parallel {
            out.par_chunks_mut(pooled * LANES)
                .zip(offsets.par_chunks_mut(pooled * LANES))
                .zip(planes.par_chunks(plane * LANES))
                .for_each(several);
        } else {
            several(((out, offsets), planes));
        }
        return;
    }
    let interior = interior_kernel_f32(pool);
    let one = |((out, offsets), input): ((&mut [f32], &mut [u8]), &[f32])| {
        pool_plane(input, h, w, pool, out, offsets, interior)
    };
    if parallel {
        out.par_chunks_mut(pooled)
            .zip(offsets.par_chunks_mut(pooled))
            .zip(planes.par_chunks(plane))
            .for_each(one);
    } else {
        out.chunks_mut(pooled)
            .zip(offsets.chunks_mut(pooled))
            .zip(planes.chunks(plane))
            .for_each(one);
    }
}

/// The f32 kernel for several planes at once ([`PlanesKernel`]): with AVX-512, a plane's outputs
/// sixteen at a time for windows that keep the side on planes up to 32x32 (`plane_vectors.rs`);
/// else the separable one for 3x3 windows at stride 1 and padding 1 (`same.rs`, any plane), else
/// the lanes (`lanes.rs`, short rows: [`pools_in_lanes`]).
pub(crate) fn pool_planes_f32(
    planes: &[f32],
    (h, w, pool): (usize, usize, Pool2d),
    out: &mut [f32],
    offsets: &mut [u8],
    buffer: &mut Vec<f32>,
) {
    if plane_vectors::applies(pool, (h, w)) {
        plane_vectors::pool_planes(planes, (h, w, pool), out, offsets, buffer)
    } else if same::applies(pool, w) {
        same::pool_planes_same(planes, (h, w, pool), out, offsets, buffer)
    } else {
        pool_planes_in_lanes(planes, (h, w, pool), out, offsets, buffer)
    }
}

/// [`pool_planes_f32`] with one of the thread's spare buffers: a fresh one for each task of a
/// pool (16 planes) made the two threads queue on the allocator's lock, about a tenth of the
/// pool's time at 5x5, and one for every eight planes of an image spread over the threads was
/// allocated and filled anew.
pub(crate) fn pool_planes_f32_spare_buffer(
    planes: &[f32],
    geometry: (usize, usize, Pool2d),
    out: &mut [f32],
    offsets: &mut [u8],
) {
    with_spare_buffer(|buffer| pool_planes_f32(planes, geometry, out, offsets, buffer))
}

/// Whether [`pool_planes_f32`] takes planes of `h x w` under `pool`.
pub(crate) fn pools_planes_at_once(pool: Pool2d, (h, w): (usize, usize)) -> bool {
    plane_vectors::applies(pool, (h, w)) || same::applies(pool, w) || pools_in_lanes(pool, (h, w))
}

/// Pools one `h x w` plane into `out` and `offsets` (`OH x OW` each).
pub(super) fn pool_plane<T: WithDType>(
    plane: &[T],
    h: usize,
    w: usize,
    pool: Pool2d,
    out: &mut [T],
    offsets: &mut [u8],
    interior: Option<InteriorKernel<T>>,
) {
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let interior_cols = pool.interior(w);
    for oy in 0..oh {
        let rows = window_range(oy, h, pool);
        if rows.is_empty() {
            continue;
        }
        let out_row = &mut out[oy * ow..(oy + 1) * ow];
        let offsets_row = &mut offsets[oy * ow..(oy + 1) * ow];
        let mut done = 0..0;
        if let Some(kernel) = interior {
            if rows.len() <= 3 {
                let empty: &[T] = &[];
                let mut row_slices = [empty; 3];
                for (slot, y) in row_slices.iter_mut().zip(rows.clone()) {
                    *slot = &plane[y * w..(y + 1) * w];
                }
                let first_window_row = rows.start + pool.padding - oy * pool.stride;
                if kernel(
                    &row_slices[..rows.len()],
                    first_window_row,
                    interior_cols.clone(),
                    out_row,
                    offsets_row,
                ) {
                    done = interior_cols.clone();
                }
            }
        }
        // The windows the vectorised kernel did not take: those before and after its range.
        for ox in (0..done.start.min(ow)).chain(done.end.max(done.start)..ow) {
            if let Some((best, offset)) = window_max_at(plane, w, pool, oy, ox, rows.clone()) {
                out_row[ox] = best;
                offsets_row[ox] = offset;
            }
        }
    }
}

/// The maximum of output `(oy, ox)`'s window and its offset `row * kernel + column` within the
/// window (padding counted), or `None` if the window holds only padding. No branches on the data:
/// random activations make such branches unpredictable, which costs more than the compares.
#[inline]
pub(super) fn window_max_at<T: WithDType>(
    plane: &[T],
    w: usize,
    pool: Pool2d,
    oy: usize,
    ox: usize,
    rows: Range<usize>,
) -> Option<(T, u8)> {
    let cols = window_range(ox, w, pool);
    if rows.is_empty() || cols.is_empty() {
        return None;
    }
    // Window coordinates of input (y, x): (y + padding - oy * stride, x + padding - ox * stride).
    let (dy0, dx0) = (
        rows.start + pool.padding - oy * pool.stride,
        cols.start + pool.padding - ox * pool.stride,
    );
    let mut best = plane[rows.start * w + cols.start];
    let mut best_offset = dy0 * pool.kernel + dx0;
    for (dy, y) in (dy0..).zip(rows) {
        for (dx, &value) in (dx0..).zip(&plane[y * w + cols.start..y * w + cols.end]) {
            let take = replaces(value, best);
            best = if take { value } else { best };
            best_offset = if take {
                dy * pool.kernel + dx
            } else {
                best_offset
            };
        }
    }
    Some((best, best_offset as u8))
}

/// The vectorised kernel for this CPU and pool, if there is one (3x3 windows, stride 1 or 2,
/// AVX2).
pub(super) fn interior_kernel_f32(pool: Pool2d) -> Option<InteriorKernel<f32>> {
    interior_kernel_f32_for(pool, crate::isa::isa())
}

/// The vectorised kernel for 3x3 windows that `isa` allows, if any: AVX-512's (sixteen windows at
/// a time, handing shorter rows to AVX2's) or AVX2's (eight).
pub(super) fn interior_kernel_f32_for(
    pool: Pool2d,
    isa: crate::isa::Isa,
) -> Option<InteriorKernel<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::{interior_3x3_avx2 as avx2, interior_3x3_avx512 as avx512};
        use crate::isa::Isa;
        if pool.kernel == 3 && isa == Isa::Avx512 {
            return match (pool.stride, pool.padding) {
                (1, 0) => Some(avx512::<1, 0>),
                (1, 1) => Some(avx512::<1, 1>),
                (2, 0) => Some(avx512::<2, 0>),
                (2, 1) => Some(avx512::<2, 1>),
                _ => None,
            };
        }
        if pool.kernel == 3 && isa >= Isa::Avx2 {
            return match (pool.stride, pool.padding) {
                (1, 0) => Some(avx2::<1, 0>),
                (1, 1) => Some(avx2::<1, 1>),
                (2, 0) => Some(avx2::<2, 0>),
                (2, 1) => Some(avx2::<2, 1>),
                _ => None,
            };
        }
    }
    let _ = (pool, isa);
    None
}

/// Backward from recorded offsets: each output's gradient goes to its window's maximum.
pub(super) fn pool_backward_recorded<T: WithDType>(
    offsets: &[u8],
    grad_out: &[T],
    input_dims: &[usize],
    pool: Pool2d,
) -> Vec<T> {
    let (h, w) = (input_dims[2], input_dims[3]);
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let plane_len = oh * ow;
    let steps = window_steps(pool, w);
    let len = input_dims.iter().product();
    par_build(len, h * w, T::zero(), |plane_idx, grad_plane| {
        let plane = plane_idx * plane_len..(plane_idx + 1) * plane_len;
        scatter_plane(
            &offsets[plane.clone()],
            &grad_out[plane],
            None,
            grad_plane,
            (oh, ow, w),
            pool,
            &steps,
        );
    })
}

/// For each offset within a window, the distance of its input from the window's top-left corner
/// in a plane of width `w`.
pub(crate) fn window_steps(pool: Pool2d, w: usize) -> Vec<usize> {
    (0..pool.kernel * pool.kernel)
        .map(|offset| (offset / pool.kernel) * w + offset % pool.kernel)
        .collect()
}

/// Adds each output's gradient (`grad_out`, `OH x OW`) onto the input its offset names, in
/// `grad_plane` (`H x W`); with `positive`, only where that plane of outputs is positive (a ReLU
/// before the pool). `sides` is `(OH, OW, W)`, `steps` from [`window_steps`].
pub(crate) fn scatter_plane<T: WithDType>(
    offsets: &[u8],
    grad_out: &[T],
    positive: Option<&[T]>,
    grad_plane: &mut [T],
    sides: (usize, usize, usize),
    pool: Pool2d,
    steps: &[usize],
) {
    let (oh, ow, w) = sides;
    for oy in 0..oh {
        // The window's top-left corner, padding included, may lie before the plane: the index
        // wraps and comes back into range once the step is added.
        let row_corner = (oy * pool.stride * w).wrapping_sub(pool.padding * w + pool.padding);
        for ox in 0..ow {
            let offset = offsets[oy * ow + ox];
            if offset == NO_OFFSET || positive.is_some_and(|out| out[oy * ow + ox] <= T::zero()) {
                continue;
            }
            let idx = row_corner
                .wrapping_add(ox * pool.stride)
                .wrapping_add(steps[offset as usize]);
            grad_plane[idx] += grad_out[oy * ow + ox];
        }
    }
}

/// Backward without recorded offsets: searches each window again for its first maximum (the last
/// NaN if there is one, as the forward picks it).
pub(super) fn pool_backward<T: WithDType>(
    input: &[T],
    grad_out: &[T],
    dims: &[usize],
    pool: Pool2d,
) -> Vec<T> {
    let (h, w) = (dims[2], dims[3]);
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let mut grad_in = vec![T::zero(); input.len()];
    grad_in
        .par_chunks_mut(h * w)
        .zip(input.par_chunks(h * w))
        .zip(grad_out.par_chunks(oh * ow))
        .for_each(|((grad_plane, plane), grad_out_plane)| {
            for oy in 0..oh {
                let rows = window_range(oy, h, pool);
                for ox in 0..ow {
                    if let Some((_, offset)) = window_max_at(plane, w, pool, oy, ox, rows.clone()) {
                        let (dy, dx) =
                            (offset as usize / pool.kernel, offset as usize % pool.kernel);
                        let y = oy * pool.stride + dy - pool.padding;
                        let x = ox * pool.stride + dx - pool.padding;
                        grad_plane[y * w + x] += grad_out_plane[oy * ow + ox];
                    }
                }
            }
        });
    grad_in
}
