//! Fast CPU kernels (and, with the `cuda` feature, CUDA kernels) for the DeXpression network's
//! layers, as candle ops with their backward, behind plain functions.
//!
//! Each op here exists because candle 0.11's own version falls short for DeXpression:
//! - [`max_pool2d`]: candle's has no padding and no backward when kernel and stride differ;
//! - [`layer_norm`]: candle-nn's fused LayerNorm has no backward (gradients silently stop) and
//!   normalises only the last dimension, where the port normalises over `[C, H, W]`;
//! - [`conv2d_relu`] and [`conv2d_relu_max_pool2d`]: candle's CPU conv backward is a naive loop and
//!   computes the input gradient even for the network input;
//! - [`batch_norm_train`] and [`batch_norm_eval`]: composed of candle's broadcast ops, BatchNorm
//!   made several full passes and three-dimension reductions in its backward;
//! - [`local_response_norm`]: candle has none (the paper's DeXpression normalises with it where
//!   the port has a LayerNorm);
//! - [`feat_ex`]: for inference, one FeatEx block as one op, its intermediates in per-thread
//!   buffers.
//!
//! Two paths: on the CPU in f32, fast kernels (im2col and the `gemm` crate for convolutions with
//! the bias and ReLU fused, Winograd's algorithm for the 3x3 ones' gradients and inference,
//! one-pass LayerNorm) are used by default, their vector extensions chosen at run time
//! ([`Isa`]); the reference path composes candle tensor ops and serves every other device and
//! dtype, except that with the `cuda` feature max pooling and LayerNorm run CUDA kernels of their
//! own on the GPU (`cuda.rs`), and convolutions run through cuDNN where a program chose it
//! ([`set_cuda_conv`], `cudnn_conv.rs`; candle's convolution by default). The only op that copies a GPU tensor to the host is max pooling
//! where no GPU kernel takes it; [`host_round_trips`] counts such copies.
//!
//! The crate knows nothing of the network it serves (the model crate composes the ops) and never
//! changes the process on its own: it reads no environment variable, tunes no allocator and keeps
//! no thread spinning unless its caller asks. A program chooses for itself with
//! [`KernelSettings`] (the reference path, a cap on the vector extensions, glibc's allocator
//! tuned for repeated training steps, the convolution of CUDA tensors) and with [`with_threads_awake_for`] around a small forward.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use dexpression_kernels::{max_pool2d, Pool2d};
//!
//! # fn main() -> candle_core::Result<()> {
//! let xs = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
//! let pooled = max_pool2d(&xs, Pool2d { kernel: 3, stride: 2, padding: 1 , ceil_mode: false})?;
//! assert_eq!(pooled.flatten_all()?.to_vec1::<f32>()?, [5., 7., 13., 15.]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};

mod adam;
mod batch_norm;
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_train;
#[cfg(feature = "cuda")]
mod cudnn_conv;
mod dropout;
mod fast_conv;
mod fast_conv_pool;
mod fast_layer_norm;
mod feat_ex;
mod isa;
mod layer_norm;
mod lrn;
mod max_pool;
mod parallel;
mod pooled_weight_grad;
mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod winograd;
mod winograd_batch;
#[cfg(test)]
mod winograd_f2_oracle;
mod winograd_f4;
mod winograd_f6;
mod winograd_narrow;

pub use adam::{adam_update, AdamStep};
pub use conv::{conv2d_relu, conv2d_relu_max_pool2d};
pub use dropout::{dropout, DropoutKey};
pub use feat_ex::{feat_ex, ConvLayer, FeatEx};
pub use isa::{isa, set_isa_limit, Isa, ISA_ENV};

/// Threads the fast kernels split their work over: those of the rayon pool they run in.
pub fn parallel_threads() -> usize {
    parallel::thread_count()
}
pub use batch_norm::{batch_norm_eval, batch_norm_train, BatchStatistics};
pub use layer_norm::layer_norm;
pub use lrn::{local_response_norm, LocalResponseNorm};
pub use max_pool::{max_pool2d, Pool2d};
pub use winograd_f4::WeightCache;
/// candle's environment variable for the size of its own thread pool, the one its elementwise
/// ops on large tensors run on ([`serial_candle_elementwise`]).
pub const CANDLE_THREADS_ENV: &str = "CANDLE_NUM_THREADS";

