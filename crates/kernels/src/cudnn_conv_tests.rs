//! The cuDNN convolution (cudnn_conv.rs) against the CPU's f64 reference: forward, input gradient
//! and weight gradient, at DeXpression's three kinds of convolution (conv1's 7x7 stride 2 on one
//! channel, the 1x1 reductions, the 3x3 branches), in both math modes.
//!
//! They need a CUDA GPU (and libcudnn.so.9), so they are `#[ignore]`d; `xtask/gpu-check.sh` runs
//! them (`kernel-tests --ignored --test-threads 1 cuda_`). Without a GPU, `--ignored` makes them
//! fail, never pass.
//!
//! Tolerances, as the largest absolute difference over the largest absolute reference value:
//! - strict fp32 (`CUDNN_FMA_MATH`): 1e-5. The reductions are at most 96 x 3 x 3 = 864 products
//!   of values in [-1, 1), summed in f32 in cuDNN's order: a few f32 roundings of the result;
//! - TF32 (cuDNN's default math): 5e-3. TF32 keeps 10 bits of each operand's mantissa (a relative
//!   rounding of up to 2^-11 per operand), and the errors of the products add up about as the
//!   square root of their count.

use candle_core::{DType, Device, Var};

use super::cudnn_conv::{conv2d, plan_count, CudnnMath};
use super::testing::{gpu, host_values as host, relative_error, seeded_tensor as tensor};

fn tolerance(math: CudnnMath) -> f64 {
    match math {
        CudnnMath::Strict => 1e-5,
        CudnnMath::Tf32 => 5e-3,
    }
}

/// Checks the forward and both gradients of one convolution against candle's CPU convolution
/// in f64, the loss being `sum(y * r)` for a fixed random `r`.
fn check(x_dims: [usize; 4], w_dims: [usize; 4], stride: usize, padding: usize, math: CudnnMath) {
    let device = gpu();
    let cpu = Device::Cpu;
    let x_cpu = tensor(&x_dims, 1, &cpu).to_dtype(DType::F64).expect("f64");
    let w_cpu = tensor(&w_dims, 2, &cpu).to_dtype(DType::F64).expect("f64");
    let x_ref = Var::from_tensor(&x_cpu).expect("var");
    let w_ref = Var::from_tensor(&w_cpu).expect("var");
    let y_ref = x_ref
        .as_tensor()
        .conv2d(w_ref.as_tensor(), padding, stride, 1, 1)
        .expect("reference conv");
    let r = tensor(y_ref.dims(), 3, &cpu);
    let grads_ref = (&y_ref * r.to_dtype(DType::F64).expect("f64"))
        .and_then(|t| t.sum_all())
        .and_then(|loss| loss.backward())
        .expect("reference backward");

    let x = Var::from_tensor(
        &x_cpu
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&device))
            .expect("x"),
    )
    .expect("var");
    let w = Var::from_tensor(
        &w_cpu
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&device))
            .expect("w"),
    )
    .expect("var");
    let y = conv2d(x.as_tensor(), w.as_tensor(), stride, padding, math).expect("cuDNN forward");
    assert_eq!(y.dims(), y_ref.dims());
    let grads = (&y * r.to_device(&device).expect("r"))
        .and_then(|t| t.sum_all())
        .and_then(|loss| loss.backward())
        .expect("cuDNN backward");
    let dx = grads.get(x.as_tensor()).expect("an input gradient");
    let dw = grads.get(w.as_tensor()).expect("a weight gradient");
    assert!(
        dx.device().is_cuda() && dw.device().is_cuda(),
        "gradients left the GPU"
    );
    let dx_ref = grads_ref.get(x_ref.as_tensor()).expect("reference dx");
    let dw_ref = grads_ref.get(w_ref.as_tensor()).expect("reference dw");
    let tol = tolerance(math);
    for (what, actual, reference) in [
        ("forward", &y, &y_ref),
        ("input gradient", dx, dx_ref),
        ("weight gradient", dw, dw_ref),
    ] {
        let err = relative_error(actual, reference);
        assert!(
            err <= tol,
            "{what} of x {x_dims:?} * w {w_dims:?} (stride {stride}, padding {padding}, {math:?}): \
             relative error {err:e} > {tol:e}"
        );
    }
}

const CONV1: ([usize; 4], [usize; 4], usize, usize) = ([2, 1, 40, 40], [64, 1, 7, 7], 2, 3);
const REDUCE: ([usize; 4], [usize; 4], usize, usize) = ([3, 64, 14, 14], [96, 64, 1, 1], 1, 0);
const BRANCH: ([usize; 4], [usize; 4], usize, usize) = ([2, 96, 14, 14], [208, 96, 3, 3], 1, 1);

