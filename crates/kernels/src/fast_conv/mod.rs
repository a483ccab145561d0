//! Fast CPU convolution in f32: im2col and one GEMM per image forward, with the bias and ReLU
//! fused into the output pass; backward as GEMMs too (the weight gradient over im2col, the input
//! gradient as a GEMM followed by col2im). 1x1 convolutions skip im2col: they are plain GEMMs.
//! 3x3 stride-1 convolutions take their forward and both gradients by Winograd's algorithm
//! (`super::winograd`, `super::winograd_f4`), on small planes over several images at once
//! (`super::winograd_batch`, [`ConvGeometry::winograd_batch`]).
//!
//! `geometry` holds the shapes and im2col/col2im, `forward` and `backward` the two passes, and
//! this module the candle op that joins them.
//!
//! candle 0.11's own backward computes the input gradient with a naive transposed-convolution
//! loop (seconds per layer at batch 32) and always computes it, even for the network input; this
//! op skips it when the input does not need a gradient. Only the CPU forward exists: other
//! devices never reach this op (see [`super::conv2d_relu`]).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::storage::{f32_arguments, gradient_tensors, read_f32};

mod backward;
mod forward;
mod geometry;
#[cfg(test)]
mod tests;

pub(crate) use backward::backward;
pub(crate) use backward::{backward_from, KeptTransforms};
pub(crate) use forward::forward;
pub(crate) use forward::{forward_image, forward_rows};
pub(crate) use geometry::{ConvGeometry, WinogradBatch};

/// `relu(conv2d(x, w) + b)`: arguments input, weight, bias, all contiguous f32 on the CPU.
pub(crate) struct ConvReluOp {
    pub stride: usize,
    pub padding: usize,
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
        let [x, w, b] = f32_arguments(
            [(x, xl), (w, wl), (b, bl)],
            ["conv2d input", "conv2d weight", "conv2d bias"],
        )?;
        g.check_bias(b)?;
        let out = forward(x, w, b, &g);
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
