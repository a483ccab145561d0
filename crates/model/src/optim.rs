//! Adam exactly as PyTorch's `torch.optim.Adam` (no weight decay, no amsgrad).
//!
//! candle-nn only offers `AdamW`, whose default weight decay (0.01) would silently differ from the
//! port; this is plain Adam with its state exposed for checkpoints.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use dexpression_kernels::{adam_update, AdamStep};

use crate::dexpression::NamedVar;
use crate::{Error, Result};

/// Adam's hyper-parameters; the defaults are PyTorch's and the port's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate (1e-3).
    pub learning_rate: f64,
    /// Decay of the first moment (0.9).
    pub beta1: f64,
    /// Decay of the second moment (0.999).
    pub beta2: f64,
    /// Added to the denominator (1e-8).
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The Adam optimiser over a network's named parameters.
pub struct Adam {
    config: AdamConfig,
    params: Vec<NamedVar>,
    first_moments: Vec<Tensor>,
    second_moments: Vec<Tensor>,
    step: u64,
}

impl Adam {
    /// A fresh optimiser (zero moments, step 0) over `params`.
    pub fn new(params: Vec<NamedVar>, config: AdamConfig) -> Result<Self> {
        let zeros = |p: &NamedVar| p.var.as_tensor().zeros_like();
        let first_moments = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<_>>()?;
        let second_moments = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config,
            params,
            first_moments,
            second_moments,
            step: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update from the gradients of a backward pass; parameters without a gradient are left
    /// unchanged (their moments too), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let AdamConfig {
            learning_rate,
            beta1,
            beta2,
            eps,
        } = self.config;
        // `load_state` keeps the count below i32::MAX, and a run would need billions of steps
        // to get there.
        let step = i32::try_from(self.step).unwrap_or(i32::MAX);
        let constants = AdamStep::new(learning_rate, beta1, beta2, eps, step);
        for ((param, m), v) in self
            .params
            .iter()
            .zip(&mut self.first_moments)
            .zip(&mut self.second_moments)
        {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            // One pass on the CPU's fast path, one kernel on a CUDA GPU, candle's tensor ops
            // elsewhere; the same bits.
            let [updated, first, second] =
                adam_update(param.var.as_tensor(), m, v, grad, &constants)?;
            param.var.set(&updated)?;
            *m = first;
            *v = second;
        }
        Ok(())
    }

    /// The optimiser's state as named tensors (`adam.m.<param>`, `adam.v.<param>`, `adam.step`),
    /// to be saved beside the weights.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for ((param, m), v) in self
            .params
            .iter()
            .zip(&self.first_moments)
            .zip(&self.second_moments)
        {
            out.push((format!("adam.m.{}", param.name), m.clone()));
            out.push((format!("adam.v.{}", param.name), v.clone()));
        }
        out.push((
            "adam.step".into(),
            Tensor::new(self.step as i64, &candle_core::Device::Cpu)?,
        ));
        Ok(out)
    }

    /// Restores a state written by [`Adam::state`]; every moment must be present with its shape.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        source: &std::path::Path,
    ) -> Result<()> {
        let get = |name: String, like: &Var| -> Result<Tensor> {
            let tensor = state.get(&name).ok_or_else(|| Error::MissingTensor {
                path: source.to_path_buf(),
                name: name.clone(),
                expected: like.dims().to_vec(),
            })?;
            if tensor.dims() != like.dims() {
                return Err(Error::ShapeMismatch {
                    path: source.to_path_buf(),
                    name,
                    found: tensor.dims().to_vec(),
                    expected: like.dims().to_vec(),
                });
            }
            let tensor = crate::weights::checked_f32(tensor, &name, source)?;
            Ok(tensor.to_device(like.device())?.to_dtype(like.dtype())?)
        };
        // Everything is checked before anything is replaced, so a refused state leaves the
        // optimiser as it was.
        let mut first_moments = Vec::with_capacity(self.params.len());
        let mut second_moments = Vec::with_capacity(self.params.len());
        for param in &self.params {
            first_moments.push(get(format!("adam.m.{}", param.name), &param.var)?);
            let name = format!("adam.v.{}", param.name);
            let second = get(name.clone(), &param.var)?;
            // sqrt of a negative second moment would turn the next step into NaN.
            let min = second
                .flatten_all()?
                .min(0)?
                .to_dtype(candle_core::DType::F32)?;
            let min = min
                .to_device(&candle_core::Device::Cpu)?
                .to_scalar::<f32>()?;
            if min < 0.0 {
                return Err(Error::Weights {
                    path: source.to_path_buf(),
                    message: format!(
                        "tensor `{name}` holds {min}; Adam's second moments cannot be negative"
                    ),
                });
            }
            second_moments.push(second);
        }
        let step = state.get("adam.step").ok_or_else(|| Error::MissingTensor {
            path: source.to_path_buf(),
            name: "adam.step".into(),
            expected: vec![],
        })?;
        let step = crate::weights::checked_count(step, "adam.step", source)?;
        // The bias corrections raise the betas to the step as an i32.
        if step >= i32::MAX as i64 {
            return Err(Error::Weights {
                path: source.to_path_buf(),
                message: format!(
                    "tensor `adam.step` is {step}, beyond the {} steps Adam counts",
                    i32::MAX
                ),
            });
        }
        self.first_moments = first_moments;
        self.second_moments = second_moments;
        self.step = step as u64;
        Ok(())
    }
}
