//! A convolution's shape (sides, channels, stride, padding) and the im2col unfolding with its
//! adjoint, col2im.

use super::super::winograd::{Tiling, Winograd};
use super::super::winograd_batch::TiledWinograd;
use super::super::winograd_f4::WinogradF4;
use crate::parallel::grown;

/// The smallest plane side that 3x3 stride-1 convolutions run by Winograd's F(4x4, 3x3) one
/// image at a time (or, with few images, a few images at once); below it they take im2col and
/// one GEMM per image, unless the batch gives [`WINOGRAD_BATCH_MIN_COLUMNS`] tiles. One image's
/// GEMMs are as wide as its tiles (9 at 11x11, 4 at 5x5), where `gemm` runs at a fraction of its
/// rate: im2col won below 12 (docs/performance.md, "Small sides"). An inference image by image
/// takes F(4x4, 3x3) from 9x9 all the same, laid out for few tiles and with narrow GEMMs of its
/// own ([`ConvGeometry::few_tiles_winograd_f4`]).
pub(crate) const WINOGRAD_MIN_SIDE: usize = 12;

/// The planes that run Winograd over several images at once ([`WinogradBatch`],
/// `winograd_batch.rs`) when the batch has tiles enough: their tiles side by side make each tile
/// position's GEMM up to [`WINOGRAD_BATCH_VALUES`] / 36 wide, where one image's tiles made it 4
/// (5x5), 9 (11x11) or 49 (27x27) columns wide. From 4 pixels (one tile gives a 4x4 block of
/// outputs; a narrower plane computes mostly outputs it throws away) to 31: wider planes (35x35
/// at 144 px, 55x55 at 224 px) keep one image per thread, whose forward (row-wise gathers, the
/// pool's row kernel) was faster there.
pub(crate) const WINOGRAD_BATCH_SIDES: std::ops::Range<usize> = 4..32;

/// The fewest tiles (all images' together) for which the batched Winograd path beats the others
/// on [`WINOGRAD_BATCH_SIDES`]: measured at 11x11 between 4 and 8 images (36 and 72 tiles), at
/// 5x5 near 16 (64), at 13x13 and 23x23 below 2 images; fewer take the paths of before (im2col
/// under [`WINOGRAD_MIN_SIDE`], one image at a time from it; an inference image by image its own,
/// [`ConvGeometry::few_tiles_winograd_f4`]). Small in the unit tests, so that their small batches
/// take the batched path.
pub(crate) const WINOGRAD_BATCH_MIN_COLUMNS: usize = if cfg!(test) { 8 } else { 64 };

/// About how many transformed values per channel (tiles times a tile's positions, all images'
/// together) one batched Winograd call puts in its GEMMs: 1024 tiles of F(4x4, 3x3), 576 of
/// F(6x6, 3x3). Wide enough for `gemm`'s full rate (each call packs the transformed weights
/// again), while the transformed input and the products (`(c_in + c_out) x` this many values)
/// stay tens of MiB. At 96 px (conv2b at 23x23, 36 F(4x4) tiles an image, batch 32) 512 tiles
/// (three calls of 11 images) took 26 ms forward, 1024 (two of 16, 25 MiB) 19 ms and 2048 (one
/// of 32) 18 ms (best of three, AMD EPYC Zen 3, 2 threads); 48 px's planes fit one call either
/// way. Small in the unit tests, so that their small batches still take several calls.
pub(crate) const WINOGRAD_BATCH_VALUES: usize = if cfg!(test) { 20 * 36 } else { 1024 * 36 };

/// How a batched Winograd convolution walks the batch: the geometry and algorithm, and the
/// images of each call (a fixed split of the batch, the same whatever the thread count, so the
/// weight gradient sums the same terms in the same order on any number of threads).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WinogradBatch {
    /// The convolution's geometry and algorithm.
    pub winograd: TiledWinograd,
    /// Images per call (the last call may hold fewer).
    pub images: usize,
}

