//! Cross-channel local response normalisation (Krizhevsky et al. 2012), with PyTorch's
//! `nn.LocalResponseNorm(size, alpha, beta, k)` semantics: a fused CPU op with its backward, or
//! differentiable tensor ops.
//!
//! PyTorch squares the input, pads the channel dimension with `size / 2` zeros before and
//! `(size - 1) / 2` after, and takes a `size`-long average over it (`avg_pool3d`, the padding
//! counted), so `alpha` is divided by `size`:
//!
//! `b_c = a_c / (k + alpha / size * sum_{c' = c - size/2}^{c + (size-1)/2} a_{c'}^2)^beta`
//!
//! with channels outside `0..C` contributing nothing.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::parallel::{grown, with_spare_buffer};
use super::storage::contiguous_f32;

/// The constants of a local response normalisation, as PyTorch's `nn.LocalResponseNorm` takes
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalResponseNorm {
    /// Channels in the window (the channel itself, `size / 2` before, `(size - 1) / 2` after).
    pub size: usize,
    /// Scale of the window's mean square (PyTorch divides it by `size`).
    pub alpha: f64,
    /// Exponent of the divisor.
    pub beta: f64,
    /// Additive constant of the divisor.
    pub k: f64,
}

impl LocalResponseNorm {
    /// AlexNet's and GoogLeNet's constants (size 5, alpha 1e-4, beta 0.75, k 1: k as
    /// GoogLeNet's Caffe definition and PyTorch's default, AlexNet's paper uses k 2).
    pub const ALEXNET: Self = Self {
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 1.0,
    };

    /// Checks the constants: a positive window and finite constants with `k > 0` (so that the
    /// divisor is positive for every input).
    pub fn check(&self) -> candle_core::Result<()> {
        if self.size == 0 {
            candle_core::bail!("local_response_norm: size is 0, it must be at least 1")
        }
        if !(self.alpha.is_finite() && self.beta.is_finite() && self.k.is_finite())
            || self.k <= 0.0
            || self.alpha < 0.0
        {
            candle_core::bail!(
                "local_response_norm: alpha {}, beta {}, k {}: each must be finite, alpha >= 0 and k > 0",
                self.alpha,
                self.beta,
                self.k
            )
        }
        Ok(())
    }

    /// Channels of the window before the channel itself.
    fn before(&self) -> usize {
        self.size / 2
    }

    /// Channels of the window after the channel itself.
    fn after(&self) -> usize {
        (self.size - 1) / 2
    }
}

/// Local response normalisation across the channels (dimension 1) of `xs`
/// (`N x C x ...`, at least three dimensions), with PyTorch's semantics (see the module's
/// documentation); differentiable.
///
/// On the CPU in f32 this is one fused op (each channel's window summed in f32 in channel order,
/// as PyTorch's average does), and so it is on CUDA in f32 with the `cuda` feature; elsewhere a
/// composition of tensor ops.
pub fn local_response_norm(xs: &Tensor, lrn: LocalResponseNorm) -> candle_core::Result<Tensor> {
    local_response_norm_on(xs, lrn, super::fast_kernels_for(xs))
}

/// [`local_response_norm`] on a chosen path, so tests can compare both in one process.
pub(crate) fn local_response_norm_on(
    xs: &Tensor,
    lrn: LocalResponseNorm,
    fast: bool,
) -> candle_core::Result<Tensor> {
    lrn.check()?;
    if xs.rank() < 3 {
        candle_core::bail!(
            "local_response_norm: input of shape {:?}, expected N x C x ... (at least 3 dimensions)",
            xs.dims()
        )
    }
    #[cfg(feature = "cuda")]
    let fast = fast || super::cuda::normalises(xs);
    if fast {
        return xs.contiguous()?.apply_op1(LrnOp { lrn });
    }
    reference(xs, lrn)
}

/// The composition of tensor ops, PyTorch's own: the squares padded with zeros along the
/// channels, a moving sum over `size` channels, then the divisor.
fn reference(xs: &Tensor, lrn: LocalResponseNorm) -> candle_core::Result<Tensor> {
    let channels = xs.dim(1)?;
    let padded = xs.sqr()?.pad_with_zeros(1, lrn.before(), lrn.after())?;
    let mut sum = padded.narrow(1, 0, channels)?;
    for offset in 1..lrn.size {
        sum = (sum + padded.narrow(1, offset, channels)?)?;
    }
    let divisor = ((sum / lrn.size as f64)? * lrn.alpha)? + lrn.k;
    xs / divisor?.powf(lrn.beta)?
}