/// The environment variable that [`KernelSettings::from_env`] reads to select the reference path
/// (`1`, `true` or `yes`).
pub const REFERENCE_OPS_ENV: &str = "DEXPRESSION_REFERENCE_OPS";

/// The environment variable that [`KernelSettings::from_env`] reads to choose the convolution of
/// CUDA tensors: `candle` (the default), `cudnn` or `cudnn-strict` ([`CudaConv`]).
pub const CUDA_CONV_ENV: &str = "DEXPRESSION_CUDA_CONV";

/// Which convolution [`conv2d_relu`] and [`conv2d_relu_max_pool2d`] run on a CUDA tensor in f32
/// (with the `cuda` feature; elsewhere the choice has no effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudaConv {
    /// candle's own convolution (its im2col and cuBLAS, or cuDNN with candle's `cudnn` feature),
    /// then bias and ReLU as tensor ops. The default until a GPU run shows the cuDNN path correct
    /// and faster (docs/gpu.md).
    #[default]
    Candle,
    /// This crate's cuDNN convolution (forward, input and weight gradients; the algorithm chosen
    /// once per shape by timing, as PyTorch's `cudnn.benchmark`), with cuDNN's default math: TF32
    /// tensor cores allowed, as PyTorch's default. Needs libcudnn.so.9 at run time.
    Cudnn,
    /// As [`CudaConv::Cudnn`] with fp32 arithmetic only (PyTorch's
    /// `torch.backends.cudnn.allow_tf32 = False`).
    CudnnStrict,
}

impl CudaConv {
    /// Every choice, in the order of their names.
    pub const ALL: [Self; 3] = [Self::Candle, Self::Cudnn, Self::CudnnStrict];

    /// The name [`CUDA_CONV_ENV`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Cudnn => "cudnn",
            Self::CudnnStrict => "cudnn-strict",
        }
    }

    /// The choice of that name (ASCII case and surrounding blanks ignored).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|conv| conv.name().eq_ignore_ascii_case(name))
    }
}

/// 0: candle's convolution on CUDA, 1: cuDNN with TF32, 2: cuDNN in strict fp32.
static CUDA_CONV: AtomicU8 = AtomicU8::new(0);

/// Chooses the convolution of CUDA tensors for every following call, in every thread: a
/// process-wide switch that a program sets at start-up (or a benchmark between runs); the crate
/// never sets it by itself.
pub fn set_cuda_conv(conv: CudaConv) {
    let code = match conv {
        CudaConv::Candle => 0,
        CudaConv::Cudnn => 1,
        CudaConv::CudnnStrict => 2,
    };
    CUDA_CONV.store(code, Ordering::Relaxed);
}

/// The convolution CUDA tensors take (see [`set_cuda_conv`]).
pub fn cuda_conv() -> CudaConv {
    match CUDA_CONV.load(Ordering::Relaxed) {
        1 => CudaConv::Cudnn,
        2 => CudaConv::CudnnStrict,
        _ => CudaConv::Candle,
    }
}

/// The cuDNN math for a convolution of `xs` when our cuDNN path takes it: a CUDA tensor in f32,
/// the path chosen, and the reference path not forced.
#[cfg(feature = "cuda")]
fn cudnn_conv_for(xs: &Tensor) -> Option<cudnn_conv::CudnnMath> {
    if !xs.device().is_cuda() || xs.dtype() != DType::F32 || reference_ops() {
        return None;
    }
    match cuda_conv() {
        CudaConv::Candle => None,
        CudaConv::Cudnn => Some(cudnn_conv::CudnnMath::Tf32),
        CudaConv::CudnnStrict => Some(cudnn_conv::CudnnMath::Strict),
    }
}

/// 0: fast kernels where they apply (the default), 1: the reference path everywhere.
static PATH: AtomicU8 = AtomicU8::new(0);

/// Forces the reference path (`true`) or allows the fast CPU kernels (`false`, the default) for
/// every following call, in every thread: a process-wide switch for programs and benchmarks that
/// compare the paths.
pub fn set_reference_ops(reference: bool) {
    PATH.store(u8::from(reference), Ordering::Relaxed);
}

/// Whether the reference path is forced (see [`set_reference_ops`]).
pub fn reference_ops() -> bool {
    PATH.load(Ordering::Relaxed) == 1
}

