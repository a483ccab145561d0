//! Fast CPU LayerNorm over every non-batch dimension (f32 data, f64 statistics): two passes for the
//! statistics (mean, then variance) and one for the output forward, the statistics kept for the
//! backward; backward in two passes (per chunk of features, the affine gradients and each sample's
//! partial sums; then the input gradient).
//!
//! The reference composition of tensor ops converts the whole activation to f64 and back and keeps
//! several full-size temporaries for its backward; here the statistics are still accumulated in
//! f64 (PyTorch's precision: a plain f32 sum over 193,600 values drifts), but nothing else is.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::parallel::{filled, par_build, thread_count};
use super::storage::f32_arguments;

/// Values per partial sum of the statistics. The sums run over fixed chunks, added in order, so
/// the result is the same whether one thread or several compute the chunks.
const STATISTICS_CHUNK: usize = 8192;

/// `sum(f(chunk))` over the fixed chunks of `x`, in order; the chunks run on every thread when
/// `parallel`.
fn chunked_sum(x: &[f32], parallel: bool, f: impl Fn(&[f32]) -> f64 + Sync + Send) -> f64 {
    if parallel {
        let partials: Vec<f64> = x.par_chunks(STATISTICS_CHUNK).map(f).collect();
        partials.into_iter().sum()
    } else {
        x.chunks(STATISTICS_CHUNK).map(f).sum()
    }
}

/// `sum(f(v))` over `values` in f64, in eight interleaved lanes added at the end: the compiler
/// vectorises it, where one running sum is a chain of dependent adds (at about four cycles each,
/// most of a LayerNorm's time). The order is fixed, so every CPU and vector path gets the same sum.
fn lane_sum_f64(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    super::isa::vectorised(
        #[inline(always)]
        || {
            let mut lanes = [0f64; 8];
            let chunks = values.chunks_exact(8);
            let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
            for chunk in chunks {
                for (lane, &value) in lanes.iter_mut().zip(chunk) {
                    *lane += f(value as f64);
                }
            }
            lanes.iter().sum::<f64>() + tail
        },
    )
}

/// Mean and standard deviation (`sqrt(var + eps)`, biased variance) of one sample, in f64.
fn sample_statistics(x: &[f32], eps: f64, parallel: bool) -> (f64, f64) {
    let count = x.len() as f64;
    let mean = chunked_sum(x, parallel, |chunk| lane_sum_f64(chunk, |v| v)) / count;
    let variance = chunked_sum(x, parallel, |chunk| {
        lane_sum_f64(chunk, |v| (v - mean) * (v - mean))
    }) / count;
    (mean, (variance + eps).sqrt())
}

/// `rstd` and `-rstd * mean` in f32, from a sample's statistics accumulated in f64
/// ([`sample_statistics`]), rounded as PyTorch's CPU kernel rounds them: it computes `y = (x *
/// rstd + (-rstd * mean)) * gamma + beta`, one f32 operation at a time. Matching that order
/// matters: LayerNorm maps the zeros left by ReLU to values that tie exactly in the next
/// max-pool, and which element wins a tie decides where the gradient goes.
fn pytorch_scale_shift((mean, std): (f64, f64), eps: f64) -> (f32, f32) {
    let variance = (std * std - eps) as f32;
    let mean = mean as f32;
    let scale = 1.0f32 / (variance + eps as f32).sqrt();
    (scale, -scale * mean)
}

/// Each sample's mean and standard deviation ([`sample_statistics`]), the samples on every
/// thread (or, when they are fewer than the threads, each sample's sums).
fn statistics(x: &[f32], features: usize, eps: f64) -> Vec<(f64, f64)> {
    if split_samples(x.len() / features) {
        x.chunks(features)
            .map(|x| sample_statistics(x, eps, true))
            .collect()
    } else {
        x.par_chunks(features)
            .map(|x| sample_statistics(x, eps, false))
            .collect()
    }
}

/// Whether samples are too few to give each thread whole samples: then each sample's work is
/// split across the threads instead.
fn split_samples(n: usize) -> bool {
    n < thread_count()
}

fn split_len(len: usize) -> usize {
    len.div_ceil(thread_count() * 4).max(1024)
}

/// `out = (x * scale + shift) * weight + bias` over one sample or a part of it.
fn normalise(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], scale: f32, shift: f32) {
    super::isa::vectorised(
        #[inline(always)]
        || {
            for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
                // PyTorch's order of f32 operations (see `pytorch_scale_shift`).
                *o = (v * scale + shift) * w + b;
            }
        },
    )
}

