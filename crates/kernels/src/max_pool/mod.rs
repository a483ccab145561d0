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

use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::storage::contiguous;

mod kernel;
mod lanes;
mod plane_vectors;
mod same;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;

use kernel::interior_kernel_f32;
#[cfg(test)]
use kernel::interior_kernel_f32_for;
use kernel::{pool_backward, pool_backward_recorded, pool_forward};
pub(super) use kernel::{pool_planes, scatter_plane, window_steps, NO_OFFSET};
pub(super) use lanes::pool_lanes;

/// Whether a vectorised 3x3 kernel that takes `block` windows at a time may run on `outputs` of
/// one output row: at least one block, at most three window rows, no window reaching into the
/// left padding, both output rows long enough, and every input row holding the last column the
/// last block reads (`(end - 1) * STRIDE + 2 - PADDING`). The kernels' safety rests on this.
#[cfg(target_arch = "x86_64")]
fn interior_fits<const STRIDE: usize, const PADDING: usize>(
    rows: &[&[f32]],
    first_window_row: usize,
    outputs: &Range<usize>,
    block: usize,
    out_row: &[f32],
    offsets_row: &[u8],
) -> bool {
    if outputs.len() < block
        || rows.is_empty()
        || rows.len() + first_window_row > 3
        || outputs.start * STRIDE < PADDING
        || out_row.len() < outputs.end
        || offsets_row.len() < outputs.end
    {
        return false;
    }
    let last_read = (outputs.end - 1) * STRIDE + 2 - PADDING;
    rows.iter().all(|row| row.len() > last_read)
}

/// Geometry of a square pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit minus-infinity border on each side.
    pub padding: usize,
    /// Round the output side up, as PyTorch's `ceil_mode=True` and Caffe's pooling do: a last
    /// window that starts inside the input (or its left padding) but runs past its end (and the
    /// right padding) still counts, its missing part acting as minus infinity.
    pub ceil_mode: bool,
}

impl Pool2d {
    /// A window rounding its output side down (PyTorch's default).
    pub const fn floor(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            padding,
            ceil_mode: false,
        }
    }

    /// A window rounding its output side up ([`Self::ceil_mode`]).
    pub const fn ceil(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            ceil_mode: true,
            ..Self::floor(kernel, stride, padding)
        }
    }

    /// Output side for an input side: windows that fit whole (floor mode), or windows that start
    /// before the input's last element (ceil mode: PyTorch's and Caffe's output side wherever
    /// the window fits the padded input; also one for a padded side shorter than the window,
    /// which only the banded fused kernel asks for, with a slice of rows its windows start in).
    pub fn out_side(&self, side: usize) -> usize {
        let span = side + 2 * self.padding;
        if !self.ceil_mode {
            return (span - self.kernel) / self.stride + 1;
        }
        let windows = span.saturating_sub(self.kernel).div_ceil(self.stride) + 1;
        // PyTorch and Caffe drop a last window that would start in the right padding.
        if windows > 1 && (windows - 1) * self.stride >= side + self.padding {
            windows - 1
        } else {
            windows
        }
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

    /// Whether the window can pool at all: a kernel and a stride above zero, padding below the
    /// kernel.
    fn is_usable(&self) -> bool {
        self.kernel > 0 && self.stride > 0 && self.padding < self.kernel
    }

    /// Whether the window is usable and fits an `h x w` input with its padding.
    pub(crate) fn fits(&self, h: usize, w: usize) -> bool {
        self.is_usable()
            && h + 2 * self.padding >= self.kernel
            && w + 2 * self.padding >= self.kernel
    }
}

