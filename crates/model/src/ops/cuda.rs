//! The custom ops on CUDA: max pooling with padding (recorded argmax, gather backward) and
//! LayerNorm over `[C, H, W]` (forward and backward), as kernels of `cuda_ops.cu`, compiled to PTX
//! at build time (build.rs) and launched through candle's `CustomOp` CUDA hooks. Data stays on
//! the GPU: no host round trip in the forward or the backward.
//!
//! The kernels reproduce the CPU kernels' arithmetic (see `cuda_ops.cu`): max pooling and its
//! gradient, and the LayerNorm affine gradients, equal the CPU's bit for bit; the LayerNorm
//! statistics are summed in f64 in another order, so LayerNorm's output and input gradient agree
//! with the CPU's to about one f32 rounding.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape,
    Tensor,
};

use super::max_pool::Pool2d;

/// The kernels, compiled by build.rs for `CUDA_COMPUTE_CAP`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dexpression_ops.ptx"));
/// The name candle caches the loaded module under.
const MODULE: &str = "dexpression_ops";
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

/// Max pooling of `first` (and of `second`, concatenated along the channels after `first`'s) on
/// the GPU; differentiable.
pub(super) fn max_pool2d(
    first: &Tensor,
    second: Option<&Tensor>,
    pool: Pool2d,
) -> candle_core::Result<Tensor> {
    let op = MaxPoolCudaOp {
        pool,
        offsets: Mutex::new(None),
    };
    match second {
        None => first.contiguous()?.apply_op1(op),
        Some(second) => first.contiguous()?.apply_op2(&second.contiguous()?, op),
    }
}

/// LayerNorm over every non-batch dimension on the GPU (f32 data, f64 statistics); differentiable
/// in all three arguments.
pub(super) fn layer_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNormCudaOp { eps },
    )
}

/// A grid-stride launch over `total` elements.
fn elementwise(total: usize) -> LaunchConfig {
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
fn contiguous<'a, T>(
    slice: &'a CudaSlice<T>,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

fn i32_arg(value: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(value).map_err(|_| candle_core::Error::Msg(format!("{what} {value} exceeds i32")))
}

/// The pooling op on the GPU, one input ([`CustomOp1`]) or two pooled into one concatenated
/// output ([`CustomOp2`]). The forward records each window's argmax on the GPU for the backward.
struct MaxPoolCudaOp {
    pool: Pool2d,
    offsets: Mutex<Option<Arc<CudaSlice<u8>>>>,
}

impl MaxPoolCudaOp {
    fn forward(
        &self,
        sources: &[(&CudaStorage, &Layout)],
    ) -> candle_core::Result<(CudaStorage, Shape)> {
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
        let pool = self.pool;
        let (oh, ow) = (pool.out_side(h), pool.out_side(w));
        let c_total: usize = channels.iter().sum();
        let len = n * c_total * oh * ow;
        let device = sources[0].0.device().clone();
        // SAFETY: every output and offset is written by the kernels below: the sources' channel
        // ranges cover `0..c_total`, and each launch writes every output of its range.
        let offsets = unsafe { device.alloc::<u8>(len)? };
        let size = |value: usize| i32_arg(value, "max_pool2d size");
        let (n32, h32, w32, oh32, ow32) = (size(n)?, size(h)?, size(w)?, size(oh)?, size(ow)?);
        let (k32, s32, p32) = (size(pool.kernel)?, size(pool.stride)?, size(pool.padding)?);
        let c_total32 = i32_arg(c_total, "max_pool2d channels")?;

        macro_rules! pool_sources {
            ($variant:ident, $ty:ty, $kernel:literal) => {{
                // SAFETY: as for `offsets`.
                let dst = unsafe { device.alloc::<$ty>(len)? };
                let func = device.get_or_load_custom_func($kernel, MODULE, PTX)?;
                let mut c_start = 0usize;
                for ((storage, layout), &c) in sources.iter().zip(&channels) {
                    let CudaStorageSlice::$variant(data) = &storage.slice else {
                        candle_core::bail!(
                            "max_pool2d: inputs of different types {:?} and {:?}",
                            sources[0].0.dtype(),
                            storage.dtype()
                        )
                    };
                    let src = contiguous(data, layout, "max_pool2d input")?;
                    let (c32, start32) = (
                        i32_arg(c, "max_pool2d channels")?,
                        i32_arg(c_start, "max_pool2d channels")?,
                    );
                    let mut builder = func.builder();
                    builder.arg(&src);
                    builder.arg(&dst);
                    builder.arg(&offsets);
                    candle_core::builder_arg!(
                        builder, n32, c32, c_total32, start32, h32, w32, oh32, ow32, k32, s32, p32
                    );
                    // SAFETY: the arguments match the kernel's signature; the kernel reads
                    // `n * c * h * w` inputs and writes inside `dst` and `offsets` (`len` each).
                    unsafe { builder.launch(elementwise(n * c * oh * ow)) }.w()?;
                    c_start += c;
                }
                CudaStorageSlice::$variant(dst)
            }};
        }
        let slice = match &sources[0].0.slice {
            CudaStorageSlice::F32(_) => pool_sources!(F32, f32, "max_pool_forward_f32"),
            CudaStorageSlice::F64(_) => pool_sources!(F64, f64, "max_pool_forward_f64"),
            _ => candle_core::bail!(
                "max_pool2d: unsupported dtype {:?} on CUDA",
                sources[0].0.dtype()
            ),
        };
        if let Ok(mut recorded) = self.offsets.lock() {
            *recorded = Some(Arc::new(offsets));
        }
        Ok((
            CudaStorage { slice, device },
            Shape::from((n, c_total, oh, ow)),
        ))
    }

    /// The gradient of the input that holds channels `channel_start..` of the output.
    fn input_grad(
        &self,
        input: &Tensor,
        channel_start: usize,
        grad_res: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let offsets = self
            .offsets
            .lock()
            .ok()
            .and_then(|recorded| recorded.clone())
            .ok_or_else(|| {
                candle_core::Error::Msg("max_pool2d backward: no recorded forward".into())
            })?;
        grad_res
            .contiguous()?
            .apply_op1_no_bwd(&MaxPoolCudaBackwardOp {
                pool: self.pool,
                offsets,
                input_dims: input.dims().to_vec(),
                channel_start,
                channels_total: grad_res.dim(1)?,
            })
    }
}

fn host_only(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name}: the CUDA op was given host tensors"))
}

