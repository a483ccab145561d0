//! What the Winograd convolutions share: the per-thread buffers, the per-position GEMM, the
//! geometry and the flipped, channel-swapped kernel of the input gradient. The input gradient of
//! a 3x3 stride-1 convolution is the same convolution of the output gradient with the kernel
//! flipped and its channels swapped ([`Winograd::flipped_weights`], [`Winograd::transposed`]).
//! The algorithm that runs is [`super::winograd_f4`]'s F(4x4, 3x3); F(2x2, 3x3), a second
//! algorithm the tests compare it with, is in `winograd_f2_oracle.rs` (compiled for tests only).

use super::parallel::{gemm, Gemm};

/// Geometry of one 3x3, stride 1, padding 1 convolution of `c_in x h x w` into `c_out x h x w`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Winograd {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
}

/// Per-thread buffers of [`Winograd::image`].
#[derive(Default)]
pub(super) struct Scratch {
    /// Transformed input, `c_in x 16 x tiles`.
    input: Vec<f32>,
    /// Products, `16 x c_out x tiles`.
    products: Vec<f32>,
}

impl Scratch {
    /// The first `input` and `products` values of the buffers, grown (never shrunk) to fit: the
    /// layers that take turns with one thread's buffers differ in size, and shrinking then
    /// growing again would zero the regrown part on every call.
    pub(super) fn buffers(&mut self, input: usize, products: usize) -> (&mut [f32], &mut [f32]) {
        for (buffer, len) in [(&mut self.input, input), (&mut self.products, products)] {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
        (&mut self.input[..input], &mut self.products[..products])
    }
}

thread_local! {
    /// Each thread's buffers, kept between calls: allocating and zeroing them anew for every call
    /// cost about as much as the transforms themselves at batch 1.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's [`Scratch`] (a fresh one if the thread's is already in use, as when
/// a rayon thread picks up more work while waiting inside `f`).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The sizes of one of a Winograd convolution's GEMMs: `c_in`, `c_out`, tiles per channel, and
/// positions per tile.
pub(super) type GemmSizes = (usize, usize, usize, usize);

/// One of a Winograd convolution's GEMMs: `M[position] (c_out x tiles) = U[position] (c_out x
/// c_in) * V[position] (c_in x tiles)`, where `U` is `positions x c_out x c_in` and `V` holds, per
/// input channel, `positions` runs of `tiles` values.
pub(super) fn position_gemm(
    u: &[f32],
    v: &[f32],
    position: usize,
    m: &mut [f32],
    (c_in, c_out, tiles, positions): GemmSizes,
) {
    gemm(
        Gemm {
            m: c_out,
            n: tiles,
            k: c_in,
            dst: m,
            accumulate: false,
            lhs: &u[position * c_out * c_in..][..c_out * c_in],
            lhs_rs: c_in,
            lhs_cs: 1,
            rhs: &v[position * tiles..],
            rhs_rs: positions * tiles,
            rhs_cs: 1,
        },
        gemm::Parallelism::None,
    )
}

impl Winograd {
    /// The kernel for the input gradient: `c_in x c_out x 3 x 3`, each 3x3 kernel turned by 180
    /// degrees. `weight` is `c_out x c_in x 3 x 3`.
    pub(super) fn flipped_weights(&self, weight: &[f32]) -> Vec<f32> {
        let (c_out, c_in) = (self.c_out, self.c_in);
        let mut flipped = vec![0f32; weight.len()];
        for o in 0..c_out {
            for i in 0..c_in {
                let src = &weight[(o * c_in + i) * 9..][..9];
                let dst = &mut flipped[(i * c_out + o) * 9..][..9];
                for (k, value) in src.iter().enumerate() {
                    dst[8 - k] = *value;
                }
            }
        }
        flipped
    }

    /// The same convolution with input and output channels swapped (for the input gradient).
    pub(super) fn transposed(&self) -> Self {
        Self {
            c_in: self.c_out,
            c_out: self.c_in,
            ..*self
        }
    }
}
