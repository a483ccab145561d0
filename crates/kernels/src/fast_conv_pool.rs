//! `max_pool2d(relu(conv2d(x, w) + b))` as one fast CPU op (DeXpression's conv1 and pool1).
//!
//! Apart, the convolution's output (at batch 32 for conv1: 32 x 64 x 112 x 112, 98 MiB) is
//! written, read by the pool, kept alive for both backward passes, masked by the ReLU, and its
//! gradient is allocated, zeroed, scattered into and added by candle to a zeroed copy. Here each
//! image's convolution output lives only in a per-thread buffer: it is pooled right away, and the
//! backward rebuilds that image's output gradient from the pooled gradient and the recorded
//! window offsets (the ReLU mask at a window's maximum is whether the pooled value is positive),
//! then runs the usual GEMMs on it. Where the input needs no gradient and the pool keeps few of
//! the outputs (conv1: the images are data), `pooled_weight_grad` takes the weight and bias
//! gradients from the pool's winners alone.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fast_conv::{
    backward_from, forward_image, forward_rows, ConvGeometry, KeptTransforms, WinogradBatch,
};
use super::max_pool::{pool_planes, scatter_plane, window_steps, Pool2d, NO_OFFSET};
use super::parallel::{
    filled, grown, image_groups, thread_count, with_spare_buffer, Parallel, SharedMut,
};
use super::pooled_weight_grad::{self, PoolWinners};
use super::storage::{f32_arguments, gradient_tensors, read_f32};
use super::winograd::with_scratch as with_winograd_scratch;
use super::winograd_batch::TiledWinograd;
use super::winograd_f4::{TransformedWeights, WeightCache, WinogradF4};

/// The fused op: arguments input, weight, bias, all contiguous f32 on the CPU.
pub(crate) struct ConvReluPoolOp {
    pub stride: usize,
    pub padding: usize,
    pub pool: Pool2d,
    offsets: Mutex<Option<Arc<Vec<u8>>>>,
    /// The forward's transformed input and weights, where it was a batched Winograd convolution:
    /// the weight and input gradients', which the backward then need not compute again.
    transformed: Mutex<Option<Arc<Transformed>>>,
    cache: Option<WeightCache>,
}

impl ConvReluPoolOp {
    pub(crate) fn new(
        stride: usize,
        padding: usize,
        pool: Pool2d,
        cache: Option<&WeightCache>,
    ) -> Self {
        Self {
            stride,
            padding,
            pool,
            offsets: Mutex::new(None),
            transformed: Mutex::new(None),
            cache: cache.cloned(),
        }
    }
}

/// The most bytes of convolution output a band of [`ConvPoolGeometry::image`] holds: a slab the
/// L2 keeps while it is pooled.
const BAND_BYTES: usize = 512 << 10;

/// The most bytes of convolution output that [`ConvPoolGeometry::image`], spread over the
/// threads, convolves whole rather than in bands: at 48 px conv1's (144 KiB) and conv2b's (100
/// KiB), which took a 48 px batch-1 inference from 1.10-1.55 to 0.82-0.87 ms (loaded machine);
/// 224 px's smallest (182 KiB, the pool branch's at 27x27) stays in bands, as it was timed.
const WHOLE_IMAGE_BYTES: usize = 160 << 10;

/// The convolution's and the pool's geometry together.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvPoolGeometry {
    pub conv: ConvGeometry,
    pub pool: Pool2d,
}

impl ConvPoolGeometry {
    pub(super) fn pooled_h(&self) -> usize {
        self.pool.out_side(self.conv.out_h())
    }

    pub(super) fn pooled_w(&self) -> usize {
        self.pool.out_side(self.conv.out_w())
    }

    pub(super) fn pooled_plane(&self) -> usize {
        self.pooled_h() * self.pooled_w()
    }

    pub(super) fn pooled_image(&self) -> usize {
        self.conv.c_out * self.pooled_plane()
    }

    pub(super) fn check(&self) -> candle_core::Result<()> {
        let (oh, ow) = (self.conv.out_h(), self.conv.out_w());
        if !self.pool.fits(oh, ow) || !self.pool.records_offsets() {
            candle_core::bail!(
                "conv2d_relu_max_pool2d: a {oh}x{ow} convolution output does not fit the pool {:?}",
                self.pool
            )
        }
        Ok(())
    }
}