/// Channels, and values per channel, of an `N x C x ...` layout.
fn geometry(layout: &Layout) -> (usize, usize) {
    let dims = layout.dims();
    let channels = dims.get(1).copied().unwrap_or(1);
    (channels, dims.iter().skip(2).product())
}

/// The constants in f32, as the kernels use them.
#[derive(Clone, Copy)]
struct Constants {
    size: f32,
    alpha: f32,
    k: f32,
}

impl Constants {
    fn of(lrn: LocalResponseNorm) -> Self {
        Self {
            size: lrn.size as f32,
            alpha: lrn.alpha as f32,
            k: lrn.k as f32,
        }
    }

    /// The divisor's base `k + alpha * sum / size` from the window's sum of squares, in
    /// PyTorch's order (the average first).
    #[inline(always)]
    fn base(&self, sum: f32) -> f32 {
        sum / self.size * self.alpha + self.k
    }
}

/// `d^beta`, chosen once per call: a test of `beta` inside the loops kept them from
/// vectorising. The common exponent 0.75 is two square roots (correctly rounded, and
/// vectorised, where `powf` is a scalar library call per value).
trait Exponent: Copy + Send + Sync {
    fn power(self, d: f32) -> f32;
}

#[derive(Clone, Copy)]
struct ThreeQuarters;

impl Exponent for ThreeQuarters {
    #[inline(always)]
    fn power(self, d: f32) -> f32 {
        let root = d.sqrt();
        root * root.sqrt()
    }
}

#[derive(Clone, Copy)]
struct Half;

impl Exponent for Half {
    #[inline(always)]
    fn power(self, d: f32) -> f32 {
        d.sqrt()
    }
}

#[derive(Clone, Copy)]
struct One;

impl Exponent for One {
    #[inline(always)]
    fn power(self, d: f32) -> f32 {
        d
    }
}

#[derive(Clone, Copy)]
struct General(f32);

impl Exponent for General {
    #[inline(always)]
    fn power(self, d: f32) -> f32 {
        d.powf(self.0)
    }
}

/// Runs `$body` with `$exponent` bound to the [`Exponent`] of `$beta`.
macro_rules! with_exponent {
    ($beta:expr, $exponent:ident => $body:expr) => {{
        let beta = $beta as f32;
        if beta == 0.75 {
            let $exponent = ThreeQuarters;
            $body
        } else if beta == 0.5 {
            let $exponent = Half;
            $body
        } else if beta == 1.0 {
            let $exponent = One;
            $body
        } else {
            let $exponent = General(beta);
            $body
        }
    }};
}

/// Values each parallel task takes at least (whole planes): at 48 px a plane is 144 values, and
/// a task per plane cost more in scheduling than in arithmetic. Tests split their small
/// tensors into several tasks, the last one short.
const TASK_VALUES: usize = if cfg!(test) { 40 } else { 8192 };

/// Planes per parallel task for planes of `plane` values.
fn planes_per_task(plane: usize) -> usize {
    TASK_VALUES.div_ceil(plane.max(1))
}

/// `out = sum of x[c']^2` over the window of channel `c` of one image (`x`: its `C` planes).
#[inline(always)]
fn window_sum(out: &mut [f32], x: &[f32], c: usize, channels: usize, lrn: LocalResponseNorm) {
    let plane = out.len();
    let first = c.saturating_sub(lrn.before());
    let last = (c + lrn.after()).min(channels - 1);
    out.fill(0.0);
    for source in first..=last {
        for (o, &v) in out.iter_mut().zip(&x[source * plane..(source + 1) * plane]) {
            *o += v * v;
        }
    }
}

/// The forward: each output plane from its window of input planes.
fn forward(x: &[f32], (channels, plane): (usize, usize), lrn: LocalResponseNorm) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if plane == 0 {
        return out;
    }
    with_exponent!(lrn.beta, exponent => forward_with(&mut out, x, (channels, plane), lrn, exponent));
    out
}

fn forward_with(
    out: &mut [f32],
    x: &[f32],
    (channels, plane): (usize, usize),
    lrn: LocalResponseNorm,
    exponent: impl Exponent,
) {
    let constants = Constants::of(lrn);
    let per_task = planes_per_task(plane);
    out.par_chunks_mut(plane * per_task)
        .enumerate()
        .for_each(|(task, out)| {
            for (offset, out) in out.chunks_mut(plane).enumerate() {
                let plane_idx = task * per_task + offset;
                let (image, c) = (plane_idx / channels, plane_idx % channels);
                let x = &x[image * channels * plane..(image + 1) * channels * plane];
                super::isa::vectorised(
                    #[inline(always)]
                    || {
                        window_sum(out, x, c, channels, lrn);
                        for (o, &v) in out.iter_mut().zip(&x[c * plane..(c + 1) * plane]) {
                            *o = v / exponent.power(constants.base(*o));
                        }
                    },
                )
            }
        });
}

