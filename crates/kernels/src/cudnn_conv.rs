//! 2-D convolutions on CUDA through cuDNN, called by our own code: the forward, the input
//! gradient (backward-data) and the weight gradient (backward-filter), as candle ops. They are the
//! CUDA path of [`crate::conv2d_relu`] and [`crate::conv2d_relu_max_pool2d`] for f32 tensors once
//! a program chose [`crate::CudaConv::Cudnn`] or [`crate::CudaConv::CudnnStrict`]
//! ([`crate::set_cuda_conv`]); the default stays candle's own convolution until a GPU run shows
//! this path correct and faster (docs/gpu.md).
//!
//! Why not candle's `cudnn` feature: candle 0.11 builds the descriptors, asks cuDNN's heuristic
//! and allocates and zeroes a workspace on every forward, and has no cuDNN backward (the input
//! gradient is its naive `conv_transpose2d` kernel, the weight gradient an im2col and an fp32
//! GEMM, computed even for the network's image). Here, per thread and device:
//! - one cuDNN handle on candle's stream (handles are not thread-safe, hence per thread);
//! - per (direction, shapes, stride, padding, math) a plan: the descriptors, and the algorithm
//!   that `cudnnFind*AlgorithmEx` measured fastest on the first call (PyTorch's
//!   `cudnn.benchmark`), with the math type cuDNN measured it in;
//! - one workspace that only grows, so that steady-state steps allocate none;
//! - the input gradient only where the input is tracked (not for the network's image).
//!
//! Math: [`CudnnMath::Tf32`] leaves cuDNN its default (`CUDNN_DEFAULT_MATH`: TF32 tensor cores
//! allowed on Ampere and later, as PyTorch's default `allow_tf32 = True`), [`CudnnMath::Strict`]
//! asks for `CUDNN_FMA_MATH` (fp32 arithmetic only, as PyTorch's `allow_tf32 = False`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaStorageSlice, DeviceId};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp2, Layout, Shape, Tensor};
use cudarc::cudnn::result::{self, CudnnError};
use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut};

/// The arithmetic cuDNN may use for f32 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CudnnMath {
    /// cuDNN's default: TF32 tensor cores allowed (PyTorch's default for convolutions).
    Tf32,
    /// fp32 multiply-adds only (PyTorch's `torch.backends.cudnn.allow_tf32 = False`).
    Strict,
}

impl CudnnMath {
    fn math_type(self) -> sys::cudnnMathType_t {
        match self {
            Self::Tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            Self::Strict => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        }
    }

    /// Whether an algorithm measured in `math` keeps to this setting.
    fn admits(self, math: sys::cudnnMathType_t) -> bool {
        match self {
            Self::Tf32 => true,
            Self::Strict => !matches!(
                math,
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
                    | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
            ),
        }
    }
}

/// The most workspace the first call of a shape offers `cudnnFind*AlgorithmEx`: algorithms that
/// need more are not tried. 1 GiB, well above what DeXpression's layers need at batch 128, far
/// below an H100's memory.
const MAX_FIND_WORKSPACE: usize = 1 << 30;

/// Which of the three convolutions a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx` from `dy` and `w`.
    BackwardData,
    /// `dw` from `x` and `dy`.
    BackwardFilter,
}

/// Sizes of one convolution: input `n x c x h x w`, weight `k x c x r x r`, output
/// `n x k x oh x ow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], stride: usize, padding: usize) -> candle_core::Result<Self> {
        let (&[n, c, h, wd], &[k, wc, r, s]) = (x, w) else {
            candle_core::bail!("cuDNN conv2d: input {x:?} and weight {w:?} must be 4-D");
        };
        if wc != c || r != s || stride == 0 || h + 2 * padding < r || wd + 2 * padding < r {
            candle_core::bail!(
                "cuDNN conv2d: input {x:?}, weight {w:?}, stride {stride}, padding {padding} do not \
                 make a square-kernel convolution"
            );
        }
        let out = |side: usize| (side + 2 * padding - r) / stride + 1;
        let geometry = Self {
            x: [n, c, h, wd],
            w: [k, c, r, r],
            y: [n, k, out(h), out(wd)],
            stride,
            padding,
        };
        // cuDNN takes every size as a C int.
        for value in geometry.x.iter().chain(&geometry.w).chain(&geometry.y) {
            c_int::try_from(*value).map_err(|_| {
                candle_core::Error::Msg(format!("cuDNN conv2d: size {value} exceeds a C int"))
            })?;
        }
        Ok(geometry)
    }

    fn len(dims: [usize; 4]) -> usize {
        dims.iter().product()
    }

    fn ints(dims: [usize; 4]) -> [c_int; 4] {
        // Checked in `new`.
        dims.map(|value| value as c_int)
    }
}