/// A convolution's weights as the kernels take them: `weight`, `bias` and, for a 3x3 stride-1
/// convolution, its Winograd form: F(4x4, 3x3) for one image at a time, or the algorithm of the
/// batched path where the batch takes it ([`ConvGeometry::winograd_batch`] in training,
/// [`ConvGeometry::inference_winograd_batch`] in inference).
pub(super) struct ConvWeights<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    winograd: Option<(WinogradF4, TransformedWeights<Arc<Vec<f32>>>)>,
    batched: Option<(TiledWinograd, Arc<Vec<f32>>)>,
}

impl<'a> ConvWeights<'a> {
    /// The weights of the convolution `g`, run over several images at once as `batch` says where
    /// given (its algorithm's transform), else image by image. 3x3 stride-1 convolutions (the
    /// FeatEx blocks' conv2b and conv3b) run by Winograd's algorithm: F(4x4, 3x3) a quarter of
    /// the multiplications, rounded within about 1e-6 of the output's scale (see `winograd_f4`),
    /// F(6x6, 3x3) fewer still (`winograd_f6`); the others by im2col and a GEMM.
    pub(super) fn new(
        (g, batch): (&ConvGeometry, Option<WinogradBatch>),
        weight: &'a [f32],
        bias: &'a [f32],
        cache: Option<&WeightCache>,
    ) -> Self {
        if let Some(batch) = batch {
            let transformed = batch.winograd.transform_weights_cached(weight, cache);
            return Self {
                weight,
                bias,
                winograd: None,
                batched: Some((batch.winograd, transformed)),
            };
        }
        let winograd = g.winograd_f4().map(|winograd| {
            let transformed = winograd.transform_weights_cached(weight, cache);
            (winograd, TransformedWeights::Matrices(transformed))
        });
        Self {
            weight,
            bias,
            winograd,
            batched: None,
        }
    }

    /// [`Self::new`] for an inference, which runs the batch as `batch` says where given
    /// ([`ConvGeometry::inference_winograd_batch`]), else image by image: there a 3x3 stride-1
    /// convolution on a plane of few tiles ([`ConvGeometry::few_tiles_winograd_f4`]) takes its
    /// transformed weights packed for the narrow GEMMs, which made F(4x4, 3x3) faster than
    /// im2col under 12 pixels too (batch-1 inference at 48 px). Training keeps [`Self::new`]'s
    /// choice: its backward passes read the transform unpacked.
    pub(super) fn for_inference(
        (g, batch): (&ConvGeometry, Option<WinogradBatch>),
        weight: &'a [f32],
        bias: &'a [f32],
        cache: Option<&WeightCache>,
    ) -> Self {
        if batch.is_none() {
            if let Some(winograd) = g.few_tiles_winograd_f4() {
                let packed = winograd.packed_weights_cached(weight, cache);
                return Self {
                    weight,
                    bias,
                    winograd: Some((winograd, TransformedWeights::Panels(packed))),
                    batched: None,
                };
            }
        }
        Self::new((g, batch), weight, bias, cache)
    }
}

impl ConvPoolGeometry {
    /// One image: `relu(conv(x) + b)` into a per-thread buffer, pooled into `out` and `offsets`.
    /// With `Parallel::None` the calling thread does it all; otherwise every step uses every
    /// thread.
    pub(super) fn image(
        &self,
        x: &[f32],
        weights: &ConvWeights<'_>,
        out: &mut [f32],
        offsets: &mut [u8],
        par: Parallel,
    ) {
        let g = &self.conv;
        let parallel = !matches!(par, Parallel::None);
        if let Some((winograd, transformed)) = &weights.winograd {
            return with_winograd_scratch(|scratch| {
                let arguments = (x, transformed.as_slices(), weights.bias);
                winograd.image_pooled(arguments, self.pool, (out, offsets), scratch, parallel)
            });
        }
        // Bands keep a large output out of memory; a small one stays in the L2 anyway, and
        // spread over the threads it is better convolved once in rows of its own than in bands,
        // whose windows' overlap convolves some rows twice (a third more arithmetic for conv2b
        // at 11x11 with four bands).
        let small = g.out_image() * std::mem::size_of::<f32>() <= WHOLE_IMAGE_BYTES;
        if self.pool.padding == 0 && !(parallel && small) {
            return self.image_in_bands(x, weights, out, offsets, parallel);
        }
        with_spare_buffer(|conv_out| {
            let conv_out = grown(conv_out, g.out_image());
            with_spare_buffer(|col| {
                forward_image(x, weights.weight, weights.bias, g, conv_out, col, par)
            });
            let sides = (g.out_h(), g.out_w());
            pool_planes(conv_out, sides, self.pool, out, offsets, parallel);
        })
    }