/// The input gradient. With `d_c = k + alpha / size * S_c` and `y_c = x_c / d_c^beta`,
/// `dx_j = g_j / d_j^beta - 2 alpha beta / size * x_j * sum_{c : j in window(c)} g_c x_c / (d_c^beta d_c)`,
/// where `j` is in the window of `c` for `c` from `j - (size-1)/2` to `j + size/2`.
fn backward(
    x: &[f32],
    grad: &[f32],
    (channels, plane): (usize, usize),
    lrn: LocalResponseNorm,
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    if plane == 0 {
        return dx;
    }
    with_exponent!(lrn.beta, exponent => backward_with(&mut dx, x, grad, (channels, plane), lrn, exponent));
    dx
}

fn backward_with(
    dx: &mut [f32],
    x: &[f32],
    grad: &[f32],
    (channels, plane): (usize, usize),
    lrn: LocalResponseNorm,
    exponent: impl Exponent,
) {
    let constants = Constants::of(lrn);
    let per_task = planes_per_task(plane);
    let mut terms = vec![0f32; x.len()];
    // Pass 1: the direct term of each plane and its share `g x / (d^beta d)` of its window's.
    dx.par_chunks_mut(plane * per_task)
        .zip(terms.par_chunks_mut(plane * per_task))
        .enumerate()
        .for_each(|(task, (dx, terms))| {
            for (offset, (dx, terms)) in dx
                .chunks_mut(plane)
                .zip(terms.chunks_mut(plane))
                .enumerate()
            {
                let plane_idx = task * per_task + offset;
                let (image, c) = (plane_idx / channels, plane_idx % channels);
                let x = &x[image * channels * plane..(image + 1) * channels * plane];
                let at = plane_idx * plane..(plane_idx + 1) * plane;
                let (own, grad) = (&x[c * plane..(c + 1) * plane], &grad[at]);
                super::isa::vectorised(
                    #[inline(always)]
                    || {
                        window_sum(dx, x, c, channels, lrn);
                        for (((d, t), &v), &g) in
                            dx.iter_mut().zip(terms.iter_mut()).zip(own).zip(grad)
                        {
                            let base = constants.base(*d);
                            let scale = exponent.power(base);
                            *d = g / scale;
                            *t = g * v / (scale * base);
                        }
                    },
                )
            }
        });
    // Pass 2: subtract the window terms of the channels whose windows hold this one.
    let coefficient = 2.0 * constants.alpha * lrn.beta as f32 / constants.size;
    let terms = &terms;
    dx.par_chunks_mut(plane * per_task)
        .enumerate()
        .for_each(|(task, dx)| {
            with_spare_buffer(|buffer| {
                let sum = grown(buffer, plane);
                for (offset, dx) in dx.chunks_mut(plane).enumerate() {
                    let plane_idx = task * per_task + offset;
                    let (image, j) = (plane_idx / channels, plane_idx % channels);
                    let first = j.saturating_sub(lrn.after());
                    let last = (j + lrn.before()).min(channels - 1);
                    let image_terms =
                        &terms[image * channels * plane..(image + 1) * channels * plane];
                    let own = &x[plane_idx * plane..(plane_idx + 1) * plane];
                    super::isa::vectorised(
                        #[inline(always)]
                        || {
                            sum.fill(0.0);
                            for c in first..=last {
                                for (s, &t) in
                                    sum.iter_mut().zip(&image_terms[c * plane..(c + 1) * plane])
                                {
                                    *s += t;
                                }
                            }
                            for ((d, &v), &s) in dx.iter_mut().zip(own).zip(sum.iter()) {
                                *d -= coefficient * v * s;
                            }
                        },
                    )
                }
            })
        });
}

/// The fused op on a contiguous `N x C x ...` f32 input, on the CPU and on CUDA (`cuda.rs`).
struct LrnOp {
    lrn: LocalResponseNorm,
}

impl CustomOp1 for LrnOp {
    fn name(&self) -> &'static str {
        "dexpression-local-response-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "local_response_norm input")?;
        let out = forward(x, geometry(layout), self.lrn);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::lrn_forward((storage, layout), geometry(layout), self.lrn)?;
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = x.apply_op2_no_bwd(&grad.contiguous()?, &LrnBackwardOp { lrn: self.lrn })?;
        Ok(Some(dx))
    }
}