/// A cuDNN error as candle's, naming the call.
fn failed(what: &'static str) -> impl Fn(CudnnError) -> candle_core::Error {
    move |err| candle_core::Error::Msg(format!("cuDNN {what}: {err}"))
}

/// A cuDNN handle, destroyed with its thread's cache.
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed only here. A failure
        // at thread exit cannot be reported and leaks nothing worth a panic.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// The four descriptors of one convolution, destroyed together; a null one was never created.
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Descriptors {
    fn new(g: &Geometry, math: CudnnMath) -> Result<Self, CudnnError> {
        let mut d = Self {
            x: null_mut(),
            w: null_mut(),
            y: null_mut(),
            conv: null_mut(),
        };
        let float = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (stride, padding) = (g.stride as c_int, g.padding as c_int);
        d.x = result::create_tensor_descriptor()?;
        d.y = result::create_tensor_descriptor()?;
        d.w = result::create_filter_descriptor()?;
        d.conv = result::create_convolution_descriptor()?;
        // SAFETY: each descriptor was just created above and is destroyed only by `drop`; the
        // sizes fit a C int (`Geometry::new`).
        unsafe {
            result::set_tensor4d_descriptor(d.x, nchw, float, Geometry::ints(g.x))?;
            result::set_tensor4d_descriptor(d.y, nchw, float, Geometry::ints(g.y))?;
            result::set_filter4d_descriptor(d.w, float, nchw, Geometry::ints(g.w))?;
            result::set_convolution2d_descriptor(
                d.conv,
                padding,
                padding,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                float,
            )?;
            result::set_convolution_math_type(d.conv, math.math_type())?;
        }
        Ok(d)
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each non-null descriptor was created by `Descriptors::new` and is destroyed only
        // here; errors on destruction cannot be acted upon.
        unsafe {
            if !self.x.is_null() {
                let _ = result::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = result::destroy_tensor_descriptor(self.y);
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

/// The algorithm a plan runs.
#[derive(Debug, Clone, Copy)]
enum Algorithm {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
    BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// Descriptors and the algorithm chosen once for one direction and shape.
struct Plan {
    descriptors: Descriptors,
    algorithm: Algorithm,
    /// Bytes of workspace the algorithm needs.
    workspace: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    direction: Direction,
    geometry: Geometry,
    math: CudnnMath,
}

/// One device's handle, workspace and plans, in one thread.
struct DeviceState {
    handle: Handle,
    /// Grows to the largest need seen and is never shrunk: steady-state steps allocate none.
    /// Replacing it frees the old one in stream order (cudarc frees on the stream), after the
    /// calls queued before that used it.
    workspace: Option<CudaSlice<u8>>,
    plans: HashMap<PlanKey, Plan>,
}

impl DeviceState {
    fn new(stream: &Arc<CudaStream>) -> candle_core::Result<Self> {
        let handle = Handle(result::create_handle().map_err(failed("create handle"))?);
        // SAFETY: the handle is valid (just created) and the stream is candle's, alive as long
        // as its device, which outlives every op queued on it; the two stream types are the same
        // CUDA stream.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(failed("set stream"))?;
        Ok(Self {
            handle,
            workspace: None,
            plans: HashMap::new(),
        })
    }

    fn grow_workspace(
        &mut self,
        stream: &Arc<CudaStream>,
        bytes: usize,
    ) -> candle_core::Result<()> {
        if bytes > self.workspace.as_ref().map_or(0, |w| w.len()) {
            // Free the old one first so that both never need to fit at once.
            self.workspace = None;
            // SAFETY: a workspace is scratch memory cuDNN writes before it reads.
            self.workspace = Some(
                unsafe { stream.alloc::<u8>(bytes) }
                    .map_err(|e| candle_core::Error::Msg(format!("cuDNN workspace: {e}")))?,
            );
        }
        Ok(())
    }
}

thread_local! {
    /// Per device, this thread's cuDNN state (handles are not thread-safe).
    static STATES: RefCell<HashMap<DeviceId, DeviceState>> = RefCell::new(HashMap::new());
}

/// Device addresses of one call's tensors: `x`, `w` and `y` (or their gradients), the output
/// being `y` for the forward, `x` for backward-data and `w` for backward-filter.
#[derive(Clone, Copy)]
struct Addresses {
    x: u64,
    w: u64,
    y: u64,
}

/// How many plans this thread holds for `device`: the tests check that a repeated shape reuses
/// its plan.
#[cfg(test)]
pub(crate) fn plan_count(device: &CudaDevice) -> usize {
    STATES.with(|states| {
        states
            .borrow()
            .get(&device.id())
            .map_or(0, |state| state.plans.len())
    })
}

/// Runs one direction of the convolution on `device`'s stream, choosing its algorithm on the
/// first call for that shape.
///
/// # Safety
/// The addresses must be live allocations on `device` of the geometry's sizes in f32 (`x` and
/// `y` NCHW, `w` KCRR), the output one not aliasing the others, kept alive (with their stream
/// guards) until the call returns.
unsafe fn run(device: &CudaDevice, key: PlanKey, addresses: Addresses) -> candle_core::Result<()> {
    let stream = device.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| candle_core::Error::Msg(format!("cuDNN: bind the CUDA context: {e}")))?;
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let state = match states.entry(device.id()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(DeviceState::new(&stream)?)
            }
        };
        if !state.plans.contains_key(&key) {
            let descriptors =
                Descriptors::new(&key.geometry, key.math).map_err(failed("create descriptors"))?;
            let wanted = largest_heuristic_workspace(state.handle.0, &descriptors, key.direction)
                .map_err(failed("query algorithms"))?
                .min(MAX_FIND_WORKSPACE);
            state.grow_workspace(&stream, wanted)?;
            let (workspace, workspace_len) = workspace_pointer(&mut state.workspace, &stream);
            // SAFETY: the caller's addresses are valid for the geometry; the workspace holds
            // `workspace_len` bytes. Find*Ex writes the output tensor, which the call below
            // overwrites.
            let (algorithm, bytes) = unsafe {
                find(
                    state.handle.0,
                    &descriptors,
                    key,
                    addresses,
                    workspace.0,
                    workspace_len,
                )
            }?;
            drop(workspace);
            state.plans.insert(
                key,
                Plan {
                    descriptors,
                    algorithm,
                    workspace: bytes,
                },
            );
        }
        let needed = state.plans.get(&key).map_or(0, |plan| plan.workspace);
        state.grow_workspace(&stream, needed)?;
        let DeviceState {
            handle,
            workspace,
            plans,
        } = state;
        let Some(plan) = plans.get(&key) else {
            candle_core::bail!("cuDNN conv2d: plan missing after its creation");
        };
        let (workspace, workspace_len) = workspace_pointer(workspace, &stream);
        // SAFETY: as for the caller; the plan's descriptors match the addresses' geometry (the
        // key holds it) and the workspace holds at least the plan's need.
        unsafe { execute(handle.0, plan, addresses, workspace.0, workspace_len) }
            .map_err(failed("convolution"))
    })
}

/// The workspace's address (null when there is none) with the guard that orders its use on the
/// stream, and its length in bytes.
fn workspace_pointer<'a>(
    workspace: &'a mut Option<CudaSlice<u8>>,
    stream: &'a Arc<CudaStream>,
) -> (WorkspaceGuard<'a>, usize) {
    match workspace {
        Some(buffer) if !buffer.is_empty() => {
            let len = buffer.len();
            let (address, guard) = buffer.device_ptr_mut(stream);
            (WorkspaceGuard(address as *mut c_void, Some(guard)), len)
        }
        _ => (WorkspaceGuard(null_mut(), None), 0),
    }
}