    /// The whole batch `x` (`n` images) by Winograd over several images at once (`batch`, from
    /// [`ConvGeometry::winograd_batch`] or [`ConvGeometry::inference_winograd_batch`]), into
    /// `out` and, where given, `offsets` (`n x c_out x OH x OW`; an inference needs none),
    /// keeping the transformed input in `kept_input` where given (`c_in x positions x tiles` per
    /// call, the calls one after the other, for the backward): one
    /// call per group of `batch.images` images, each spread over every thread. Each tile's column
    /// of the GEMMs is computed alone, so an image's values do not depend on the other images or
    /// the split into calls; by F(4x4, 3x3) they are those of [`Self::image`] image by image.
    pub(super) fn batch(
        &self,
        x: &[f32],
        weights: &ConvWeights<'_>,
        (out, mut offsets): (&mut [f32], Option<&mut [u8]>),
        mut kept_input: Option<&mut [f32]>,
        batch: WinogradBatch,
    ) {
        let (winograd, transformed) = weights
            .batched
            .as_ref()
            .expect("a batched Winograd convolution has its transformed weights");
        assert_eq!(
            *winograd, batch.winograd,
            "weights transformed for another batch"
        );
        let (in_image, pooled_image) = (self.conv.in_image(), self.pooled_image());
        let call = batch.images * pooled_image;
        let mut kept_start = 0;
        for (call_idx, (x, out)) in x
            .chunks(batch.images * in_image)
            .zip(out.chunks_mut(call))
            .enumerate()
        {
            let images = x.len() / in_image;
            let offsets = offsets
                .as_deref_mut()
                .map(|offsets| &mut offsets[call_idx * call..][..out.len()]);
            let kept_len = winograd.transformed_input_len(images);
            let kept = kept_input
                .as_deref_mut()
                .map(|kept| &mut kept[kept_start..][..kept_len]);
            kept_start += kept_len;
            let arguments = (x, images, transformed.as_slice(), weights.bias);
            with_winograd_scratch(|scratch| {
                winograd.batch_pooled(arguments, self.pool, (out, offsets), kept, scratch)
            });
        }
    }