impl CustomOp1 for MaxPoolCudaOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(host_only(CustomOp1::name(self)))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
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

impl CustomOp2 for MaxPoolCudaOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d-cat-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(host_only(CustomOp2::name(self)))
    }

    fn cuda_fwd(
        &self,
        first: &CudaStorage,
        first_layout: &Layout,
        second: &CudaStorage,
        second_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
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

/// The gradient of one input of [`MaxPoolCudaOp`] from its recorded offsets; argument the
/// (possibly concatenated) output gradient.
struct MaxPoolCudaBackwardOp {
    pool: Pool2d,
    offsets: Arc<CudaSlice<u8>>,
    input_dims: Vec<usize>,
    channel_start: usize,
    channels_total: usize,
}

impl MaxPoolCudaBackwardOp {
    fn launch<T: DeviceRepr + candle_core::WithDType>(
        &self,
        grad: &CudaSlice<T>,
        layout: &Layout,
        device: &CudaDevice,
        kernel: &str,
    ) -> candle_core::Result<CudaSlice<T>> {
        let dims = &self.input_dims;
        let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let (oh, ow) = (self.pool.out_side(h), self.pool.out_side(w));
        if layout.shape().elem_count() != n * self.channels_total * oh * ow
            || self.offsets.len() != layout.shape().elem_count()
            || self.channel_start + c > self.channels_total
        {
            candle_core::bail!(
                "max_pool2d backward: {} recorded windows for a gradient of shape {:?} and an input of shape {:?}",
                self.offsets.len(),
                layout.dims(),
                dims
            )
        }
        let grad = contiguous(grad, layout, "max_pool2d gradient")?;
        let len = n * c * h * w;
        // SAFETY: the kernel writes every input gradient (one thread per element).
        let grad_in = unsafe { device.alloc::<T>(len)? };
        let func = device.get_or_load_custom_func(kernel, MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&grad);
        builder.arg(self.offsets.as_ref());
        builder.arg(&grad_in);
        let sizes = [
            n,
            c,
            self.channels_total,
            self.channel_start,
            h,
            w,
            oh,
            ow,
            self.pool.kernel,
            self.pool.stride,
            self.pool.padding,
        ]
        .map(|value| i32_arg(value, "max_pool2d size"));
        let sizes: Vec<i32> = sizes.into_iter().collect::<candle_core::Result<_>>()?;
        for value in &sizes {
            builder.arg(value);
        }
        // SAFETY: the arguments match the kernel's signature; it reads inside `grad` and the
        // offsets (checked above) and writes the `len` values of `grad_in`.
        unsafe { builder.launch(elementwise(len)) }.w()?;
        Ok(grad_in)
    }
}

impl CustomOp1 for MaxPoolCudaBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-max-pool2d-backward-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(host_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = storage.device().clone();
        let slice = match &storage.slice {
            CudaStorageSlice::F32(grad) => CudaStorageSlice::F32(self.launch(
                grad,
                layout,
                &device,
                "max_pool_backward_f32",
            )?),
            CudaStorageSlice::F64(grad) => CudaStorageSlice::F64(self.launch(
                grad,
                layout,
                &device,
                "max_pool_backward_f64",
            )?),
            _ => candle_core::bail!(
                "max_pool2d backward: unsupported dtype {:?} on CUDA",
                storage.dtype()
            ),
        };
        Ok((
            CudaStorage { slice, device },
            Shape::from(self.input_dims.as_slice()),
        ))
    }
}

