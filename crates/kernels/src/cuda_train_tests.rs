//! The training step's element-wise CUDA kernels (cuda_train.cu) against the CPU: dropout's mask
//! on the GPU must equal the CPU's bit for bit (the same integer generator, one f32 product), be
//! reproducible from its key, and keep about `1 - p` of the elements.
//!
//! They need a CUDA GPU, so they are `#[ignore]`d; `xtask/gpu-check.sh` runs them
//! (`kernel-tests --ignored --test-threads 1 cuda_`). Without a GPU, `--ignored` makes them fail.

use candle_core::{Device, Tensor, Var};

use super::dropout::{dropout, DropoutKey};
use super::testing::gpu;

fn host(tensor: &Tensor) -> Vec<f32> {
    tensor
        .to_device(&Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("readable on the host")
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_dropout_equals_the_cpu_and_repeats_itself() {
    let device = gpu();
    // Some NaNs and negative zeros: a mask multiplied in keeps a NaN a NaN and zero's sign.
    let values: Vec<f32> = (0..300_001)
        .map(|i| match i % 1000 {
            999 => f32::NAN,
            998 => -0.0,
            _ => (i as f32 * 0.37).sin(),
        })
        .collect();
    let cpu = Tensor::from_vec(values, 300_001, &Device::Cpu).expect("input");
    let on_gpu = cpu.to_device(&device).expect("upload");
    let key = DropoutKey {
        seed: 2026,
        step: 17,
    };
    let expected = host(&dropout(&cpu, 0.2, key).expect("CPU dropout"));
    let first = host(&dropout(&on_gpu, 0.2, key).expect("GPU dropout"));
    let second = host(&dropout(&on_gpu, 0.2, key).expect("GPU dropout"));
    // Every NaN alike: the GPU's multiply returns the canonical NaN, x86's the input's payload.
    let bits = |values: &[f32]| {
        values
            .iter()
            .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bits(&first),
        bits(&expected),
        "the GPU's dropout differs from the CPU's"
    );
    assert_eq!(
        bits(&first),
        bits(&second),
        "the same key gave another mask"
    );
    let other = host(
        &dropout(
            &on_gpu,
            0.2,
            DropoutKey {
                seed: 2026,
                step: 18,
            },
        )
        .expect("GPU"),
    );
    assert_ne!(
        bits(&first),
        bits(&other),
        "another step gave the same mask"
    );
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_dropout_keeps_one_minus_p_and_its_gradient_is_the_mask() {
    let device = gpu();
    let n = 1_000_000;
    let xs = Var::from_tensor(&Tensor::ones(n, candle_core::DType::F32, &device).expect("ones"))
        .expect("var");
    let ys = dropout(xs.as_tensor(), 0.2, DropoutKey { seed: 5, step: 0 }).expect("dropout");
    let grads = ys.sum_all().and_then(|s| s.backward()).expect("backward");
    let grad = host(grads.get(xs.as_tensor()).expect("a gradient"));
    let ys = host(&ys);
    let kept = ys.iter().filter(|&&y| y != 0.0).count();
    // Binomial(1e6, 0.8): standard deviation 400; 5 of them.
    assert!((798_000..=802_000).contains(&kept), "{kept} kept of {n}");
    assert!(
        ys.iter().all(|&y| y == 0.0 || y == 1.25),
        "a kept value not scaled by 1/(1-p)"
    );
    assert_eq!(
        grad, ys,
        "the gradient of sum(dropout(ones)) is the scaled mask"
    );
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn cuda_adam_equals_the_cpu_bit_for_bit_over_several_steps() {
    use super::adam::{adam_update, AdamStep};
    use super::testing::{host_values, seeded_tensor};
    let gpu = gpu();
    // An odd length (not a multiple of the block) with negative zeros and a zero gradient among
    // the values, so that the `+ 0` roundings and the zero-moment case are exercised.
    let dims = [7, 3, 5];
    let mut cpu = [1u64, 2, 3].map(|seed| seeded_tensor(&dims, seed, &Device::Cpu));
    cpu[1] = (&cpu[1] * 0.0).unwrap().neg().unwrap();
    cpu[2] = cpu[2].zeros_like().unwrap();
    let mut on_gpu = cpu.clone().map(|t| t.to_device(&gpu).unwrap());
    for step in 1..=4 {
        let grad = seeded_tensor(&dims, 10 + step as u64, &Device::Cpu);
        let grad = if step == 2 {
            grad.zeros_like().unwrap()
        } else {
            grad
        };
        let constants = AdamStep::new(1e-3, 0.9, 0.999, 1e-8, step);
        let [p, m, v] = &cpu;
        cpu = adam_update(p, m, v, &grad, &constants).unwrap();
        let [p, m, v] = &on_gpu;
        on_gpu = adam_update(p, m, v, &grad.to_device(&gpu).unwrap(), &constants).unwrap();
        for (name, (g, c)) in ["param", "m", "v"].iter().zip(on_gpu.iter().zip(&cpu)) {
            assert!(g.device().is_cuda(), "{name} stays on the GPU");
            let (g, c) = (host_values(g), host_values(c));
            for (i, (a, b)) in g.iter().zip(&c).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "step {step}, {name}[{i}]: {a} on the GPU, {b} on the CPU"
                );
            }
        }
    }
}
