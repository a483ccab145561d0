//! One FeatEx block (Burkert et al.'s parallel feature extraction), and on the CPU for inference
//! the whole block as one op.
//!
//! The block is `cat(pool(relu(conv_b(relu(conv_a(x))))), pool(relu(conv_c(keep_pool(x)))))`
//! over channels. Composed of the network's ops, an inference writes five full-size tensors per
//! block (conv_a's output, the pooled input, conv_c's output, the pooled branch, the
//! concatenation) and each pool records its windows' maxima for a backward that never comes. As
//! one op, each image's intermediates live in per-thread buffers of a few hundred KiB, and each
//! branch is pooled straight into its channels of the output. Where the 3x3 convolution runs over
//! several images at once (small planes, a batch of enough tiles: `winograd_batch.rs`), the
//! block goes in three steps over the batch instead (every image's reduction, the conv branch of
//! all of them, each image's pool branch). Either way the kernels are the ones the composed ops
//! run, in the same order, so the output is the same bit for bit on any CPU (checked by
//! `feat_ex_inference_equals_the_composed_block_bit_for_bit`), except that a batched 3x3
//! convolution takes F(6x6, 3x3) here where its plane needs fewer products that way
//! ([`ConvGeometry::inference_winograd_batch`]) and the composed ops, a training step's, keep
//! F(4x4, 3x3) (`Tiling::for_training`: outside planes of 13 to 24 pixels): there the two agree
//! within 1e-5 of the output's scale.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{conv2d_relu, conv2d_relu_max_pool2d_on};
use super::fast_conv::{forward, forward_image, ConvGeometry, WinogradBatch};
use super::fast_conv_pool::{ConvPoolGeometry, ConvWeights};
use super::max_pool::{max_pool2d, pool_planes, Pool2d, NO_OFFSET};
use super::parallel::{filled, grown, image_groups, with_spare_buffer, Parallel};
use super::storage::{contiguous_f32, read_f32};
use super::winograd_f4::WeightCache;

/// A convolution with bias as a FeatEx block holds it (PyTorch's `nn.Conv2d`, square kernel).
#[derive(Debug, Clone, Copy)]
pub struct ConvLayer<'a> {
    /// `c_out x c_in x k x k`.
    pub weight: &'a Tensor,
    /// `c_out`.
    pub bias: &'a Tensor,
    /// Step between windows.
    pub stride: usize,
    /// Zero border on each side.
    pub padding: usize,
}

/// One FeatEx block: `reduce` (conv2a / conv3a) feeds `conv` (conv2b / conv3b); `pooled`
/// (conv2c / conv3c) convolves the input pooled by `keep`; both branches, after their ReLU, are
/// pooled by `out_pool` and concatenated, `conv`'s channels first.
#[derive(Debug, Clone, Copy)]
pub struct FeatEx<'a> {
    /// The 1x1 convolution that reduces the channels before `conv`.
    pub reduce: ConvLayer<'a>,
    /// The 3x3 convolution of the first branch.
    pub conv: ConvLayer<'a>,
    /// The convolution of the pooled branch.
    pub pooled: ConvLayer<'a>,
    /// The pool of the input that feeds `pooled` (3x3, stride 1, padding 1 in DeXpression).
    pub keep: Pool2d,
    /// The pool of both branches' outputs (3x3, stride 2 in DeXpression).
    pub out_pool: Pool2d,
    /// Where the Winograd transform of `conv`'s weights is kept between forwards (the caller's,
    /// see [`WeightCache`]); `None` transforms them at every forward.
    pub cache: Option<&'a WeightCache>,
}

/// One FeatEx block on `xs` (`N x C x H x W`). Training (`train`) composes the network's
/// differentiable ops. For inference on the fast CPU kernels the block runs as one op that keeps
/// no intermediates and no autograd graph (a backward through it fails and says so: take
/// gradients of a training-mode forward, or detach the activation you explain, as Grad-CAM does);
/// elsewhere inference composes the ops as training does.
pub fn feat_ex(xs: &Tensor, block: &FeatEx<'_>, train: bool) -> candle_core::Result<Tensor> {
    if !train && super::fast_kernels_for(xs) {
        xs.contiguous()?.apply_op1(FeatExInferenceOp::new(block)?)
    } else {
        feat_ex_composed(xs, block)
    }
}