/// Process-wide choices about the kernels that belong to a program, not to a library: the crate
/// makes none of them on its own. A program sets them once at start-up with [`Self::apply`]
/// (the dexpression command line applies [`Self::from_env`]); a program that sets nothing gets
/// the fast kernels at the CPU's widest vector extensions and its allocator as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelSettings {
    /// Compose candle's tensor ops instead of the fast kernels (comparisons, benchmarks).
    pub reference_ops: bool,
    /// Use at most these vector extensions (`None`: the CPU's widest).
    pub isa_limit: Option<Isa>,
    /// Tune glibc's allocator for repeated training steps ([`tune_allocator`]).
    pub tune_allocator: bool,
    /// The convolution of CUDA tensors ([`set_cuda_conv`]).
    pub cuda_conv: CudaConv,
    /// Run candle's own elementwise ops on the calling thread ([`serial_candle_elementwise`]).
    pub serial_candle_elementwise: bool,
}

impl KernelSettings {
    /// The settings named by [`REFERENCE_OPS_ENV`], [`ISA_ENV`] and [`CUDA_CONV_ENV`], with the
    /// allocator tuned and candle's elementwise ops serial (what a training or inference program
    /// wants). An unknown ISA or convolution name is an error naming the known ones.
    pub fn from_env() -> Result<Self, String> {
        let reference_ops = std::env::var(REFERENCE_OPS_ENV)
            .is_ok_and(|value| matches!(value.trim(), "1" | "true" | "yes"));
        let isa_limit = match std::env::var(ISA_ENV) {
            Ok(name) if !name.trim().is_empty() => {
                Some(Isa::from_name(&name).ok_or_else(|| {
                    let known: Vec<_> = Isa::ALL.iter().map(|isa| isa.name()).collect();
                    format!("{ISA_ENV}={name}: not one of {}", known.join(", "))
                })?)
            }
            _ => None,
        };
        let cuda_conv = match std::env::var(CUDA_CONV_ENV) {
            Ok(name) if !name.trim().is_empty() => CudaConv::from_name(&name).ok_or_else(|| {
                let known: Vec<_> = CudaConv::ALL.iter().map(|conv| conv.name()).collect();
                format!("{CUDA_CONV_ENV}={name}: not one of {}", known.join(", "))
            })?,
            _ => CudaConv::Candle,
        };
        Ok(Self {
            reference_ops,
            isa_limit,
            tune_allocator: true,
            cuda_conv,
            serial_candle_elementwise: true,
        })
    }

    /// Applies the settings to this process; returns the vector extensions now in use. Call it
    /// at start-up, before other threads and before any tensor op: candle sizes its pool at its
    /// first large elementwise op.
    pub fn apply(&self) -> Isa {
        set_reference_ops(self.reference_ops);
        set_cuda_conv(self.cuda_conv);
        if self.tune_allocator {
            tune_allocator();
        }
        if self.serial_candle_elementwise {
            serial_candle_elementwise();
        }
        set_isa_limit(self.isa_limit)
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

/// Runs `f`, a forward of `xs`, with the current rayon pool's threads kept awake (spinning)
/// between its parallel steps when `xs` is on the fast kernels. A forward is twenty-odd parallel
/// steps, and waking sleeping threads at each costs tens of microseconds: more than a tenth of a
/// batch-1 inference, and about a tenth of a batch of 32 at 48 px (alternating pairs, see
/// docs/performance.md). The threads spin only for the duration of `f`; a panic inside releases
/// them. Worth it when the pool is the program's own; a program that shares its pool with other
/// work may prefer plain `f()`.
pub fn with_threads_awake_for<R: Send>(
    xs: &Tensor,
    f: impl FnOnce() -> candle_core::Result<R> + Send,
) -> candle_core::Result<R> {
    if fast_kernels_for(xs) {
        parallel::with_threads_awake(f)
    } else {
        f()
    }
}

/// Runs `f` (a whole training step, say: forward, backward and the optimiser's update) with the
/// current rayon pool's threads kept awake (spinning) between its parallel steps, whatever the
/// batch. At small input sides a training step is some forty parallel steps of well under a
/// millisecond each, and a sleeping thread takes tens of microseconds to wake at each; the serial
/// parts between them (the autograd graph, allocation) then cost a spinning thread instead. For a
/// program that owns its pool (the command line's `train` and `bench`); the crate never does this
/// unasked. A panic inside releases the threads.
pub fn with_threads_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    parallel::with_threads_awake(f)
}

/// Whether an op on `xs` runs on the fast kernels: CPU, f32, and the reference path not forced.
fn fast_kernels_for(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && !reference_ops()
}

/// Tunes a CUDA device for a program that repeats training or inference steps; returns whether
/// it did anything (`false` for the CPU or without the `cuda` feature).
///
/// - Freed device memory stays in the device's memory pool (its release threshold at the
///   maximum), as PyTorch's caching allocator keeps it: candle allocates every activation with
///   `cuMemAllocAsync`, and with the default threshold of 0 the pool hands its memory back to the
///   driver at each synchronisation (a step synchronises when it reads its loss), so every step
///   maps it again.
/// - Tensors allocated on `device` from now on create no CUDA events: cudarc creates two per
///   allocation, but uses them only to order several streams, and candle's device runs on one.
///
/// The pool is the device's default pool, shared by the whole process (other libraries on the
/// same GPU keep their freed memory too), so the crate never calls it by itself.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn tune_cuda_device(device: &Device) -> candle_core::Result<bool> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        use candle_core::cuda_backend::WrapErr;
        let stream = cuda.cuda_stream();
        let context = stream.context();
        context.bind_to_thread().w()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut threshold = u64::MAX;
        // SAFETY: the context is current on this thread; `pool` and `threshold` are valid for the
        // calls, which only read `threshold` and write `pool`.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device())
                .result()
                .w()?;
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .result()
            .w()?;
            // SAFETY: candle runs this device's work on one stream per host thread and cudarc
            // orders streams with these events only once a second stream of the context exists
            // (`is_managing_stream_synchronization`); without events it orders nothing either way.
            cuda.disable_event_tracking();
        }
        return Ok(true);
    }
    Ok(false)
}

