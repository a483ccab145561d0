//! The CUDA kernels against the CPU kernels (the network on CUDA is tested in crates/model/tests/cuda.rs).
//!
//! They need a CUDA GPU, so they are `#[ignore]`d: a plain `cargo test --features cuda` lists them
//! as ignored (skipped, with the reason), never as passed. On a GPU machine:
//! `cargo test --release --features cuda -p dexpression-kernels -- --ignored cuda_` (or
//! xtask/gpu-check.sh, which runs the prebuilt test binary). Run with `--ignored` where no GPU is,
//! they fail with a message saying so rather than pass.
//!
//! Tolerances: max pooling (values, recorded argmax, gradients) and the LayerNorm affine
//! gradients must equal the CPU's exactly (same compares, same f32 roundings, same summation
//! order); LayerNorm's output and input gradient within 1e-5 of the largest value (its f64
//! statistics are summed in another order, which may move an f32 result by one rounding); the
//! network's log-probabilities within 1e-4 of PyTorch's and of the CPU's, its gradients within a
//! relative L2 distance of 1e-2 (the bound of tests/torch_equivalence.rs: a near-tie in a pool
//! window may legitimately flip, as convolution sums are added in another order on the GPU).

use candle_core::{DType, Device, Tensor, Var};

use super::layer_norm::layer_norm_on;
use super::lrn::{local_response_norm_on, LocalResponseNorm};
use super::max_pool::{max_pool2d, Pool2d};
use super::testing::{assert_close, gpu, host_values, values};

/// Values on a coarse grid, so that pool windows hold ties (as LayerNorm of ReLU zeros makes
/// them), with a NaN every `nan_every` values when given.
fn tied_values(count: usize, seed: u64, nan_every: Option<usize>) -> Vec<f32> {
    values(count, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| match nan_every {
            Some(every) if i % every == every - 1 => f32::NAN,
            _ => (v * 3.0).round(),
        })
        .collect()
}

/// Element by element, bit for bit (NaN equals NaN).
fn assert_identical(name: &str, gpu: &Tensor, cpu: &Tensor) {
    assert_eq!(gpu.dims(), cpu.dims(), "{name}: shapes");
    let (gpu, cpu) = (host_values(gpu), host_values(cpu));
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            g.to_bits() == c.to_bits() || (g.is_nan() && c.is_nan()),
            "{name}: element {i} is {g} on the GPU and {c} on the CPU"
        );
    }
}

