//! The custom ops on CUDA: max pooling with padding (recorded argmax, gather backward),
//! LayerNorm over `[C, H, W]` and local response normalisation (forward and backward), as kernels of `cuda_ops.cu`, compiled to PTX
//! at build time (build.rs). The ops themselves (`max_pool::MaxPoolOp`,
//! `fast_layer_norm::LayerNormOp` and their backward ops) are one `CustomOp` each with a CPU and
//! a CUDA forward; their CUDA hooks call the launches here. Data stays on the GPU: no host round
//! trip in the forward or the backward.
//!
//! The kernels reproduce the CPU kernels' arithmetic (see `cuda_ops.cu`): max pooling and its
//! gradient, and the LayerNorm affine gradients, equal the CPU's bit for bit; the LayerNorm
//! statistics are summed in f64 in another order, so LayerNorm's output and input gradient agree
//! with the CPU's to about one f32 rounding.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Tensor};

use super::max_pool::{MaxPoolRecordedBackwardOp, Pool2d, PoolGeometry};

/// One of our PTX modules: kernels build.rs compiled for `CUDA_COMPUTE_CAP`, and the name
/// candle caches the loaded module under.
pub(super) struct PtxModule {
    pub(super) name: &'static str,
    pub(super) ptx: &'static str,
}

/// The ops' kernels (`cuda_ops.cu`).
const OPS: PtxModule = PtxModule {
    name: "dexpression_ops",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/dexpression_ops.ptx")),
};

/// Queues `kernel` of the [`PtxModule`] `module` on `device`'s stream with `config`, pushing the
/// arguments in the kernel's order (then each item of `..rest`), and maps the driver's error to
/// candle's. Every launch of the crate goes through it. The caller wraps it in `unsafe` and
/// answers for the launch: the arguments match the kernel's signature and every read and write
/// stays inside the buffers passed.
macro_rules! launch {
    ($device:expr, $module:expr, $kernel:expr, $config:expr, [$($arg:expr),* $(,)?] $(, ..$rest:expr)?) => {{
        let module: &$crate::cuda::PtxModule = &$module;
        let func = $device.get_or_load_custom_func($kernel, module.name, module.ptx)?;
        let mut builder = func.builder();
        $(candle_core::cuda_backend::cudarc::driver::PushKernelArg::arg(&mut builder, $arg);)*
        $(for value in $rest {
            candle_core::cuda_backend::cudarc::driver::PushKernelArg::arg(&mut builder, value);
        })?
        candle_core::cuda_backend::WrapErr::w(builder.launch($config))
    }};
}
pub(super) use launch;

/// Threads per block of the elementwise kernels (grid-stride loops).
const BLOCK: u32 = 256;
/// Threads per block of the per-sample reductions (`REDUCE_THREADS` in the kernels).
const REDUCE_THREADS: u32 = 1024;

/// Whether the CUDA max-pool kernels take `xs`: a CUDA tensor in f32 or f64, a window whose
/// argmax fits a byte, and the reference path not forced.
pub(super) fn pools(xs: &Tensor, pool: Pool2d) -> bool {
    xs.device().is_cuda()
        && matches!(xs.dtype(), DType::F32 | DType::F64)
        && pool.records_offsets()
        && !super::reference_ops()
}

/// Whether the CUDA LayerNorm kernels take `xs`: a CUDA tensor in f32 and the reference path not
/// forced.
pub(super) fn normalises(xs: &Tensor) -> bool {
    xs.device().is_cuda() && xs.dtype() == DType::F32 && !super::reference_ops()
}

