//! Fast CPU LayerNorm over every non-batch dimension (f32 data, f64 statistics): one pass for the
//! statistics and one for the output forward; backward in two passes (input gradient per sample,
//! then the affine gradients per feature).
//!
//! The reference composition of tensor ops converts the whole activation to f64 and back and keeps
//! several full-size temporaries for its backward; here the statistics are still accumulated in
//! f64 (PyTorch's precision: a plain f32 sum over 193,600 values drifts), but nothing else is.

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

/// `rstd` and `-rstd * mean` in f32, from statistics accumulated in f64, rounded as PyTorch's CPU
/// kernel rounds them: it computes `y = (x * rstd + (-rstd * mean)) * gamma + beta`, one f32
/// operation at a time. Matching that order matters: LayerNorm maps the zeros left by ReLU to
/// values that tie exactly in the next max-pool, and which element wins a tie decides where the
/// gradient goes.
fn pytorch_scale_shift(x: &[f32], eps: f64, parallel: bool) -> (f32, f32) {
    let (mean, std) = sample_statistics(x, eps, parallel);
    let variance = (std * std - eps) as f32;
    let mean = mean as f32;
    let scale = 1.0f32 / (variance + eps as f32).sqrt();
    (scale, -scale * mean)
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

/// `((x - mean) / std) * weight + bias` per sample.
fn forward(x: &[f32], weight: &[f32], bias: &[f32], eps: f64) -> Vec<f32> {
    let features = weight.len();
    if !split_samples(x.len() / features) {
        return par_build(x.len(), features, 0.0, |sample_idx, out| {
            let x = &x[sample_idx * features..(sample_idx + 1) * features];
            let (scale, shift) = pytorch_scale_shift(x, eps, false);
            normalise(out, x, weight, bias, scale, shift);
        });
    }
    let mut out = filled(x.len(), 0f32);
    for (out, x) in out.chunks_mut(features).zip(x.chunks(features)) {
        let (scale, shift) = pytorch_scale_shift(x, eps, true);
        let chunk = split_len(features);
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(weight.par_chunks(chunk).zip(bias.par_chunks(chunk)))
            .for_each(|((out, x), (weight, bias))| normalise(out, x, weight, bias, scale, shift));
    }
    out
}

/// Sums of `g = dy * w` and of `g * xhat` over one sample, in f64.
fn gradient_sums(
    x: &[f32],
    grad: &[f32],
    weight: &[f32],
    (mean, std): (f64, f64),
    parallel: bool,
) -> (f64, f64) {
    // One division, then multiplications: a division per element cost more than the rest.
    let inv_std = 1.0 / std;
    let chunk_sums = |chunk_idx: usize| {
        let range = chunk_idx * STATISTICS_CHUNK..((chunk_idx + 1) * STATISTICS_CHUNK).min(x.len());
        let terms = |(&v, &dy): (&f32, &f32), &w: &f32| {
            let g = (dy * w) as f64;
            (g, g * ((v as f64 - mean) * inv_std))
        };
        // Eight interleaved lanes of each sum, as in `lane_sum_f64`.
        super::isa::vectorised(
            #[inline(always)]
            || {
                let (x, grad, weight) = (&x[range.clone()], &grad[range.clone()], &weight[range]);
                let mut lanes = [[0f64; 8]; 2];
                let mut sums = (0f64, 0f64);
                let blocks = x.len() / 8 * 8;
                for ((x, grad), weight) in x[..blocks]
                    .chunks_exact(8)
                    .zip(grad[..blocks].chunks_exact(8))
                    .zip(weight[..blocks].chunks_exact(8))
                {
                    for lane in 0..8 {
                        let (g, g_xhat) = terms((&x[lane], &grad[lane]), &weight[lane]);
                        lanes[0][lane] += g;
                        lanes[1][lane] += g_xhat;
                    }
                }
                for ((v, dy), w) in x[blocks..]
                    .iter()
                    .zip(&grad[blocks..])
                    .zip(&weight[blocks..])
                {
                    let (g, g_xhat) = terms((v, dy), w);
                    sums.0 += g;
                    sums.1 += g_xhat;
                }
                (
                    lanes[0].iter().sum::<f64>() + sums.0,
                    lanes[1].iter().sum::<f64>() + sums.1,
                )
            },
        )
    };
    let n_chunks = x.len().div_ceil(STATISTICS_CHUNK);
    let partials: Vec<(f64, f64)> = if parallel {
        (0..n_chunks).into_par_iter().map(chunk_sums).collect()
    } else {
        (0..n_chunks).map(chunk_sums).collect()
    };
    partials
        .into_iter()
        .fold((0f64, 0f64), |a, b| (a.0 + b.0, a.1 + b.1))
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

/// Input, weight and bias gradients, concatenated (`x.len()`, then two of `weight.len()`).
fn backward(x: &[f32], weight: &[f32], grad: &[f32], eps: f64) -> Vec<f32> {
    let features = weight.len();
    let n = x.len() / features;
    let mut out = filled(x.len() + 2 * features, 0f32);
    let (dx, affine) = out.split_at_mut(x.len());
    let one_sample = |dx: &mut [f32], x: &[f32], grad: &[f32], parallel: bool| {
        let statistics = sample_statistics(x, eps, parallel);
        let (sum_g, sum_g_xhat) = gradient_sums(x, grad, weight, statistics, parallel);
        let means = (sum_g / features as f64, sum_g_xhat / features as f64);
        if parallel {
            let chunk = split_len(features);
            dx.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk))
                .zip(grad.par_chunks(chunk).zip(weight.par_chunks(chunk)))
                .for_each(|((dx, x), (grad, weight))| {
                    input_grad_part(dx, x, grad, weight, statistics, means)
                });
        } else {
            input_grad_part(dx, x, grad, weight, statistics, means);
        }
        statistics
    };
    let statistics: Vec<(f64, f64)> = if split_samples(n) {
        dx.chunks_mut(features)
            .zip(x.chunks(features))
            .zip(grad.chunks(features))
            .map(|((dx, x), grad)| one_sample(dx, x, grad, true))
            .collect()
    } else {
        dx.par_chunks_mut(features)
            .zip(x.par_chunks(features))
            .zip(grad.par_chunks(features))
            .map(|((dx, x), grad)| one_sample(dx, x, grad, false))
            .collect()
    };
    let (dw, db) = affine.split_at_mut(features);
    let chunk = split_len(features);
    dw.par_chunks_mut(chunk)
        .zip(db.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(chunk_idx, (dw, db))| {
            let start = chunk_idx * chunk;
            for (sample_idx, &(mean, std)) in statistics.iter().enumerate() {
                let inv_std = 1.0 / std;
                let offset = sample_idx * features + start;
                let x = &x[offset..offset + dw.len()];
                let grad = &grad[offset..offset + dw.len()];
                super::isa::vectorised(
                    #[inline(always)]
                    || {
                        for (((w, b), &v), &dy) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(grad)
                        {
                            let xhat = ((v as f64 - mean) * inv_std) as f32;
                            *w += dy * xhat;
                            *b += dy;
                        }
                    },
                )
            }
        });
    out
}

/// LayerNorm with affine weight and bias: arguments input, weight, bias (contiguous f32), on the
/// CPU and on CUDA (`cuda.rs`).
pub(crate) struct LayerNormOp {
    pub eps: f64,
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
        Ok((
            CpuStorage::F32(forward(x_values, w, b, self.eps)),
            xl.shape().clone(),
        ))
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
            &LayerNormBackwardOp { eps: self.eps },
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
        let out = backward(x_values, w, g, self.eps);
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
