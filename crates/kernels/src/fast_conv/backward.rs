//! The backward: the ReLU mask, then the weight and bias gradients (a GEMM over im2col, or
//! Winograd's F(4x4, 3x3)) and the input gradient (Winograd's F(4x4, 3x3), or a GEMM and col2im).

use rayon::prelude::*;

use super::geometry::{col2im_add, im2col, ConvGeometry, WinogradBatch};
use crate::parallel::{filled, gemm, grown, image_groups, with_spare_buffer, Gemm, Parallel};
use crate::winograd::with_scratch as with_winograd_scratch;
use crate::winograd_f4::{TransformedWeights, WinogradF4};

/// Sum of a row in eight interleaved lanes: the compiler vectorises it, where one running sum is
/// a chain of dependent scalar adds.
pub(crate) fn lane_sum(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Gradients of `relu(conv2d(x, w) + b)` in one pass over the batch: per image the output
/// gradient is masked by the ReLU output `y` into a per-thread buffer, then feeds the weight and
/// bias gradients (one GEMM over im2col; Winograd's F(4x4, 3x3) for 3x3 stride-1 kernels) and,
/// with `with_input_grad`, the input gradient (Winograd for 3x3 stride-1 kernels, else a GEMM and
/// col2im). Returns the weight and bias gradients concatenated (`c_out x col_rows`, then
/// `c_out`) and the input gradient. Nothing of the size of the whole batch is allocated but the
/// input gradient itself (on small planes, the output gradients of one call's images).
pub(crate) fn backward(
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    grad_y: &[f32],
    g: &ConvGeometry,
    with_input_grad: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let image = g.out_image();
    let output_grad = |image_idx: usize, grad: &mut [f32], parallel: bool| {
        let range = image_idx * image..(image_idx + 1) * image;
        relu_mask(grad, &y[range.clone()], &grad_y[range], parallel)
    };
    let kept = KeptTransforms::default();
    backward_from(x, weight, (&output_grad, kept), g, with_input_grad)
}

/// Writes image `image_idx`'s gradient at the convolution output (`c_out x out_plane`, after the
/// ReLU) into the buffer; the last argument says whether it may use every thread.
pub(crate) type OutputGrad<'a> = dyn Fn(usize, &mut [f32], bool) + Sync + 'a;

/// What the forward of a batched Winograd convolution kept for its backward (each computed
/// again where it is missing).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeptTransforms<'a> {
    /// The transformed input, `V`: the weight gradient's.
    pub input: Option<&'a [f32]>,
    /// The transformed weights, `U`: the input gradient's.
    pub weights: Option<&'a [f32]>,
}