fn check_input(xs: &Tensor, pool: Pool2d) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = xs.dims4()?;
    if !pool.is_usable() {
        candle_core::bail!(
            "max_pool2d: unsupported window {pool:?} (padding must be below the kernel)"
        )
    }
    if !pool.fits(h, w) {
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
/// feature); on other devices the tensor makes a round trip through host memory (counted by
/// [`super::host_round_trips`]).
pub fn max_pool2d(xs: &Tensor, pool: Pool2d) -> candle_core::Result<Tensor> {
    check_input(xs, pool)?;
    if xs.device().is_cpu() || gpu_kernels(xs, pool) {
        xs.contiguous()?.apply_op1(MaxPoolOp::new(pool))
    } else {
        // Fallback for GPUs: `to_device` is differentiable, so gradients flow back.
        super::count_host_round_trip();
        let device = xs.device().clone();
        let host = xs.to_device(&candle_core::Device::Cpu)?;
        host.contiguous()?
            .apply_op1(MaxPoolOp::new(pool))?
            .to_device(&device)
    }
}

/// Whether the op's own GPU kernels take `xs` (never without the `cuda` feature).
fn gpu_kernels(xs: &Tensor, pool: Pool2d) -> bool {
    #[cfg(feature = "cuda")]
    {
        super::cuda::pools(xs, pool)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (xs, pool);
        false
    }
}

/// One pooling: the window and the input's `N x C x H x W`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolGeometry {
    /// The window.
    pub pool: Pool2d,
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
}

impl PoolGeometry {
    fn of(layout: &Layout, pool: Pool2d) -> candle_core::Result<Self> {
        match *layout.dims() {
            [n, c, h, w] => Ok(Self { pool, n, c, h, w }),
            ref dims => candle_core::bail!("max_pool2d expects N x C x H x W, got {dims:?}"),
        }
    }

    fn output_shape(&self) -> Shape {
        let pool = self.pool;
        Shape::from((self.n, self.c, pool.out_side(self.h), pool.out_side(self.w)))
    }
}

/// Per output, the offset of its window's maximum that a forward recorded (see [`MaxPoolOp`]),
/// where the forward ran.
#[derive(Clone)]
enum RecordedOffsets {
    Host(Arc<Vec<u8>>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<candle_core::cuda_backend::cudarc::driver::CudaSlice<u8>>),
}

impl RecordedOffsets {
    /// The offsets, when the forward ran on the CPU.
    fn on_host(&self) -> Option<&[u8]> {
        match self {
            Self::Host(offsets) => Some(offsets),
            #[cfg(feature = "cuda")]
            Self::Cuda(_) => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Host(offsets) => offsets.len(),
            #[cfg(feature = "cuda")]
            Self::Cuda(offsets) => offsets.len(),
        }
    }
}

/// The pooling op, on the CPU and on CUDA (`cuda.rs`). The forward records, per output, the
/// offset of its window's maximum (`row * kernel + column` within the window, padding included),
/// so the backward is a scatter (a gather on the GPU) instead of a second search.
struct MaxPoolOp {
    pool: Pool2d,
    offsets: Mutex<Option<RecordedOffsets>>,
}

impl MaxPoolOp {
    fn new(pool: Pool2d) -> Self {
        Self {
            pool,
            offsets: Mutex::new(None),
        }
    }

    fn remember(&self, offsets: RecordedOffsets) {
        if let Ok(mut guard) = self.offsets.lock() {
            *guard = Some(offsets);
        }
    }

    fn recorded(&self) -> Option<RecordedOffsets> {
        self.offsets.lock().ok().and_then(|guard| guard.clone())
    }