/// Makes candle run its elementwise ops on the calling thread, by setting [`CANDLE_THREADS_ENV`]
/// to 1 unless the environment already sets it; returns whether it set it. Call it at start-up,
/// before other threads exist and before any tensor op.
///
/// candle spreads an elementwise op on 64Ki values or more (in a training step: the sum of the
/// two gradients of a FeatEx block's input, which both its branches read) over a thread pool of
/// its own, beside rayon's pool that the fast kernels run on. With as many threads in each pool
/// as cores, candle's worker competes for a core with a kernel thread, and the op waits for it;
/// the worker then spins for a while after each op. With those ops on the calling thread,
/// training steps alternating in one process took less time: 1.036 and 1.057 times at 48 px
/// (medians of 40 pairs), 1.023 and 1.030 at 96, 1.047 at 224 (Intel Xeon, 2 vCPUs;
/// docs/performance.md). It changes a process-wide setting of candle's, so the crate never calls
/// it by itself.
pub fn serial_candle_elementwise() -> bool {
    if std::env::var_os(CANDLE_THREADS_ENV).is_some() {
        return false;
    }
    std::env::set_var(CANDLE_THREADS_ENV, "1");
    true
}

/// Tunes glibc's allocator (process-wide) for programs that repeat training steps; returns
/// whether it did (only on Linux with glibc).
///
/// A training step allocates and frees the same activation buffers each step. glibc hands blocks
/// of a few MiB and more back to the kernel on free, so every step faults and zeroes them again
/// page by page (measured: about 0.8 ms per MiB, more than the arithmetic of a pooling layer).
/// Serving every block from the heap and not trimming it keeps them for reuse; the resident set
/// stays at its peak between steps. It changes the whole process's allocator, so the crate never
/// calls it by itself.
pub fn tune_allocator() -> bool {
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
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
#[cfg(all(test, feature = "cuda"))]
mod cuda_train_tests;
#[cfg(all(test, feature = "cuda"))]
mod cudnn_conv_tests;
#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod gradient_tests;

#[cfg(test)]
mod settings_tests {
    #[test]
    fn candle_elementwise_ops_go_serial_unless_the_environment_chose() {
        let before = std::env::var_os(super::CANDLE_THREADS_ENV);
        assert_eq!(super::serial_candle_elementwise(), before.is_none());
        let after = std::env::var_os(super::CANDLE_THREADS_ENV);
        match before {
            None => assert_eq!(after.as_deref(), Some(std::ffi::OsStr::new("1"))),
            Some(chosen) => assert_eq!(after, Some(chosen), "the environment's choice kept"),
        }
        assert!(!super::serial_candle_elementwise(), "set once, then left");
    }
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
