//! BatchNorm over `[N, C, H, W]` per channel: a fused CPU op, or differentiable tensor ops.
//!
//! The composition of tensor ops that BatchNorm needs in candle (a transposed f64 copy for the
//! statistics, then four broadcast ops, each with a reduction over three dimensions in its
//! backward) took several full passes over the head's input each step. The fused op makes one
//! pass for the statistics and one for the output, and its backward two: the per-channel sums,
//! then the input gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{f32_arguments, read_f32};

/// The per-channel statistics of one batch, as BatchNorm's training forward computes them (f32,
/// shape `[C]`, not tracked by autograd): the mean and the biased variance.
#[derive(Debug, Clone)]
pub struct BatchStatistics {
    /// Mean over the batch and both spatial dimensions.
    pub mean: Tensor,
    /// Biased variance (divided by the count) over the same values.
    pub variance: Tensor,
}

/// BatchNorm's training forward: normalises each channel by the batch's own mean and biased
/// variance (`eps` inside the square root), then applies `weight` and `bias` (shape `[C]`).
/// Returns the output and the statistics, from which the caller updates its running averages.
///
/// The statistics are accumulated in f64, as PyTorch's CPU kernel does: channels that are nearly
/// constant (ReLU zeros) have tiny variances that amplify any rounding difference. On the CPU in
/// f32 this is one fused op; elsewhere a composition of tensor ops.
pub fn batch_norm_train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BatchStatistics)> {
    batch_norm_train_on(xs, weight, bias, eps, super::fast_kernels_for(xs))
}

/// BatchNorm's evaluation forward: normalises each channel by the given running `mean` and
/// `variance` (shape `[C]`), then applies `weight` and `bias`. Differentiable with respect to
/// the input, the weight and the bias (Grad-CAM goes through it).
pub fn batch_norm_eval(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    statistics: &BatchStatistics,
    eps: f64,
) -> candle_core::Result<Tensor> {
    batch_norm_eval_on(
        xs,
        weight,
        bias,
        statistics,
        eps,
        super::fast_kernels_for(xs),
    )
}

/// [`batch_norm_train`] on a chosen path, so tests can compare both in one process.
pub(crate) fn batch_norm_train_on(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    fast: bool,
) -> candle_core::Result<(Tensor, BatchStatistics)> {
    if fast {
        let batch = Arc::new(Mutex::new(None));
        let op = BatchNormOp {
            eps,
            running: None,
            batch: batch.clone(),
        };
        let ys = xs
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
        let Some(stats) = batch.lock().ok().and_then(|guard| guard.clone()) else {
            candle_core::bail!("batch_norm: the forward left no statistics")
        };
        let c = stats.mean.len();
        let to_tensor = |values: Vec<f32>| Tensor::from_vec(values, c, xs.device());
        let statistics = BatchStatistics {
            mean: to_tensor(stats.mean)?,
            variance: to_tensor(stats.variance)?,
        };
        return Ok((ys, statistics));
    }
    let (_, c, _, _) = xs.dims4()?;
    let per_channel = xs.transpose(0, 1)?.reshape((c, ()))?.to_dtype(DType::F64)?;
    let mean64 = per_channel.mean_keepdim(1)?;
    let variance = per_channel
        .broadcast_sub(&mean64)?
        .sqr()?
        .mean_keepdim(1)?
        .to_dtype(xs.dtype())?;
    let mean = mean64.to_dtype(xs.dtype())?;
    let ys = normalise_composed(xs, weight, bias, &mean, &variance, eps)?;
    let statistics = BatchStatistics {
        mean: mean.detach().flatten_all()?,
        variance: variance.detach().flatten_all()?,
    };
    Ok((ys, statistics))
}