#[test]
#[ignore = "needs a CUDA GPU and libcudnn (run with --ignored on a GPU machine)"]
fn cuda_cudnn_conv_matches_the_f64_reference_strict() {
    for (x, w, stride, padding) in [CONV1, REDUCE, BRANCH] {
        check(x, w, stride, padding, CudnnMath::Strict);
    }
}

#[test]
#[ignore = "needs a CUDA GPU and libcudnn (run with --ignored on a GPU machine)"]
fn cuda_cudnn_conv_matches_the_f64_reference_tf32() {
    for (x, w, stride, padding) in [CONV1, REDUCE, BRANCH] {
        check(x, w, stride, padding, CudnnMath::Tf32);
    }
}

/// The network's image is not tracked: no input gradient, the weight's still right; a second
/// call of the same shapes adds no plan (the algorithm is chosen once).
#[test]
#[ignore = "needs a CUDA GPU and libcudnn (run with --ignored on a GPU machine)"]
fn cuda_cudnn_conv_skips_the_untracked_input_and_reuses_its_plans() {
    let device = gpu();
    // A shape no other test uses: the plans are per thread, and the tests may share one.
    let (x_dims, w_dims, stride, padding) = ([1, 1, 24, 24], [64, 1, 7, 7], 2, 3);
    let x = tensor(&x_dims, 4, &device);
    let cuda = device.as_cuda_device().expect("a CUDA device");
    let before = plan_count(cuda);
    let w = Var::from_tensor(&tensor(&w_dims, 5, &device)).expect("var");
    let step = || {
        conv2d(&x, w.as_tensor(), stride, padding, CudnnMath::Strict)
            .and_then(|y| y.sum_all())
            .and_then(|loss| loss.backward())
            .expect("forward and backward")
    };
    let grads = step();
    assert!(
        grads.get(&x).is_none(),
        "an input gradient for an untracked input"
    );
    let dw = grads.get(w.as_tensor()).expect("a weight gradient").clone();
    assert_eq!(
        plan_count(cuda),
        before + 2,
        "one forward and one backward-filter plan, no backward-data one"
    );
    let again = step();
    assert_eq!(
        plan_count(cuda),
        before + 2,
        "a repeated shape adds no plan"
    );
    let dw_again = again.get(w.as_tensor()).expect("a weight gradient");
    assert_eq!(
        host(&dw),
        host(dw_again),
        "the same plan gives the same result"
    );

    let reference = x
        .to_device(&Device::Cpu)
        .and_then(|x| x.to_dtype(DType::F64))
        .and_then(|x| {
            let w = Var::from_tensor(
                &w.as_tensor()
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F64)?,
            )?;
            let grads = x
                .conv2d(w.as_tensor(), padding, stride, 1, 1)?
                .sum_all()?
                .backward()?;
            Ok(grads.get(w.as_tensor()).cloned())
        })
        .expect("reference")
        .expect("reference dw");
    let err = relative_error(&dw, &reference);
    assert!(
        err <= tolerance(CudnnMath::Strict),
        "weight gradient: relative error {err:e}"
    );
}

/// `conv2d_relu` on CUDA with the cuDNN path chosen equals candle's path (the default) to the
/// strict tolerance; the switch is restored afterwards.
#[test]
#[ignore = "needs a CUDA GPU and libcudnn (run with --ignored on a GPU machine)"]
fn cuda_conv2d_relu_through_cudnn_matches_candle() {
    let device = gpu();
    let (x_dims, w_dims, stride, padding) = BRANCH;
    let x = tensor(&x_dims, 6, &device);
    let w = tensor(&w_dims, 7, &device);
    let b = tensor(&[w_dims[0]], 8, &device);
    let before = crate::cuda_conv();
    crate::set_cuda_conv(crate::CudaConv::Candle);
    let candle = crate::conv2d_relu(&x, &w, &b, stride, padding);
    crate::set_cuda_conv(crate::CudaConv::CudnnStrict);
    let cudnn = crate::conv2d_relu(&x, &w, &b, stride, padding);
    crate::set_cuda_conv(before);
    let (candle, cudnn) = (candle.expect("candle's path"), cudnn.expect("cuDNN path"));
    let err = relative_error(&cudnn, &candle);
    assert!(
        err <= 1e-5,
        "conv2d_relu: cuDNN against candle, relative error {err:e}"
    );
}
