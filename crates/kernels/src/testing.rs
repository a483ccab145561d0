//! Helpers for tests of the kernels and of the crates built on them (the model's CUDA tests):
//! seeded inputs, host copies, a relative closeness check and the GPU or a clear failure. Not a
//! stable API: compiled for the crate's own tests and behind the `testing` feature.

use candle_core::{DType, Device, Tensor};

/// Deterministic pseudo-random values in [-1, 1) from `seed` (a 64-bit LCG's high bits), the
/// same on every machine.
pub fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005) ^ 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor of `dims` filled with [`values`] on `device`.
pub fn seeded_tensor(dims: &[usize], seed: u64, device: &Device) -> Tensor {
    let count = dims.iter().product();
    Tensor::from_vec(values(count, seed), dims, device).expect("a tensor of its own size")
}

/// Every value of `tensor`, copied to the host and widened to f64, in row-major order.
pub fn host_values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("readable on the host")
}

/// The largest absolute difference over the largest absolute reference value; infinite where
/// `actual` holds a NaN or an infinity, so that a broken kernel cannot pass by vanishing in `max`.
pub fn relative_error(actual: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(actual.dims(), reference.dims(), "shapes differ");
    let (actual, reference) = (host_values(actual), host_values(reference));
    if actual.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = reference
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    let worst = actual
        .iter()
        .zip(&reference)
        .fold(0f64, |m, (a, r)| m.max((a - r).abs()));
    worst / scale
}

/// Asserts that [`relative_error`] of `actual` against `reference` is at most `tolerance`,
/// printing the error (the tests' logs record how close each check came).
pub fn assert_close(name: &str, actual: &Tensor, reference: &Tensor, tolerance: f64) {
    let error = relative_error(actual, reference);
    eprintln!("{name}: max difference {error:.2e} of the scale");
    assert!(
        error <= tolerance,
        "{name}: differs by {error:.3e} of the reference's scale, more than {tolerance:.0e}"
    );
}

/// Why the GPU tests are `#[ignore]`d.
pub const NEEDS_GPU: &str = "needs a CUDA GPU (run with --ignored on a GPU machine)";

/// The first CUDA GPU; panics with a clear message where there is none (the GPU tests run only
/// when asked for with `--ignored`, and must fail rather than pass without a GPU).
#[cfg(feature = "cuda")]
pub fn gpu() -> Device {
    assert!(
        candle_core::utils::cuda_is_available(),
        "no CUDA GPU: these tests {NEEDS_GPU}"
    );
    Device::new_cuda(0).unwrap_or_else(|err| panic!("cannot open CUDA GPU 0: {err}"))
}
