//! `max_pool2d(relu(conv2d(x, w) + b))` as one fast CPU op (DeXpression's conv1 and pool1).
//!
//! Apart, the convolution's output (at batch 32 for conv1: 32 x 64 x 112 x 112, 98 MiB) is
//! written, read by the pool, kept alive for both backward passes, masked by the ReLU, and its
//! gradient is allocated, zeroed, scattered into and added by candle to a zeroed copy. Here each
//! image's convolution output lives only in a per-thread buffer: it is pooled right away, and the
//! backward rebuilds that image's output gradient from the pooled gradient and the recorded
//! window offsets (the ReLU mask at a window's maximum is whether the pooled value is positive),
//! then runs the usual GEMMs on it.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fast_conv::{col2im_add, forward_image, im2col, ConvGeometry};
use super::max_pool::{
    interior_kernel_f32, pool_plane, scatter_plane, window_steps, Pool2d, NO_OFFSET,
};
use super::parallel::{contiguous_f32, gemm, image_groups, thread_count, Gemm};

/// The fused op: arguments input, weight, bias, all contiguous f32 on the CPU.
pub(crate) struct ConvReluPoolOp {
    pub stride: usize,
    pub padding: usize,
    pub pool: Pool2d,
    offsets: Mutex<Option<Arc<Vec<u8>>>>,
}

impl ConvReluPoolOp {
    pub(crate) fn new(stride: usize, padding: usize, pool: Pool2d) -> Self {
        Self {
            stride,
            padding,
            pool,
            offsets: Mutex::new(None),
        }
    }
}

/// The convolution's and the pool's geometry together.
#[derive(Debug, Clone, Copy)]
struct ConvPoolGeometry {
    conv: ConvGeometry,
    pool: Pool2d,
}

impl ConvPoolGeometry {
    fn pooled_h(&self) -> usize {
        self.pool.out_side(self.conv.out_h())
    }

    fn pooled_w(&self) -> usize {
        self.pool.out_side(self.conv.out_w())
    }

    fn pooled_plane(&self) -> usize {
        self.pooled_h() * self.pooled_w()
    }

    fn pooled_image(&self) -> usize {
        self.conv.c_out * self.pooled_plane()
    }

    fn check(&self) -> candle_core::Result<()> {
        let (oh, ow) = (self.conv.out_h(), self.conv.out_w());
        if oh + 2 * self.pool.padding < self.pool.kernel
            || ow + 2 * self.pool.padding < self.pool.kernel
            || self.pool.padding >= self.pool.kernel
            || !self.pool.records_offsets()
        {
            candle_core::bail!(
                "conv2d_relu_max_pool2d: a {oh}x{ow} convolution output does not fit the pool {:?}",
                self.pool
            )
        }
        Ok(())
    }
}

/// Pools one image's convolution output (`c_out x OH x OW`) into `out` and `offsets`; the
/// channels run on every thread when `parallel`.
fn pool_image(
    conv_out: &[f32],
    geometry: &ConvPoolGeometry,
    out: &mut [f32],
    offsets: &mut [u8],
    parallel: bool,
) {
    let g = &geometry.conv;
    let (plane, pooled) = (g.out_plane(), geometry.pooled_plane());
    let interior = interior_kernel_f32(geometry.pool);
    let one = |((out, offsets), conv): ((&mut [f32], &mut [u8]), &[f32])| {
        pool_plane(
            conv,
            g.out_h(),
            g.out_w(),
            geometry.pool,
            out,
            offsets,
            interior,
        )
    };
    if parallel {
        out.par_chunks_mut(pooled)
            .zip(offsets.par_chunks_mut(pooled))
            .zip(conv_out.par_chunks(plane))
            .for_each(one);
    } else {
        out.chunks_mut(pooled)
            .zip(offsets.chunks_mut(pooled))
            .zip(conv_out.chunks(plane))
            .for_each(one);
    }
}

fn forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    geometry: &ConvPoolGeometry,
) -> (Vec<f32>, Vec<u8>) {
    let g = &geometry.conv;
    let pooled_image = geometry.pooled_image();
    let mut out = vec![0f32; g.n * pooled_image];
    let mut offsets = vec![NO_OFFSET; g.n * pooled_image];
    let (per_group, par) = image_groups(g.n);
    // Fewer images than threads: the GEMM and the pooling of each image use every thread.
    let parallel_inside = g.n < thread_count();
    out.par_chunks_mut(per_group * pooled_image)
        .zip(offsets.par_chunks_mut(per_group * pooled_image))
        .zip(x.par_chunks(per_group * g.in_image()))
        .for_each(|((out, offsets), x)| {
            let mut col = Vec::new();
            let mut conv_out = vec![0f32; g.out_image()];
            for ((out, offsets), x) in out
                .chunks_mut(pooled_image)
                .zip(offsets.chunks_mut(pooled_image))
                .zip(x.chunks(g.in_image()))
            {
                forward_image(x, weight, bias, g, &mut conv_out, &mut col, par);
                pool_image(&conv_out, geometry, out, offsets, parallel_inside);
            }
        });
    (out, offsets)
}