    /// [`Self::image`] by bands of pooled rows (a pool without padding): each band convolves
    /// just the rows its windows read (one row more than its share where windows overlap) into a
    /// buffer small enough for the L2 and pools them from there, so conv1's full-size output
    /// (3.1 MiB at 224 px) is never written and read back. With `parallel`, the bands run on
    /// every thread, in one parallel region.
    fn image_in_bands(
        &self,
        x: &[f32],
        weights: &ConvWeights<'_>,
        out: &mut [f32],
        offsets: &mut [u8],
        parallel: bool,
    ) {
        let (g, pool) = (&self.conv, self.pool);
        let (pooled_h, pooled_w) = (self.pooled_h(), self.pooled_w());
        let (pooled_plane, ow) = (self.pooled_plane(), g.out_w());
        // Pooled rows per band: a convolved slab of at most about 512 KiB (two pooled rows in
        // the unit tests, so that their small images still take several bands), and at least
        // two bands per thread when the threads share the image.
        let slab_row = (g.c_out * ow * pool.stride * std::mem::size_of::<f32>()).max(1);
        let budget = if cfg!(test) { 2 * slab_row } else { BAND_BYTES };
        let mut rows_per_band = (budget / slab_row).clamp(1, pooled_h);
        if parallel {
            // A whole number of bands per thread, so that none waits for another's last band.
            let threads = thread_count();
            let bands = pooled_h.div_ceil(rows_per_band).max(2 * threads);
            rows_per_band = pooled_h.div_ceil(bands.next_multiple_of(threads));
        }
        let bands = pooled_h.div_ceil(rows_per_band);
        let (shared_out, shared_offsets) =
            (SharedMut(out.as_mut_ptr()), SharedMut(offsets.as_mut_ptr()));
        let len = g.c_out * pooled_plane;
        assert!(
            out.len() >= len && offsets.len() >= len,
            "conv2d_relu_max_pool2d: output or offsets too short"
        );
        let band = |slab: &mut Vec<f32>, col: &mut Vec<f32>, band_idx: usize| {
            let pooled_rows =
                band_idx * rows_per_band..((band_idx + 1) * rows_per_band).min(pooled_h);
            // The convolution rows the band's windows cover.
            let first = pooled_rows.start * pool.stride;
            let end = ((pooled_rows.end - 1) * pool.stride + pool.kernel).min(g.out_h());
            let slab_h = end - first;
            let slab = grown(slab, g.c_out * slab_h * ow);
            forward_rows(x, weights.weight, weights.bias, g, first..end, slab, col);
            let band_len = pooled_rows.len() * pooled_w;
            if pooled_rows.len() == pooled_h {
                // The whole image in one band (small images): every channel at once, so that
                // short rows pool several channels at a time (`max_pool::lanes`).
                // SAFETY: the image's whole output and offsets (`len` values, checked above),
                // written by this band alone: it is the only one.
                let (out, offsets) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(shared_out.get(), len),
                        std::slice::from_raw_parts_mut(shared_offsets.get(), len),
                    )
                };
                return pool_planes(slab, (slab_h, ow), pool, out, offsets, false);
            }
            for (channel, slab) in slab.chunks_exact(slab_h * ow).enumerate() {
                let start = channel * pooled_plane + pooled_rows.start * pooled_w;
                // SAFETY: channel `channel`'s pooled rows `pooled_rows`: inside `out` and
                // `offsets` (checked above), and written by this band alone, since the bands'
                // row ranges do not overlap; nothing else reads or writes them meanwhile.
                let (out, offsets) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(shared_out.get().add(start), band_len),
                        std::slice::from_raw_parts_mut(shared_offsets.get().add(start), band_len),
                    )
                };
                pool_planes(slab, (slab_h, ow), pool, out, offsets, false);
            }
        };
        if parallel {
            (0..bands).into_par_iter().for_each(|band_idx| {
                with_spare_buffer(|slab| with_spare_buffer(|col| band(slab, col, band_idx)))
            });
        } else {
            with_spare_buffer(|slab| {
                with_spare_buffer(|col| (0..bands).for_each(|band_idx| band(slab, col, band_idx)))
            });
        }
    }
}

/// A batched Winograd convolution's transformed input and weights, as its forward computed them.
struct Transformed {
    input: Vec<f32>,
    weights: Arc<Vec<f32>>,
}

/// The op's forward: the pooled output, the window offsets and, for a batched Winograd
/// convolution, its transformed input and weights (which the gradients need again).
fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    geometry: &ConvPoolGeometry,
    cache: Option<&WeightCache>,
) -> (Vec<f32>, Vec<u8>, Option<Transformed>) {
    let g = &geometry.conv;
    let pooled_image = geometry.pooled_image();
    let mut out = filled(g.n * pooled_image, 0f32);
    let mut offsets = filled(g.n * pooled_image, NO_OFFSET);
    let batch = g.winograd_batch();
    let weights = ConvWeights::new((g, batch), weight, bias, cache);
    if let Some(batch) = batch {
        // Kept for the backward: transforming the input again there cost about a tenth of it
        // (conv2b at 96 px: 2.2 of 44 ms).
        let mut kept = filled(batch.winograd.transformed_input_len(g.n), 0f32);
        let outputs = (out.as_mut_slice(), Some(offsets.as_mut_slice()));
        geometry.batch(x, &weights, outputs, Some(&mut kept), batch);
        let transformed = weights.batched.map(|(_, weights)| Transformed {
            input: kept,
            weights,
        });
        return (out, offsets, transformed);
    }
    let (per_group, par) = image_groups(g.n);
    out.par_chunks_mut(per_group * pooled_image)
        .zip(offsets.par_chunks_mut(per_group * pooled_image))
        .zip(x.par_chunks(per_group * g.in_image()))
        .for_each(|((out, offsets), x)| {
            for ((out, offsets), x) in out
                .chunks_mut(pooled_image)
                .zip(offsets.chunks_mut(pooled_image))
                .zip(x.chunks(g.in_image()))
            {
                geometry.image(x, &weights, out, offsets, par);
            }
        });
    (out, offsets, None)
}

