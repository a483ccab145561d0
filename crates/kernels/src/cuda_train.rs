//! Launches of the training step's element-wise kernels (cuda_train.cu, compiled to PTX by
//! build.rs): dropout from its counter-based generator (dropout.rs).
//!
//! cuda_train.cu also holds Adam's one-kernel update (`adam_f32`), not launched yet: candle's
//! public in-place ops (`Tensor::inplace_op3`) write one tensor per call, and Adam writes three
//! (parameter, first and second moments); the launch needs the optimiser's moments held as
//! device buffers of its own (issue 23, item 3).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, Layout};

use super::dropout::DropoutOp;

/// The kernels, compiled by build.rs for `CUDA_COMPUTE_CAP`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dexpression_train.ptx"));
/// The name candle caches the loaded module under.
const MODULE: &str = "dexpression_train";
/// Threads per block (grid-stride loops).
const BLOCK: u32 = 256;

/// A grid-stride launch over `total` elements.
fn elementwise(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

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
    let func = device.get_or_load_custom_func("dropout_f32", MODULE, PTX)?;
    let mut builder = func.builder();
    let len_arg = len as u64;
    builder.arg(&src);
    builder.arg(&dst);
    builder.arg(&len_arg);
    builder.arg(&op.key);
    builder.arg(&op.threshold);
    builder.arg(&op.scale);
    // SAFETY: the arguments match `dropout_f32`'s signature (two f32 buffers of `len`, u64, u64,
    // u32, f32); the kernel reads and writes only below `len`.
    unsafe { builder.launch(elementwise(len)) }.w()?;
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(dst),
        device,
    })
}
