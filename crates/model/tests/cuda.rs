//! The network on CUDA against PyTorch's fixture and the CPU, and a training step that stays on
//! the GPU. The kernels' own CUDA tests are in crates/kernels/src/cuda_tests.rs.
//!
//! They need a CUDA GPU, so they are `#[ignore]`d: a plain `cargo test --features cuda` lists them
//! as ignored. On a GPU machine: `cargo test --release --features cuda -p dexpression-model
//! --test cuda -- --ignored cuda_` (or xtask/gpu-check.sh). Tolerances: log-probabilities within
//! 1e-4 of PyTorch's and of the CPU's, gradients within a relative L2 distance of 1e-2 (the bound
//! of tests/torch_equivalence.rs).
#![cfg(feature = "cuda")]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, ModuleT, Tensor};
use dexpression_kernels::testing::{assert_close, gpu, host_values, values};
use dexpression_model::kernels::{cuda_conv, host_round_trips, set_cuda_conv, CudaConv};
use dexpression_model::{Dexpression, DexpressionConfig};

/// The repository's PyTorch fixture (64 x 64 inputs). The crate's folder is taken from
/// `CARGO_MANIFEST_DIR` at run time when set (cargo sets it; xtask/gpu-check.sh sets it for the
/// prebuilt binary on another machine), else from the build.
fn fixture() -> (PathBuf, HashMap<String, Tensor>) {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = crate_dir.join("tests/fixtures/torch");
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    (dir, reference)
}

/// Relative L2 distance of two tensors.
fn relative_l2(ours: &Tensor, theirs: &Tensor) -> f64 {
    let (ours, theirs) = (host_values(ours), host_values(theirs));
    let diff: f64 = ours.iter().zip(&theirs).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = theirs.iter().map(|b| b * b).sum();
    (diff / norm.max(1e-30)).sqrt()
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_network_matches_pytorch_and_the_cpu() {
    network_matches_pytorch_and_the_cpu();
}

/// The same with the kernels crate's cuDNN convolutions in strict fp32 (TF32 is checked op by op
/// in the kernels' cudnn_conv_tests.rs, against looser bounds than these).
#[test]
#[ignore = "needs a CUDA GPU and libcudnn (run with --ignored on a GPU machine)"]
fn cuda_network_through_our_cudnn_conv_matches_pytorch_and_the_cpu() {
    with_cuda_conv(CudaConv::CudnnStrict, network_matches_pytorch_and_the_cpu);
}

/// Runs `check` with the convolution of CUDA tensors switched to `conv`, restoring the switch
/// (process-wide) afterwards, also when `check` fails.
fn with_cuda_conv(conv: CudaConv, check: fn()) {
    let before = cuda_conv();
    set_cuda_conv(conv);
    let result = std::panic::catch_unwind(check);
    set_cuda_conv(before);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn network_matches_pytorch_and_the_cpu() {
    let device = gpu();
    let (dir, reference) = fixture();
    let weights = dir.join("weights.safetensors");
    let load = |device: &Device| {
        let config = Dexpression::load(&weights, device)
            .unwrap()
            .config()
            .clone();
        // The fixture's training-mode outputs were made with dropout disabled.
        let config = DexpressionConfig {
            dropout: 0.0,
            ..config
        };
        Dexpression::load_with_config(&weights, config, device).unwrap()
    };
    let x = reference["x"].to_device(&device).unwrap();
    let targets = reference["y"].to_dtype(DType::U32).unwrap();

    let eval = load(&device).forward_t(&x, false).unwrap();
    assert!(eval.device().is_cuda());
    assert_close("eval.logp vs PyTorch", &eval, &reference["eval.logp"], 1e-4);

    let run = |device: &Device| {
        let model = load(device);
        let logp = model
            .forward_t(&reference["x"].to_device(device).unwrap(), true)
            .unwrap();
        let loss = candle_nn::loss::nll(&logp, &targets.to_device(device).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<(String, Tensor)> = model
            .trainable_vars()
            .into_iter()
            .map(|param| {
                let grad = grads
                    .get(param.var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {}", param.name))
                    .clone();
                (param.name, grad)
            })
            .collect();
        (logp, loss, grads)
    };
    let (cuda_logp, cuda_loss, cuda_grads) = run(&device);
    let (cpu_logp, _, cpu_grads) = run(&Device::Cpu);
    assert_close(
        "train.logp vs PyTorch",
        &cuda_logp,
        &reference["train.logp"],
        1e-4,
    );
    assert_close("train.logp vs CPU", &cuda_logp, &cpu_logp, 1e-4);
    assert_close(
        "train.loss vs PyTorch",
        &cuda_loss,
        &reference["train.loss"],
        1e-4,
    );
    for ((name, cuda), (_, cpu)) in cuda_grads.iter().zip(&cpu_grads) {
        assert!(cuda.device().is_cuda(), "{name}: gradient left the GPU");
        let vs_torch = relative_l2(cuda, &reference[&format!("grad.{name}")]);
        let vs_cpu = relative_l2(cuda, cpu);
        eprintln!("grad.{name}: rel L2 {vs_torch:.2e} vs PyTorch, {vs_cpu:.2e} vs CPU");
        assert!(
            vs_torch <= 1e-2,
            "grad.{name}: {vs_torch:.3e} from PyTorch's"
        );
        assert!(vs_cpu <= 1e-2, "grad.{name}: {vs_cpu:.3e} from the CPU's");
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_training_step_stays_on_the_gpu() {
    training_step_stays_on_the_gpu();
}

#[test]
#[ignore = "needs a CUDA GPU and libcudnn (run with --ignored on a GPU machine)"]
fn cuda_training_step_through_our_cudnn_conv_stays_on_the_gpu() {
    with_cuda_conv(CudaConv::Cudnn, training_step_stays_on_the_gpu);
}

fn training_step_stays_on_the_gpu() {
    let device = gpu();
    let model = Dexpression::new(DexpressionConfig::with(7, 64), 3, &device).unwrap();
    let mut adam = dexpression_model::Adam::new(
        model.trainable_vars(),
        dexpression_model::AdamConfig::default(),
    )
    .unwrap();
    let xs = Tensor::from_vec(values(4 * 64 * 64, 40), (4, 1, 64, 64), &device).unwrap();
    let ys = Tensor::new(&[0u32, 3, 6, 2], &device).unwrap();
    let before = host_round_trips();
    for _ in 0..2 {
        // A custom op without a CUDA forward would fail here ("no cuda implementation"), and a
        // pool falling back to the host would count a round trip.
        let logp = model.forward_t(&xs, true).unwrap();
        let loss = candle_nn::loss::nll(&logp, &ys).unwrap();
        let grads = loss.backward().unwrap();
        for param in model.trainable_vars() {
            let grad = grads
                .get(param.var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {}", param.name));
            assert!(
                grad.device().is_cuda(),
                "{}: gradient left the GPU",
                param.name
            );
        }
        adam.step(&grads).unwrap();
    }
    assert_eq!(
        host_round_trips() - before,
        0,
        "a training step copied activations to the host and back"
    );
    for param in model.trainable_vars() {
        assert!(
            param.var.as_tensor().device().is_cuda(),
            "{}: left the GPU",
            param.name
        );
    }
}