/// `((x - mean) / std) * weight + bias` per sample, and each sample's statistics (kept for the
/// backward).
fn forward(x: &[f32], weight: &[f32], bias: &[f32], eps: f64) -> (Vec<f32>, Vec<(f64, f64)>) {
    let features = weight.len();
    let statistics = statistics(x, features, eps);
    let scale_shift = |sample_idx: usize| pytorch_scale_shift(statistics[sample_idx], eps);
    if !split_samples(x.len() / features) {
        let out = par_build(x.len(), features, 0.0, |sample_idx, out| {
            let x = &x[sample_idx * features..(sample_idx + 1) * features];
            let (scale, shift) = scale_shift(sample_idx);
            normalise(out, x, weight, bias, scale, shift);
        });
        return (out, statistics);
    }
    let mut out = filled(x.len(), 0f32);
    for (sample_idx, (out, x)) in out.chunks_mut(features).zip(x.chunks(features)).enumerate() {
        let (scale, shift) = scale_shift(sample_idx);
        let chunk = split_len(features);
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(weight.par_chunks(chunk).zip(bias.par_chunks(chunk)))
            .for_each(|((out, x), (weight, bias))| normalise(out, x, weight, bias, scale, shift));
    }
    (out, statistics)
}

/// Features per task of the backward's first pass, and per partial sum of its per-sample sums:
/// small enough that a 48 px network's normalisation (7,744 features) still spreads over the
/// threads. The sums run over fixed chunks, added in order, so they are the same on any number
/// of threads.
const GRADIENT_CHUNK: usize = 1024;

/// Over one chunk of features of one sample: the sums of `g = dy * w` and of `g * xhat` in f64
/// (eight interleaved lanes, as in `lane_sum_f64`), returned, and the sample's terms of the
/// weight and bias gradients (`dy * xhat`, `dy`) added onto `dw` and `db`.
fn chunk_terms(
    (x, grad, weight): (&[f32], &[f32], &[f32]),
    (mean, std): (f64, f64),
    dw: &mut [f32],
    db: &mut [f32],
) -> (f64, f64) {
    // One division, then multiplications: a division per element cost more than the rest.
    let inv_std = 1.0 / std;
    super::isa::vectorised(
        #[inline(always)]
        || {
            let mut lanes = [[0f64; 8]; 2];
            let mut sums = (0f64, 0f64);
            let term = |(v, dy, w): (f32, f32, f32), (dw, db): (&mut f32, &mut f32)| {
                let xhat = (v as f64 - mean) * inv_std;
                let g = (dy * w) as f64;
                *dw += dy * xhat as f32;
                *db += dy;
                (g, g * xhat)
            };
            let blocks = x.len() / 8 * 8;
            let (dw_blocks, dw_rest) = dw.split_at_mut(blocks);
            let (db_blocks, db_rest) = db.split_at_mut(blocks);
            for ((((x, grad), weight), dw), db) in x[..blocks]
                .chunks_exact(8)
                .zip(grad[..blocks].chunks_exact(8))
                .zip(weight[..blocks].chunks_exact(8))
                .zip(dw_blocks.chunks_exact_mut(8))
                .zip(db_blocks.chunks_exact_mut(8))
            {
                for lane in 0..8 {
                    let values = (x[lane], grad[lane], weight[lane]);
                    let (g, g_xhat) = term(values, (&mut dw[lane], &mut db[lane]));
                    lanes[0][lane] += g;
                    lanes[1][lane] += g_xhat;
                }
            }
            let rest = x[blocks..]
                .iter()
                .zip(&grad[blocks..])
                .zip(&weight[blocks..])
                .zip(dw_rest.iter_mut().zip(db_rest));
            for (((&v, &dy), &w), (dw, db)) in rest {
                let (g, g_xhat) = term((v, dy, w), (dw, db));
                sums.0 += g;
                sums.1 += g_xhat;
            }
            (
                lanes[0].iter().sum::<f64>() + sums.0,
                lanes[1].iter().sum::<f64>() + sums.1,
            )
        },
    )
}

/// One sample's (or part of one sample's) input gradient.
fn input_grad_part(
    dx: &mut [f32],
    x: &[f32],
    grad: &[f32],
    weight: &[f32],
    (mean, std): (f64, f64),
    (mean_g, mean_g_xhat): (f64, f64),
) {
    let inv_std = 1.0 / std;
    super::isa::vectorised(
        #[inline(always)]
        || {
            for (((d, &v), &dy), &w) in dx.iter_mut().zip(x).zip(grad).zip(weight) {
                let xhat = (v as f64 - mean) * inv_std;
                *d = (((dy * w) as f64 - mean_g - xhat * mean_g_xhat) * inv_std) as f32;
            }
        },
    )
}

