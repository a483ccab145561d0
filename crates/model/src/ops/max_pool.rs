//! 2-D max pooling with padding and PyTorch's backward.
//!
//! candle 0.11's `max_pool2d` has no padding and refuses a backward pass when kernel and stride
//! differ, which is every pool in DeXpression. This op pads with minus infinity (as PyTorch does)
//! and sends each output's gradient to the *first* maximum of its window in scan order, as
//! PyTorch's CPU and CUDA kernels do (a NaN always takes over, so the last NaN wins, also as in
//! PyTorch's CPU kernel). That choice matters here: LayerNorm maps the zeros left by ReLU to equal
//! values, ties are common, and splitting tied gradients gives lrn1 gradients up to 50% off.
//!
//! The forward records, per output, the position of its window's maximum in one byte, so the
//! backward is a scatter. For the 3x3 windows of DeXpression (stride 1 or 2) the forward runs eight
//! outputs at a time in AVX2 registers where the CPU has it, with the same compare-and-select
//! sequence in the same scan order as the scalar code, so both give identical results.
//! [`max_pool2d_cat`] pools two tensors into one concatenated output, which saves the copy of a
//! separate concatenation forward and backward.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::parallel::{filled, par_build, SharedMut};

/// Geometry of a square pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit minus-infinity border on each side.
    pub padding: usize,
}

impl Pool2d {
    /// Output side for an input side (floor mode).
    pub fn out_side(&self, side: usize) -> usize {
        (side + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Outputs along an axis of `side` inputs whose whole window lies inside the image.
    fn interior(&self, side: usize) -> Range<usize> {
        let first = self.padding.div_ceil(self.stride);
        let end = if side + self.padding >= self.kernel {
            ((side + self.padding - self.kernel) / self.stride + 1).min(self.out_side(side))
        } else {
            0
        };
        first..end.max(first)
    }

    /// Whether each window's maximum position fits a byte (windows of up to 15x15).
    pub(super) fn records_offsets(&self) -> bool {
        self.kernel * self.kernel < NO_OFFSET as usize
    }
}

fn check_input(xs: &Tensor, pool: Pool2d) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = xs.dims4()?;
    if pool.kernel == 0 || pool.stride == 0 || pool.padding >= pool.kernel {
        candle_core::bail!(
            "max_pool2d: unsupported window {pool:?} (padding must be below the kernel)"
        )
    }
    if h + 2 * pool.padding < pool.kernel || w + 2 * pool.padding < pool.kernel {
        candle_core::bail!(
            "max_pool2d: input {h}x{w} is smaller than the {0}x{0} window",
            pool.kernel
        )
    }
    Ok((n, c, h, w))
}

/// Max pooling of an `N x C x H x W` tensor; differentiable on every device.
///
/// The CPU kernel runs natively, and so does the CUDA kernel in f32 and f64 (with the `cuda`
/// feature); on other devices the tensor makes a round trip through host memory.
pub fn max_pool2d(xs: &Tensor, pool: Pool2d) -> candle_core::Result<Tensor> {
    check_input(xs, pool)?;
    #[cfg(feature = "cuda")]
    if super::cuda::pools(xs, pool) {
        return super::cuda::max_pool2d(xs, None, pool);
    }
    if xs.device().is_cpu() {
        xs.contiguous()?.apply_op1(MaxPoolOp::new(pool))
    } else {
        // Fallback for GPUs: `to_device` is differentiable, so gradients flow back.
        let device = xs.device().clone();
        let host = xs.to_device(&candle_core::Device::Cpu)?;
        host.contiguous()?
            .apply_op1(MaxPoolOp::new(pool))?
            .to_device(&device)
    }
}

/// `cat([max_pool2d(first), max_pool2d(second)], 1)`: both tensors `N x C_i x H x W` with the same
/// `N`, `H` and `W`. On the fast CPU kernels both are pooled straight into one output, and the
/// backward reads each input's gradient straight from the concatenated one; elsewhere it is
/// exactly that composition.
pub fn max_pool2d_cat(
    first: &Tensor,
    second: &Tensor,
    pool: Pool2d,
) -> candle_core::Result<Tensor> {
    max_pool2d_cat_on(first, second, pool, super::fast_kernels_for(first))
}

/// [`max_pool2d_cat`] on a chosen path, so tests can compare both in one process.
pub(crate) fn max_pool2d_cat_on(
    first: &Tensor,
    second: &Tensor,
    pool: Pool2d,
    fast: bool,
) -> candle_core::Result<Tensor> {
    let (n1, _, h1, w1) = check_input(first, pool)?;
    let (n2, _, h2, w2) = check_input(second, pool)?;
    if (n1, h1, w1) != (n2, h2, w2) {
        candle_core::bail!(
            "max_pool2d_cat: inputs {:?} and {:?} differ in batch or image size",
            first.dims(),
            second.dims()
        )
    }
    #[cfg(feature = "cuda")]
    if super::cuda::pools(first, pool)
        && second.device().same_device(first.device())
        && second.dtype() == first.dtype()
    {
        return super::cuda::max_pool2d(first, Some(second), pool);
    }
    let both_cpu_same_type =
        first.device().is_cpu() && second.device().is_cpu() && first.dtype() == second.dtype();
    if fast && both_cpu_same_type {
        first
            .contiguous()?
            .apply_op2(&second.contiguous()?, MaxPoolOp::new(pool))
    } else {
        Tensor::cat(&[&max_pool2d(first, pool)?, &max_pool2d(second, pool)?], 1)
    }
}

/// The pooling op: one input ([`CustomOp1`]) or two pooled into one concatenated output
/// ([`CustomOp2`]). The CPU forward records, per output, the offset of its window's maximum
/// (`row * kernel + column` within the window, padding included), so the backward is a scatter
/// instead of a second search.
struct MaxPoolOp {
    pool: Pool2d,
    offsets: Mutex<Option<Arc<Vec<u8>>>>,
}

impl MaxPoolOp {
    fn new(pool: Pool2d) -> Self {
        Self {
            pool,
            offsets: Mutex::new(None),
        }
    }

