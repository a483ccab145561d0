//! The glue between candle's `CustomOp` CPU hooks and the kernels: the contiguous slices of a
//! storage, checked, and a convolution's flat gradients back as tensors. Every op of this module
//! reads its arguments through these, so each check and its message exist once.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Tensor};

use super::fast_conv::ConvGeometry;

/// The f32 values of a contiguous CPU tensor; `what` names it in the error.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!(
            "{what}: the fast CPU kernels take f32, got {:?}",
            storage.dtype()
        )
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the fast CPU kernels need a contiguous tensor"),
    }
}

/// The three contiguous f32 arguments of a `CustomOp3` on the CPU, each named in its error.
pub(crate) fn f32_arguments<'a>(
    arguments: [(&'a CpuStorage, &Layout); 3],
    names: [&str; 3],
) -> candle_core::Result<[&'a [f32]; 3]> {
    let [(a, al), (b, bl), (c, cl)] = arguments;
    Ok([
        contiguous_f32(a, al, names[0])?,
        contiguous_f32(b, bl, names[1])?,
        contiguous_f32(c, cl, names[2])?,
    ])
}

/// The values of a contiguous tensor of any element type; `what` names it in the error.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// The f32 values of a contiguous CPU tensor, with its storage held for reading.
pub(crate) fn read_f32<'a>(
    guard: &'a candle_core::Storage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match guard {
        candle_core::Storage::Cpu(storage) => contiguous_f32(storage, layout, what),
        _ => candle_core::bail!("{what}: the fast kernels run on the CPU only"),
    }
}

/// The gradients of a convolution's input, weight and bias as tensors, from the flat weight and
/// bias gradients (`params`, weights first) and the input gradient when there is one.
pub(crate) fn gradient_tensors(
    params: Vec<f32>,
    dx: Option<Vec<f32>>,
    g: &ConvGeometry,
    x: &Tensor,
    w: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let n_weights = g.c_out * g.col_rows();
    let device = x.device();
    let grad_w = Tensor::from_slice(&params[..n_weights], w.shape(), device)?;
    let grad_b = Tensor::from_slice(&params[n_weights..], g.c_out, device)?;
    let grad_x = match dx {
        Some(dx) => Some(Tensor::from_vec(dx, x.shape(), device)?),
        None => None,
    };
    Ok((grad_x, Some(grad_w), Some(grad_b)))
}
