//! Launches of the training step's element-wise kernels (cuda_train.cu, compiled to PTX by
//! build.rs): dropout from its counter-based generator (dropout.rs).
//!
//! cuda_train.cu also holds Adam's one-kernel update (`adam_f32`), not launched yet: candle's
//! public in-place ops (`Tensor::inplace_op3`) write one tensor per call, and Adam writes three
//! (parameter, first and second moments); the launch needs the optimiser's moments held as
//! device buffers of its own (issue 23, item 3).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, Layout};

use super::cuda::{elementwise, launch, PtxModule};
use super::dropout::DropoutOp;

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