/// A grid-stride launch over `total` elements.
pub(super) fn elementwise(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of [`REDUCE_THREADS`] per sample.
fn per_sample(samples: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (samples as u32, 1, 1),
        block_dim: (REDUCE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The contiguous part of `slice` that `layout` describes.
pub(super) fn contiguous<'a, T>(
    slice: &'a CudaSlice<T>,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

fn i32_arg(value: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(value).map_err(|_| candle_core::Error::Msg(format!("{what} {value} exceeds i32")))
}

/// Pools the input on the GPU (`MaxPoolOp`'s CUDA forward); returns the output and each
/// output's recorded window offset.
pub(super) fn max_pool_forward(
    storage: &CudaStorage,
    layout: &Layout,
    geometry: &PoolGeometry,
) -> candle_core::Result<(CudaStorage, CudaSlice<u8>)> {
    let PoolGeometry { pool, n, c, h, w } = *geometry;
    let (oh, ow) = (pool.out_side(h), pool.out_side(w));
    let len = n * c * oh * ow;
    let device = storage.device().clone();
    // SAFETY: the kernel writes every output and offset (one thread per output).
    let offsets = unsafe { device.alloc::<u8>(len)? };
    let sizes = [n, c, h, w, oh, ow, pool.kernel, pool.stride, pool.padding]
        .map(|value| i32_arg(value, "max_pool2d size"));
    let sizes: Vec<i32> = sizes.into_iter().collect::<candle_core::Result<_>>()?;

    macro_rules! pool {
        ($variant:ident, $data:expr, $ty:ty, $kernel:literal) => {{
            let src = contiguous($data, layout, "max_pool2d input")?;
            // SAFETY: as for `offsets`.
            let dst = unsafe { device.alloc::<$ty>(len)? };
            // SAFETY: the arguments match the kernel's signature; the kernel reads the
            // `n * c * h * w` inputs and writes inside `dst` and `offsets` (`len` each).
            unsafe {
                launch!(
                    device,
                    OPS,
                    $kernel,
                    elementwise(len),
                    [&src, &dst, &offsets],
                    ..&sizes
                )
            }?;
            CudaStorageSlice::$variant(dst)
        }};
    }
    let slice = match &storage.slice {
        CudaStorageSlice::F32(data) => pool!(F32, data, f32, "max_pool_forward_f32"),
        CudaStorageSlice::F64(data) => pool!(F64, data, f64, "max_pool_forward_f64"),
        _ => candle_core::bail!(
            "max_pool2d: unsupported dtype {:?} on CUDA",
            storage.dtype()
        ),
    };
    Ok((CudaStorage { slice, device }, offsets))
}

/// The gradient of one pooled input from the output gradient `grad` and the offsets the forward
/// recorded on the GPU (`MaxPoolRecordedBackwardOp`'s CUDA forward, which checked the sizes).
pub(super) fn max_pool_backward(
    op: &MaxPoolRecordedBackwardOp,
    offsets: &CudaSlice<u8>,
    grad: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaStorage> {
    let device = grad.device().clone();
    let slice = match &grad.slice {
        CudaStorageSlice::F32(values) => CudaStorageSlice::F32(gather_gradient(
            op,
            offsets,
            values,
            layout,
            &device,
            "max_pool_backward_f32",
        )?),
        CudaStorageSlice::F64(values) => CudaStorageSlice::F64(gather_gradient(
            op,
            offsets,
            values,
            layout,
            &device,
            "max_pool_backward_f64",
        )?),
        _ => candle_core::bail!(
            "max_pool2d backward: unsupported dtype {:?} on CUDA",
            grad.dtype()
        ),
    };
    Ok(CudaStorage { slice, device })
}

fn gather_gradient<T: DeviceRepr + candle_core::WithDType>(
    op: &MaxPoolRecordedBackwardOp,
    offsets: &CudaSlice<u8>,
    grad: &CudaSlice<T>,
    layout: &Layout,
    device: &CudaDevice,
    kernel: &str,
) -> candle_core::Result<CudaSlice<T>> {
    let dims = &op.input_dims;
    let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = (op.pool.out_side(h), op.pool.out_side(w));
    let grad = contiguous(grad, layout, "max_pool2d gradient")?;
    let len = n * c * h * w;
    // SAFETY: the kernel writes every input gradient (one thread per element).
    let grad_in = unsafe { device.alloc::<T>(len)? };
    let sizes = [
        n,
        c,
        h,
        w,
        oh,
        ow,
        op.pool.kernel,
        op.pool.stride,
        op.pool.padding,
    ]
    .map(|value| i32_arg(value, "max_pool2d size"));
    let sizes: Vec<i32> = sizes.into_iter().collect::<candle_core::Result<_>>()?;
    // SAFETY: the arguments match the kernel's signature; it reads inside `grad` and the offsets
    // (their sizes checked by the op) and writes the `len` values of `grad_in`.
    unsafe {
        launch!(
            device,
            OPS,
            kernel,
            elementwise(len),
            [&grad, offsets, &grad_in],
            ..&sizes
        )
    }?;
    Ok(grad_in)
}

/// The f32 values of one contiguous argument of a LayerNorm op.
fn f32_slice<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, f32>> {
    match &storage.slice {
        CudaStorageSlice::F32(data) => contiguous(data, layout, what),
        _ => candle_core::bail!("{what}: expected f32, got {:?}", storage.dtype()),
    }
}

/// Per sample, `(mean, sqrt(var + eps))` in f64, interleaved.
fn statistics(
    device: &CudaDevice,
    x: &CudaView<'_, f32>,
    samples: usize,
    features: i32,
    eps: f64,
) -> candle_core::Result<CudaSlice<f64>> {
    // SAFETY: the kernel writes both statistics of every sample (one block each).
    let stats = unsafe { device.alloc::<f64>(2 * samples)? };
    // SAFETY: the arguments match the kernel's signature; it reads `samples * features` inputs.
    unsafe {
        launch!(
            device,
            OPS,
            "layer_norm_statistics",
            per_sample(samples),
            [x, &stats, &features, &eps]
        )
    }?;
    Ok(stats)
}

/// What both LayerNorm launches start from: the three f32 arguments (input, weight, and bias or
/// output gradient) and each sample's statistics.
struct LayerNormArguments<'a> {
    device: CudaDevice,
    x: CudaView<'a, f32>,
    weight: CudaView<'a, f32>,
    third: CudaView<'a, f32>,
    stats: CudaSlice<f64>,
    features32: i32,
}

impl<'a> LayerNormArguments<'a> {
    /// Reads the arguments (their shapes checked by the op: `samples` of `features` values) and
    /// computes the statistics.
    fn new(
        arguments: [(&'a CudaStorage, &Layout); 3],
        third_name: &str,
        (samples, features): (usize, usize),
        eps: f64,
    ) -> candle_core::Result<Self> {
        let [(x, xl), (w, wl), (t, tl)] = arguments;
        let device = x.device().clone();
        let x = f32_slice(x, xl, "layer_norm input")?;
        let features32 = i32_arg(features, "layer_norm features")?;
        let stats = statistics(&device, &x, samples, features32, eps)?;
        Ok(Self {
            weight: f32_slice(w, wl, "layer_norm weight")?,
            third: f32_slice(t, tl, third_name)?,
            device,
            x,
            stats,
            features32,
        })
    }
}

/// LayerNorm's output on the GPU (`LayerNormOp`'s CUDA forward): arguments input, weight and
/// bias, their shapes checked by the op; `samples` of `features` values each.
pub(super) fn layer_norm_forward(
    arguments: [(&CudaStorage, &Layout); 3],
    (samples, features): (usize, usize),
    eps: f64,
) -> candle_core::Result<CudaStorage> {
    let args = LayerNormArguments::new(arguments, "layer_norm bias", (samples, features), eps)?;
    let device = args.device.clone();
    let total = samples * features;
    // SAFETY: the kernel writes every output (grid-stride over `total`).
    let out = unsafe { device.alloc::<f32>(total)? };
    let total64 = total as i64;
    // SAFETY: the arguments match the kernel's signature; all reads and writes lie inside the
    // `total` inputs and outputs and the `features` affine values.
    unsafe {
        launch!(
            device,
            OPS,
            "layer_norm_forward",
            elementwise(total),
            [
                &args.x,
                &args.stats,
                &args.weight,
                &args.third,
                &out,
                &total64,
                &args.features32,
                &eps
            ]
        )
    }?;
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(out),
        device,
    })
}

/// LayerNorm's gradients on the GPU (`LayerNormBackwardOp`'s CUDA forward), flat as on the CPU:
/// input, then weight, then bias gradient; arguments input, weight and output gradient, their
/// shapes checked by the op.
pub(super) fn layer_norm_backward(
    arguments: [(&CudaStorage, &Layout); 3],
    (samples, features): (usize, usize),
    eps: f64,
) -> candle_core::Result<CudaStorage> {
    let args = LayerNormArguments::new(arguments, "layer_norm gradient", (samples, features), eps)?;
    let device = args.device.clone();
    let total = samples * features;
    let samples32 = i32_arg(samples, "layer_norm samples")?;

    // SAFETY: the kernel writes both means of every sample (one block each).
    let means = unsafe { device.alloc::<f64>(2 * samples)? };
    // SAFETY: the arguments match the kernel's signature; it reads inside the inputs.
    unsafe {
        launch!(
            device,
            OPS,
            "layer_norm_gradient_means",
            per_sample(samples),
            [
                &args.x,
                &args.third,
                &args.weight,
                &args.stats,
                &means,
                &args.features32
            ]
        )
    }?;

    // SAFETY: the two kernels below write all of it: the input gradient (`total` values), then
    // the weight and bias gradients (`features` each).
    let mut out = unsafe { device.alloc::<f32>(total + 2 * features)? };
    {
        let mut dx = out.slice_mut(0..total);
        let total64 = total as i64;
        // SAFETY: the arguments match the kernel's signature; it writes the `total` values of
        // `dx`.
        unsafe {
            launch!(
                device,
                OPS,
                "layer_norm_input_grad",
                elementwise(total),
                [
                    &args.x,
                    &args.third,
                    &args.weight,
                    &args.stats,
                    &means,
                    &mut dx,
                    &total64,
                    &args.features32
                ]
            )
        }?;
    }
    {
        let mut affine = out.slice_mut(total..);
        // SAFETY: the arguments match the kernel's signature; it writes the `2 * features`
        // values of `affine` (weight gradient, then bias gradient).
        unsafe {
            launch!(
                device,
                OPS,
                "layer_norm_affine_grad",
                elementwise(features),
                [
                    &args.x,
                    &args.third,
                    &args.stats,
                    &mut affine,
                    &samples32,
                    &args.features32
                ]
            )
        }?;
    }
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(out),
        device,
    })
}

/// The sizes and constants every LRN launch takes, as the kernels take them.
struct LrnLaunch {
    total: usize,
    channels: i32,
    plane: i64,
    before: i32,
    after: i32,
    size: f32,
    alpha: f32,
    beta: f32,
    k: f32,
}

impl LrnLaunch {
    fn new(
        (channels, plane): (usize, usize),
        total: usize,
        lrn: super::lrn::LocalResponseNorm,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            total,
            channels: i32_arg(channels, "local_response_norm channels")?,
            plane: plane as i64,
            before: i32_arg(lrn.size / 2, "local_response_norm size")?,
            after: i32_arg((lrn.size - 1) / 2, "local_response_norm size")?,
            size: lrn.size as f32,
            alpha: lrn.alpha as f32,
            beta: lrn.beta as f32,
            k: lrn.k as f32,
        })
    }
}