/// The block composed of the network's ops (the same in training and inference).
pub(super) fn feat_ex_composed(xs: &Tensor, block: &FeatEx<'_>) -> candle_core::Result<Tensor> {
    let conv_relu = |xs: &Tensor, layer: &ConvLayer<'_>| {
        let ConvLayer {
            weight,
            bias,
            stride,
            padding,
        } = *layer;
        conv2d_relu(xs, weight, bias, stride, padding)
    };
    let reduced = conv_relu(xs, &block.reduce)?;
    let pool_branch = conv_relu(&max_pool2d(xs, block.keep)?, &block.pooled)?;
    // The conv branch's convolution, ReLU and pool run as one op: its full-size output (80 MiB
    // for conv2b at batch 32) and that output's gradient never exist, which saves far more than
    // the copy of the (pooled, a quarter as large) concatenation costs. Pooling works channel by
    // channel, so pooling each branch and concatenating equals the port's pool of the
    // concatenation.
    let conv = &block.conv;
    let conv_branch = conv2d_relu_max_pool2d_on(
        &reduced,
        conv.weight,
        conv.bias,
        (conv.stride, conv.padding),
        block.out_pool,
        super::fast_kernels_for(xs),
        block.cache,
    )?;
    Tensor::cat(
        &[&conv_branch, &max_pool2d(&pool_branch, block.out_pool)?],
        1,
    )
}

/// The inference op; its tensors are detached copies of the block's (the same storage).
struct FeatExInferenceOp {
    layers: [(Tensor, Tensor, usize, usize); 3],
    keep: Pool2d,
    out_pool: Pool2d,
    cache: Option<WeightCache>,
}

impl FeatExInferenceOp {
    fn new(block: &FeatEx<'_>) -> candle_core::Result<Self> {
        let layer = |layer: &ConvLayer<'_>| -> candle_core::Result<_> {
            Ok((
                layer.weight.detach().contiguous()?,
                layer.bias.detach().contiguous()?,
                layer.stride,
                layer.padding,
            ))
        };
        Ok(Self {
            layers: [
                layer(&block.reduce)?,
                layer(&block.conv)?,
                layer(&block.pooled)?,
            ],
            keep: block.keep,
            out_pool: block.out_pool,
            cache: block.cache.cloned(),
        })
    }
}

/// The shapes of one block's three convolutions and its pools.
struct FeatExGeometry {
    reduce: ConvGeometry,
    conv: ConvPoolGeometry,
    pooled: ConvPoolGeometry,
    keep: Pool2d,
}

impl FeatExGeometry {
    fn new(x_dims: &[usize], op: &FeatExInferenceOp) -> candle_core::Result<Self> {
        let [(wa, _, sa, pa), (wb, _, sb, pb), (wc, _, sc, pc)] = &op.layers;
        let reduce = ConvGeometry::new(x_dims, wa.dims(), *sa, *pa)?;
        let reduced = [reduce.n, reduce.c_out, reduce.out_h(), reduce.out_w()];
        let conv = ConvPoolGeometry {
            conv: ConvGeometry::new(&reduced, wb.dims(), *sb, *pb)?,
            pool: op.out_pool,
        };
        let [n, c, h, w] = [x_dims[0], x_dims[1], x_dims[2], x_dims[3]];
        if !op.keep.fits(h, w) {
            candle_core::bail!(
                "feat_ex: a {h}x{w} input does not fit the pool {:?}",
                op.keep
            )
        }
        let kept = [n, c, op.keep.out_side(h), op.keep.out_side(w)];
        let pooled = ConvPoolGeometry {
            conv: ConvGeometry::new(&kept, wc.dims(), *sc, *pc)?,
            pool: op.out_pool,
        };
        conv.check()?;
        pooled.check()?;
        let sides = |g: &ConvPoolGeometry| (g.pooled_h(), g.pooled_w());
        if sides(&conv) != sides(&pooled) {
            candle_core::bail!(
                "feat_ex: the branches' pooled outputs differ in size, {:?} and {:?}; \
                 their convolutions must keep the same side",
                sides(&conv),
                sides(&pooled)
            )
        }
        Ok(Self {
            reduce,
            conv,
            pooled,
            keep: op.keep,
        })
    }