/// Weight and bias gradients, then the input gradient if `with_input_grad`, all flat.
/// `grad` is the gradient at the pooled output, already masked by the ReLU.
fn backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    offsets: &[u8],
    geometry: &ConvPoolGeometry,
    with_input_grad: bool,
) -> Vec<f32> {
    let g = &geometry.conv;
    let (plane, rows, pooled_image) = (g.out_plane(), g.col_rows(), geometry.pooled_image());
    let n_params = g.c_out * rows + g.c_out;
    let (per_group, par) = image_groups(g.n);
    let steps = window_steps(geometry.pool, g.out_w());
    let sides = (geometry.pooled_h(), geometry.pooled_w(), g.out_w());
    let mut dx = if with_input_grad {
        vec![0f32; g.n * g.in_image()]
    } else {
        Vec::new()
    };
    let n_groups = g.n.div_ceil(per_group);
    let dx_groups: Vec<Option<&mut [f32]>> = if with_input_grad {
        dx.chunks_mut(per_group * g.in_image()).map(Some).collect()
    } else {
        (0..n_groups).map(|_| None).collect()
    };
    // One partial sum of the parameter gradients per group of images, added in a fixed order so
    // results do not depend on scheduling.
    let mut partials: Vec<Vec<f32>> = Vec::new();
    grad.par_chunks(per_group * pooled_image)
        .zip(offsets.par_chunks(per_group * pooled_image))
        .zip(x.par_chunks(per_group * g.in_image()))
        .zip(dx_groups.into_par_iter())
        .map(|(((grad, offsets), x), dx)| {
            let mut sums = vec![0f32; n_params];
            let (dw, db) = sums.split_at_mut(g.c_out * rows);
            let mut col = Vec::new();
            let mut dcol = Vec::new();
            let mut conv_grad = vec![0f32; g.out_image()];
            let mut dx_images = dx.map(|dx| dx.chunks_mut(g.in_image()));
            for (image_idx, ((grad, offsets), x)) in grad
                .chunks(pooled_image)
                .zip(offsets.chunks(pooled_image))
                .zip(x.chunks(g.in_image()))
                .enumerate()
            {
                conv_grad.fill(0.0);
                for ((conv_plane, grad), offsets) in conv_grad
                    .chunks_mut(plane)
                    .zip(grad.chunks(geometry.pooled_plane()))
                    .zip(offsets.chunks(geometry.pooled_plane()))
                {
                    scatter_plane(offsets, grad, conv_plane, sides, geometry.pool, &steps);
                }
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
                        lhs: &conv_grad,
                        lhs_rs: plane,
                        lhs_cs: 1,
                        rhs: cols,
                        rhs_rs: 1,
                        rhs_cs: plane,
                    },
                    par,
                );
                // The output gradient is the pooled one moved around: the same sums.
                for (b, grad) in db.iter_mut().zip(grad.chunks(geometry.pooled_plane())) {
                    *b += super::fast_conv::lane_sum(grad);
                }
                if let Some(dx) = dx_images.as_mut().and_then(|images| images.next()) {
                    let input_grad_into = |dst: &mut [f32]| {
                        // W^T (rows x c_out): element (r, o) sits at weight[o * rows + r].
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
                                rhs: &conv_grad,
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
    total.extend_from_slice(&dx);
    total
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
        let (x, w, b) = (
            contiguous_f32(x, xl, "conv2d input")?,
            contiguous_f32(w, wl, "conv2d weight")?,
            contiguous_f32(b, bl, "conv2d bias")?,
        );
        if b.len() != geometry.conv.c_out {
            candle_core::bail!(
                "conv2d: bias of {} values for {} output channels",
                b.len(),
                geometry.conv.c_out
            )
        }
        let (out, offsets) = forward(x, w, b, &geometry);
        if let Ok(mut guard) = self.offsets.lock() {
            *guard = Some(Arc::new(offsets));
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
        // The ReLU passes a window's gradient when its maximum, the pooled value, is positive.
        let grad = res.apply_op2_no_bwd(&grad_res.contiguous()?, &super::fast_conv::ReluMaskOp)?;
        let with_input_grad = x.track_op();
        let all = x.apply_op3_no_bwd(
            w,
            &grad,
            &ConvReluPoolBackwardOp {
                geometry,
                offsets,
                with_input_grad,
            },
        )?;
        let g = &geometry.conv;
        let n_weights = g.c_out * g.col_rows();
        let grad_w = all.narrow(0, 0, n_weights)?.reshape(w.shape())?;
        let grad_b = all.narrow(0, n_weights, g.c_out)?;
        let grad_x = if with_input_grad {
            Some(
                all.narrow(0, n_weights + g.c_out, g.n * g.in_image())?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        Ok((grad_x, Some(grad_w), Some(grad_b)))
    }
}

/// Parameter (and input) gradients of [`ConvReluPoolOp`], flat: arguments the forward input, the
/// weight and the masked pooled gradient.
struct ConvReluPoolBackwardOp {
    geometry: ConvPoolGeometry,
    offsets: Arc<Vec<u8>>,
    with_input_grad: bool,
}

impl CustomOp3 for ConvReluPoolBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-conv2d-relu-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        grad: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geometry = &self.geometry;
        let (x, w, grad) = (
            contiguous_f32(x, xl, "conv2d input")?,
            contiguous_f32(w, wl, "conv2d weight")?,
            contiguous_f32(grad, gl, "pooled gradient")?,
        );
        let expected = geometry.conv.n * geometry.pooled_image();
        if grad.len() != expected || self.offsets.len() != expected {
            candle_core::bail!(
                "conv2d_relu_max_pool2d backward: {} gradients and {} offsets for {expected} outputs",
                grad.len(),
                self.offsets.len()
            )
        }
        let out = backward(x, w, grad, &self.offsets, geometry, self.with_input_grad);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
