//! Per-epoch metrics: accuracy, mean loss over samples and per-class recall.
//!
//! The PyTorch port averaged the per-batch mean losses, which gives a short last batch as much
//! weight as a full one; here every sample counts once (the mean of all per-sample losses).

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::Result;

/// The metrics of one pass over a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Share of correct predictions, in percent.
    pub accuracy: f64,
    /// Mean negative log-likelihood per sample.
    pub loss: f64,
    /// Per class: share of its samples predicted as it, in percent (NaN-free: `null` when the
    /// class has no sample).
    pub recall: Vec<Option<f64>>,
    /// Predicted class of each sample, in the order seen.
    pub predictions: Vec<usize>,
    /// True class of each sample, paired with `predictions`.
    pub truths: Vec<usize>,
}

/// Collects batches into [`Metrics`].
#[derive(Debug, Default)]
pub(crate) struct MetricsAccumulator {
    loss_sum: f64,
    predictions: Vec<usize>,
    truths: Vec<usize>,
}

impl MetricsAccumulator {
    /// Adds a batch: its log-probabilities (`n x classes`), its targets and its mean loss.
    pub fn add_batch(
        &mut self,
        log_probabilities: &Tensor,
        targets: &[u32],
        mean_loss: f32,
    ) -> Result<()> {
        let predicted = log_probabilities
            .argmax(D::Minus1)?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<u32>()?;
        self.predictions
            .extend(predicted.iter().map(|&p| p as usize));
        self.truths.extend(targets.iter().map(|&t| t as usize));
        self.loss_sum += f64::from(mean_loss) * targets.len() as f64;
        Ok(())
    }

    /// The metrics of everything added, for `n_classes` classes.
    pub fn finish(self, n_classes: usize) -> Metrics {
        let n = self.truths.len();
        let correct = self
            .predictions
            .iter()
            .zip(&self.truths)
            .filter(|(p, t)| p == t)
            .count();
        let recall = (0..n_classes)
            .map(|class| {
                let of_class = self.truths.iter().filter(|&&t| t == class).count();
                let hits = self
                    .predictions
                    .iter()
                    .zip(&self.truths)
                    .filter(|&(&p, &t)| t == class && p == class)
                    .count();
                (of_class > 0).then(|| 100.0 * hits as f64 / of_class as f64)
            })
            .collect();
        Metrics {
            accuracy: if n == 0 {
                0.0
            } else {
                100.0 * correct as f64 / n as f64
            },
            loss: if n == 0 {
                0.0
            } else {
                self.loss_sum / n as f64
            },
            recall,
            predictions: self.predictions,
            truths: self.truths,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_loss_and_recall_count_every_sample_once() {
        let device = candle_core::Device::Cpu;
        let mut acc = MetricsAccumulator::default();
        // Rows predict classes 0, 1, 1.
        let logp = Tensor::new(&[[0.0f32, -5.0], [-5.0, 0.0], [-5.0, 0.0]], &device).unwrap();
        acc.add_batch(&logp, &[0, 1, 0], 2.0).unwrap();
        let logp = Tensor::new(&[[0.0f32, -5.0]], &device).unwrap();
        acc.add_batch(&logp, &[0], 6.0).unwrap();
        let metrics = acc.finish(3);
        assert_eq!(metrics.accuracy, 75.0);
        assert_eq!(metrics.loss, 3.0); // (2 * 3 + 6 * 1) / 4, not (2 + 6) / 2.
        assert_eq!(
            metrics.recall,
            vec![Some(100.0 * 2.0 / 3.0), Some(100.0), None]
        );
        assert_eq!(metrics.predictions, vec![0, 1, 1, 0]);
    }
}