/// [`batch_norm_eval`] on a chosen path.
pub(crate) fn batch_norm_eval_on(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    statistics: &BatchStatistics,
    eps: f64,
    fast: bool,
) -> candle_core::Result<Tensor> {
    if fast {
        let read = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let op = BatchNormOp {
            eps,
            running: Some(ChannelStatistics {
                mean: read(&statistics.mean)?,
                variance: read(&statistics.variance)?,
            }),
            batch: Arc::new(Mutex::new(None)),
        };
        return xs
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    normalise_composed(
        xs,
        weight,
        bias,
        &statistics.mean.detach(),
        &statistics.variance.detach(),
        eps,
    )
}

/// `((x - mean) * inv_std) * weight + bias` by broadcast tensor ops, `inv_std = 1 / sqrt(var + eps)`.
fn normalise_composed(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    variance: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let shape = (1, xs.dim(1)?, 1, 1);
    let inv_std = (variance.reshape(shape)? + eps)?.sqrt()?.recip()?;
    xs.broadcast_sub(&mean.reshape(shape)?)?
        .broadcast_mul(&inv_std)?
        .broadcast_mul(&weight.reshape(shape)?)?
        .broadcast_add(&bias.reshape(shape)?)
}

/// Per-channel mean and biased variance in f32.
#[derive(Debug, Clone)]
struct ChannelStatistics {
    mean: Vec<f32>,
    variance: Vec<f32>,
}

impl ChannelStatistics {
    /// `1 / sqrt(var + eps)` per channel, rounded as the composed path rounds it (f32 steps).
    fn inv_std(&self, eps: f64) -> Vec<f32> {
        self.variance
            .iter()
            .map(|&v| 1.0 / (v + eps as f32).sqrt())
            .collect()
    }
}

/// The fused op: arguments input (`[N, C, H, W]`), weight and bias (`[C]`), contiguous f32.
struct BatchNormOp {
    eps: f64,
    /// The running statistics in evaluation; `None` in training (the batch's own).
    running: Option<ChannelStatistics>,
    /// The batch's statistics, written by the training forward for the caller and the backward.
    batch: Arc<Mutex<Option<ChannelStatistics>>>,
}

/// `(n, c, plane)` of an `[N, C, H, W]` layout.
fn geometry(layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    Ok((n, c, h * w))
}

/// The values of channel `channel` in an `[N, C, plane]` buffer: one run per image.
fn channel_runs(
    data: &[f32],
    (n, c, plane): (usize, usize, usize),
    channel: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |image| {
        let start = (image * c + channel) * plane;
        &data[start..start + plane]
    })
}

/// Mean and biased variance of each channel, accumulated in f64 (two passes: the mean, then the
/// squared deviations from it), rounded to f32 at the end.
fn batch_statistics(x: &[f32], dims: (usize, usize, usize)) -> ChannelStatistics {
    let (n, c, plane) = dims;
    let count = (n * plane) as f64;
    let (mean, variance): (Vec<f32>, Vec<f32>) = (0..c)
        .into_par_iter()
        .map(|channel| {
            let sum: f64 = channel_runs(x, dims, channel)
                .map(|run| run.iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / count;
            let squares: f64 = channel_runs(x, dims, channel)
                .map(|run| {
                    run.iter()
                        .map(|&v| {
                            let centred = v as f64 - mean;
                            centred * centred
                        })
                        .sum::<f64>()
                })
                .sum();
            (mean as f32, (squares / count) as f32)
        })
        .unzip();
    ChannelStatistics { mean, variance }
}

/// `out = ((x - mean) * inv_std) * weight + bias`, channel by channel, in the composed path's
/// order of f32 operations.
fn normalise(
    x: &[f32],
    dims: (usize, usize, usize),
    stats: &ChannelStatistics,
    inv_std: &[f32],
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let (_, c, plane) = dims;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(index, (out, x))| {
            let channel = index % c;
            let (mean, inv_std) = (stats.mean[channel], inv_std[channel]);
            let (w, b) = (weight[channel], bias[channel]);
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (v - mean) * inv_std * w + b;
            }
        });
    out
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "dexpression-batch-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = geometry(xl)?;
        let [x, w, b] = f32_arguments(
            [(x, xl), (w, wl), (b, bl)],
            ["batch_norm input", "batch_norm weight", "batch_norm bias"],
        )?;
        let c = dims.1;
        if w.len() != c || b.len() != c {
            candle_core::bail!(
                "batch_norm: weight of {} and bias of {} values for {c} channels",
                w.len(),
                b.len()
            )
        }
        let stats = match &self.running {
            Some(running) if running.mean.len() == c && running.variance.len() == c => {
                running.clone()
            }
            Some(running) => candle_core::bail!(
                "batch_norm: running statistics of {} values for {c} channels",
                running.mean.len()
            ),
            None => batch_statistics(x, dims),
        };
        let out = normalise(x, dims, &stats, &stats.inv_std(self.eps), w, b);
        if self.running.is_none() {
            if let Ok(mut guard) = self.batch.lock() {
                *guard = Some(stats);
            }
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = match &self.running {
            Some(running) => running.clone(),
            None => match self.batch.lock().ok().and_then(|guard| guard.clone()) {
                Some(stats) => stats,
                None => candle_core::bail!("batch_norm: backward before forward"),
            },
        };
        let grad_res = grad_res.contiguous()?;
        let (dx, dw, db) = {
            let (x_storage, x_layout) = x.storage_and_layout();
            let (w_storage, w_layout) = w.storage_and_layout();
            let (g_storage, g_layout) = grad_res.storage_and_layout();
            let dims = geometry(x_layout)?;
            backward(
                read_f32(&x_storage, x_layout, "batch_norm input")?,
                read_f32(&w_storage, w_layout, "batch_norm weight")?,
                read_f32(&g_storage, g_layout, "batch_norm output gradient")?,
                dims,
                &stats,
                &stats.inv_std(self.eps),
                self.running.is_none(),
            )
        };
        let c = dw.len();
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(dx, x.shape(), x.device()));
        Ok((
            dx.transpose()?,
            Some(Tensor::from_vec(dw, c, w.device())?),
            Some(Tensor::from_vec(db, c, w.device())?),
        ))
    }
}

