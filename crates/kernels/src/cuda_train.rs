//! Launches of the training step's element-wise kernels (cuda_train.cu, compiled to PTX by
//! build.rs): dropout from its counter-based generator (dropout.rs) and Adam's update of one
//! parameter (adam.rs), each one kernel.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, Layout};

use super::cuda::{elementwise, launch, PtxModule};
use super::dropout::DropoutOp;
use super::AdamStep;

/// The training step's kernels (`cuda_train.cu`).
const TRAIN: PtxModule = PtxModule {
    name: "dexpression_train",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/dexpression_train.ptx")),
};

/// `DropoutOp`'s CUDA forward: the input times its mask, in a new buffer.
pub(super) fn dropout(
    op: &DropoutOp,
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaStorage> {
    let CudaStorageSlice::F32(values) = &storage.slice else {
        candle_core::bail!("dropout: f32 only, not {:?}", storage.dtype());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("dropout: the input must be contiguous");
    };
    let src = values.slice(start..end);
    let len = end - start;
    let device = storage.device().clone();
    // SAFETY: the kernel writes every element (one per index below `len`).
    let dst = unsafe { device.alloc::<f32>(len)? };
    let len_arg = len as u64;
    // SAFETY: the arguments match `dropout_f32`'s signature (two f32 buffers of `len`, u64, u64,
    // u32, f32); the kernel reads and writes only below `len`.
    unsafe {
        launch!(
            device,
            TRAIN,
            "dropout_f32",
            elementwise(len),
            [&src, &dst, &len_arg, &op.key, &op.threshold, &op.scale]
        )
    }?;
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(dst),
        device,
    })
}

/// Adam's update of one f32 parameter on the GPU in one launch (`adam_f32`): `[param, m, v]`
/// after the step, as views of one new `3 x len` buffer; `None` where the kernel does not apply
/// (not all on a CUDA GPU, not all f32, or the reference path forced), for the caller's tensor
/// ops. The shapes were checked by the caller.
pub(super) fn adam(
    param: &candle_core::Tensor,
    m: &candle_core::Tensor,
    v: &candle_core::Tensor,
    grad: &candle_core::Tensor,
    step: &AdamStep,
) -> candle_core::Result<Option<[candle_core::Tensor; 3]>> {
    use candle_core::{DType, Storage, Tensor};
    let tensors = [param, m, v, grad];
    if tensors
        .iter()
        .any(|t| !t.device().is_cuda() || t.dtype() != DType::F32)
        || super::reference_ops()
    {
        return Ok(None);
    }
    let guards = tensors.map(Tensor::storage_and_layout);
    let mut inputs = Vec::with_capacity(4);
    let mut device = None;
    for ((storage, layout), what) in
        guards
            .iter()
            .zip(["parameter", "first moment", "second moment", "gradient"])
    {
        let Storage::Cuda(storage) = &**storage else {
            candle_core::bail!("adam: the {what} is not on the GPU");
        };
        let CudaStorageSlice::F32(values) = &storage.slice else {
            candle_core::bail!("adam: the {what} is not f32");
        };
        inputs.push(super::cuda::contiguous(values, layout, what)?);
        device.get_or_insert_with(|| storage.device().clone());
    }
    let device = device.expect("four inputs");
    let len = param.elem_count();
    // SAFETY: the kernel writes all three parts of it (one thread per index below `len`).
    let out = unsafe { device.alloc::<f32>(3 * len.max(1))? };
    let len_arg = len as u64;
    // Rounded to f32 as candle's affine op rounds them on the CPU.
    let constants = step.f32_constants();
    // SAFETY: the arguments match `adam_f32`'s signature (four f32 inputs of `len`, the f32
    // output of `3 * len`, u64, seven f32); the kernel reads and writes only below those sizes.
    unsafe {
        launch!(
            device,
            TRAIN,
            "adam_f32",
            elementwise(len),
            [&inputs[0], &inputs[1], &inputs[2], &inputs[3], &out, &len_arg],
            ..&constants
        )
    }?;
    drop(inputs);
    drop(guards);
    let out = Tensor::from_storage(
        Storage::Cuda(CudaStorage {
            slice: CudaStorageSlice::F32(out),
            device,
        }),
        (3, len),
        candle_core::op::BackpropOp::none(),
        false,
    );
    let part = |i: usize| out.get(i)?.reshape(param.dims());
    Ok(Some([part(0)?, part(1)?, part(2)?]))
}