    fn remember(&self, offsets: Vec<u8>) {
        if let Ok(mut guard) = self.offsets.lock() {
            *guard = Some(Arc::new(offsets));
        }
    }

    fn recorded(&self) -> Option<Arc<Vec<u8>>> {
        self.offsets.lock().ok().and_then(|guard| guard.clone())
    }

    /// Pools every source's channels, in order, into one output, recording the offsets.
    fn forward(
        &self,
        sources: &[(&CpuStorage, &Layout)],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = sources[0].1.dims().to_vec();
        if dims.len() != 4 {
            candle_core::bail!("max_pool2d expects N x C x H x W, got {:?}", dims)
        }
        let (n, h, w) = (dims[0], dims[2], dims[3]);
        let mut channels = Vec::with_capacity(sources.len());
        for (_, layout) in sources {
            let d = layout.dims();
            if d.len() != 4 || (d[0], d[2], d[3]) != (n, h, w) {
                candle_core::bail!("max_pool2d: inputs {:?} and {:?} do not fit", dims, d)
            }
            channels.push(d[1]);
        }
        let geometry = PoolGeometry {
            pool: self.pool,
            n,
            h,
            w,
        };
        macro_rules! pool_sources {
            ($variant:ident, $interior:expr) => {{
                let mut slices = Vec::with_capacity(sources.len());
                for ((storage, layout), &c) in sources.iter().zip(&channels) {
                    let CpuStorage::$variant(data) = storage else {
                        candle_core::bail!(
                            "max_pool2d: inputs of different types {:?} and {:?}",
                            sources[0].0.dtype(),
                            storage.dtype()
                        )
                    };
                    slices.push((contiguous(data, layout)?, c));
                }
                let (out, offsets) = pool_forward(&slices, geometry, $interior);
                self.remember(offsets);
                CpuStorage::$variant(out)
            }};
        }
        let out = match sources[0].0 {
            CpuStorage::F32(_) => pool_sources!(F32, interior_kernel_f32(self.pool)),
            CpuStorage::F64(_) => pool_sources!(F64, None),
            other => candle_core::bail!("max_pool2d: unsupported dtype {:?}", other.dtype()),
        };
        let (oh, ow) = (self.pool.out_side(h), self.pool.out_side(w));
        Ok((
            out,
            Shape::from((n, channels.iter().sum::<usize>(), oh, ow)),
        ))
    }