/// Shape of one convolution: input `n x c_in x h x w`, kernel `c_out x c_in x kernel x kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    pub(crate) fn new(
        x_dims: &[usize],
        w_dims: &[usize],
        stride: usize,
        padding: usize,
    ) -> candle_core::Result<Self> {
        if x_dims.len() != 4
            || w_dims.len() != 4
            || x_dims[1] != w_dims[1]
            || w_dims[2] != w_dims[3]
        {
            candle_core::bail!("conv2d: input {x_dims:?} and kernel {w_dims:?} do not fit (square kernel expected)")
        }
        let geometry = Self {
            n: x_dims[0],
            c_in: x_dims[1],
            h: x_dims[2],
            w: x_dims[3],
            c_out: w_dims[0],
            kernel: w_dims[2],
            stride: stride.max(1),
            padding,
        };
        if geometry.h + 2 * padding < geometry.kernel || geometry.w + 2 * padding < geometry.kernel
        {
            candle_core::bail!("conv2d: input {x_dims:?} is smaller than the kernel {w_dims:?}")
        }
        Ok(geometry)
    }

    pub(crate) fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub(crate) fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output pixels per channel.
    pub(crate) fn out_plane(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    pub(crate) fn col_rows(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    pub(crate) fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    pub(crate) fn out_image(&self) -> usize {
        self.c_out * self.out_plane()
    }

    /// A 3x3 convolution with stride 1 and padding 1 computes its forward (in inference and in
    /// the fused conv+ReLU+pool op that training runs), its input gradient and its weight
    /// gradient by Winograd's F(4x4, 3x3) ([`Self::winograd_f4`]); this F(2x2, 3x3) geometry
    /// also gives the input gradient's flipped, channel-swapped kernel. That forward rounds
    /// differently from PyTorch's by a few ulps, which may flip near-ties in the later max-pools
    /// and send a few windows' gradients elsewhere, as another CPU's GEMM blocking does: the
    /// equivalence tests compare gradients as tensors for that reason (see
    /// `tests/torch_equivalence.rs`).
    pub(crate) fn winograd(&self) -> Option<Winograd> {
        let side = self.h.min(self.w);
        let applies =
            self.is_winograd_shape() && (side >= WINOGRAD_MIN_SIDE || self.batches_winograd());
        applies.then_some(Winograd {
            c_in: self.c_in,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
        })
    }

    /// The same convolutions by Winograd's F(4x4, 3x3): fewer multiplications and less memory
    /// traffic than F(2x2, 3x3), for slightly coarser rounding (see `winograd_f4`).
    pub(crate) fn winograd_f4(&self) -> Option<WinogradF4> {
        self.winograd().map(WinogradF4::from)
    }

    /// For an inference image by image (a batch too small for [`Self::inference_winograd_batch`]),
    /// a 3x3 stride-1 convolution on a plane of few tiles ([`WinogradF4::few_tiles`]: 9x9 to
    /// 32x32) by F(4x4, 3x3) laid out for a small image, with the narrow GEMMs
    /// (`winograd_narrow`). Under [`WINOGRAD_MIN_SIDE`] this replaces im2col, whose GEMM does
    /// 3.4 times the multiplications at 11x11.
    pub(crate) fn few_tiles_winograd_f4(&self) -> Option<WinogradF4> {
        let f4 = WinogradF4 {
            c_in: self.c_in,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
        };
        (self.is_winograd_shape() && f4.few_tiles()).then_some(f4)
    }

    /// A 3x3 convolution with stride 1 and padding 1: the shape Winograd's algorithms compute.
    fn is_winograd_shape(&self) -> bool {
        self.kernel == 3 && self.stride == 1 && self.padding == 1
    }

    /// For a 3x3 stride-1 convolution on [`WINOGRAD_BATCH_SIDES`] whose batch holds at least
    /// [`WINOGRAD_BATCH_MIN_COLUMNS`] tiles, how a training step runs it over several images at
    /// once: by [`Tiling::for_training`], the batch in near-equal calls of at most about
    /// [`WINOGRAD_BATCH_VALUES`] transformed values a channel (at least one image each), each
    /// call spread over the threads by channels and tile positions. `None` for other
    /// convolutions. The choice depends on the batch and the plane, never on the thread count
    /// or the CPU.
    pub(crate) fn winograd_batch(&self) -> Option<WinogradBatch> {
        self.winograd_batch_by(Tiling::for_training(self.h, self.w))
    }

    /// [`Self::winograd_batch`] for an inference, whose transformed weights are computed once and
    /// kept ([`crate::WeightCache`]): by the algorithm with fewer products for the plane
    /// ([`Tiling::for_plane`]), F(6x6, 3x3) at 5x5, 11x11 and 23x23 (the port's conv3b and
    /// conv2b at 48 and 96 px). Batch-32 inference alternating the two: 8-10% less time with
    /// F(6x6, 3x3) at 48 and 96 px (medians of 30 pairs, AMD EPYC Zen 3, 2 threads).
    pub(crate) fn inference_winograd_batch(&self) -> Option<WinogradBatch> {
        self.winograd_batch_by(Tiling::for_plane(self.h, self.w))
    }

    /// [`Self::winograd_batch`] by `tiling`.
    fn winograd_batch_by(&self, tiling: Tiling) -> Option<WinogradBatch> {
        if !self.batches_winograd() {
            return None;
        }
        let winograd = TiledWinograd::new(self.winograd_f4()?, tiling);
        let per_image = winograd.tiles() * winograd.tiling.positions();
        let most = (WINOGRAD_BATCH_VALUES / per_image).max(1);
        let calls = self.n.div_ceil(most).max(1);
        Some(WinogradBatch {
            winograd,
            images: self.n.div_ceil(calls).max(1),
        })
    }

    /// Whether [`Self::winograd_batch`] applies.
    fn batches_winograd(&self) -> bool {
        let tiles = self.h.div_ceil(4) * self.w.div_ceil(4);
        self.is_winograd_shape()
            && WINOGRAD_BATCH_SIDES.contains(&self.h.min(self.w))
            && self.n * tiles >= WINOGRAD_BATCH_MIN_COLUMNS
    }

    /// That `bias` holds one value per output channel.
    pub(crate) fn check_bias(&self, bias: &[f32]) -> candle_core::Result<()> {
        if bias.len() != self.c_out {
            candle_core::bail!(
                "conv2d: bias of {} values for {} output channels",
                bias.len(),
                self.c_out
            )
        }
        Ok(())
    }

    /// A 1x1 stride-1 convolution reads its input as the im2col matrix directly.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// For kernel offset `k` along an axis of `size` inputs and `out` outputs, the outputs whose
    /// input `o * stride - padding + k` lies inside the image.
    fn valid_outputs(&self, k: usize, size: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        // First o with o * s + k >= p.
        let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
        // Last o with o * s + k - p < size.
        let hi = if size + p <= k {
            0
        } else {
            ((size + p - k - 1) / s + 1).min(out)
        };
        (lo.min(hi), hi)
    }
}

/// Unfolds one image (`c_in x h x w`) into `col` (`col_rows x out_plane`), zero where the window
/// reaches into the padding.
pub(crate) fn im2col(x: &[f32], g: &ConvGeometry, col: &mut Vec<f32>) {
    im2col_rows(x, g, 0..g.out_h(), col);
}

/// [`im2col`] for the output rows `out_rows` only: `col` is `col_rows x (rows * out_w)`.
pub(crate) fn im2col_rows(
    x: &[f32],
    g: &ConvGeometry,
    out_rows: std::ops::Range<usize>,
    col: &mut Vec<f32>,
) {
    let (k, band) = (g.kernel, out_rows.len() * g.out_w());
    let col = grown(col, g.col_rows() * band);
    crate::isa::vectorised(
        #[inline(always)]
        || {
            for (idx, rows) in col.chunks_mut(k * band).enumerate() {
                im2col_kernel_row(x, g, (idx / k, idx % k), out_rows.clone(), rows);
            }
        },
    )
}

/// The `kernel` rows of the im2col matrix for input channel `c` and kernel row `ky`
/// (`(c, ky)`), for the output rows `out_rows`, into `rows` (`kernel x (rows * out_w)`).
#[inline(always)]
fn im2col_kernel_row(
    x: &[f32],
    g: &ConvGeometry,
    (c, ky): (usize, usize),
    out_rows: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    let (oh, ow, k) = (g.out_h(), g.out_w(), g.kernel);
    let band = out_rows.len() * ow;
    let x_c = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
    let (oy_lo, oy_hi) = g.valid_outputs(ky, g.h, oh);
    for (kx, row) in rows.chunks_mut(band).enumerate().take(k) {
        let (ox_lo, ox_hi) = g.valid_outputs(kx, g.w, ow);
        for (out, oy) in row.chunks_mut(ow).zip(out_rows.clone()) {
            if oy < oy_lo || oy >= oy_hi || ox_lo >= ox_hi {
                out.fill(0.0);
                continue;
            }
            let iy = oy * g.stride + ky - g.padding;
            let x_row = &x_c[iy * g.w..(iy + 1) * g.w];
            out[..ox_lo].fill(0.0);
            out[ox_hi..].fill(0.0);
            let ix0 = ox_lo * g.stride + kx - g.padding;
            if g.stride == 1 {
                out[ox_lo..ox_hi].copy_from_slice(&x_row[ix0..ix0 + (ox_hi - ox_lo)]);
            } else {
                // Every `stride`-th input as whole chunks of `stride` values, which the compiler
                // vectorises (an indexed gather it did not: about a third of conv1's forward);
                // the last input, whose chunk may run past the row, on its own.
                let out = &mut out[ox_lo..ox_hi];
                let (last, body) = out.split_last_mut().expect("ox_lo < ox_hi");
                for (value, chunk) in body.iter_mut().zip(x_row[ix0..].chunks_exact(g.stride)) {
                    *value = chunk[0];
                }
                *last = x_row[ix0 + body.len() * g.stride];
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input pixel it came from.
pub(crate) fn col2im_add(col: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    crate::isa::vectorised(
        #[inline(always)]
        || col2im_add_portable(col, g, x),
    )
}

#[inline(always)]
fn col2im_add_portable(col: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    let (oh, ow, k) = (g.out_h(), g.out_w(), g.kernel);
    let plane = oh * ow;
    for c in 0..g.c_in {
        let x_c = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            let (oy_lo, oy_hi) = g.valid_outputs(ky, g.h, oh);
            for kx in 0..k {
                let (ox_lo, ox_hi) = g.valid_outputs(kx, g.w, ow);
                if ox_lo >= ox_hi {
                    continue;
                }
                let row = &col[((c * k + ky) * k + kx) * plane..][..plane];
                for oy in oy_lo..oy_hi {
                    let src = &row[oy * ow + ox_lo..oy * ow + ox_hi];
                    let iy = oy * g.stride + ky - g.padding;
                    let ix0 = ox_lo * g.stride + kx - g.padding;
                    let x_row = &mut x_c[iy * g.w..(iy + 1) * g.w];
                    if g.stride == 1 {
                        for (dst, value) in x_row[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *dst += value;
                        }
                    } else {
                        for (o, value) in src.iter().enumerate() {
                            x_row[ix0 + o * g.stride] += value;
                        }
                    }
                }
            }
        }
    }
}
