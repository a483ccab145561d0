//! 2-D convolution with bias.

use candle_core::Tensor;

/// Convolution of `N x Cin x H x W` with a `Cout x Cin x k x k` kernel, square stride and
/// zero padding, plus a per-channel bias (PyTorch's `nn.Conv2d`).
pub fn conv2d(xs: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let out_channels = bias.dim(0)?;
    xs.conv2d(weight, padding, stride, 1, 1)?.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?)
}