    /// The gradient of the input that holds channels `channel_start..` of the output.
    fn input_grad(
        &self,
        input: &Tensor,
        channel_start: usize,
        grad_res: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let channels_total = grad_res.dim(1)?;
        match self.recorded() {
            Some(offsets) if self.pool.records_offsets() => grad_res
                .contiguous()?
                .apply_op1_no_bwd(&MaxPoolRecordedBackwardOp {
                    pool: self.pool,
                    offsets,
                    input_dims: input.dims().to_vec(),
                    channel_start,
                    channels_total,
                }),
            _ => {
                let grad = grad_res.narrow(1, channel_start, input.dim(1)?)?;
                input.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolBackwardOp(self.pool))
            }
        }
    }
}

/// Batch and image size of a pooling.
#[derive(Debug, Clone, Copy)]
struct PoolGeometry {
    pool: Pool2d,
    n: usize,
    h: usize,
    w: usize,
}

/// No window offset: the window holds only padding.
pub(super) const NO_OFFSET: u8 = u8::MAX;

/// The rows or columns of a window along one axis, clipped to the image: padding is never the
/// maximum (it acts as minus infinity), so it is simply skipped.
#[inline]
fn window_range(out_idx: usize, size: usize, pool: Pool2d) -> Range<usize> {
    let start = (out_idx * pool.stride).saturating_sub(pool.padding);
    let end = (out_idx * pool.stride + pool.kernel)
        .saturating_sub(pool.padding)
        .min(size);
    start..end.max(start)
}

/// Whether `value` replaces `best` as a window's maximum: strictly greater, or NaN (as in
/// PyTorch); a NaN never equals itself, which is how the test is written for any element type.
#[inline(always)]
fn replaces<T: WithDType>(value: T, best: T) -> bool {
    #[allow(clippy::eq_op)]
    let is_nan = value != value;
    value > best || is_nan
}

/// A kernel for the interior outputs of one output row (windows wholly inside the image along
/// the row): the window's input rows (`rows[i]` is window row `first_window_row + i`), the
/// outputs, and the row of outputs and offsets to write. Returns false when it does not apply.
pub(super) type InteriorKernel<T> = fn(&[&[T]], usize, Range<usize>, &mut [T], &mut [u8]) -> bool;

/// Pools `sources` (each a contiguous `N x C_i x H x W` slice and its `C_i`) into one
/// `N x sum(C_i) x OH x OW` output and the offsets of each window's maximum.
fn pool_forward<T: WithDType>(
    sources: &[(&[T], usize)],
    geometry: PoolGeometry,
    interior: Option<InteriorKernel<T>>,
) -> (Vec<T>, Vec<u8>) {
    let PoolGeometry { pool, n, h, w } = geometry;
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let channels_total: usize = sources.iter().map(|(_, c)| c).sum();
    let source_plane = |plane_idx: usize| -> &[T] {
        let (image, mut channel) = (plane_idx / channels_total, plane_idx % channels_total);
        for &(data, c) in sources {
            if channel < c {
                let start = (image * c + channel) * h * w;
                return &data[start..start + h * w];
            }
            channel -= c;
        }
        unreachable!("the channel index is below the sum of the sources' channels")
    };
    let plane_len = oh * ow;
    let len = n * channels_total * plane_len;
    // Offsets first (one byte per output), then the values, each plane written by one thread.
    let mut offsets = filled(len, NO_OFFSET);
    let offsets_ptr = SharedMut(offsets.as_mut_ptr());
    // Several planes per task when planes are many and small: a task costs about a microsecond.
    let planes_per_task =
        (n * channels_total / (8 * rayon::current_num_threads().max(1))).clamp(1, 16);
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
            for (plane_idx, (out, offsets)) in
                (first_plane..).zip(out.chunks_mut(plane_len).zip(offsets.chunks_mut(plane_len)))
            {
                pool_plane(source_plane(plane_idx), h, w, pool, out, offsets, interior);
            }
        },
    );
    (out, offsets)
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
fn window_max_at<T: WithDType>(
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
    #[cfg(target_arch = "x86_64")]
    {
        // AVX2's kernel serves AVX-512 CPUs too: eight windows at a time already keep the loads
        // of the three input rows as the bound.
        if pool.kernel == 3 && super::isa::isa() >= super::isa::Isa::Avx2 {
            return match (pool.stride, pool.padding) {
                (1, 0) => Some(interior_3x3_avx2::<1, 0>),
                (1, 1) => Some(interior_3x3_avx2::<1, 1>),
                (2, 0) => Some(interior_3x3_avx2::<2, 0>),
                (2, 1) => Some(interior_3x3_avx2::<2, 1>),
                _ => None,
            };
        }
    }
    let _ = pool;
    None
}

