//! Fast CPU convolution in f32: im2col and one GEMM per image forward, with the bias and ReLU
//! fused into the output pass; backward as GEMMs too (the weight gradient over im2col, the input
//! gradient as a GEMM followed by col2im). 1x1 convolutions skip im2col: they are plain GEMMs.
//! 3x3 stride-1 convolutions take both gradients, and their inference forward, by Winograd's
//! algorithm (`super::winograd`, `super::winograd_f4`).
//!
//! candle 0.11's own backward computes the input gradient with a naive transposed-convolution
//! loop (seconds per layer at batch 32) and always computes it, even for the network input; this
//! op skips it when the input does not need a gradient. Only the CPU forward exists: other
//! devices never reach this op (see [`super::conv2d_relu`]).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::parallel::{
    filled, gemm, grown, image_groups, with_spare_buffer, Gemm, Parallel, SharedMut,
};
use super::storage::{contiguous_f32, gradient_tensors, read_f32};
use super::winograd::{with_scratch as with_winograd_scratch, Winograd};
use super::winograd_f4::WinogradF4;

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
    pub(super) fn new(
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

    pub(super) fn out_h(&self) -> usize {
        (self.h + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub(super) fn out_w(&self) -> usize {
        (self.w + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output pixels per channel.
    pub(super) fn out_plane(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    pub(super) fn col_rows(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    pub(super) fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    pub(super) fn out_image(&self) -> usize {
        self.c_out * self.out_plane()
    }

    /// A 3x3 convolution with stride 1 and padding 1 computes its weight gradient by Winograd's
    /// F(2x2, 3x3), its input gradient and its forward by F(4x4, 3x3) ([`Self::winograd_f4`]) in
    /// inference and in the fused conv+ReLU+pool op that training runs. That forward rounds
    /// differently from PyTorch's by a few ulps, which may flip near-ties in the later max-pools
    /// and send a few windows' gradients elsewhere, as another CPU's GEMM blocking does: the
    /// equivalence tests compare gradients as tensors for that reason (see
    /// `tests/torch_equivalence.rs`).
    pub(super) fn winograd(&self) -> Option<Winograd> {
        (self.kernel == 3 && self.stride == 1 && self.padding == 1).then_some(Winograd {
            c_in: self.c_in,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
        })
    }

    /// The same convolutions for inference by Winograd's F(4x4, 3x3): fewer multiplications and
    /// less memory traffic than F(2x2, 3x3), for slightly coarser rounding (see `winograd_f4`).
    pub(super) fn winograd_f4(&self) -> Option<WinogradF4> {
        self.winograd().map(|f2| WinogradF4 {
            c_in: f2.c_in,
            c_out: f2.c_out,
            h: f2.h,
            w: f2.w,
        })
    }

    /// A 1x1 stride-1 convolution reads its input as the im2col matrix directly.
    pub(super) fn is_pointwise(&self) -> bool {
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
pub(super) fn im2col(x: &[f32], g: &ConvGeometry, col: &mut Vec<f32>) {
    im2col_rows(x, g, 0..g.out_h(), col);
}

/// [`im2col`] for the output rows `out_rows` only: `col` is `col_rows x (rows * out_w)`.
fn im2col_rows(x: &[f32], g: &ConvGeometry, out_rows: std::ops::Range<usize>, col: &mut Vec<f32>) {
    let (k, band) = (g.kernel, out_rows.len() * g.out_w());
    let col = grown(col, g.col_rows() * band);
    super::isa::vectorised(
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
                for (o, value) in out[ox_lo..ox_hi].iter_mut().enumerate() {
                    *value = x_row[ix0 + o * g.stride];
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every column entry back onto the input pixel it came from.
pub(super) fn col2im_add(col: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    super::isa::vectorised(
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

/// Forward of one image into `out` (`c_out x out_plane`): `relu(W * im2col(x) + b)`. With
/// `Parallel::None` the calling thread does it all. Otherwise (a batch smaller than the thread
/// count) the output rows are split into bands, one per thread, each with its own im2col and
/// single-threaded GEMM writing its rows of every channel in place, then adding the bias and
/// applying the ReLU to them. (Splitting the output channels instead measured 5-30% slower: every
/// thread then packs the whole im2col matrix.)
pub(super) fn forward_image(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    out: &mut [f32],
    col: &mut Vec<f32>,
    par: Parallel,
) {
    let (oh, ow, plane) = (g.out_h(), g.out_w(), g.out_plane());
    let threads = match par {
        Parallel::None => 1,
        _ => super::parallel::thread_count(),
    };
    if threads == 1 || oh < 2 * threads {
        forward_band(x, weight, g, 0..oh, out, col);
        bias_relu(out, bias, plane);
        return;
    }
    let rows_per_band = oh.div_ceil(threads);
    let n_bands = oh.div_ceil(rows_per_band);
    let out = &mut out[..g.c_out * plane];
    let (col_rows, c_out) = (g.col_rows(), g.c_out);
    assert!(
        weight.len() >= c_out * col_rows && bias.len() >= c_out,
        "conv2d: weight or bias too short"
    );
    let shared_out = SharedMut(out.as_mut_ptr());
    (0..n_bands).into_par_iter().for_each(|band| {
        let rows = band * rows_per_band..((band + 1) * rows_per_band).min(oh);
        let (start, len) = (rows.start * ow, rows.len() * ow);
        with_spare_buffer(|col| {
            let (rhs, rhs_rs): (&[f32], usize) = if g.is_pointwise() {
                (&x[start..], plane)
            } else {
                im2col_rows(x, g, rows.clone(), col);
                (col, len)
            };
            assert!(
                rhs.len() >= col_rows.saturating_sub(1) * rhs_rs + len,
                "conv2d: input too short for its geometry"
            );
            // SAFETY: the GEMM writes rows 0..c_out, columns 0..len of a matrix with row stride
            // `plane` starting at `start`: output values `o * plane + start + j`, inside `out`
            // (start + len <= plane) and in this band's columns alone, so no two bands write the
            // same value and nothing reads `out` meanwhile. It reads `weight` (c_out x col_rows)
            // and `rhs` (col_rows x len, row stride rhs_rs) inside their lengths, checked above.
            unsafe {
                gemm::gemm(
                    c_out,
                    len,
                    col_rows,
                    shared_out.get().add(start),
                    1,
                    plane as isize,
                    false,
                    weight.as_ptr(),
                    1,
                    col_rows as isize,
                    rhs.as_ptr(),
                    1,
                    rhs_rs as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallel::None,
                )
            };
            for (channel, b) in bias.iter().enumerate().take(c_out) {
                // SAFETY: this band's columns of one channel, written by this thread alone (as
                // above); the slice lives only in this iteration.
                let values = unsafe {
                    std::slice::from_raw_parts_mut(
                        shared_out.get().add(channel * plane + start),
                        len,
                    )
                };
                for value in values {
                    *value = (*value + b).max(0.0);
                }
            }
        })
    });
}

/// `W * im2col(x)` for the output rows `rows` into `out` (`c_out x (rows * out_w)`), on the
/// calling thread.
fn forward_band(
    x: &[f32],
    weight: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    col: &mut Vec<f32>,
) {
    let (plane, col_rows) = (g.out_plane(), g.col_rows());
    let band = rows.len() * g.out_w();
    let (rhs, rhs_rs): (&[f32], usize) = if g.is_pointwise() {
        (&x[rows.start * g.out_w()..], plane)
    } else {
        im2col_rows(x, g, rows, col);
        (col, band)
    };
    gemm(
        Gemm {
            m: g.c_out,
            n: band,
            k: col_rows,
            dst: out,
            accumulate: false,
            lhs: weight,
            lhs_rs: col_rows,
            lhs_cs: 1,
            rhs,
            rhs_rs,
            rhs_cs: 1,
        },
        Parallel::None,
    );
}

/// Adds each channel's bias and applies the ReLU, in place.
fn bias_relu(out: &mut [f32], bias: &[f32], plane: usize) {
    for (row, b) in out.chunks_mut(plane).zip(bias) {
        for value in row {
            *value = (*value + b).max(0.0);
        }
    }
}

/// `relu(conv2d(x, weight) + bias)` for a whole batch; by Winograd's algorithm where it applies
/// and `winograd` allows it.
pub(crate) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    winograd: bool,
) -> Vec<f32> {
    let mut out = filled(g.n * g.out_image(), 0f32);
    let (per_group, par) = image_groups(g.n);
    if let Some(winograd) = g.winograd_f4().filter(|_| winograd) {
        let transformed = winograd.transform_weights_cached(weight);
        let parallel_inside = !matches!(par, Parallel::None);
        out.par_chunks_mut(per_group * g.out_image())
            .zip(x.par_chunks(per_group * g.in_image()))
            .for_each(|(out, x)| {
                with_winograd_scratch(|scratch| {
                    for (out, x) in out.chunks_mut(g.out_image()).zip(x.chunks(g.in_image())) {
                        let bias = Some(bias);
                        winograd.image(x, &transformed, bias, out, scratch, parallel_inside);
                    }
                })
            });
        return out;
    }
    out.par_chunks_mut(per_group * g.out_image())
        .zip(x.par_chunks(per_group * g.in_image()))
        .for_each(|(out, x)| {
            with_spare_buffer(|col| {
                for (out, x) in out.chunks_mut(g.out_image()).zip(x.chunks(g.in_image())) {
                    forward_image(x, weight, bias, g, out, col, par);
                }
            })
        });
    out
}

/// Sum of a row in eight interleaved lanes: the compiler vectorises it, where one running sum is
/// a chain of dependent scalar adds.
pub(super) fn lane_sum(row: &[f32]) -> f32 {
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
/// bias gradients (one GEMM over im2col; Winograd for 3x3 stride-1 kernels) and, with
/// `with_input_grad`, the input gradient (Winograd for 3x3 stride-1 kernels, else a GEMM and
/// col2im). Returns the weight and bias gradients
/// concatenated (`c_out x col_rows`, then `c_out`) and the input gradient. Nothing of the size of
/// the whole batch is allocated but the input gradient itself.
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
    backward_from(x, weight, &output_grad, g, with_input_grad)
}

/// Writes image `image_idx`'s gradient at the convolution output (`c_out x out_plane`, after the
/// ReLU) into the buffer; the last argument says whether it may use every thread.
pub(super) type OutputGrad<'a> = dyn Fn(usize, &mut [f32], bool) + Sync + 'a;

/// [`backward`] with the output gradient of each image given by `output_grad`.
pub(super) fn backward_from(
    x: &[f32],
    weight: &[f32],
    output_grad: &OutputGrad<'_>,
    g: &ConvGeometry,
    with_input_grad: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (plane, rows) = (g.out_plane(), g.col_rows());
    let n_params = g.c_out * rows + g.c_out;
    let (per_group, par) = image_groups(g.n);
    let parallel_inside = !matches!(par, Parallel::None);
    // The input gradient by Winograd's F(4x4, 3x3) (about 6% less time than F(2x2) for conv2b's
    // backward with AVX-512 GEMMs): the flipped, channel-swapped kernel, transformed once.
    let winograd = g.winograd().map(|winograd| {
        let swapped = winograd.transposed();
        let swapped = WinogradF4 {
            c_in: swapped.c_in,
            c_out: swapped.c_out,
            h: swapped.h,
            w: swapped.w,
        };
        let transformed = swapped.transform_weights(&winograd.flipped_weights(weight));
        (swapped, transformed)
    });
    let mut dx = if with_input_grad {
        filled(g.n * g.in_image(), 0f32)
    } else {
        Vec::new()
    };
    let dx_groups: Vec<Option<&mut [f32]>> = if with_input_grad {
        dx.chunks_mut(per_group * g.in_image()).map(Some).collect()
    } else {
        (0..g.n.div_ceil(per_group)).map(|_| None).collect()
    };
    // One partial sum of the parameter gradients per group of images, added in a fixed order so
    // results do not depend on scheduling.
    let mut partials: Vec<Vec<f32>> = Vec::new();
    x.par_chunks(per_group * g.in_image())
        .enumerate()
        .zip(dx_groups.into_par_iter())
        .map(|((group_idx, x), dx)| {
            let mut sums = vec![0f32; n_params];
            let (dw, db) = sums.split_at_mut(g.c_out * rows);
            let mut col = Vec::new();
            let mut dcol = Vec::new();
            // The weight gradient in Winograd's domain, for 3x3 stride-1 kernels.
            let mut du = Vec::new();
            let mut grad = vec![0f32; g.out_image()];
            let mut dx_images = dx.map(|dx| dx.chunks_mut(g.in_image()));
            for (image_idx, x) in x.chunks(g.in_image()).enumerate() {
                output_grad(
                    group_idx * per_group + image_idx,
                    &mut grad,
                    parallel_inside,
                );
                if let Some(winograd) = g.winograd() {
                    let du = grown(&mut du, winograd.transformed_len());
                    with_winograd_scratch(|scratch| {
                        winograd.accumulate_weight_grad(
                            x,
                            &grad,
                            du,
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
            if let Some(winograd) = g.winograd() {
                winograd.weight_grad(&du, dw);
            }
            sums
        })
        .collect_into_vec(&mut partials);
    let mut total = vec![0f32; n_params];
    for partial in partials {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }
    (total, with_input_grad.then_some(dx))
}

/// `out = grad * (y > 0)` for one image, on every thread when `parallel`.
fn relu_mask(out: &mut [f32], y: &[f32], grad: &[f32], parallel: bool) {
    let mask = |((out, y), grad): ((&mut [f32], &[f32]), &[f32])| {
        for ((o, y), g) in out.iter_mut().zip(y).zip(grad) {
            *o = if *y > 0.0 { *g } else { 0.0 };
        }
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

/// `relu(conv2d(x, w) + b)`: arguments input, weight, bias, all contiguous f32 on the CPU.
pub(crate) struct ConvReluOp {
    pub stride: usize,
    pub padding: usize,
    /// Whether the forward may use Winograd's algorithm (for inference only, see
    /// `ConvGeometry::winograd`).
    pub winograd_forward: bool,
}

impl CustomOp3 for ConvReluOp {
    fn name(&self) -> &'static str {
        "dexpression-conv2d-relu"
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
        let g = ConvGeometry::new(xl.dims(), wl.dims(), self.stride, self.padding)?;
        let (x, w, b) = (
            contiguous_f32(x, xl, "conv2d input")?,
            contiguous_f32(w, wl, "conv2d weight")?,
            contiguous_f32(b, bl, "conv2d bias")?,
        );
        if b.len() != g.c_out {
            candle_core::bail!(
                "conv2d: bias of {} values for {} output channels",
                b.len(),
                g.c_out
            )
        }
        let out = forward(x, w, b, &g, self.winograd_forward);
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.n, g.c_out, g.out_h(), g.out_w())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeometry::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let grad_res = grad_res.contiguous()?;
        // The network input needs no gradient: skip the most expensive part for it.
        let with_input_grad = x.track_op();
        // The storages are only read here, and no op runs on these tensors meanwhile.
        let (params, dx) = {
            let (x_storage, x_layout) = x.storage_and_layout();
            let (w_storage, w_layout) = w.storage_and_layout();
            let (y_storage, y_layout) = res.storage_and_layout();
            let (g_storage, g_layout) = grad_res.storage_and_layout();
            backward(
                read_f32(&x_storage, x_layout, "conv2d input")?,
                read_f32(&w_storage, w_layout, "conv2d weight")?,
                read_f32(&y_storage, y_layout, "conv2d output")?,
                read_f32(&g_storage, g_layout, "conv2d gradient")?,
                &g,
                with_input_grad,
            )
        };
        gradient_tensors(params, dx, &g, x, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, for checking im2col and col2im on odd geometries.
    fn naive(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let (oh, ow, k) = (g.out_h(), g.out_w(), g.kernel);
        let mut out = vec![0f32; g.n * g.c_out * oh * ow];
        for n in 0..g.n {
            for o in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = b[o];
                        for c in 0..g.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < g.h
                                        && (ix as usize) < g.w
                                    {
                                        sum += x[((n * g.c_in + c) * g.h + iy as usize) * g.w
                                            + ix as usize]
                                            * w[((o * g.c_in + c) * k + ky) * k + kx];
                                    }
                                }
                            }
                        }
                        out[((n * g.c_out + o) * oh + oy) * ow + ox] = sum.max(0.0);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_a_direct_convolution_for_strides_and_paddings() {
        for (kernel, stride, padding, h, w) in [
            (3, 1, 1, 5, 6),
            (7, 2, 3, 9, 8),
            (1, 1, 0, 4, 4),
            (3, 2, 0, 7, 7),
            (2, 3, 1, 6, 5),
        ] {
            let g = ConvGeometry {
                n: 3,
                c_in: 2,
                h,
                w,
                c_out: 4,
                kernel,
                stride,
                padding,
            };
            let x: Vec<f32> = (0..g.n * g.in_image())
                .map(|i| ((i * 37 % 17) as f32 - 8.0) / 7.0)
                .collect();
            let wt: Vec<f32> = (0..g.c_out * g.col_rows())
                .map(|i| ((i * 11 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let b = [0.1, -0.2, 0.3, 0.0];
            let fast = forward(&x, &wt, &b, &g, false);
            let slow = naive(&x, &wt, &b, &g);
            for (a, e) in fast.iter().zip(&slow) {
                assert!(
                    (a - e).abs() < 1e-4,
                    "k{kernel} s{stride} p{padding}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for any x and c.
        let g = ConvGeometry {
            n: 1,
            c_in: 2,
            h: 7,
            w: 6,
            c_out: 1,
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let x: Vec<f32> = (0..g.in_image()).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut col = Vec::new();
        im2col(&x, &g, &mut col);
        let c: Vec<f32> = (0..col.len()).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut back = vec![0f32; x.len()];
        col2im_add(&c, &g, &mut back);
        let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
    }
}
