//! The network's operations, behind plain functions so that faster kernels can replace them
//! without touching the network.
//!
//! Each op here exists because candle 0.11's own version falls short for DeXpression:
//! - [`max_pool2d`]: candle's has no padding and no backward when kernel and stride differ;
//! - [`layer_norm`]: candle-nn's fused LayerNorm has no backward (gradients silently stop) and
//!   normalises only the last dimension, where the port normalises over `[C, H, W]`;
//! - [`conv2d`] and [`conv2d_relu`]: candle's CPU conv backward is a naive loop and computes the
//!   input gradient even for the network input;
//! - [`batch_norm_train`] and [`batch_norm_eval`]: composed of candle's broadcast ops, BatchNorm
//!   made several full passes and three-dimension reductions in its backward.
//!
//! Two paths: on the CPU in f32, fast kernels (im2col and the `gemm` crate for convolutions with
//! the bias and ReLU fused, Winograd's algorithm for the 3x3 ones' gradients and inference,
//! one-pass LayerNorm, and for inference each FeatEx block as one op, [`feat_ex`]) are used by
//! default; the reference path composes candle tensor ops and serves every other device and
//! dtype, except that with the `cuda` feature
//! max pooling and LayerNorm run CUDA kernels of their own on the GPU (the same ops, with a CUDA
//! forward next to the CPU one; the launches are in `cuda.rs`). The only op that copies a GPU
//! tensor to the host is max pooling where no GPU kernel takes it; [`host_round_trips`] counts
//! such copies, so a test can check that a training step makes none.
//! [`set_reference_ops`] (or `DEXPRESSION_REFERENCE_OPS=1`) forces the reference path, for
//! comparisons and benchmarks.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use candle_core::{DType, Tensor};

mod batch_norm;
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod fast_conv;
mod fast_conv_pool;
mod fast_layer_norm;
mod feat_ex;
mod isa;
mod layer_norm;
mod max_pool;
mod parallel;
mod storage;
mod winograd;
mod winograd_f4;

pub use conv::{conv2d_relu, conv2d_relu_max_pool2d};
pub use feat_ex::{feat_ex, ConvLayer, FeatEx};
pub use isa::{isa, set_isa_limit, Isa, ISA_ENV};

/// Threads the fast kernels split their work over: those of the rayon pool they run in.
pub fn parallel_threads() -> usize {
    parallel::thread_count()
}
pub use batch_norm::{batch_norm_eval, batch_norm_train, BatchStatistics};
pub use layer_norm::layer_norm;
pub use max_pool::{max_pool2d, Pool2d};

/// The environment variable that selects the reference path when set to `1` or `true`.
pub const REFERENCE_OPS_ENV: &str = "DEXPRESSION_REFERENCE_OPS";

/// 0: not decided yet (read the environment), 1: fast kernels, 2: reference path.
static PATH: AtomicU8 = AtomicU8::new(0);

/// Forces the reference path (`true`) or allows the fast CPU kernels (`false`) for every
/// following call, in every thread. The default comes from [`REFERENCE_OPS_ENV`].
pub fn set_reference_ops(reference: bool) {
    PATH.store(if reference { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether the reference path is forced (see [`set_reference_ops`]).
pub fn reference_ops() -> bool {
    match PATH.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let reference = std::env::var(REFERENCE_OPS_ENV)
                .is_ok_and(|value| matches!(value.trim(), "1" | "true" | "yes"));
            set_reference_ops(reference);
            reference
        }
    }
}

/// How many times, in this process, an op copied a tensor from a GPU to the host and back because
/// no kernel of that device takes it (max pooling on the reference path, or without the `cuda`
/// feature's kernels). A training step on CUDA makes none (checked by `cuda_tests.rs`).
pub fn host_round_trips() -> usize {
    HOST_ROUND_TRIPS.load(Ordering::Relaxed)
}

static HOST_ROUND_TRIPS: AtomicUsize = AtomicUsize::new(0);

fn count_host_round_trip() {
    HOST_ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
}

/// Runs `f`, a forward of `xs`, with the pool's threads kept awake between its parallel steps
/// when `xs` is on the fast kernels and holds fewer images than there are threads (each image is
/// then spread over the threads, step by step).
pub fn with_threads_awake_for<R: Send>(
    xs: &Tensor,
    f: impl FnOnce() -> candle_core::Result<R> + Send,
) -> candle_core::Result<R> {
    let images = xs.dims().first().copied().unwrap_or(1);
    if fast_kernels_for(xs) && images < parallel::thread_count() {
        parallel::with_threads_awake(f)
    } else {
        f()
    }
}

/// Whether an op on `xs` runs on the fast kernels: CPU, f32, and the reference path not forced.
fn fast_kernels_for(xs: &Tensor) -> bool {
    let fast = xs.device().is_cpu() && xs.dtype() == DType::F32 && !reference_ops();
    if fast {
        static TUNED: std::sync::Once = std::sync::Once::new();
        TUNED.call_once(keep_freed_memory);
    }
    fast
}

/// A training step allocates and frees the same activation buffers each step. glibc hands blocks
/// of a few MiB and more back to the kernel on free, so every step faults and zeroes them again
/// page by page (measured: about 0.8 ms per MiB, more than the arithmetic of a pooling layer).
/// Serving every block from the heap and not trimming it keeps them for reuse; the resident set
/// stays at its peak between steps.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is thread-safe and the values
    // are within its documented ranges (it ignores out-of-range values and returns 0).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // Blocks above the 32 MiB limit (conv1's output is 98 MiB at batch 32) come from the heap
        // too: 12% of a training step, for about 40 MiB more peak memory.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // One arena: the worker threads' im2col buffers then reuse the blocks the main thread
        // freed instead of growing arenas of their own (about 15 MiB less peak memory).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod gradient_tests;
