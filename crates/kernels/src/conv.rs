//! 2-D convolution with bias (and ReLU), on the fast CPU kernels or as candle's conv.

use candle_core::Tensor;

use super::fast_conv::ConvReluOp;
use super::fast_conv_pool::ConvReluPoolOp;
use super::max_pool::{max_pool2d, Pool2d};
use super::winograd_f4::WeightCache;

/// Convolution of `N x Cin x H x W` with a `Cout x Cin x k x k` kernel, square stride and
/// zero padding, plus a per-channel bias (PyTorch's `nn.Conv2d`). Always candle's own conv: the
/// fast kernels fuse the ReLU, see [`conv2d_relu`].
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let out_channels = bias.dim(0)?;
    xs.conv2d(weight, padding, stride, 1, 1)?
        .broadcast_add(&bias.reshape((1, out_channels, 1, 1))?)
}

/// `relu(conv2d(xs, weight, bias))`: on the CPU in f32, one fused op whose backward is GEMMs and
/// skips the input gradient when `xs` needs none; on CUDA in f32 with the cuDNN path chosen
/// ([`crate::set_cuda_conv`]), cuDNN's convolution (its backward too, skipping the input gradient
/// likewise) then bias and ReLU; elsewhere candle's convolution, bias, then ReLU.
pub fn conv2d_relu(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    conv2d_relu_on(
        xs,
        weight,
        bias,
        stride,
        padding,
        super::fast_kernels_for(xs),
    )
}

fn conv_relu_op(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        ConvReluOp { stride, padding },
    )
}

/// [`conv2d_relu`] on a chosen path, so tests can compare both in one process.
pub(crate) fn conv2d_relu_on(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    fast: bool,
) -> candle_core::Result<Tensor> {
    if fast {
        return conv_relu_op(xs, weight, bias, stride, padding);
    }
    #[cfg(feature = "cuda")]
    if let Some(math) = super::cudnn_conv_for(xs) {
        let out_channels = bias.dim(0)?;
        return super::cudnn_conv::conv2d(xs, weight, stride, padding, math)?
            .broadcast_add(&bias.reshape((1, out_channels, 1, 1))?)?
            .relu();
    }
    conv2d(xs, weight, bias, stride, padding)?.relu()
}

/// `max_pool2d(relu(conv2d(xs, weight, bias)), pool)`: on the CPU in f32 one fused op (3x3
/// stride-1 convolutions by Winograd's F(4x4, 3x3), others by im2col) that never
/// stores the convolution's whole output (each image's is pooled as soon as it is computed, and
/// rebuilt from the pooled gradient in the backward); elsewhere [`conv2d_relu`] then
/// [`max_pool2d`].
pub fn conv2d_relu_max_pool2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    pool: Pool2d,
) -> candle_core::Result<Tensor> {
    conv2d_relu_max_pool2d_on(
        xs,
        weight,
        bias,
        (stride, padding),
        pool,
        super::fast_kernels_for(xs),
        None,
    )
}

/// [`conv2d_relu_max_pool2d`] on a chosen path, with the Winograd transforms of the weights kept
/// in `cache` where given; `conv` is `(stride, padding)`.
pub(crate) fn conv2d_relu_max_pool2d_on(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    conv: (usize, usize),
    pool: Pool2d,
    fast: bool,
    cache: Option<&WeightCache>,
) -> candle_core::Result<Tensor> {
    let (stride, padding) = conv;
    if fast && pool.records_offsets() {
        xs.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            ConvReluPoolOp::new(stride, padding, pool, cache),
        )
    } else {
        max_pool2d(
            &conv2d_relu_on(xs, weight, bias, stride, padding, fast)?,
            pool,
        )
    }
}