    /// The gradient of `input` from the output gradient `grad_res`.
    fn input_grad(&self, input: &Tensor, grad_res: &Tensor) -> candle_core::Result<Tensor> {
        let grad_res = grad_res.contiguous()?;
        match self.recorded() {
            Some(offsets) if self.pool.records_offsets() => {
                grad_res.apply_op1_no_bwd(&MaxPoolRecordedBackwardOp {
                    pool: self.pool,
                    offsets,
                    input_dims: input.dims().to_vec(),
                })
            }
            _ => input.apply_op2_no_bwd(&grad_res, &MaxPoolBackwardOp(self.pool)),
        }
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
        let geometry = PoolGeometry::of(layout, self.pool)?;
        macro_rules! pool {
            ($variant:ident, $data:expr, $interior:expr) => {{
                let data = contiguous($data, layout, "max_pool2d")?;
                let (out, offsets) = pool_forward(data, geometry, $interior);
                self.remember(RecordedOffsets::Host(Arc::new(offsets)));
                CpuStorage::$variant(out)
            }};
        }
        let out = match storage {
            CpuStorage::F32(data) => pool!(
                F32,
                data,
                (
                    interior_kernel_f32(self.pool),
                    Some(kernel::pool_planes_f32_spare_buffer)
                )
            ),
            CpuStorage::F64(data) => pool!(F64, data, (None, None)),
            other => candle_core::bail!("max_pool2d: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, geometry.output_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let geometry = PoolGeometry::of(layout, self.pool)?;
        let (out, offsets) = super::cuda::max_pool_forward(storage, layout, &geometry)?;
        self.remember(RecordedOffsets::Cuda(Arc::new(offsets)));
        Ok((out, geometry.output_shape()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.input_grad(arg, grad_res)?))
    }
}

/// Gradient of [`MaxPoolOp`] from the offsets its forward recorded; argument the output gradient,
/// on the device the forward ran on.
pub(crate) struct MaxPoolRecordedBackwardOp {
    /// The forward's window.
    pub pool: Pool2d,
    offsets: RecordedOffsets,
    /// The input's `N x C x H x W`.
    pub input_dims: Vec<usize>,
}

impl MaxPoolRecordedBackwardOp {
    /// That the recorded windows, the output gradient (`layout`) and the input fit together.
    fn check(&self, layout: &Layout) -> candle_core::Result<()> {
        let dims = &self.input_dims;
        let (oh, ow) = (self.pool.out_side(dims[2]), self.pool.out_side(dims[3]));
        let expected = dims[0] * dims[1] * oh * ow;
        if self.offsets.len() != layout.shape().elem_count() || self.offsets.len() != expected {
            candle_core::bail!(
                "max_pool2d backward: {} recorded windows for a gradient of shape {:?} and an input of shape {:?}",
                self.offsets.len(),
                layout.dims(),
                dims
            )
        }
        Ok(())
    }
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
        self.check(layout)?;
        let Some(offsets) = self.offsets.on_host() else {
            candle_core::bail!("max_pool2d backward: the forward ran on another device")
        };
        let dims = &self.input_dims;
        let shape = Shape::from(dims.as_slice());
        macro_rules! scatter {
            ($variant:ident, $grad:expr) => {{
                let grad = contiguous($grad, layout, "max_pool2d")?;
                let values = pool_backward_recorded(offsets, grad, dims, self.pool);
                Ok((CpuStorage::$variant(values), shape))
            }};
        }
        match grad {
            CpuStorage::F32(g) => scatter!(F32, g),
            CpuStorage::F64(g) => scatter!(F64, g),
            other => {
                candle_core::bail!("max_pool2d backward: unsupported dtype {:?}", other.dtype())
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        grad: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.check(layout)?;
        let RecordedOffsets::Cuda(offsets) = &self.offsets else {
            candle_core::bail!("max_pool2d backward: the forward ran on another device")
        };
        Ok((
            super::cuda::max_pool_backward(self, offsets, grad, layout)?,
            Shape::from(self.input_dims.as_slice()),
        ))
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
                    contiguous(x, input_layout, "max_pool2d")?,
                    contiguous(g, grad_layout, "max_pool2d")?,
                    dims,
                    self.0,
                )),
                shape,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => Ok((
                CpuStorage::F64(pool_backward(
                    contiguous(x, input_layout, "max_pool2d")?,
                    contiguous(g, grad_layout, "max_pool2d")?,
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