/// Safe entry to [`avx2::interior_3x3`]: checks the CPU feature and every row's length.
#[cfg(target_arch = "x86_64")]
fn interior_3x3_avx2<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: Range<usize>,
    out_row: &mut [f32],
    offsets_row: &mut [u8],
) -> bool {
    if outputs.len() < 8
        || rows.is_empty()
        || rows.len() + first_window_row > 3
        || outputs.start * STRIDE < PADDING
        || out_row.len() < outputs.end
        || offsets_row.len() < outputs.end
        || !std::arch::is_x86_feature_detected!("avx2")
    {
        return false;
    }
    // The last block reads up to input column `(end - 1) * STRIDE - PADDING + 2`.
    let last_read = (outputs.end - 1) * STRIDE + 2 - PADDING;
    if rows.iter().any(|row| row.len() <= last_read) {
        return false;
    }
    // SAFETY: AVX2 is present (checked above); every load reads columns up to `last_read`, inside
    // each row, and every store writes outputs inside `outputs`, inside both output rows.
    unsafe {
        avx2::interior_3x3::<STRIDE, PADDING>(rows, first_window_row, outputs, out_row, offsets_row)
    };
    true
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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

/// Backward from recorded offsets: each output's gradient goes to its window's maximum. The
/// output gradient holds `channels_total` channels, of which this input's start at
/// `channel_start`.
fn pool_backward_recorded<T: WithDType>(
    offsets: &[u8],
    grad_out: &[T],
    input_dims: &[usize],
    pool: Pool2d,
    channel_start: usize,
    channels_total: usize,
) -> Vec<T> {
    let (c, h, w) = (input_dims[1], input_dims[2], input_dims[3]);
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let plane_len = oh * ow;
    let steps = window_steps(pool, w);
    let len = input_dims.iter().product();
    par_build(len, h * w, T::zero(), |plane_idx, grad_plane| {
        let source = (plane_idx / c) * channels_total + channel_start + plane_idx % c;
        scatter_plane(
            &offsets[source * plane_len..(source + 1) * plane_len],
            &grad_out[source * plane_len..(source + 1) * plane_len],
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
pub(super) fn window_steps(pool: Pool2d, w: usize) -> Vec<usize> {
    (0..pool.kernel * pool.kernel)
        .map(|offset| (offset / pool.kernel) * w + offset % pool.kernel)
        .collect()
}

/// Adds each output's gradient (`grad_out`, `OH x OW`) onto the input its offset names, in
/// `grad_plane` (`H x W`); with `positive`, only where that plane of outputs is positive (a ReLU
/// before the pool). `sides` is `(OH, OW, W)`, `steps` from [`window_steps`].
pub(super) fn scatter_plane<T: WithDType>(
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
fn pool_backward<T: WithDType>(
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

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("max_pool2d: the input must be contiguous"),
    }
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(&[(storage, layout)])
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.input_grad(arg, 0, grad_res)?))
    }
}

impl CustomOp2 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d-cat"
    }

    fn cpu_fwd(
        &self,
        first: &CpuStorage,
        first_layout: &Layout,
        second: &CpuStorage,
        second_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(&[(first, first_layout), (second, second_layout)])
    }

    fn bwd(
        &self,
        first: &Tensor,
        second: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(self.input_grad(first, 0, grad_res)?),
            Some(self.input_grad(second, first.dim(1)?, grad_res)?),
        ))
    }
}

/// Gradient of [`MaxPoolOp`] for one input from the offsets its forward recorded; argument the
/// (possibly concatenated) output gradient.
struct MaxPoolRecordedBackwardOp {
    pool: Pool2d,
    offsets: Arc<Vec<u8>>,
    input_dims: Vec<usize>,
    channel_start: usize,
    channels_total: usize,
}

