//! Dropout from a counter-based generator: whether element `i` of call `(seed, step)` is kept is
//! a pure function of the three, so the mask is never stored or uploaded (the backward recomputes
//! it), a run resumed at `step` draws the same masks, and the GPU (cuda_train.cu) draws the same
//! mask as the CPU, bit for bit.
//!
//! The generator: `key = mix(seed ^ mix(step))`, element `i` kept when the top 24 bits of
//! `mix(key + i)` are at least `ceil(p * 2^24)`, where `mix` is SplitMix64's finaliser (a
//! bijection of 64-bit words that mixes every bit into every bit). A kept element is multiplied by
//! `1 / (1 - p)` (rounded to f32), a dropped one by 0, so a NaN input stays NaN as when a mask is
//! multiplied in. The model's CPU path keeps its own ChaCha generator (its results are pinned by
//! tests); this op is for the GPU, with the CPU as its reference.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Which dropout mask to draw: the training run's seed and the call's number (one per training
/// forward), so that a resumed run continues the same sequence of masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropoutKey {
    /// The run's seed.
    pub seed: u64,
    /// The call's number within the run.
    pub step: u64,
}

/// SplitMix64's finaliser (`mix64` in cuda_train.cu).
fn mix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The op: the per-call key and the keep threshold and scale that `p` makes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropoutOp {
    pub(crate) key: u64,
    pub(crate) threshold: u32,
    pub(crate) scale: f32,
}

impl DropoutOp {
    fn new(p: f32, key: DropoutKey) -> candle_core::Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability {p} is not in [0, 1)");
        }
        Ok(Self {
            key: mix64(key.seed ^ mix64(key.step)),
            // At most 2^24 - 1 for p < 1 in f32 (p <= 1 - 2^-24).
            threshold: (f64::from(p) * f64::from(1u32 << 24)).ceil() as u32,
            scale: (1.0 / (1.0 - f64::from(p))) as f32,
        })
    }

    /// The factor of element `index`: `scale` if kept, else 0.
    fn factor(&self, index: u64) -> f32 {
        if (mix64(self.key.wrapping_add(index)) >> 40) as u32 >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "dexpression-dropout"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("dropout: f32 only, not {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("dropout: the input must be contiguous");
        };
        let out = values[start..end]
            .iter()
            .zip(0u64..)
            .map(|(&value, index)| value * self.factor(index))
            .collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda_train::dropout(self, storage, layout)?;
        Ok((out, layout.shape().clone()))
    }

    /// `y = x * mask`, so `dx = dy * mask`: the same op on the gradient, the mask recomputed.
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Dropout with probability `p` in `[0, 1)` of an f32 tensor on the CPU or (with the `cuda`
/// feature) a CUDA GPU, the mask drawn from `key` (see the module's documentation): the same
/// `key` gives the same mask on either device. Differentiable; the backward recomputes the mask.
pub fn dropout(xs: &Tensor, p: f32, key: DropoutKey) -> candle_core::Result<Tensor> {
    xs.contiguous()?.apply_op1(DropoutOp::new(p, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_keeps_about_one_minus_p_and_scales_them() {
        let xs = Tensor::ones(100_000, candle_core::DType::F32, &Device::Cpu).expect("ones");
        let ys = dropout(&xs, 0.2, DropoutKey { seed: 7, step: 3 })
            .and_then(|ys| ys.to_vec1::<f32>())
            .expect("dropout");
        let kept = ys.iter().filter(|&&y| y != 0.0).count();
        // Binomial(100000, 0.8): standard deviation about 126; 5 of them.
        assert!((79_370..=80_630).contains(&kept), "{kept} kept of 100000");
        assert!(ys.iter().all(|&y| y == 0.0 || y == 1.25));
    }

    #[test]
    fn dropout_masks_depend_on_seed_and_step_only() {
        let xs = Tensor::ones(4096, candle_core::DType::F32, &Device::Cpu).expect("ones");
        let mask = |seed, step| {
            dropout(&xs, 0.5, DropoutKey { seed, step })
                .and_then(|ys| ys.to_vec1::<f32>())
                .expect("dropout")
        };
        assert_eq!(mask(1, 2), mask(1, 2));
        assert_ne!(mask(1, 2), mask(1, 3));
        assert_ne!(mask(1, 2), mask(2, 2));
    }

    #[test]
    fn dropout_gradient_is_the_same_mask() {
        let var = candle_core::Var::from_tensor(
            &Tensor::arange(1f32, 1025., &Device::Cpu).expect("arange"),
        )
        .expect("var");
        let key = DropoutKey { seed: 11, step: 0 };
        let ys = dropout(var.as_tensor(), 0.3, key).expect("dropout");
        let grads = ys.sum_all().and_then(|s| s.backward()).expect("backward");
        let grad = grads
            .get(var.as_tensor())
            .expect("a gradient")
            .to_vec1::<f32>()
            .expect("vec");
        let ys = ys.to_vec1::<f32>().expect("vec");
        for (i, (g, y)) in grad.iter().zip(&ys).enumerate() {
            assert_eq!(
                *g == 0.0,
                *y == 0.0,
                "element {i}: gradient {g}, output {y}"
            );
        }
    }

    #[test]
    fn dropout_rejects_a_probability_of_one() {
        let xs = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).expect("ones");
        assert!(dropout(&xs, 1.0, DropoutKey { seed: 0, step: 0 }).is_err());
    }
}
