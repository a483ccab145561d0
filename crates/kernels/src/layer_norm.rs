//! LayerNorm over the trailing `[C, H, W]` dimensions: a fused CPU op, or differentiable tensor ops.

use candle_core::{DType, Tensor};

use super::fast_layer_norm::LayerNormOp;

/// Normalises each sample over all its non-batch dimensions, then applies an elementwise affine
/// transform with `weight` and `bias` of the sample's shape (PyTorch's
/// `nn.LayerNorm([C, H, W])`; biased variance, `eps` inside the square root).
///
/// On the CPU in f32 this is one fused op (statistics still in f64), and so it is on CUDA in f32
/// (with the `cuda` feature); elsewhere a composition of tensor ops.
pub fn layer_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    layer_norm_on(xs, weight, bias, eps, super::fast_kernels_for(xs))
}

/// [`layer_norm`] on a chosen path, so tests can compare both in one process.
pub(crate) fn layer_norm_on(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    fast: bool,
) -> candle_core::Result<Tensor> {
    // The fused op has a CUDA forward too (f32 on a GPU, the reference path not forced).
    #[cfg(feature = "cuda")]
    let fast = fast || super::cuda::normalises(xs);
    if fast {
        return xs.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormOp::new(eps),
        );
    }
    let dims = xs.dims().to_vec();
    let n = dims[0];
    // Statistics in f64: a plain f32 sum over 193,600 values per sample (64 x 55 x 55) drifts far
    // more than PyTorch's cascade summation, and the drift reaches the log-probabilities.
    // Then PyTorch's f32 operations in its order: y = (x * rstd + (-rstd * mean)) * gamma + beta.
    // Ties in the next max-pool depend on this rounding (see `fast_layer_norm::pytorch_scale_shift`).
    let flat64 = xs.reshape((n, ()))?.to_dtype(DType::F64)?;
    let mean64 = flat64.mean_keepdim(1)?;
    let variance = flat64
        .broadcast_sub(&mean64)?
        .sqr()?
        .mean_keepdim(1)?
        .to_dtype(xs.dtype())?;
    let mean = mean64.to_dtype(xs.dtype())?;
    let scale = (variance + eps)?.sqrt()?.recip()?;
    let shift = scale.mul(&mean)?.neg()?;
    let normalised = xs
        .reshape((n, ()))?
        .broadcast_mul(&scale)?
        .broadcast_add(&shift)?
        .reshape(dims)?;
    normalised.broadcast_mul(weight)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn normalises_every_sample_over_all_its_dimensions_and_learns() {
        let xs = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap();
        let weight = Var::ones((3, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let bias = Var::zeros((3, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ys = layer_norm(&xs, weight.as_tensor(), bias.as_tensor(), 1e-5).unwrap();
        let first = ys
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // 0..12 has mean 5.5 and variance 143/12.
        let expected0 = -5.5 / (143f32 / 12. + 1e-5).sqrt();
        assert!((first[0] - expected0).abs() < 1e-5);
        // Unlike candle-nn's fused op, gradients reach the affine parameters.
        let grads = (ys * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(bias.as_tensor()).is_some());
        assert!(grads.get(weight.as_tensor()).is_some());
    }
}