impl CustomOp1 for MaxPoolRecordedBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d-backward-recorded"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = &self.input_dims;
        let (oh, ow) = (self.pool.out_side(dims[2]), self.pool.out_side(dims[3]));
        let expected = dims[0] * self.channels_total * oh * ow;
        if self.offsets.len() != layout.shape().elem_count()
            || self.offsets.len() != expected
            || self.channel_start + dims[1] > self.channels_total
        {
            candle_core::bail!(
                "max_pool2d backward: {} recorded windows for a gradient of shape {:?} and an input of shape {:?}",
                self.offsets.len(),
                layout.dims(),
                dims
            )
        }
        let shape = Shape::from(dims.as_slice());
        match grad {
            CpuStorage::F32(g) => Ok((
                CpuStorage::F32(pool_backward_recorded(
                    &self.offsets,
                    contiguous(g, layout)?,
                    dims,
                    self.pool,
                    self.channel_start,
                    self.channels_total,
                )),
                shape,
            )),
            CpuStorage::F64(g) => Ok((
                CpuStorage::F64(pool_backward_recorded(
                    &self.offsets,
                    contiguous(g, layout)?,
                    dims,
                    self.pool,
                    self.channel_start,
                    self.channels_total,
                )),
                shape,
            )),
            other => {
                candle_core::bail!("max_pool2d backward: unsupported dtype {:?}", other.dtype())
            }
        }
    }
}

/// Gradient of [`MaxPoolOp`] without recorded offsets: arguments are the forward input and the
/// output gradient.
struct MaxPoolBackwardOp(Pool2d);