impl CustomOp3 for ConvReluPoolOp {
    fn name(&self) -> &'static str {
        "dexpression-conv2d-relu-max-pool2d"
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
        let geometry = ConvPoolGeometry {
            conv: ConvGeometry::new(xl.dims(), wl.dims(), self.stride, self.padding)?,
            pool: self.pool,
        };
        geometry.check()?;
        let [x, w, b] = f32_arguments(
            [(x, xl), (w, wl), (b, bl)],
            ["conv2d input", "conv2d weight", "conv2d bias"],
        )?;
        geometry.conv.check_bias(b)?;
        let (out, offsets, transformed) = forward(x, w, b, &geometry, self.cache.as_ref());
        if let Ok(mut guard) = self.offsets.lock() {
            *guard = Some(Arc::new(offsets));
        }
        if let Ok(mut guard) = self.transformed.lock() {
            *guard = transformed.map(Arc::new);
        }
        let shape = Shape::from((
            geometry.conv.n,
            geometry.conv.c_out,
            geometry.pooled_h(),
            geometry.pooled_w(),
        ));
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(offsets) = self.offsets.lock().ok().and_then(|guard| guard.clone()) else {
            candle_core::bail!("conv2d_relu_max_pool2d: backward before forward")
        };
        let geometry = ConvPoolGeometry {
            conv: ConvGeometry::new(x.dims(), w.dims(), self.stride, self.padding)?,
            pool: self.pool,
        };
        let grad_res = grad_res.contiguous()?;
        let with_input_grad = x.track_op();
        let g = geometry.conv;
        let (plane, pooled_plane, pooled_image) = (
            g.out_plane(),
            geometry.pooled_plane(),
            geometry.pooled_image(),
        );
        if offsets.len() != g.n * pooled_image || grad_res.elem_count() != offsets.len() {
            candle_core::bail!(
                "conv2d_relu_max_pool2d backward: {} offsets for a gradient of shape {:?}",
                offsets.len(),
                grad_res.dims()
            )
        }
        // The storages are only read here, and no op runs on these tensors meanwhile.
        let (params, dx) = {
            let (x_storage, x_layout) = x.storage_and_layout();
            let (y_storage, y_layout) = res.storage_and_layout();
            let (g_storage, g_layout) = grad_res.storage_and_layout();
            let x_values = read_f32(&x_storage, x_layout, "conv2d input")?;
            let pooled = read_f32(&y_storage, y_layout, "pooled output")?;
            let grad = read_f32(&g_storage, g_layout, "pooled gradient")?;
            if pooled_weight_grad::applies(&geometry, with_input_grad) {
                let winners = PoolWinners {
                    offsets: &offsets,
                    pooled,
                    grad,
                };
                (
                    pooled_weight_grad::parameter_grads(x_values, &winners, &geometry),
                    None,
                )
            } else {
                let (w_storage, w_layout) = w.storage_and_layout();
                let steps = window_steps(geometry.pool, g.out_w());
                let sides = (geometry.pooled_h(), geometry.pooled_w(), g.out_w());
                // An image's output gradient: each pooled gradient goes back to its window's
                // maximum, where the ReLU passes it if that maximum, the pooled value, is
                // positive.
                let output_grad = |image_idx: usize, conv_grad: &mut [f32], _parallel: bool| {
                    conv_grad.fill(0.0);
                    let start = image_idx * pooled_image;
                    for (channel, conv_plane) in conv_grad.chunks_mut(plane).enumerate() {
                        let range =
                            start + channel * pooled_plane..start + (channel + 1) * pooled_plane;
                        scatter_plane(
                            &offsets[range.clone()],
                            &grad[range.clone()],
                            Some(&pooled[range]),
                            conv_plane,
                            sides,
                            geometry.pool,
                            &steps,
                        );
                    }
                };
                let transformed = self.transformed.lock().ok().and_then(|guard| guard.clone());
                let kept = KeptTransforms {
                    input: transformed.as_ref().map(|kept| kept.input.as_slice()),
                    weights: transformed.as_ref().map(|kept| kept.weights.as_slice()),
                };
                backward_from(
                    x_values,
                    read_f32(&w_storage, w_layout, "conv2d weight")?,
                    (&output_grad, kept),
                    &g,
                    with_input_grad,
                )
            }
        };
        gradient_tensors(params, dx, &g, x, w)
    }
}
