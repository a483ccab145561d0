//! Every custom op's backward against finite differences, in float64, on small shapes.
//!
//! The reference path (candle's ops composed with our max-pool) runs in float64 here, where central
//! differences are accurate to about 1e-9 and no rounding of the summation order can flip a
//! max-pool's choice. `fast_tests` then holds the float32 fast kernels to this reference.
//! Inputs are drawn so that no pool window nearly ties and no ReLU input lies near zero within
//! the step, so each function is smooth where it is differentiated.

use candle_core::{DType, Device, Tensor, Var};

use super::conv::{conv2d_relu_max_pool2d_on, conv2d_relu_on};
use super::layer_norm::layer_norm_on;
use super::lrn::{local_response_norm_on, LocalResponseNorm};
use super::max_pool::{max_pool2d, Pool2d};

/// Central-difference step.
const STEP: f64 = 1e-6;

/// Largest difference between the analytic and the numeric gradient, relative to the gradient's
/// largest element. Central differences err by about `STEP^2 * f'''` plus `eps / STEP`: 1e-9 here.
const TOLERANCE: f64 = 1e-6;

/// Distinct pseudo-random values in [-1, 1): a shuffled grid, so no two are closer than
/// `2 / count` (no near-ties between pool candidates) and none is within `1 / count` of zero.
fn distinct_values(count: usize, seed: u64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut grid: Vec<f64> = (0..count)
        .map(|i| (2 * i + 1) as f64 / count as f64 - 1.0)
        .collect();
    for i in (1..count).rev() {
        grid.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    grid
}

fn var(shape: &[usize], seed: u64) -> Var {
    let count = shape.iter().product();
    let values = distinct_values(count, seed);
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

fn to_vec(tensor: &Tensor) -> Vec<f64> {
    tensor.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// `L = sum(f(vars) * projection)`, a scalar whose gradient reaches every output element with a
/// distinct weight.
fn loss(f: &dyn Fn() -> Tensor) -> Tensor {
    let out = f();
    let projection = Tensor::from_vec(
        distinct_values(out.elem_count(), 99),
        out.shape(),
        &Device::Cpu,
    )
    .unwrap();
    (out * projection).unwrap().sum_all().unwrap()
}

/// Checks the backward of `f` for each of `vars` against central differences.
fn check_gradients(name: &str, vars: &[Var], f: impl Fn() -> Tensor) {
    let grads = loss(&f).backward().unwrap();
    for (idx, var) in vars.iter().enumerate() {
        let analytic = to_vec(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for argument {idx}")),
        );
        let original = var.as_tensor().copy().unwrap();
        let base = to_vec(&original);
        let mut numeric = Vec::with_capacity(base.len());
        for element in 0..base.len() {
            let at = |delta: f64| {
                let mut moved = base.clone();
                moved[element] += delta;
                var.set(&Tensor::from_vec(moved, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&f).to_scalar::<f64>().unwrap()
            };
            numeric.push((at(STEP) - at(-STEP)) / (2.0 * STEP));
        }
        var.set(&original).unwrap();
        let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        let (worst, diff) = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).abs())
            .enumerate()
            .fold(
                (0, 0f64),
                |best, (i, d)| if d > best.1 { (i, d) } else { best },
            );
        assert!(
            diff <= TOLERANCE * scale,
            "{name}: gradient of argument {idx} differs from finite differences by {:e} of its \
             scale at element {worst} (analytic {}, numeric {})",
            diff / scale,
            analytic[worst],
            numeric[worst]
        );
    }
}

/// DeXpression's pools: pool1 and pool2b/3b (3x3, stride 2, no padding) and pool2a/3a (3x3,
/// stride 1, padding 1), one with a larger window, and the paper variant's ceil-mode pool with
/// one with padding (on the 6-wide input both have a last window that runs past the edge).
const POOLS: [Pool2d; 5] = [
    Pool2d::floor(3, 2, 0),
    Pool2d::floor(3, 1, 1),
    Pool2d::floor(4, 3, 2),
    Pool2d::ceil(3, 2, 0),
    Pool2d::ceil(3, 2, 1),
];

#[test]
fn max_pool_backward_matches_finite_differences() {
    for pool in POOLS {
        let xs = var(&[2, 3, 7, 6], 1);
        check_gradients(
            &format!("max_pool2d {pool:?}"),
            std::slice::from_ref(&xs),
            || max_pool2d(xs.as_tensor(), pool).unwrap(),
        );
    }
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let xs = var(&[2, 3, 4, 5], 4);
    let weight = var(&[3, 4, 5], 5);
    let bias = var(&[3, 4, 5], 6);
    check_gradients(
        "layer_norm",
        &[xs.clone(), weight.clone(), bias.clone()],
        || {
            layer_norm_on(
                xs.as_tensor(),
                weight.as_tensor(),
                bias.as_tensor(),
                1e-5,
                false,
            )
            .unwrap()
        },
    );
}

#[test]
fn conv_relu_backward_matches_finite_differences() {
    // conv1's geometry (7x7, stride 2, padding 3), a 3x3 FeatEx conv below WINOGRAD_MIN_SIDE
    // (im2col) and at it (Winograd), and a 1x1 one.
    for (c_in, c_out, side, kernel, stride, padding) in [
        (1, 3, 9, 7, 2, 3),
        (3, 4, 6, 3, 1, 1),
        (2, 3, 12, 3, 1, 1),
        (4, 3, 5, 1, 1, 0),
    ] {
        let xs = var(&[2, c_in, side, side], 7);
        let weight = var(&[c_out, c_in, kernel, kernel], 8);
        let bias = var(&[c_out], 9);
        check_gradients(
            &format!("conv2d_relu k{kernel} s{stride} p{padding}"),
            &[xs.clone(), weight.clone(), bias.clone()],
            || {
                conv2d_relu_on(
                    xs.as_tensor(),
                    weight.as_tensor(),
                    bias.as_tensor(),
                    stride,
                    padding,
                    false,
                )
                .unwrap()
            },
        );
    }
}

#[test]
fn conv_relu_pool_backward_matches_finite_differences() {
    // conv1 and pool1 on an input whose convolution output (6x6) is even, so that the ceil-mode
    // pool has a last, partial window.
    let xs = var(&[2, 1, 11, 11], 10);
    let weight = var(&[3, 1, 7, 7], 11);
    let bias = var(&[3], 12);
    for pool in [POOLS[0], POOLS[3]] {
        check_gradients(
            &format!("conv2d_relu_max_pool2d {pool:?}"),
            &[xs.clone(), weight.clone(), bias.clone()],
            || {
                conv2d_relu_max_pool2d_on(
                    xs.as_tensor(),
                    weight.as_tensor(),
                    bias.as_tensor(),
                    (2, 3),
                    pool,
                    false,
                    None,
                )
                .unwrap()
            },
        );
    }
}

#[test]
fn the_checker_catches_a_gradient_off_by_a_ten_thousandth() {
    // `x^2` plus a term whose value is zero and whose backward adds `1e-4 x`: the value is exact,
    // the gradient 5e-5 off relative, far below what a float32 comparison could see.
    let xs = var(&[2, 3], 13);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_gradients("off by 1e-4", std::slice::from_ref(&xs), || {
            let x = xs.as_tensor();
            let hidden = (x.mul(&(x.detach() * 1e-4).unwrap()).unwrap()
                - x.mul(&(x * 1e-4).unwrap()).unwrap().detach())
            .unwrap();
            (x.mul(x).unwrap() + hidden).unwrap()
        })
    }));
    assert!(
        result.is_err(),
        "a gradient off by 1e-4 must fail the check"
    );
    assert_eq!(xs.as_tensor().dtype(), DType::F64);
}

/// Local response normalisation with a large `alpha`, so that the window's cross terms weigh as
/// much as the direct one (at AlexNet's 1e-4 a wrong cross term would hide below the tolerance),
/// an odd and an even window and an exponent other than 0.75.
const LRN_CASES: [LocalResponseNorm; 2] = [
    LocalResponseNorm {
        size: 5,
        alpha: 3.0,
        beta: 0.75,
        k: 1.0,
    },
    LocalResponseNorm {
        size: 4,
        alpha: 2.0,
        beta: 0.6,
        k: 2.0,
    },
];

#[test]
fn local_response_norm_backward_matches_finite_differences() {
    for lrn in LRN_CASES {
        let xs = var(&[2, 6, 3, 2], 14);
        check_gradients(
            &format!("local_response_norm {lrn:?}"),
            std::slice::from_ref(&xs),
            || local_response_norm_on(xs.as_tensor(), lrn, false).unwrap(),
        );
    }
}