/// A workspace address and cudarc's guard that records its use on the stream when dropped.
struct WorkspaceGuard<'a>(
    *mut c_void,
    #[allow(dead_code)] Option<cudarc::driver::SyncOnDrop<'a>>,
);

/// The most workspace any algorithm that cuDNN's heuristic lists for this convolution needs.
fn largest_heuristic_workspace(
    handle: sys::cudnnHandle_t,
    d: &Descriptors,
    direction: Direction,
) -> Result<usize, CudnnError> {
    let mut returned: c_int = 0;
    // As in `execute`: the same arguments in every direction, x, w and y in different parts.
    macro_rules! largest_listed {
        ($get:path, $perf:ty, $count:expr, $first:ident, $second:ident => $out:ident) => {{
            let mut perf: [$perf; $count] = std::mem::zeroed();
            $get(
                handle,
                d.$first,
                d.$second,
                d.conv,
                d.$out,
                $count as c_int,
                &mut returned,
                perf.as_mut_ptr(),
            )?;
            Ok(largest(perf.iter().map(|p| (p.status, p.memory)), returned))
        }};
    }
    // SAFETY (all three): the handle and descriptors are valid; the arrays hold as many results
    // as requested; all-zero bytes are a valid perf struct (algorithm 0, success, default math).
    unsafe {
        match direction {
            Direction::Forward => largest_listed!(
                result::get_convolution_forward_algorithm,
                sys::cudnnConvolutionFwdAlgoPerf_t,
                FWD_ALGOS,
                x, w => y
            ),
            Direction::BackwardData => largest_listed!(
                result::get_convolution_backward_data_algorithm,
                sys::cudnnConvolutionBwdDataAlgoPerf_t,
                BWD_DATA_ALGOS,
                w, y => x
            ),
            Direction::BackwardFilter => largest_listed!(
                result::get_convolution_backward_filter_algorithm,
                sys::cudnnConvolutionBwdFilterAlgoPerf_t,
                BWD_FILTER_ALGOS,
                x, y => w
            ),
        }
    }
}