/// The f32 slices of a LayerNorm op's three arguments, each contiguous.
fn f32_slice<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    match &storage.slice {
        CudaStorageSlice::F32(data) => contiguous(data, layout, what),
        _ => candle_core::bail!("{what}: expected f32, got {:?}", storage.dtype()),
    }
}

/// Samples and features per sample of a LayerNorm input whose affine part has `affine` values.
fn samples_and_features(x: &Layout, affine: usize) -> candle_core::Result<(usize, usize)> {
    let dims = x.dims();
    let features: usize = dims.iter().skip(1).product();
    if dims.is_empty() || features != affine || features == 0 {
        candle_core::bail!(
            "layer_norm: input {:?} does not match an affine part of {affine} values",
            dims
        )
    }
    Ok((dims[0], features))
}

/// Per sample, `(mean, sqrt(var + eps))` in f64, interleaved.
fn statistics(
    device: &CudaDevice,
    x: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    samples: usize,
    features: i32,
    eps: f64,
) -> candle_core::Result<CudaSlice<f64>> {
    // SAFETY: the kernel writes both statistics of every sample (one block each).
    let stats = unsafe { device.alloc::<f64>(2 * samples)? };
    let func = device.get_or_load_custom_func("layer_norm_statistics", MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(x);
    builder.arg(&stats);
    builder.arg(&features);
    builder.arg(&eps);
    // SAFETY: the arguments match the kernel's signature; it reads `samples * features` inputs.
    unsafe { builder.launch(per_sample(samples)) }.w()?;
    Ok(stats)
}

/// LayerNorm with affine weight and bias on the GPU: arguments input, weight, bias.
struct LayerNormCudaOp {
    eps: f64,
}

impl CustomOp3 for LayerNormCudaOp {
    fn name(&self) -> &'static str {
        "dexpression-layer-norm-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(host_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = x.device().clone();
        let (x_values, weight, bias) = (
            f32_slice(x, xl, "layer_norm input")?,
            f32_slice(w, wl, "layer_norm weight")?,
            f32_slice(b, bl, "layer_norm bias")?,
        );
        let (samples, features) = samples_and_features(xl, weight.len())?;
        if bias.len() != weight.len() {
            candle_core::bail!(
                "layer_norm: weight of {} values but bias of {}",
                weight.len(),
                bias.len()
            )
        }
        let features32 = i32_arg(features, "layer_norm features")?;
        let stats = statistics(&device, &x_values, samples, features32, self.eps)?;
        let total = samples * features;
        // SAFETY: the kernel writes every output (grid-stride over `total`).
        let out = unsafe { device.alloc::<f32>(total)? };
        let func = device.get_or_load_custom_func("layer_norm_forward", MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&x_values);
        builder.arg(&stats);
        builder.arg(&weight);
        builder.arg(&bias);
        builder.arg(&out);
        let total64 = total as i64;
        builder.arg(&total64);
        builder.arg(&features32);
        builder.arg(&self.eps);
        // SAFETY: the arguments match the kernel's signature; all reads and writes lie inside
        // the `total` inputs and outputs and the `features` affine values.
        unsafe { builder.launch(elementwise(total)) }.w()?;
        Ok((
            CudaStorage {
                slice: CudaStorageSlice::F32(out),
                device,
            },
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(
            w,
            &grad_res.contiguous()?,
            &LayerNormCudaBackwardOp { eps: self.eps },
        )?;
        let (n_inputs, features) = (x.elem_count(), w.elem_count());
        let grad_x = all.narrow(0, 0, n_inputs)?.reshape(x.shape())?;
        let grad_w = all.narrow(0, n_inputs, features)?.reshape(w.shape())?;
        let grad_b = all
            .narrow(0, n_inputs + features, features)?
            .reshape(w.shape())?;
        Ok((Some(grad_x), Some(grad_w), Some(grad_b)))
    }
}

/// Gradients of [`LayerNormCudaOp`], flat (input, then weight, then bias gradient, as the CPU
/// op's): arguments input, weight and output gradient.
struct LayerNormCudaBackwardOp {
    eps: f64,
}

impl CustomOp3 for LayerNormCudaBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-layer-norm-backward-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(host_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = x.device().clone();
        let (x_values, weight, grad) = (
            f32_slice(x, xl, "layer_norm input")?,
            f32_slice(w, wl, "layer_norm weight")?,
            f32_slice(g, gl, "layer_norm gradient")?,
        );
        let (samples, features) = samples_and_features(xl, weight.len())?;
        let total = samples * features;
        if grad.len() != total {
            candle_core::bail!(
                "layer_norm backward: gradient of {} values for an input of {total}",
                grad.len()
            )
        }
        let (features32, samples32) = (
            i32_arg(features, "layer_norm features")?,
            i32_arg(samples, "layer_norm samples")?,
        );
        let stats = statistics(&device, &x_values, samples, features32, self.eps)?;

        // SAFETY: the kernel writes both means of every sample (one block each).
        let means = unsafe { device.alloc::<f64>(2 * samples)? };
        let func = device.get_or_load_custom_func("layer_norm_gradient_means", MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&x_values);
        builder.arg(&grad);
        builder.arg(&weight);
        builder.arg(&stats);
        builder.arg(&means);
        builder.arg(&features32);
        // SAFETY: the arguments match the kernel's signature; it reads inside the inputs.
        unsafe { builder.launch(per_sample(samples)) }.w()?;

        // SAFETY: the two kernels below write all of it: the input gradient (`total` values),
        // then the weight and bias gradients (`features` each).
        let mut out = unsafe { device.alloc::<f32>(total + 2 * features)? };
        {
            let mut dx = out.slice_mut(0..total);
            let func = device.get_or_load_custom_func("layer_norm_input_grad", MODULE, PTX)?;
            let mut builder = func.builder();
            builder.arg(&x_values);
            builder.arg(&grad);
            builder.arg(&weight);
            builder.arg(&stats);
            builder.arg(&means);
            builder.arg(&mut dx);
            let total64 = total as i64;
            builder.arg(&total64);
            builder.arg(&features32);
            // SAFETY: the arguments match the kernel's signature; it writes the `total` values
            // of `dx`.
            unsafe { builder.launch(elementwise(total)) }.w()?;
        }
        {
            let mut affine = out.slice_mut(total..);
            let func = device.get_or_load_custom_func("layer_norm_affine_grad", MODULE, PTX)?;
            let mut builder = func.builder();
            builder.arg(&x_values);
            builder.arg(&grad);
            builder.arg(&stats);
            builder.arg(&mut affine);
            builder.arg(&samples32);
            builder.arg(&features32);
            // SAFETY: the arguments match the kernel's signature; it writes the `2 * features`
            // values of `affine` (weight gradient, then bias gradient).
            unsafe { builder.launch(elementwise(features)) }.w()?;
        }
        let len = out.len();
        Ok((
            CudaStorage {
                slice: CudaStorageSlice::F32(out),
                device,
            },
            Shape::from(len),
        ))
    }
}