/// Input, weight and bias gradients, concatenated (`x.len()`, then two of `weight.len()`), from
/// the forward's per-sample statistics where it kept them (else computed again). Two passes: one
/// over chunks of features (each chunk's weight and bias gradients, samples in order, and each
/// sample's partial sums), then the input gradient.
fn backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    eps: f64,
    kept: Option<&[(f64, f64)]>,
) -> Vec<f32> {
    let features = weight.len();
    let n = x.len() / features;
    let computed;
    let statistics = match kept {
        Some(kept) if kept.len() == n => kept,
        _ => {
            computed = statistics(x, features, eps);
            &computed[..]
        }
    };
    let mut out = filled(x.len() + 2 * features, 0f32);
    let (dx, affine) = out.split_at_mut(x.len());
    let (dw, db) = affine.split_at_mut(features);
    // Per chunk of features, each sample's partial sums.
    let partials: Vec<Vec<(f64, f64)>> = dw
        .par_chunks_mut(GRADIENT_CHUNK)
        .zip(db.par_chunks_mut(GRADIENT_CHUNK))
        .enumerate()
        .map(|(chunk_idx, (dw, db))| {
            let start = chunk_idx * GRADIENT_CHUNK;
            let weight = &weight[start..][..dw.len()];
            statistics
                .iter()
                .enumerate()
                .map(|(sample_idx, &statistics)| {
                    let offset = sample_idx * features + start;
                    let values = (
                        &x[offset..][..dw.len()],
                        &grad[offset..][..dw.len()],
                        weight,
                    );
                    chunk_terms(values, statistics, dw, db)
                })
                .collect()
        })
        .collect();
    let means: Vec<(f64, f64)> = (0..n)
        .map(|sample_idx| {
            let (sum_g, sum_g_xhat) = partials.iter().fold((0f64, 0f64), |a, p| {
                (a.0 + p[sample_idx].0, a.1 + p[sample_idx].1)
            });
            (sum_g / features as f64, sum_g_xhat / features as f64)
        })
        .collect();
    let samples = dx
        .chunks_mut(features)
        .zip(x.chunks(features))
        .zip(grad.chunks(features))
        .zip(statistics.iter().zip(&means));
    if split_samples(n) {
        let chunk = split_len(features);
        for (((dx, x), grad), (&statistics, &means)) in samples {
            dx.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk))
                .zip(grad.par_chunks(chunk).zip(weight.par_chunks(chunk)))
                .for_each(|((dx, x), (grad, weight))| {
                    input_grad_part(dx, x, grad, weight, statistics, means)
                });
        }
    } else {
        samples.collect::<Vec<_>>().into_par_iter().for_each(
            |(((dx, x), grad), (&statistics, &means))| {
                input_grad_part(dx, x, grad, weight, statistics, means)
            },
        );
    }
    out
}

/// Each sample's mean and standard deviation from a forward, shared with its backward.
type KeptStatistics = Arc<Vec<(f64, f64)>>;

/// LayerNorm with affine weight and bias: arguments input, weight, bias (contiguous f32), on the
/// CPU and on CUDA (`cuda.rs`).
pub(crate) struct LayerNormOp {
    pub eps: f64,
    /// The CPU forward's per-sample mean and standard deviation, which its backward needs again.
    statistics: Mutex<Option<KeptStatistics>>,
}

impl LayerNormOp {
    pub(crate) fn new(eps: f64) -> Self {
        Self {
            eps,
            statistics: Mutex::new(None),
        }
    }
}

/// What the third argument of a LayerNorm op is, and so how many values it must hold.
#[derive(Clone, Copy)]
enum ThirdArgument {
    /// The forward's bias: one value per feature, as the weight.
    Bias,
    /// The backward's output gradient: one value per input value.
    Gradient,
}