const FWD_ALGOS: usize = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
const BWD_DATA_ALGOS: usize =
    sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize;
const BWD_FILTER_ALGOS: usize =
    sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as usize;

/// The largest memory among the first `returned` successful results.
fn largest(results: impl Iterator<Item = (sys::cudnnStatus_t, usize)>, returned: c_int) -> usize {
    results
        .take(usize::try_from(returned).unwrap_or(0))
        .filter(|(status, _)| *status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
        .map(|(_, memory)| memory)
        .max()
        .unwrap_or(0)
}

/// Times every algorithm that fits the workspace on the real tensors (`cudnnFind*AlgorithmEx`)
/// and returns the fastest that keeps to the key's math, with its workspace need; sets the
/// descriptor's math type to the one it was measured in (as PyTorch does).
///
/// # Safety
/// As [`run`]; `workspace` holds `workspace_len` bytes (or is null with 0).
unsafe fn find(
    handle: sys::cudnnHandle_t,
    d: &Descriptors,
    key: PlanKey,
    a: Addresses,
    workspace: *mut c_void,
    workspace_len: usize,
) -> candle_core::Result<(Algorithm, usize)> {
    let mut returned: c_int = 0;
    // As in `execute`: the same arguments in every direction, x, w and y in different parts.
    macro_rules! fastest {
        ($find:path, $perf:ty, $count:expr, $algorithm:path, $what:literal,
         $first:ident, $second:ident => $out:ident) => {{
            // SAFETY: all-zero bytes are a valid perf struct; the rest as the caller promises.
            let mut perf: [$perf; $count] = unsafe { std::mem::zeroed() };
            unsafe {
                $find(
                    handle,
                    d.$first,
                    a.$first as *mut c_void,
                    d.$second,
                    a.$second as *mut c_void,
                    d.conv,
                    d.$out,
                    a.$out as *mut c_void,
                    $count as c_int,
                    &mut returned,
                    perf.as_mut_ptr(),
                    workspace,
                    workspace_len,
                )
            }
            .result()
            .map_err(failed($what))?;
            pick(&perf, returned, key.math, |p| (p.status, p.mathType))
                .map(|p| ($algorithm(p.algo), p.memory, p.mathType))
        }};
    }
    let chosen = match key.direction {
        Direction::Forward => fastest!(
            sys::cudnnFindConvolutionForwardAlgorithmEx,
            sys::cudnnConvolutionFwdAlgoPerf_t,
            FWD_ALGOS,
            Algorithm::Forward,
            "find forward algorithm",
            x, w => y
        ),
        Direction::BackwardData => fastest!(
            sys::cudnnFindConvolutionBackwardDataAlgorithmEx,
            sys::cudnnConvolutionBwdDataAlgoPerf_t,
            BWD_DATA_ALGOS,
            Algorithm::BackwardData,
            "find backward-data algorithm",
            w, y => x
        ),
        Direction::BackwardFilter => fastest!(
            sys::cudnnFindConvolutionBackwardFilterAlgorithmEx,
            sys::cudnnConvolutionBwdFilterAlgoPerf_t,
            BWD_FILTER_ALGOS,
            Algorithm::BackwardFilter,
            "find backward-filter algorithm",
            x, y => w
        ),
    };
    let Some((algorithm, memory, math_type)) = chosen else {
        candle_core::bail!(
            "cuDNN conv2d: no {:?} algorithm for {:?} in {:?} math",
            key.direction,
            key.geometry,
            key.math
        );
    };
    // SAFETY: the descriptor is valid (owned by `d`).
    unsafe { result::set_convolution_math_type(d.conv, math_type) }
        .map_err(failed("set math type"))?;
    Ok((algorithm, memory))
}

/// The first (fastest: cuDNN sorts by time) successful result of `returned` that keeps to `math`.
fn pick<P>(
    perf: &[P],
    returned: c_int,
    math: CudnnMath,
    status_and_math: impl Fn(&P) -> (sys::cudnnStatus_t, sys::cudnnMathType_t),
) -> Option<&P> {
    perf.iter()
        .take(usize::try_from(returned).unwrap_or(0))
        .find(|p| {
            let (status, measured) = status_and_math(p);
            status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && math.admits(measured)
        })
}

/// Queues the plan's convolution on the handle's stream: `alpha = 1`, `beta = 0` (the output is
/// overwritten).
///
/// # Safety
/// As [`run`]; the plan's descriptors describe the addresses and `workspace` holds at least
/// `plan.workspace` bytes.
unsafe fn execute(
    handle: sys::cudnnHandle_t,
    plan: &Plan,
    a: Addresses,
    workspace: *mut c_void,
    workspace_len: usize,
) -> Result<(), CudnnError> {
    let (alpha, beta) = (1f32, 0f32);
    let alpha = &alpha as *const f32 as *const c_void;
    let beta = &beta as *const f32 as *const c_void;
    let d = &plan.descriptors;
    // The three directions' functions take the same arguments: two inputs, then the output,
    // each as (descriptor, address); only which of x, w and y plays which part differs.
    macro_rules! convolve {
        ($run:path, $algo:expr, $first:ident, $second:ident => $out:ident) => {
            $run(
                handle,
                alpha,
                d.$first,
                a.$first as *const c_void,
                d.$second,
                a.$second as *const c_void,
                d.conv,
                $algo,
                workspace,
                workspace_len,
                beta,
                d.$out,
                a.$out as *mut c_void,
            )
        };
    }
    // SAFETY: as the caller promises.
    unsafe {
        match plan.algorithm {
            Algorithm::Forward(algo) => convolve!(result::convolution_forward, algo, x, w => y),
            Algorithm::BackwardData(algo) => {
                convolve!(result::convolution_backward_data, algo, w, y => x)
            }
            Algorithm::BackwardFilter(algo) => {
                convolve!(result::convolution_backward_filter, algo, x, y => w)
            }
        }
    }
}

/// The contiguous f32 data of a CUDA storage.
fn f32_view<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, f32>> {
    let CudaStorageSlice::F32(slice) = &storage.slice else {
        candle_core::bail!(
            "cuDNN conv2d: {what} must be f32, not {:?}",
            storage.dtype()
        );
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("cuDNN conv2d: {what} must be contiguous"),
    }
}

/// Allocates the output of one direction and runs it: `a` and `b` are the two inputs in the
/// order (x, w), (dy, w) or (x, dy), the output has `out_len` values.
fn launch(
    key: PlanKey,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    out_len: usize,
) -> candle_core::Result<CudaStorage> {
    let device = a.0.device().clone();
    let stream = device.cuda_stream();
    let first = f32_view(a.0, a.1, "first operand")?;
    let second = f32_view(b.0, b.1, "second operand")?;
    // SAFETY: cuDNN writes every output value (beta = 0).
    let mut out = unsafe { device.alloc::<f32>(out_len) }?;
    {
        let (first, _first_guard) = first.device_ptr(&stream);
        let (second, _second_guard) = second.device_ptr(&stream);
        let (output, _output_guard) = out.device_ptr_mut(&stream);
        let addresses = match key.direction {
            Direction::Forward => Addresses {
                x: first,
                w: second,
                y: output,
            },
            Direction::BackwardData => Addresses {
                x: output,
                w: second,
                y: first,
            },
            Direction::BackwardFilter => Addresses {
                x: first,
                w: output,
                y: second,
            },
        };
        // SAFETY: the views were checked contiguous f32 of the geometry's sizes by the ops (the
        // layouts' dims are the key's), the output is a fresh allocation, and the guards live
        // until after the call.
        unsafe { run(&device, key, addresses) }?;
    }
    Ok(CudaStorage {
        slice: CudaStorageSlice::F32(out),
        device,
    })
}

/// `conv2d(x, w)` without bias through cuDNN (the forward), with its backward through cuDNN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CudnnConv2d {
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    pub(crate) math: CudnnMath,
}