/// Local response normalisation on the GPU (`LrnOp`'s CUDA forward), in f32 with the CPU
/// kernel's operations in its order.
pub(super) fn lrn_forward(
    (x, layout): (&CudaStorage, &Layout),
    geometry: (usize, usize),
    lrn: super::lrn::LocalResponseNorm,
) -> candle_core::Result<CudaStorage> {
    let device = x.device().clone();
    let x = f32_slice(x, layout, "local_response_norm input")?;
    let sizes = LrnLaunch::new(geometry, layout.shape().elem_count(), lrn)?;
    // SAFETY: the kernel writes every output (grid-stride over `total`).
    let out = unsafe { device.alloc::<f32>(sizes.total.max(1))? };
    let total64 = sizes.total as i64;
    let s = &sizes;
    // SAFETY: the arguments match the kernel's signature; it reads the `total` inputs (each
    // window inside its own image) and writes the `total` outputs.
    unsafe {
        launch!(
            device,
            OPS,
            "lrn_forward",
            elementwise(s.total),
            [
                &x,
                &out,
                &total64,
                &s.channels,
                &s.plane,
                &s.before,
                &s.after,
                &s.size,
                &s.alpha,
                &s.beta,
                &s.k
            ]
        )
    }?;
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(out),
        device,
    })
}

