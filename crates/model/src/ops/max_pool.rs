//! 2-D max pooling with padding and PyTorch's backward.
//!
//! candle 0.11's `max_pool2d` has no padding and refuses a backward pass when kernel and stride
//! differ, which is every pool in DeXpression. This op pads with minus infinity (as PyTorch does)
//! and sends each output's gradient to the *first* maximum of its window in scan order, as
//! PyTorch's CPU and CUDA kernels do. That choice matters here: LayerNorm maps the zeros left by
//! ReLU to equal values, ties are common, and splitting tied gradients gives lrn1 gradients up to
//! 50% off.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

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
}

/// Max pooling of an `N x C x H x W` tensor; differentiable on every device.
///
/// The CPU kernel runs natively; on other devices the tensor makes a round trip through host memory.
pub fn max_pool2d(xs: &Tensor, pool: Pool2d) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if h + 2 * pool.padding < pool.kernel || w + 2 * pool.padding < pool.kernel {
        candle_core::bail!(
            "max_pool2d: input {h}x{w} is smaller than the {0}x{0} window",
            pool.kernel
        )
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

/// The pooling op. On the CPU forward it records, per output, the offset of its window's first
/// maximum (one byte each), so the backward is a scatter instead of a second search.
struct MaxPoolOp {
    pool: Pool2d,
    argmax: std::sync::Mutex<Option<std::sync::Arc<Vec<u8>>>>,
}

impl MaxPoolOp {
    fn new(pool: Pool2d) -> Self {
        Self {
            pool,
            argmax: std::sync::Mutex::new(None),
        }
    }
}

/// No window offset: the window holds only padding (or is too large to record).
const NO_OFFSET: u8 = u8::MAX;

/// The rows or columns of a window along one axis, clipped to the image: padding is never the
/// maximum (it acts as minus infinity), so it is simply skipped.
#[inline]
fn window_range(out_idx: usize, size: usize, pool: Pool2d) -> std::ops::Range<usize> {
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

/// The maximum of a window (`None` if it holds only padding), computed without branches on the
/// data: random activations make such branches unpredictable, which cost more than the compares.
#[inline]
fn window_max<T: WithDType>(
    plane: &[T],
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Option<T> {
    if rows.is_empty() || cols.is_empty() {
        return None;
    }
    let mut best = plane[rows.start * w + cols.start];
    for y in rows {
        for &value in &plane[y * w + cols.start..y * w + cols.end] {
            best = if replaces(value, best) { value } else { best };
        }
    }
    Some(best)
}

/// Index of the first maximum of a window in scan order (the first NaN if there is one), or
/// `None` if the window holds only padding.
#[inline]
fn window_argmax<T: WithDType>(
    plane: &[T],
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Option<usize> {
    let best = window_max(plane, w, rows.clone(), cols.clone())?;
    #[allow(clippy::eq_op)]
    let best_is_nan = best != best;
    for y in rows {
        for x in cols.clone() {
            let value = plane[y * w + x];
            #[allow(clippy::eq_op)]
            let is_nan = value != value;
            if value == best || (best_is_nan && is_nan) {
                return Some(y * w + x);
            }
        }
    }
    None
}

/// Calls `f(output index, argmax)` for every output of a plane.
#[inline]
fn for_each_window<T: WithDType>(
    plane: &[T],
    h: usize,
    w: usize,
    pool: Pool2d,
    mut f: impl FnMut(usize, Option<usize>),
) {
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    for oy in 0..oh {
        let rows = window_range(oy, h, pool);
        for ox in 0..ow {
            f(
                oy * ow + ox,
                window_argmax(plane, w, rows.clone(), window_range(ox, w, pool)),
            );
        }
    }
}

fn pool_forward<T: WithDType>(
    input: &[T],
    dims: &[usize],
    pool: Pool2d,
) -> (Vec<T>, Vec<u8>, Shape) {
    let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let mut output = vec![T::from_f64(f64::NEG_INFINITY); n * c * oh * ow];
    let mut offsets = vec![NO_OFFSET; n * c * oh * ow];
    // Offsets fit a byte for windows of up to 15x15; larger ones are searched again backward.
    let record = pool.kernel * pool.kernel < NO_OFFSET as usize;
    output
        .par_chunks_mut(oh * ow)
        .zip(offsets.par_chunks_mut(oh * ow))
        .zip(input.par_chunks(h * w))
        .for_each(|((out, offsets), plane)| {
            for oy in 0..oh {
                let rows = window_range(oy, h, pool);
                for ox in 0..ow {
                    let cols = window_range(ox, w, pool);
                    if let Some((best, offset)) = window_max_at(plane, w, rows.clone(), cols) {
                        out[oy * ow + ox] = best;
                        if record {
                            offsets[oy * ow + ox] = offset as u8;
                        }
                    }
                }
            }
        });
    (output, offsets, Shape::from((n, c, oh, ow)))
}

/// [`window_max`] and the offset `row * kernel + column` of the first maximum within the
/// (clipped) window, still without branches on the data.
#[inline]
fn window_max_at<T: WithDType>(
    plane: &[T],
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Option<(T, usize)> {
    if rows.len() == 3 && cols.len() == 3 {
        return Some(full_window_3x3(plane, w, rows.start * w + cols.start));
    }
    if rows.is_empty() || cols.is_empty() {
        return None;
    }
    let kernel_side = cols.len().max(rows.len());
    let mut best = plane[rows.start * w + cols.start];
    let mut best_offset = 0;
    for (dy, y) in rows.enumerate() {
        for (dx, &value) in plane[y * w + cols.start..y * w + cols.end]
            .iter()
            .enumerate()
        {
            let take = replaces(value, best);
            best = if take { value } else { best };
            best_offset = if take {
                dy * kernel_side + dx
            } else {
                best_offset
            };
        }
    }
    Some((best, best_offset))
}

/// A whole 3x3 window (every pool of DeXpression away from the border), unrolled: the generic
/// loop's row slicing and bounds checks cost more than its nine compares.
#[inline(always)]
fn full_window_3x3<T: WithDType>(plane: &[T], w: usize, top_left: usize) -> (T, usize) {
    let window = &plane[top_left..top_left + 2 * w + 3];
    let values = [
        window[0],
        window[1],
        window[2],
        window[w],
        window[w + 1],
        window[w + 2],
        window[2 * w],
        window[2 * w + 1],
        window[2 * w + 2],
    ];
    let mut best = values[0];
    let mut best_offset = 0;
    for (offset, &value) in values.iter().enumerate().skip(1) {
        let take = replaces(value, best);
        best = if take { value } else { best };
        best_offset = if take { offset } else { best_offset };
    }
    (best, best_offset)
}

/// Backward from recorded offsets: each output's gradient goes to its window's first maximum.
fn pool_backward_recorded<T: WithDType>(
    offsets: &[u8],
    grad_out: &[T],
    dims: &[usize],
    pool: Pool2d,
) -> Vec<T> {
    let (h, w) = (dims[2], dims[3]);
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let mut grad_in = vec![T::zero(); dims.iter().product()];
    grad_in
        .par_chunks_mut(h * w)
        .zip(offsets.par_chunks(oh * ow))
        .zip(grad_out.par_chunks(oh * ow))
        .for_each(|((grad_plane, offsets), grad_out_plane)| {
            for oy in 0..oh {
                let rows = window_range(oy, h, pool);
                for ox in 0..ow {
                    let offset = offsets[oy * ow + ox];
                    if offset == NO_OFFSET {
                        continue;
                    }
                    let cols = window_range(ox, w, pool);
                    let side = cols.len().max(rows.len());
                    let (dy, dx) = (offset as usize / side, offset as usize % side);
                    grad_plane[(rows.start + dy) * w + cols.start + dx] +=
                        grad_out_plane[oy * ow + ox];
                }
            }
        });
    grad_in
}

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
            for_each_window(plane, h, w, pool, |out_idx, argmax| {
                if let Some(idx) = argmax {
                    grad_plane[idx] += grad_out_plane[out_idx];
                }
            });
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
        let dims = layout.dims();
        if dims.len() != 4 {
            candle_core::bail!("max_pool2d expects N x C x H x W, got {:?}", dims)
        }
        match storage {
            CpuStorage::F32(data) => {
                let (out, offsets, shape) =
                    pool_forward(contiguous(data, layout)?, dims, self.pool);
                self.remember(offsets);
                Ok((CpuStorage::F32(out), shape))
            }
            CpuStorage::F64(data) => {
                let (out, offsets, shape) =
                    pool_forward(contiguous(data, layout)?, dims, self.pool);
                self.remember(offsets);
                Ok((CpuStorage::F64(out), shape))
            }
            other => candle_core::bail!("max_pool2d: unsupported dtype {:?}", other.dtype()),
        }
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let recorded = self.argmax.lock().ok().and_then(|guard| guard.clone());
        let grad = match recorded {
            Some(offsets) if self.pool.kernel * self.pool.kernel < NO_OFFSET as usize => grad_res
                .contiguous()?
                .apply_op1_no_bwd(&MaxPoolRecordedBackwardOp {
                    pool: self.pool,
                    offsets,
                    input_dims: arg.dims().to_vec(),
                })?,
            _ => arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolBackwardOp(self.pool))?,
        };
        Ok(Some(grad))
    }
}

impl MaxPoolOp {
    fn remember(&self, offsets: Vec<u8>) {
        if let Ok(mut guard) = self.argmax.lock() {
            *guard = Some(std::sync::Arc::new(offsets));
        }
    }
}

/// Gradient of [`MaxPoolOp`] from the offsets its forward recorded; argument the output gradient.
struct MaxPoolRecordedBackwardOp {
    pool: Pool2d,
    offsets: std::sync::Arc<Vec<u8>>,
    input_dims: Vec<usize>,
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
        if self.offsets.len() != layout.shape().elem_count() {
            candle_core::bail!(
                "max_pool2d backward: {} recorded windows for a gradient of shape {:?}",
                self.offsets.len(),
                layout.dims()
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
                )),
                shape,
            )),
            CpuStorage::F64(g) => Ok((
                CpuStorage::F64(pool_backward_recorded(
                    &self.offsets,
                    contiguous(g, layout)?,
                    dims,
                    self.pool,
                )),
                shape,
            )),
            other => {
                candle_core::bail!("max_pool2d backward: unsupported dtype {:?}", other.dtype())
            }
        }
    }
}

/// Gradient of [`MaxPoolOp`]: arguments are the forward input and the output gradient.
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
}