impl CudnnConv2d {
    fn key(&self, direction: Direction, geometry: Geometry) -> PlanKey {
        PlanKey {
            direction,
            geometry,
            math: self.math,
        }
    }
}

fn cuda_only<T>() -> candle_core::Result<T> {
    candle_core::bail!("the cuDNN convolution runs on CUDA tensors only")
}

impl CustomOp2 for CudnnConv2d {
    fn name(&self) -> &'static str {
        "dexpression-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cuda_only()
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        w: &CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = Geometry::new(x_layout.dims(), w_layout.dims(), self.stride, self.padding)?;
        let out = launch(
            self.key(Direction::Forward, g),
            (x, x_layout),
            (w, w_layout),
            Geometry::len(g.y),
        )?;
        Ok((out, Shape::from(g.y.to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        // The network's image needs no gradient: skip the input gradient for it.
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                &w,
                &CudnnConv2dBackwardData {
                    conv: *self,
                    x_dims: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad,
                &CudnnConv2dBackwardFilter {
                    conv: *self,
                    w_dims: w.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The input gradient of [`CudnnConv2d`]: `(dy, w) -> dx`.
struct CudnnConv2dBackwardData {
    conv: CudnnConv2d,
    x_dims: Vec<usize>,
}

impl CustomOp2 for CudnnConv2dBackwardData {
    fn name(&self) -> &'static str {
        "dexpression-cudnn-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cuda_only()
    }

    fn cuda_fwd(
        &self,
        dy: &CudaStorage,
        dy_layout: &Layout,
        w: &CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = Geometry::new(
            &self.x_dims,
            w_layout.dims(),
            self.conv.stride,
            self.conv.padding,
        )?;
        if dy_layout.dims() != g.y {
            candle_core::bail!(
                "cuDNN conv2d backward: gradient {:?} for an output of {:?}",
                dy_layout.dims(),
                g.y
            );
        }
        let out = launch(
            self.conv.key(Direction::BackwardData, g),
            (dy, dy_layout),
            (w, w_layout),
            Geometry::len(g.x),
        )?;
        Ok((out, Shape::from(g.x.to_vec())))
    }
}

/// The weight gradient of [`CudnnConv2d`]: `(x, dy) -> dw`.
struct CudnnConv2dBackwardFilter {
    conv: CudnnConv2d,
    w_dims: Vec<usize>,
}

impl CustomOp2 for CudnnConv2dBackwardFilter {
    fn name(&self) -> &'static str {
        "dexpression-cudnn-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cuda_only()
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        dy: &CudaStorage,
        dy_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = Geometry::new(
            x_layout.dims(),
            &self.w_dims,
            self.conv.stride,
            self.conv.padding,
        )?;
        if dy_layout.dims() != g.y {
            candle_core::bail!(
                "cuDNN conv2d backward: gradient {:?} for an output of {:?}",
                dy_layout.dims(),
                g.y
            );
        }
        let out = launch(
            self.conv.key(Direction::BackwardFilter, g),
            (x, x_layout),
            (dy, dy_layout),
            Geometry::len(g.w),
        )?;
        Ok((out, Shape::from(g.w.to_vec())))
    }
}

/// `conv2d(xs, weight)` (no bias) through cuDNN in `math`, with its backward through cuDNN.
pub(crate) fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    math: CudnnMath,
) -> candle_core::Result<Tensor> {
    xs.contiguous()?.apply_op2(
        &weight.contiguous()?,
        CudnnConv2d {
            stride,
            padding,
            math,
        },
    )
}