/// [`backward`] with the output gradient of each image given by `output_grad`, and for a batched
/// Winograd convolution the transforms its forward kept.
pub(crate) fn backward_from(
    x: &[f32],
    weight: &[f32],
    (output_grad, kept): (&OutputGrad<'_>, KeptTransforms<'_>),
    g: &ConvGeometry,
    with_input_grad: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    if let Some(batch) = g.winograd_batch() {
        let gradients = (output_grad, kept);
        return backward_batched(x, weight, gradients, g, with_input_grad, batch);
    }
    let (plane, rows) = (g.out_plane(), g.col_rows());
    let (_, par) = image_groups(g.n);
    let parallel_inside = !matches!(par, Parallel::None);
    // The input gradient by Winograd's F(4x4, 3x3) (about 6% less time than F(2x2) for conv2b's
    // backward with AVX-512 GEMMs): the flipped, channel-swapped kernel, transformed once.
    let winograd = g.winograd().map(|winograd| {
        let swapped = WinogradF4::from(winograd.transposed());
        let transformed = swapped.transform_flipped_weights(weight);
        (swapped, transformed)
    });
    // The parameter gradients in partial sums over fixed groups of images, added in batch order:
    // the same terms in the same order whatever the thread count (a group per thread made the
    // sums, and so training, differ at float rounding between 1, 2 and 3 threads). For 3x3
    // stride-1 kernels the partial sums are in Winograd's domain, transformed back once.
    let winograd_f4 = g.winograd_f4();
    let weight_len = winograd_f4.map_or(g.c_out * rows, |winograd| winograd.transformed_len());
    let per_partial = g.n.div_ceil(PARTIAL_SUMS).max(1);
    let mut dx = if with_input_grad {
        filled(g.n * g.in_image(), 0f32)
    } else {
        Vec::new()
    };
    let dx_groups: Vec<Option<&mut [f32]>> = if with_input_grad {
        dx.chunks_mut(per_partial * g.in_image())
            .map(Some)
            .collect()
    } else {
        (0..g.n.div_ceil(per_partial)).map(|_| None).collect()
    };
    let partial = |(group_idx, (x, dx)): (usize, (&[f32], Option<&mut [f32]>))| {
        let mut sums = vec![0f32; weight_len + g.c_out];
        let (dw, db) = sums.split_at_mut(weight_len);
        let mut col = Vec::new();
        let mut dcol = Vec::new();
        let mut grad = vec![0f32; g.out_image()];
        let mut dx_images = dx.map(|dx| dx.chunks_mut(g.in_image()));
        for (image_idx, x) in x.chunks(g.in_image()).enumerate() {
            output_grad(
                group_idx * per_partial + image_idx,
                &mut grad,
                parallel_inside,
            );
            if let Some(winograd) = winograd_f4 {
                with_winograd_scratch(|scratch| {
                    winograd.accumulate_weight_grad(
                        x,
                        &grad,
                        dw,
                        image_idx > 0,
                        scratch,
                        parallel_inside,
                    )
                });
            } else {
                let cols: &[f32] = if g.is_pointwise() {
                    x
                } else {
                    im2col(x, g, &mut col);
                    &col
                };
                // dW (c_out x rows) += dY (c_out x plane) * cols^T (plane x rows).
                gemm(
                    Gemm {
                        m: g.c_out,
                        n: rows,
                        k: plane,
                        dst: dw,
                        accumulate: image_idx > 0,
                        lhs: &grad,
                        lhs_rs: plane,
                        lhs_cs: 1,
                        rhs: cols,
                        rhs_rs: 1,
                        rhs_cs: plane,
                    },
                    par,
                );
            }
            for (b, row) in db.iter_mut().zip(grad.chunks(plane)) {
                *b += lane_sum(row);
            }
            let Some(dx) = dx_images.as_mut().and_then(|images| images.next()) else {
                continue;
            };
            if let Some((swapped, transformed)) = &winograd {
                with_winograd_scratch(|scratch| {
                    let transformed = TransformedWeights::Matrices(transformed.as_slice());
                    swapped.image(&grad, transformed, None, dx, scratch, parallel_inside)
                });
                continue;
            }
            // W^T (rows x c_out): element (r, o) sits at weight[o * rows + r].
            let input_grad_into = |dst: &mut [f32]| {
                gemm(
                    Gemm {
                        m: rows,
                        n: plane,
                        k: g.c_out,
                        dst,
                        accumulate: false,
                        lhs: weight,
                        lhs_rs: 1,
                        lhs_cs: rows,
                        rhs: &grad,
                        rhs_rs: plane,
                        rhs_cs: 1,
                    },
                    par,
                )
            };
            if g.is_pointwise() {
                input_grad_into(dx);
            } else {
                dcol.resize(rows * plane, 0.0);
                input_grad_into(&mut dcol);
                col2im_add(&dcol, g, dx);
            }
        }
        sums
    };
    let groups = x
        .par_chunks(per_partial * g.in_image())
        .zip(dx_groups.into_par_iter())
        .enumerate();
    // Fewer images than threads: the groups one after the other, each image on every thread.
    let partials: Vec<Vec<f32>> = if parallel_inside {
        groups
            .collect::<Vec<_>>()
            .into_iter()
            .map(partial)
            .collect()
    } else {
        groups.map(partial).collect()
    };
    let mut total = vec![0f32; weight_len + g.c_out];
    for partial in partials {
        total
            .par_chunks_mut(1 << 14)
            .zip(partial.par_chunks(1 << 14))
            .for_each(|(total, partial)| {
                for (t, p) in total.iter_mut().zip(partial) {
                    *t += p;
                }
            });
    }
    let params = match winograd_f4 {
        Some(winograd) => {
            let mut params = vec![0f32; g.c_out * rows + g.c_out];
            winograd.weight_grad(&total[..weight_len], &mut params[..g.c_out * rows]);
            params[g.c_out * rows..].copy_from_slice(&total[weight_len..]);
            params
        }
        None => total,
    };
    (params, with_input_grad.then_some(dx))
}

/// How many partial sums of the parameter gradients [`backward_from`] splits a batch into (at
/// most; one image each below that): enough groups for 2, 4 or 8 threads to share evenly, few
/// enough that the partial sums (2.9 MiB each for conv2b in Winograd's domain) stay small.
const PARTIAL_SUMS: usize = 8;