    /// Values of one output image: both branches' channels, pooled.
    fn out_image(&self) -> usize {
        self.conv.pooled_image() + self.pooled.pooled_image()
    }

    /// Bytes of window offsets one image's pools record (discarded: inference has no backward).
    fn offsets_len(&self) -> usize {
        let kept = &self.pooled.conv;
        self.out_image().max(kept.c_in * kept.h * kept.w)
    }

    /// One image `x` into `out`; `weights` in the order reduce, conv, pooled. Spread over the
    /// threads (`par` not `None`, a batch smaller than the thread count), the two branches run
    /// side by side, each spreading its own steps: a thread left waiting at the end of a conv
    /// branch's step takes work from the pool branch (at batch 1 and 48 px, 1.01-1.04 times
    /// faster over three runs of 300 pairs, Intel Xeon, 2 threads). Each value is computed as
    /// before, by one thread.
    fn image(
        &self,
        x: &[f32],
        weights: &[ConvWeights<'_>; 3],
        out: &mut [f32],
        offsets: &mut [u8],
        par: Parallel,
    ) {
        let [reduce, conv, _] = weights;
        let (conv_out, pooled_out) = out.split_at_mut(self.conv.pooled_image());
        let mut conv_branch = |offsets: &mut [u8]| {
            with_spare_buffer(|buffer| {
                let g = &self.reduce;
                let reduced = grown(buffer, g.out_image());
                with_spare_buffer(|col| {
                    forward_image(x, reduce.weight, reduce.bias, g, reduced, col, par)
                });
                self.conv.image(reduced, conv, conv_out, offsets, par);
            })
        };
        if matches!(par, Parallel::None) {
            conv_branch(offsets);
            self.pool_branch(x, weights, pooled_out, offsets, par);
            return;
        }
        // The offsets are discarded, but each branch needs its own to write.
        let mut pool_offsets = vec![NO_OFFSET; offsets.len()];
        rayon::join(
            || conv_branch(offsets),
            || self.pool_branch(x, weights, pooled_out, &mut pool_offsets, par),
        );
    }

    /// The pool branch of one image `x` into `out` (its channels of the block's output).
    fn pool_branch(
        &self,
        x: &[f32],
        weights: &[ConvWeights<'_>; 3],
        out: &mut [f32],
        offsets: &mut [u8],
        par: Parallel,
    ) {
        with_spare_buffer(|buffer| {
            let kept = &self.pooled.conv;
            let kept_input = grown(buffer, kept.in_image());
            let parallel = !matches!(par, Parallel::None);
            let (h, w) = (self.reduce.h, self.reduce.w);
            pool_planes(x, (h, w), self.keep, kept_input, offsets, parallel);
            self.pooled
                .image(kept_input, &weights[2], out, offsets, par);
        })
    }

    /// The whole batch `x` (`n` images) into `out`, the conv branch by Winograd over several
    /// images at once (`batch`): the reduction of every image, then the conv branch of every
    /// image (the kernels, and so the values, of the training step's composed ops), then each
    /// image's pool branch.
    fn batch(
        &self,
        x: &[f32],
        weights: &[ConvWeights<'_>; 3],
        out: &mut [f32],
        batch: WinogradBatch,
    ) {
        let [reduce, conv, _] = weights;
        let n = self.reduce.n;
        let reduced = forward(x, reduce.weight, reduce.bias, &self.reduce);
        let conv_image = self.conv.pooled_image();
        let mut conv_out = filled(n * conv_image, 0f32);
        // No window offsets: an inference has no backward.
        self.conv
            .batch(&reduced, conv, (&mut conv_out, None), None, batch);
        let (in_image, out_image) = (self.reduce.in_image(), self.out_image());
        let (per_task, par) = images_per_task(n);
        out.par_chunks_mut(per_task * out_image)
            .zip(x.par_chunks(per_task * in_image))
            .zip(conv_out.par_chunks(per_task * conv_image))
            .for_each_init(
                || vec![NO_OFFSET; self.offsets_len()],
                |offsets, ((out, x), conv_out)| {
                    for ((out, x), conv_out) in out
                        .chunks_mut(out_image)
                        .zip(x.chunks(in_image))
                        .zip(conv_out.chunks(conv_image))
                    {
                        let (conv_part, pooled_part) = out.split_at_mut(conv_image);
                        conv_part.copy_from_slice(conv_out);
                        self.pool_branch(x, weights, pooled_part, offsets, par);
                    }
                },
            );
    }
}

/// Images a parallel task of the block's inference takes, and the parallelism inside an image:
/// with at least one image per thread, one image a task (a thread that runs ahead takes more),
/// each on one thread; below that, all of them in one task, each image over every thread.
fn images_per_task(n: usize) -> (usize, Parallel) {
    let (per_group, par) = image_groups(n);
    match par {
        Parallel::None => (1, par),
        _ => (per_group, par),
    }
}

impl CustomOp1 for FeatExInferenceOp {
    fn name(&self) -> &'static str {
        "dexpression-feat-ex-inference"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geometry = FeatExGeometry::new(layout.dims(), self)?;
        let x = contiguous_f32(storage, layout, "feat_ex input")?;
        let guards = self
            .layers
            .each_ref()
            .map(|(weight, bias, _, _)| (weight.storage_and_layout(), bias.storage_and_layout()));
        let conv_geometries = [&geometry.reduce, &geometry.conv.conv, &geometry.pooled.conv];
        let weights_of = |layer: usize| -> candle_core::Result<ConvWeights<'_>> {
            let ((weight, weight_layout), (bias, bias_layout)) = &guards[layer];
            let g = conv_geometries[layer];
            let weight = read_f32(weight, weight_layout, "feat_ex weight")?;
            let bias = read_f32(bias, bias_layout, "feat_ex bias")?;
            g.check_bias(bias)?;
            let batch = (g, g.inference_winograd_batch());
            Ok(ConvWeights::for_inference(
                batch,
                weight,
                bias,
                self.cache.as_ref(),
            ))
        };
        let weights = [weights_of(0)?, weights_of(1)?, weights_of(2)?];

        let n = geometry.reduce.n;
        let (in_image, out_image) = (geometry.reduce.in_image(), geometry.out_image());
        let mut out = filled(n * out_image, 0f32);
        let (pooled_h, pooled_w) = (geometry.conv.pooled_h(), geometry.conv.pooled_w());
        let channels = geometry.conv.conv.c_out + geometry.pooled.conv.c_out;
        let shape = Shape::from((n, channels, pooled_h, pooled_w));
        if let Some(batch) = geometry.conv.conv.inference_winograd_batch() {
            geometry.batch(x, &weights, &mut out, batch);
            return Ok((CpuStorage::F32(out), shape));
        }
        let (per_task, par) = images_per_task(n);
        out.par_chunks_mut(per_task * out_image)
            .zip(x.par_chunks(per_task * in_image))
            .for_each_init(
                || vec![NO_OFFSET; geometry.offsets_len()],
                |offsets, (out, x)| {
                    for (out, x) in out.chunks_mut(out_image).zip(x.chunks(in_image)) {
                        geometry.image(x, &weights, out, offsets, par);
                    }
                },
            );
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        candle_core::bail!(
            "feat_ex: the inference form of a FeatEx block has no backward; take gradients of a \
             training-mode forward (`forward_t(xs, true)`), or detach the activation whose \
             gradient you need (as Grad-CAM does)"
        )
    }
}