/// Samples and features per sample of a LayerNorm op's arguments: input `x`, weight `w` (the
/// affine part: one value per feature of a sample) and a third (`third`), checked.
fn samples_and_features(
    x: &Layout,
    w: &Layout,
    third: &Layout,
    kind: ThirdArgument,
) -> candle_core::Result<(usize, usize)> {
    let weight_len = w.shape().elem_count();
    let dims = x.dims();
    let features: usize = dims.iter().skip(1).product();
    if dims.is_empty() || features != weight_len || features == 0 {
        candle_core::bail!(
            "layer_norm: input {:?} does not match an affine part of {weight_len} values",
            dims
        )
    }
    let third_len = third.shape().elem_count();
    match kind {
        ThirdArgument::Bias if third_len != weight_len => {
            candle_core::bail!("layer_norm: weight of {weight_len} values but bias of {third_len}")
        }
        ThirdArgument::Gradient if third_len != x.shape().elem_count() => candle_core::bail!(
            "layer_norm backward: gradient of {third_len} values for an input of {}",
            x.shape().elem_count()
        ),
        _ => Ok((dims[0], features)),
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "dexpression-layer-norm"
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
        samples_and_features(xl, wl, bl, ThirdArgument::Bias)?;
        let [x_values, w, b] = f32_arguments(
            [(x, xl), (w, wl), (b, bl)],
            ["layer_norm input", "layer_norm weight", "layer_norm bias"],
        )?;
        let (out, statistics) = forward(x_values, w, b, self.eps);
        if let Ok(mut kept) = self.statistics.lock() {
            *kept = Some(Arc::new(statistics));
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let sizes = samples_and_features(xl, wl, bl, ThirdArgument::Bias)?;
        let out = super::cuda::layer_norm_forward([(x, xl), (w, wl), (b, bl)], sizes, self.eps)?;
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(
            w,
            &grad_res.contiguous()?,
            &LayerNormBackwardOp {
                eps: self.eps,
                statistics: self.statistics.lock().ok().and_then(|kept| kept.clone()),
            },
        )?;
        let (n_inputs, features) = (x.elem_count(), w.elem_count());
        let grad_x = all.narrow(0, 0, n_inputs)?.reshape(x.shape())?;
        let grad_w = all.narrow(0, n_inputs, features)?.reshape(w.shape())?;
        let grad_b = all
            .narrow(0, n_inputs + features, features)?
            .reshape(w.shape())?;
        Ok((Some(grad_x), Some(grad_w), Some(grad_b)))
    }
}

/// Gradients of [`LayerNormOp`], flat (input, then weight, then bias gradient): arguments input,
/// weight and output gradient.
struct LayerNormBackwardOp {
    eps: f64,
    /// The forward's per-sample statistics, where it kept them.
    statistics: Option<KeptStatistics>,
}

impl CustomOp3 for LayerNormBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        samples_and_features(xl, wl, gl, ThirdArgument::Gradient)?;
        let [x_values, w, g] = f32_arguments(
            [(x, xl), (w, wl), (g, gl)],
            [
                "layer_norm input",
                "layer_norm weight",
                "layer_norm gradient",
            ],
        )?;
        let kept = self.statistics.as_deref().map(Vec::as_slice);
        let out = backward(x_values, w, g, self.eps, kept);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (samples, features) = samples_and_features(xl, wl, gl, ThirdArgument::Gradient)?;
        let out = super::cuda::layer_norm_backward(
            [(x, xl), (w, wl), (g, gl)],
            (samples, features),
            self.eps,
        )?;
        Ok((out, Shape::from(samples * features + 2 * features)))
    }
}

#[cfg(test)]
mod tests {
    use super::{backward, forward};

    #[test]
    fn the_backward_computes_the_statistics_it_was_not_given() {
        // The forward's kept statistics and statistics computed again give the same bits, for
        // samples fewer and more than the threads.
        let features = 2_415;
        for samples in [1, 3] {
            let values = |seed: usize| -> Vec<f32> {
                (0..samples * features)
                    .map(|i| ((i * 7_919 + seed * 104_729) % 1_000) as f32 / 500.0 - 1.0)
                    .collect()
            };
            let (x, grad) = (values(1), values(2));
            let (weight, bias) = (&values(3)[..features], &values(4)[..features]);
            let (_, statistics) = forward(&x, weight, bias, 1e-5);
            let kept = backward(&x, weight, &grad, 1e-5, Some(&statistics));
            let computed = backward(&x, weight, &grad, 1e-5, None);
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&kept), bits(&computed), "{samples} samples");
            // Statistics of another batch are not taken.
            let other = backward(&x, weight, &grad, 1e-5, Some(&statistics[..samples - 1]));
            assert_eq!(
                bits(&other),
                bits(&computed),
                "{samples} samples, statistics of another batch"
            );
        }
    }
}