/// [`backward_from`] for a 3x3 convolution on small planes, by Winograd over several images at
/// once (`batch`): the batch goes through in fixed groups of `batch.images` images, each group's
/// output gradients written side by side, and every step of a group spread over all threads
/// (the transforms by channel, the GEMMs by tile position). The weight gradient's GEMMs sum over
/// a whole group's tiles at once and add the groups in batch order, and the bias gradient adds
/// the images in batch order, so the result is the same on any number of threads. The input
/// gradient takes the transpose of the forward from the weight gradient's transformed output
/// gradient ([`TiledWinograd::batch_weight_grad`](crate::winograd_batch::TiledWinograd)).
fn backward_batched(
    x: &[f32],
    weight: &[f32],
    (output_grad, kept): (&OutputGrad<'_>, KeptTransforms<'_>),
    g: &ConvGeometry,
    with_input_grad: bool,
    batch: WinogradBatch,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let WinogradBatch { winograd, images } = batch;
    let (plane, out_image, in_image) = (g.out_plane(), g.out_image(), g.in_image());
    let weight_len = g.c_out * g.col_rows();
    // The input gradient by the transpose of the forward, from the same transformed output
    // gradient as the weight gradient and the forward's transformed weights where it kept them
    // (a training step does): 8-9% less time for a 48 px training step than the convolution of
    // the output gradient with the flipped kernel (Intel Xeon, 2 threads).
    let computed_weights;
    let transformed_weights = match (with_input_grad, kept.weights) {
        (false, _) => None,
        (true, Some(kept)) => Some(kept),
        (true, None) => {
            computed_weights = winograd.transform_weights(weight);
            Some(computed_weights.as_slice())
        }
    };
    let mut dx = if with_input_grad {
        filled(g.n * in_image, 0f32)
    } else {
        Vec::new()
    };
    let mut du = filled(winograd.transformed_len(), 0f32);
    let mut params = vec![0f32; weight_len + g.c_out];
    if let Some(kept) = kept.input {
        assert_eq!(
            kept.len(),
            winograd.transformed_input_len(g.n),
            "conv2d backward: a kept transformed input of another batch"
        );
    }
    let mut kept_start = 0;
    with_spare_buffer(|grad| {
        for (group_idx, x) in x.chunks(images * in_image).enumerate() {
            let (first, count) = (group_idx * images, x.len() / in_image);
            let grad = grown(grad, count * out_image);
            grad.par_chunks_mut(out_image)
                .enumerate()
                .for_each(|(image_idx, grad)| output_grad(first + image_idx, grad, false));
            let grad: &[f32] = grad;
            params[weight_len..]
                .par_iter_mut()
                .enumerate()
                .for_each(|(channel, db)| {
                    for image in grad.chunks_exact(out_image) {
                        *db += lane_sum(&image[channel * plane..][..plane]);
                    }
                });
            // The forward's transformed input of these images (the same calls, one after the
            // other), where it kept it.
            let kept_len = winograd.transformed_input_len(count);
            let kept = kept.input.map(|kept| &kept[kept_start..][..kept_len]);
            kept_start += kept_len;
            let input_grad =
                transformed_weights.map(|u| (u, &mut dx[first * in_image..][..count * in_image]));
            with_winograd_scratch(|scratch| {
                let arguments = (x, grad, count);
                let du = (du.as_mut_slice(), group_idx > 0);
                winograd.batch_weight_grad(arguments, kept, du, input_grad, scratch)
            });
        }
    });
    winograd.weight_grad(&du, &mut params[..weight_len]);
    (params, with_input_grad.then_some(dx))
}

/// `out = grad * (y > 0)` for one image, on every thread when `parallel`. Branch-free (the
/// gradient's bits and-ed with a mask from the comparison) and vectorised: a branch per value
/// mispredicted on about half the values, a ReLU's outputs being zero as often as not, and took
/// more time than the 1x1 convolutions' GEMMs (conv2a's backward at 48 px: 3.6 ms, 1.2 of them
/// the mask).
fn relu_mask(out: &mut [f32], y: &[f32], grad: &[f32], parallel: bool) {
    let mask = |((out, y), grad): ((&mut [f32], &[f32]), &[f32])| {
        crate::isa::vectorised(
            #[inline(always)]
            || {
                for ((o, y), g) in out.iter_mut().zip(y).zip(grad) {
                    let keep = ((*y > 0.0) as u32).wrapping_neg();
                    *o = f32::from_bits(g.to_bits() & keep);
                }
            },
        )
    };
    if parallel {
        out.par_chunks_mut(1 << 14)
            .zip(y.par_chunks(1 << 14))
            .zip(grad.par_chunks(1 << 14))
            .for_each(mask);
    } else {
        mask(((out, y), grad));
    }
}