/// `sum(out * weights)` for fixed random weights, so every output gradient is distinct.
fn projected(out: &Tensor, seed: u64) -> Tensor {
    let weights = Tensor::from_vec(values(out.elem_count(), seed), out.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(out.dtype())
        .unwrap()
        .to_device(out.device())
        .unwrap();
    (out * weights).unwrap().sum_all().unwrap()
}

/// Pools of every geometry the network uses and a few others, two in ceil mode (the paper
/// variant's pools, with partial last windows).
const POOLS: [Pool2d; 7] = [
    Pool2d::floor(3, 1, 1),
    Pool2d::floor(3, 2, 0),
    Pool2d::floor(3, 2, 1),
    Pool2d::floor(2, 2, 0),
    Pool2d::floor(5, 3, 2),
    Pool2d::ceil(3, 2, 0),
    Pool2d::ceil(3, 2, 1),
];

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_max_pool_equals_the_cpu_with_ties_nans_and_padding() {
    let device = gpu();
    for dtype in [DType::F32, DType::F64] {
        for (case, pool) in POOLS.into_iter().enumerate() {
            for nan_every in [None, Some(7)] {
                let shape = (2, 3, 11, 10);
                let data = tied_values(2 * 3 * 11 * 10, case as u64, nan_every);
                let cpu_input = Tensor::from_vec(data, shape, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let name = format!("{dtype:?} {pool:?} nan every {nan_every:?}");
                let cpu = Var::from_tensor(&cpu_input).unwrap();
                let cuda = Var::from_tensor(&cpu_input.to_device(&device).unwrap()).unwrap();
                let cpu_out = max_pool2d(cpu.as_tensor(), pool).unwrap();
                let cuda_out = max_pool2d(cuda.as_tensor(), pool).unwrap();
                assert!(cuda_out.device().is_cuda());
                assert_identical(&format!("{name}: forward"), &cuda_out, &cpu_out);
                if nan_every.is_some() {
                    // Gradients through NaN outputs are NaN times a weight; compare the forward only.
                    continue;
                }
                let cpu_grads = projected(&cpu_out, 5).backward().unwrap();
                let cuda_grads = projected(&cuda_out, 5).backward().unwrap();
                assert_identical(
                    &format!("{name}: input gradient"),
                    cuda_grads.get(cuda.as_tensor()).unwrap(),
                    cpu_grads.get(cpu.as_tensor()).unwrap(),
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_layer_norm_equals_the_cpu_forward_and_backward() {
    let device = gpu();
    // A small shape, and conv1's (64 x 55 x 55, 193,600 features per sample: many threads' sums).
    for (seed, shape) in [(1u64, [3, 5, 7, 6]), (2, [2, 64, 55, 55])] {
        let count: usize = shape.iter().product();
        let features = count / shape[0];
        // An offset mean, as activations after ReLU have.
        let x = Tensor::from_vec(
            values(count, seed)
                .iter()
                .map(|v| v + 0.5)
                .collect::<Vec<_>>(),
            &shape[..],
            &Device::Cpu,
        )
        .unwrap();
        let weight = Tensor::from_vec(
            values(features, seed + 10)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect::<Vec<_>>(),
            &shape[1..],
            &Device::Cpu,
        )
        .unwrap();
        let bias =
            Tensor::from_vec(values(features, seed + 20), &shape[1..], &Device::Cpu).unwrap();
        let run = |device: &Device| {
            let vars = [&x, &weight, &bias]
                .map(|t| Var::from_tensor(&t.to_device(device).unwrap()).unwrap());
            let out = layer_norm_on(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                1e-5,
                device.is_cpu(),
            )
            .unwrap();
            let grads = projected(&out, seed + 30).backward().unwrap();
            let grads = vars.map(|v| grads.get(v.as_tensor()).unwrap().clone());
            (out, grads)
        };
        let (cpu_out, cpu_grads) = run(&Device::Cpu);
        let (cuda_out, cuda_grads) = run(&device);
        assert!(cuda_out.device().is_cuda());
        let name = format!("layer_norm {shape:?}");
        assert_close(&format!("{name}: output"), &cuda_out, &cpu_out, 1e-5);
        assert_close(
            &format!("{name}: input gradient"),
            &cuda_grads[0],
            &cpu_grads[0],
            1e-5,
        );
        // Each affine gradient sums the same f32 products in the same order (the statistics
        // enter through an f32 rounding of xhat, which may move by one ulp).
        assert_close(
            &format!("{name}: weight gradient"),
            &cuda_grads[1],
            &cpu_grads[1],
            1e-5,
        );
        assert_identical(
            &format!("{name}: bias gradient"),
            &cuda_grads[2],
            &cpu_grads[2],
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_local_response_norm_equals_the_cpu_forward_and_backward() {
    let device = gpu();
    // The paper variant's shape at 224 (64 x 55 x 55) with AlexNet's constants, and a small one
    // with an even window and the general power. With beta 0.75 the kernels make the CPU's f32
    // operations in its order (square roots, divisions and sums correctly rounded on both), so
    // the values are the same bits; CUDA's powf may differ from the C library's by an ulp.
    for (seed, shape, lrn, exact) in [
        (1u64, [2, 64, 55, 55], LocalResponseNorm::ALEXNET, true),
        (
            2,
            [3, 9, 5, 7],
            LocalResponseNorm {
                size: 4,
                alpha: 2.0,
                beta: 0.6,
                k: 2.0,
            },
            false,
        ),
    ] {
        let count: usize = shape.iter().product();
        let x = Tensor::from_vec(values(count, seed), &shape[..], &Device::Cpu).unwrap();
        let run = |device: &Device| {
            let var = Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
            let out = local_response_norm_on(var.as_tensor(), lrn, device.is_cpu()).unwrap();
            let grads = projected(&out, seed + 30).backward().unwrap();
            let grad = grads.get(var.as_tensor()).unwrap().clone();
            (out, grad)
        };
        let (cpu_out, cpu_grad) = run(&Device::Cpu);
        let (cuda_out, cuda_grad) = run(&device);
        assert!(cuda_out.device().is_cuda());
        let name = format!("local_response_norm {shape:?}");
        if exact {
            assert_identical(&format!("{name}: output"), &cuda_out, &cpu_out);
            assert_identical(&format!("{name}: input gradient"), &cuda_grad, &cpu_grad);
        } else {
            assert_close(&format!("{name}: output"), &cuda_out, &cpu_out, 1e-6);
            assert_close(
                &format!("{name}: input gradient"),
                &cuda_grad,
                &cpu_grad,
                1e-5,
            );
        }
    }
}