impl CustomOp2 for MaxPoolBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = input_layout.dims();
        let shape = Shape::from(dims);
        match (input, grad) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => Ok((
                CpuStorage::F32(pool_backward(
                    contiguous(x, input_layout)?,
                    contiguous(g, grad_layout)?,
                    dims,
                    self.0,
                )),
                shape,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => Ok((
                CpuStorage::F64(pool_backward(
                    contiguous(x, input_layout)?,
                    contiguous(g, grad_layout)?,
                    dims,
                    self.0,
                )),
                shape,
            )),
            (x, g) => candle_core::bail!(
                "max_pool2d backward: unsupported dtypes {:?}/{:?}",
                x.dtype(),
                g.dtype()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_matches_hand_computed_values_with_padding() {
        let xs = Tensor::arange(0f32, 16., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        let pool = Pool2d {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let ys = max_pool2d(&xs, pool).unwrap();
        let expected = [
            5., 6., 7., 7., 9., 10., 11., 11., 13., 14., 15., 15., 13., 14., 15., 15.,
        ];
        assert_eq!(
            ys.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            expected
        );
    }

    #[test]
    fn backward_sends_gradient_to_the_first_tied_maximum() {
        // All equal: every window's gradient goes to its top-left element.
        let xs = Var::from_tensor(
            &Tensor::zeros((1, 1, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let pool = Pool2d {
            kernel: 3,
            stride: 2,
            padding: 0,
        };
        let ys = max_pool2d(xs.as_tensor(), pool).unwrap();
        assert_eq!(ys.dims(), &[1, 1, 2, 2]);
        let grads = ys.sum_all().unwrap().backward().unwrap();
        let grad = grads
            .get(xs.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut expected = vec![0f32; 25];
        for idx in [0, 2, 10, 12] {
            expected[idx] = 1.0;
        }
        assert_eq!(grad, expected);
    }

    #[test]
    fn recorded_backward_equals_searching_again_with_ties_and_padding() {
        // Values on a coarse grid make ties common, as LayerNorm of ReLU zeros does.
        let values: Vec<f32> = (0..2 * 3 * 9 * 8)
            .map(|i| ((i * 7919 % 13) / 4) as f32)
            .collect();
        for pool in [
            Pool2d {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            Pool2d {
                kernel: 3,
                stride: 2,
                padding: 0,
            },
            Pool2d {
                kernel: 2,
                stride: 3,
                padding: 1,
            },
        ] {
            let xs = Var::from_tensor(
                &Tensor::from_vec(values.clone(), (2, 3, 9, 8), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let ys = max_pool2d(xs.as_tensor(), pool).unwrap();
            let weights: Vec<f32> = (0..ys.elem_count()).map(|i| (i % 5) as f32 + 1.0).collect();
            let weights = Tensor::from_vec(weights, ys.shape(), &Device::Cpu).unwrap();
            let grads = (&ys * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let recorded = grads
                .get(xs.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let searched = pool_backward(
                &values,
                &weights.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &[2, 3, 9, 8],
                pool,
            );
            assert_eq!(recorded, searched, "{pool:?}");
        }
    }

    /// Values on a coarse grid (many ties), with NaNs and infinities sprinkled in.
    fn tricky_values(count: usize, with_nan: bool) -> Vec<f32> {
        (0..count)
            .map(|i| match (i * 7919 + 13) % 101 {
                0 if with_nan => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 => f32::INFINITY,
                r => ((r * 37 % 11) / 3) as f32 - 1.0,
            })
            .collect()
    }

    #[test]
    fn vectorised_windows_equal_the_scalar_ones_bit_for_bit() {
        let pools = [(1, 0), (1, 1), (2, 0), (2, 1)].map(|(stride, padding)| Pool2d {
            kernel: 3,
            stride,
            padding,
        });
        for pool in pools {
            let Some(kernel) = interior_kernel_f32(pool) else {
                // No AVX2 here: nothing to compare.
                continue;
            };
            // Sides that give no full block, exactly one, and a last block that overlaps.
            for (h, w) in [(9, 11), (5, 20), (12, 27), (55, 55), (3, 40), (4, 17)] {
                for with_nan in [false, true] {
                    let values = tricky_values(2 * h * w, with_nan);
                    let geometry = PoolGeometry { pool, n: 2, h, w };
                    let (fast, fast_offsets) =
                        pool_forward(&[(&values, 1)], geometry, Some(kernel));
                    let (slow, slow_offsets) = pool_forward(&[(&values, 1)], geometry, None);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&slow), "{pool:?} {h}x{w} nan {with_nan}");
                    assert_eq!(
                        fast_offsets, slow_offsets,
                        "{pool:?} {h}x{w} nan {with_nan}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_nan_wins_its_window_as_in_pytorch() {
        // PyTorch's CPU kernel takes a value when `val > max || isnan(val)`: the last NaN wins.
        let mut values = vec![0f32; 16];
        values[5] = f32::NAN;
        values[6] = 3.0;
        values[9] = f32::NAN;
        let pool = Pool2d {
            kernel: 3,
            stride: 1,
            padding: 0,
        };
        let geometry = PoolGeometry {
            pool,
            n: 1,
            h: 4,
            w: 4,
        };
        let (out, offsets) = pool_forward(&[(&values, 1)], geometry, None);
        assert!(out.iter().all(|v| v.is_nan()));
        // Window (0, 0) covers rows 0-2, columns 0-2: input 9 is its row 2, column 1.
        assert_eq!(offsets[0], 7);
    }

    #[test]
    fn pooling_two_inputs_into_one_output_equals_pooling_each_then_concatenating() {
        let first = Var::from_tensor(
            &Tensor::from_vec(
                tricky_values(2 * 3 * 9 * 9, false),
                (2, 3, 9, 9),
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let second = Var::from_tensor(
            &Tensor::from_vec(
                tricky_values(2 * 2 * 9 * 9, false)[..2 * 2 * 81].to_vec(),
                (2, 2, 9, 9),
                &Device::Cpu,
            )
            .unwrap()
            .affine(0.5, 0.25)
            .unwrap(),
        )
        .unwrap();
        let pool = Pool2d {
            kernel: 3,
            stride: 2,
            padding: 0,
        };
        let run = |fast: bool| {
            let out = max_pool2d_cat_on(first.as_tensor(), second.as_tensor(), pool, fast).unwrap();
            let weights: Vec<f32> = (0..out.elem_count())
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let weights = Tensor::from_vec(weights, out.shape(), &Device::Cpu).unwrap();
            let grads = (&out * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                flat(&out),
                flat(grads.get(first.as_tensor()).unwrap()),
                flat(grads.get(second.as_tensor()).unwrap()),
            )
        };
        assert_eq!(run(true), run(false));
    }
}