/// The input gradient of local response normalisation on the GPU (`LrnBackwardOp`'s CUDA
/// forward): arguments the input and the output gradient, of one shape (checked by the op).
pub(super) fn lrn_backward(
    arguments: [(&CudaStorage, &Layout); 2],
    geometry: (usize, usize),
    lrn: super::lrn::LocalResponseNorm,
) -> candle_core::Result<CudaStorage> {
    let [(x, xl), (g, gl)] = arguments;
    let device = x.device().clone();
    let x = f32_slice(x, xl, "local_response_norm input")?;
    let grad = f32_slice(g, gl, "local_response_norm gradient")?;
    let sizes = LrnLaunch::new(geometry, xl.shape().elem_count(), lrn)?;
    let total64 = sizes.total as i64;
    // SAFETY: the first kernel writes every value of both (grid-stride over `total`).
    let dx = unsafe { device.alloc::<f32>(sizes.total.max(1))? };
    // SAFETY: as for `dx`.
    let terms = unsafe { device.alloc::<f32>(sizes.total.max(1))? };
    let s = &sizes;
    // SAFETY: the arguments match the kernel's signature; reads and writes lie inside the
    // `total` values of each buffer.
    unsafe {
        launch!(
            device,
            OPS,
            "lrn_backward_terms",
            elementwise(s.total),
            [
                &x,
                &grad,
                &dx,
                &terms,
                &total64,
                &s.channels,
                &s.plane,
                &s.before,
                &s.after,
                &s.size,
                &s.alpha,
                &s.beta,
                &s.k
            ]
        )
    }?;
    let coefficient = 2.0 * s.alpha * s.beta / s.size;
    // SAFETY: as above; each thread updates its own value of `dx`, reading `terms` only.
    unsafe {
        launch!(
            device,
            OPS,
            "lrn_backward_cross",
            elementwise(s.total),
            [
                &x,
                &terms,
                &dx,
                &total64,
                &s.channels,
                &s.plane,
                &s.before,
                &s.after,
                &coefficient
            ]
        )
    }?;
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(dx),
        device,
    })
}