/// The gradients of BatchNorm: per channel `db = sum(dy)`, `dw = sum(dy * x_hat)`, and
/// `dx = w * inv_std * (dy - [sum(dy) + x_hat * sum(dy * x_hat)] / count)` when the statistics
/// are the batch's own (`through_statistics`), `dx = w * inv_std * dy` when they are fixed.
/// Sums in f64.
fn backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dims: (usize, usize, usize),
    stats: &ChannelStatistics,
    inv_std: &[f32],
    through_statistics: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, c, plane) = dims;
    let count = (n * plane) as f64;
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|channel| {
            let (mean, inv_std) = (stats.mean[channel] as f64, inv_std[channel] as f64);
            let mut sum_dy = 0f64;
            let mut sum_dy_xhat = 0f64;
            for (x, dy) in channel_runs(x, dims, channel).zip(channel_runs(dy, dims, channel)) {
                for (&v, &g) in x.iter().zip(dy) {
                    sum_dy += g as f64;
                    sum_dy_xhat += g as f64 * (v as f64 - mean) * inv_std;
                }
            }
            (sum_dy_xhat, sum_dy)
        })
        .collect();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(plane)
        .zip(x.par_chunks(plane).zip(dy.par_chunks(plane)))
        .enumerate()
        .for_each(|(index, (dx, (x, dy)))| {
            let channel = index % c;
            let (mean, inv_std) = (stats.mean[channel] as f64, inv_std[channel] as f64);
            let scale = weight[channel] as f64 * inv_std;
            if !through_statistics {
                for (d, &g) in dx.iter_mut().zip(dy) {
                    *d = (scale * g as f64) as f32;
                }
                return;
            }
            let (sum_dy_xhat, sum_dy) = sums[channel];
            let (mean_dy, mean_dy_xhat) = (sum_dy / count, sum_dy_xhat / count);
            for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
                let x_hat = (v as f64 - mean) * inv_std;
                *d = (scale * (g as f64 - mean_dy - x_hat * mean_dy_xhat)) as f32;
            }
        });
    let dw = sums
        .iter()
        .map(|&(sum_dy_xhat, _)| sum_dy_xhat as f32)
        .collect();
    let db = sums.iter().map(|&(_, sum_dy)| sum_dy as f32).collect();
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn input(n: usize, c: usize, side: usize, seed: u64) -> Tensor {
        // A fixed, uneven pattern with a few constant (ReLU-like zero) stretches.
        let len = n * c * side * side;
        let values: Vec<f32> = (0..len)
            .map(|i| {
                let t = (i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 1000;
                let v = t as f32 / 250.0 - 1.5;
                if i % 7 == 0 {
                    0.0
                } else {
                    v.max(0.0) * (1.0 + (i % c) as f32)
                }
            })
            .collect();
        Tensor::from_vec(values, (n, c, side, side), &Device::Cpu).unwrap()
    }

    fn params(c: usize) -> (Var, Var) {
        let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.2).collect();
        (
            Var::from_vec(w, c, &Device::Cpu).unwrap(),
            Var::from_vec(b, c, &Device::Cpu).unwrap(),
        )
    }

    fn max_relative(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// Forward, statistics and every gradient of the fused op against the composition of
    /// tensor ops, in training and in evaluation, with a loss that weights outputs unevenly.
    #[test]
    fn fused_batch_norm_matches_the_composition_with_gradients() {
        let (n, c, side) = (3, 4, 5);
        let weighting = input(n, c, side, 99);
        for train in [true, false] {
            let mut results = Vec::new();
            for fast in [true, false] {
                let x = Var::from_tensor(&input(n, c, side, 7)).unwrap();
                let (w, b) = params(c);
                let running = BatchStatistics {
                    mean: Tensor::new(&[0.5f32, -0.25, 1.0, 0.0], &Device::Cpu).unwrap(),
                    variance: Tensor::new(&[2.0f32, 0.5, 1.5, 1e-3], &Device::Cpu).unwrap(),
                };
                let (ys, stats) = if train {
                    let (ys, stats) = batch_norm_train_on(
                        x.as_tensor(),
                        w.as_tensor(),
                        b.as_tensor(),
                        1e-5,
                        fast,
                    )
                    .unwrap();
                    (ys, Some(stats))
                } else {
                    let ys = batch_norm_eval_on(
                        x.as_tensor(),
                        w.as_tensor(),
                        b.as_tensor(),
                        &running,
                        1e-5,
                        fast,
                    )
                    .unwrap();
                    (ys, None)
                };
                let loss = (&ys * &weighting).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                results.push((ys.clone(), stats, grad(&x), grad(&w), grad(&b)));
            }
            let (fast, reference) = (&results[0], &results[1]);
            assert!(
                max_relative(&fast.0, &reference.0) < 1e-6,
                "train {train}: forward"
            );
            if let (Some(f), Some(r)) = (&fast.1, &reference.1) {
                assert!(max_relative(&f.mean, &r.mean) < 1e-6);
                assert!(max_relative(&f.variance, &r.variance) < 1e-6);
            }
            for (what, f, r) in [
                ("input", &fast.2, &reference.2),
                ("weight", &fast.3, &reference.3),
                ("bias", &fast.4, &reference.4),
            ] {
                let error = max_relative(f, r);
                assert!(
                    error < 1e-5,
                    "train {train}: {what} gradient off by {error}"
                );
            }
        }
    }

    /// Normalised by its own statistics, each channel of the training output has the bias as its
    /// mean and the weight as its standard deviation.
    #[test]
    fn training_output_has_the_affine_parameters_as_its_moments() {
        let (n, c, side) = (4, 4, 6);
        let (w, b) = params(c);
        let (ys, _) = batch_norm_train_on(
            &input(n, c, side, 3),
            w.as_tensor(),
            b.as_tensor(),
            0.0,
            true,
        )
        .unwrap();
        let per_channel = ys
            .transpose(0, 1)
            .unwrap()
            .reshape((c, ()))
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let mean = per_channel.mean_keepdim(1).unwrap();
        let std = per_channel
            .broadcast_sub(&mean)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_keepdim(1)
            .unwrap()
            .sqrt()
            .unwrap();
        let mean = mean.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let std = std.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let w = w.as_tensor().to_vec1::<f32>().unwrap();
        let b = b.as_tensor().to_vec1::<f32>().unwrap();
        for channel in 0..c {
            assert!((mean[channel] - b[channel] as f64).abs() < 1e-5, "{mean:?}");
            assert!((std[channel] - w[channel] as f64).abs() < 1e-4, "{std:?}");
        }
    }
}
