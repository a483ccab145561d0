//! One step of Adam for one parameter, as PyTorch's `torch.optim.Adam` computes it (no weight
//! decay, no amsgrad): the model crate's optimiser calls [`adam_update`] for each parameter.
//!
//! On a CUDA GPU with f32 tensors the update is one kernel (`adam_f32` in cuda_train.cu), and on
//! the CPU's fast path one loop ([`adam_cpu`]), each making the f32 operations of candle's tensor
//! ops in the same order, so every path gives the same bits; elsewhere (the reference path, other
//! dtypes) it is candle's tensor ops, about ten of them a parameter. Launching ten small kernels
//! a parameter is what made the optimiser a visible part of a GPU step (issue 23); on the CPU the
//! ten full passes over each parameter, its moments and gradient, each a new tensor, were about
//! a twentieth of a training step at 48 px (issue 29).

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

    /// The step's constants as the one-pass kernels take them, each rounded to f32 from f64 as
    /// candle's affine op rounds it: `beta1`, `1 - beta1`, `beta2`, `1 - beta2`,
    /// `1 / sqrt(bias_correction2)`, `eps`, `step_size`.
    pub(crate) fn f32_constants(&self) -> [f32; 7] {
        [
            self.beta1,
            1.0 - self.beta1,
            self.beta2,
            1.0 - self.beta2,
            1.0 / self.bias_correction2.sqrt(),
            self.eps,
            self.step_size,
        ]
        .map(|value| value as f32)
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
    if let Some(updated) = adam_cpu(param, m, v, grad, step)? {
        return Ok(updated);
    }
    adam_composed(param, m, v, grad, step)
}

/// [`adam_update`] as candle's tensor ops, on any device and dtype.
fn adam_composed(
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamStep,
) -> candle_core::Result<[Tensor; 3]> {
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

/// [`adam_update`] in one pass on the CPU for contiguous f32 tensors on the fast path (`None`
/// elsewhere): per element the f32 operations of the tensor ops below it, in their order. Each
/// `tensor * f64` there is candle's affine `x * mul + add` with both constants rounded to f32,
/// hence the explicit `+ 0.0`, which turns -0 into +0 as it does; Rust never fuses a multiply and
/// an add, so the bits are the tensor ops' (tested).
fn adam_cpu(
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamStep,
) -> candle_core::Result<Option<[Tensor; 3]>> {
    use candle_core::{DType, Storage};
    use rayon::prelude::*;

    let tensors = [param, m, v, grad];
    if tensors
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous())
        || super::reference_ops()
    {
        return Ok(None);
    }
    let guards = tensors.map(Tensor::storage_and_layout);
    let mut inputs: Vec<&[f32]> = Vec::with_capacity(4);
    for ((storage, layout), what) in
        guards
            .iter()
            .zip(["parameter", "first moment", "second moment", "gradient"])
    {
        let Storage::Cpu(storage) = &**storage else {
            return Ok(None);
        };
        inputs.push(super::storage::contiguous_f32(storage, layout, what)?);
    }
    let [param_values, m_values, v_values, grad_values] = [0, 1, 2, 3].map(|i| inputs[i]);
    let [beta1, one_minus_beta1, beta2, one_minus_beta2, inv_root, eps, step_size] =
        step.f32_constants();
    let len = param.elem_count();
    let mut out = [vec![0f32; len], vec![0f32; len], vec![0f32; len]];
    let [new_param, new_m, new_v] = &mut out;
    // Chunks of 16 Ki values on every thread: a parameter of conv2b's size is 180 Ki values.
    const CHUNK: usize = 1 << 14;
    new_param
        .par_chunks_mut(CHUNK)
        .zip(new_m.par_chunks_mut(CHUNK))
        .zip(new_v.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(chunk, ((new_param, new_m), new_v))| {
            let start = chunk * CHUNK;
            let range = start..start + new_param.len();
            let inputs = (
                &param_values[range.clone()],
                &m_values[range.clone()],
                &v_values[range.clone()],
                &grad_values[range],
            );
            for (i, (((p, m0), v0), g)) in inputs
                .0
                .iter()
                .zip(inputs.1)
                .zip(inputs.2)
                .zip(inputs.3)
                .enumerate()
            {
                // m * beta1 + g * (1 - beta1)
                let m1 = (m0 * beta1 + 0.0) + (g * one_minus_beta1 + 0.0);
                // v * beta2 + g^2 * (1 - beta2)
                let v1 = (v0 * beta2 + 0.0) + ((g * g) * one_minus_beta2 + 0.0);
                // sqrt(v) / sqrt(bias_correction2) + eps, PyTorch's form of the denominator.
                let denom = (v1.sqrt() * inv_root + 0.0) * 1.0 + eps;
                let update = (m1 / denom) * step_size + 0.0;
                new_param[i] = p - update;
                new_m[i] = m1;
                new_v[i] = v1;
            }
        });
    drop(guards);
    let [new_param, new_m, new_v] = out;
    let shape = param.shape();
    let device = param.device();
    Ok(Some([
        Tensor::from_vec(new_param, shape, device)?,
        Tensor::from_vec(new_m, shape, device)?,
        Tensor::from_vec(new_v, shape, device)?,
    ]))
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
    fn the_cpu_loop_gives_the_tensor_ops_bits() {
        // Several steps from nonzero moments, values of mixed signs and sizes, zeros (whose sign
        // the `+ 0` settles) and a parameter larger than one chunk of the loop.
        let device = Device::Cpu;
        let dims = [3, 20_000];
        let param = seeded_tensor(&dims, 11, &device);
        let mut grad_values = values(60_000, 12);
        for value in grad_values.iter_mut().step_by(7) {
            *value = -0.0;
        }
        for value in grad_values.iter_mut().skip(3).step_by(11) {
            *value *= 1e-30;
        }
        let grad = Tensor::from_vec(grad_values, &dims, &device).unwrap();
        // A first moment of negative zeros, a second of zeros.
        let negative_zeros = (&param * 0.0).unwrap().neg().unwrap();
        let zeros = param.zeros_like().unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        let (mut fast, mut composed) = (
            [param.clone(), negative_zeros.clone(), zeros.clone()],
            [param, negative_zeros, zeros],
        );
        for step in 1..=4 {
            let constants = AdamStep::new(1e-3, 0.9, 0.999, 1e-8, step);
            let [p, m, v] = &fast;
            fast = adam_cpu(p, m, v, &grad, &constants)
                .unwrap()
                .expect("the CPU loop");
            let [p, m, v] = &composed;
            composed = adam_composed(p, m, v, &grad, &constants).unwrap();
            for (fast, composed) in fast.iter().zip(&composed) {
                assert!(bits(fast) == bits(composed), "step {step} differs");
            }
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