/// The input gradient of [`LrnOp`]: arguments the input and the output gradient.
struct LrnBackwardOp {
    lrn: LocalResponseNorm,
}

impl CustomOp2 for LrnBackwardOp {
    fn name(&self) -> &'static str {
        "dexpression-local-response-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if xl.dims() != gl.dims() {
            candle_core::bail!(
                "local_response_norm backward: gradient of shape {:?} for an input of {:?}",
                gl.dims(),
                xl.dims()
            )
        }
        let x_values = contiguous_f32(x, xl, "local_response_norm input")?;
        let g = contiguous_f32(g, gl, "local_response_norm gradient")?;
        let dx = backward(x_values, g, geometry(xl), self.lrn);
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        if xl.dims() != gl.dims() {
            candle_core::bail!(
                "local_response_norm backward: gradient of shape {:?} for an input of {:?}",
                gl.dims(),
                xl.dims()
            )
        }
        let dx = super::cuda::lrn_backward([(x, xl), (g, gl)], geometry(xl), self.lrn)?;
        Ok((dx, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// PyTorch's formula written out in f64, one value at a time: the oracle for both paths.
    fn by_the_formula(
        x: &[f64],
        (n, c, plane): (usize, usize, usize),
        lrn: LocalResponseNorm,
    ) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for image in 0..n {
            for channel in 0..c {
                for p in 0..plane {
                    let at = |ch: usize| x[(image * c + ch) * plane + p];
                    let lo = channel as isize - (lrn.size / 2) as isize;
                    let hi = channel as isize + ((lrn.size - 1) / 2) as isize;
                    let sum: f64 = (lo..=hi)
                        .filter(|&ch| ch >= 0 && (ch as usize) < c)
                        .map(|ch| at(ch as usize).powi(2))
                        .sum();
                    let divisor = (lrn.k + lrn.alpha / lrn.size as f64 * sum).powf(lrn.beta);
                    out[(image * c + channel) * plane + p] = at(channel) / divisor;
                }
            }
        }
        out
    }

    #[test]
    fn both_paths_follow_pytorchs_formula_with_its_uneven_window() {
        let (n, c, h, w) = (2, 7, 3, 5);
        let values: Vec<f64> = (0..n * c * h * w)
            .map(|i| ((i * 37 % 101) as f64 / 101.0 - 0.5) * 8.0)
            .collect();
        // An even size (window of 2 before, 1 after), a large alpha so that the window matters,
        // and an exponent other than 0.75 (the general power).
        for lrn in [
            LocalResponseNorm::ALEXNET,
            LocalResponseNorm {
                size: 4,
                alpha: 2.0,
                beta: 0.6,
                k: 1.5,
            },
            LocalResponseNorm {
                size: 3,
                alpha: 1.0,
                beta: 0.75,
                k: 2.0,
            },
            LocalResponseNorm {
                size: 1,
                alpha: 0.5,
                beta: 1.0,
                k: 1.0,
            },
        ] {
            let expected = by_the_formula(&values, (n, c, h * w), lrn);
            let x64 = Tensor::from_vec(values.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let reference = local_response_norm_on(&x64, lrn, false).unwrap();
            let fast =
                local_response_norm_on(&x64.to_dtype(DType::F32).unwrap(), lrn, true).unwrap();
            let reference = reference.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let fast = fast.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, e) in expected.iter().enumerate() {
                assert!(
                    (reference[i] - e).abs() <= 1e-12 * e.abs().max(1.0),
                    "{lrn:?} at {i}"
                );
                assert!(
                    (fast[i] as f64 - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{lrn:?} at {i}: fast {} expected {e}",
                    fast[i]
                );
            }
        }
    }

    #[test]
    fn bad_constants_and_shapes_are_refused_with_the_reason() {
        let xs = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let zero = LocalResponseNorm {
            size: 0,
            ..LocalResponseNorm::ALEXNET
        };
        let error = local_response_norm(&xs, zero).unwrap_err().to_string();
        assert!(error.contains("size is 0"), "{error}");
        let negative_k = LocalResponseNorm {
            k: 0.0,
            ..LocalResponseNorm::ALEXNET
        };
        let error = local_response_norm(&xs, negative_k)
            .unwrap_err()
            .to_string();
        assert!(error.contains("k > 0"), "{error}");
        let flat = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let error = local_response_norm(&flat, LocalResponseNorm::ALEXNET)
            .unwrap_err()
            .to_string();
        assert!(error.contains("at least 3 dimensions"), "{error}");
    }
}
