//! One step of Adam for one parameter, as PyTorch's `torch.optim.Adam` computes it (no weight
//! decay, no amsgrad): the model crate's optimiser calls [`adam_update`] for each parameter.
//!
//! On the CPU (and wherever the fused kernel does not apply) the update is candle's tensor ops,
//! about ten of them a parameter. On a CUDA GPU with f32 tensors it is one kernel
//! (`adam_f32` in cuda_train.cu) that makes the same f32 operations in the same order, so both
//! devices give the same bits; launching ten small kernels a parameter is what made the optimiser
//! a visible part of a GPU step (issue 23).

use candle_core::Tensor;

/// The scalars of one Adam step, the same for every parameter of the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// `learning_rate / (1 - beta1^step)`.
    pub step_size: f64,
    /// `1 - beta2^step`.
    pub bias_correction2: f64,
}

impl AdamStep {
    /// The scalars of step `step` (counted from 1) with these hyper-parameters.
    pub fn new(learning_rate: f64, beta1: f64, beta2: f64, eps: f64, step: i32) -> Self {
        let bias_correction1 = 1.0 - beta1.powi(step);
        Self {
            beta1,
            beta2,
            eps,
            step_size: learning_rate / bias_correction1,
            bias_correction2: 1.0 - beta2.powi(step),
        }
    }
}

/// The updated parameter and first and second moments `[param, m, v]` after one step with the
/// gradient `grad`; all four tensors of one shape. The inputs are left as they are.
pub fn adam_update(
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamStep,
) -> candle_core::Result<[Tensor; 3]> {
    for (name, tensor) in [
        ("first moment", m),
        ("second moment", v),
        ("gradient", grad),
    ] {
        if tensor.dims() != param.dims() {
            candle_core::bail!(
                "adam: the {name} is {:?}, the parameter {:?}",
                tensor.dims(),
                param.dims()
            );
        }
    }
    #[cfg(feature = "cuda")]
    if let Some(updated) = super::cuda_train::adam(param, m, v, grad, step)? {
        return Ok(updated);
    }
    let AdamStep {
        beta1,
        beta2,
        eps,
        step_size,
        bias_correction2,
    } = *step;
    let m = ((m * beta1)? + (grad * (1.0 - beta1))?)?;
    let v = ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
    // PyTorch's form: denom = sqrt(v) / sqrt(bias_correction2) + eps.
    let denom = ((v.sqrt()? / bias_correction2.sqrt())? + eps)?;
    let update = ((&m / &denom)? * step_size)?;
    Ok([param.sub(&update)?, m, v])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{seeded_tensor, values};
    use candle_core::Device;

    /// PyTorch's Adam written out per element in f64, for a step from zero moments.
    #[test]
    fn first_step_moves_each_parameter_by_about_the_learning_rate() {
        let device = Device::Cpu;
        let param = seeded_tensor(&[3, 5], 1, &device);
        let grad = seeded_tensor(&[3, 5], 2, &device);
        let zeros = param.zeros_like().unwrap();
        let step = AdamStep::new(1e-3, 0.9, 0.999, 1e-8, 1);
        let [updated, m, v] = adam_update(&param, &zeros, &zeros, &grad, &step).unwrap();
        let (p0, g) = (values(15, 1), values(15, 2));
        let updated = updated.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let m = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let v = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..15 {
            let g = f64::from(g[i]);
            let (m1, v1) = (0.1 * g, 0.001 * g * g);
            let expected = f64::from(p0[i]) - 1e-3 / 0.1 * m1 / ((v1 / 0.001).sqrt() + 1e-8);
            assert!((f64::from(m[i]) - m1).abs() <= 2e-7 * m1.abs() + 1e-12);
            assert!((f64::from(v[i]) - v1).abs() <= 1e-6 * v1 + 1e-15);
            assert!(
                (f64::from(updated[i]) - expected).abs() < 1e-6,
                "element {i}: {} against {expected}",
                updated[i]
            );
        }
    }

    #[test]
    fn refuses_a_gradient_of_another_shape() {
        let device = Device::Cpu;
        let param = seeded_tensor(&[3, 5], 1, &device);
        let grad = seeded_tensor(&[5, 3], 2, &device);
        let step = AdamStep::new(1e-3, 0.9, 0.999, 1e-8, 1);
        let err = adam_update(&param, &param, &param, &grad, &step).unwrap_err();
        assert!(err.to_string().contains("gradient"), "{err}");
    }
}
