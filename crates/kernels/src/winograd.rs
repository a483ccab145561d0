//! What the Winograd convolutions share: the per-thread buffers, the per-position GEMM, the
//! geometry and the flipped, channel-swapped kernel of the input gradient. The input gradient of
//! a 3x3 stride-1 convolution is the same convolution of the output gradient with the kernel
//! flipped and its channels swapped ([`KernelOrder::FlippedSwapped`], [`Winograd::transposed`]),
//! which the image-by-image path runs; the batched path takes the transpose of its forward
//! instead (`TiledWinograd::batch_weight_grad`).
//! The algorithms that run are [`super::winograd_f4`]'s F(4x4, 3x3) and, over several images
//! at once on the planes where it needs fewer products, [`super::winograd_f6`]'s F(6x6, 3x3)
//! ([`Tiling`]); F(2x2, 3x3), a third algorithm the tests compare them with, is in
//! `winograd_f2_oracle.rs` (compiled for tests only).

use rayon::prelude::*;

use super::parallel::{for_each_chunk, gemm, grown, Gemm};
use super::winograd_batch::ChannelPlanes;
use super::{winograd_f4 as f4, winograd_f6 as f6};

/// Which of Winograd's algorithms a convolution runs: the size of its tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tiling {
    /// F(4x4, 3x3): 4x4 output blocks from 6x6 tiles, 36 products per tile.
    F4,
    /// F(6x6, 3x3): 6x6 output blocks from 8x8 tiles, 64 products per tile.
    F6,
}

impl Tiling {
    /// The tiling with fewer products for an `h x w` plane, F(4x4, 3x3) on a tie: F(6x6, 3x3)
    /// at 5x5 and 6x6 (one tile against four), 9x12, 11x11, 12x12, 23x23, 24x24 (a fifth fewer)
    /// and 27x27 (conv3b at 224 px, a tenth fewer); F(4x4, 3x3) at 7x7, 8x8 (four tiles either
    /// way) and 13x13 (as many products).
    pub(crate) fn for_plane(h: usize, w: usize) -> Self {
        let products =
            |block: usize, positions: usize| h.div_ceil(block) * w.div_ceil(block) * positions;
        if products(f6::BLOCK, f6::POSITIONS) < products(f4::BLOCK, f4::POSITIONS) {
            Tiling::F6
        } else {
            Tiling::F4
        }
    }

    /// The tiling a training step takes for an `h x w` plane: [`Self::for_plane`]'s on planes of
    /// 13 to 24 pixels a side, F(4x4, 3x3) elsewhere. A step transforms the changed weights (in
    /// the forward, and the weight gradient back) and its weight gradient's GEMMs write one
    /// `c_out x c_in` matrix per tile position, weight-sized work that F(6x6, 3x3)'s 64
    /// positions make 1.78 times larger; only on the middle planes does its fifth fewer products
    /// outweigh that. Training steps alternating F(6x6, 3x3) with F(4x4, 3x3) in one process,
    /// time over time (medians of 20-60 pairs, 2 threads): on an Intel Xeon with AVX-512, 0.956,
    /// 0.965 and 0.968 at 96 px (conv2b at 23x23) and 0.969 for the paper variant (24x24), but
    /// 1.07 at 48 px (11x11 and 12x12, both variants) and 1.02 at 224 px (27x27, 8 pairs); on an
    /// AMD EPYC Zen 3 with AVX2, 1.00 at 48 px and 1.00-1.02 at 96 px. (Those steps also
    /// transformed the flipped weights for the input gradient; since it takes the forward's
    /// transform, F(6x6, 3x3) everywhere measured 1.003 and 1.014 at 48 px, 40 and 80 pairs, on
    /// the Intel Xeon: no gain, so the choice stands.)
    pub(crate) fn for_training(h: usize, w: usize) -> Self {
        if (13..=24).contains(&h.min(w)) && h.max(w) <= 24 {
            Self::for_plane(h, w)
        } else {
            Tiling::F4
        }
    }

    /// Side of the input tile.
    pub(crate) fn tile(self) -> usize {
        match self {
            Tiling::F4 => f4::TILE,
            Tiling::F6 => f6::TILE,
        }
    }

    /// Side of the output block of one tile.
    pub(crate) fn block(self) -> usize {
        match self {
            Tiling::F4 => f4::BLOCK,
            Tiling::F6 => f6::BLOCK,
        }
    }

    /// Positions in a transformed tile: one GEMM each.
    pub(crate) fn positions(self) -> usize {
        self.tile() * self.tile()
    }
}

/// `U = G g G^T` for every kernel of `weight` (`c_out x c_in x 3 x 3`), as `N * N` matrices of
/// `c_out x c_in` (`N^2 x c_out x c_in`), where `combine` applies `G` to a kernel row or column:
/// computed in f64 and rounded once. Each output channel on its own thread; within it, each step
/// runs over all its input channels at once (the kernels' values transposed first, `9 x c_in`),
/// loops the compiler vectorises at the widest level the CPU has, and the results go out as runs
/// of `c_in` values, one per position. Each value's operations are those of a kernel-by-kernel
/// transform (tested bit for bit). Kernel by kernel, with a zeroed output and a local block
/// copied out, the four transforms of a 48 px training step took about a tenth of it.
pub(super) fn transform_weights_with<const N: usize>(
    (c_out, c_in): (usize, usize),
    (weight, order): (&[f32], KernelOrder),
    combine: impl Fn([f64; 3]) -> [f64; N] + Sync,
) -> Vec<f32> {
    let positions = N * N;
    let len = positions * c_out * c_in;
    // Written once, value by value, with no zeroing first: the transform is memory-bound (2.9
    // MiB for conv2b, four a training step), and zeroing it, on the calling thread, then
    // writing it through a local block cost as much again.
    let mut transformed: Vec<f32> = Vec::with_capacity(len);
    let rows = ChannelPlanes::new(
        &mut transformed.spare_capacity_mut()[..len],
        positions,
        c_out,
        c_in,
    );
    (0..c_out)
        .into_par_iter()
        .for_each_init(Buffers::default, |Buffers(kernels, columns), o| {
            let kernels = grown(kernels, 9 * c_in);
            let columns = grown(columns, 3 * N * c_in);
            super::isa::vectorised(
                #[inline(always)]
                || {
                    // kernels[k][i]: value k of input channel i's kernel.
                    match order {
                        KernelOrder::AsGiven => {
                            let weight = &weight[o * c_in * 9..][..c_in * 9];
                            for (i, g) in weight.chunks_exact(9).enumerate() {
                                for (k, &value) in g.iter().enumerate() {
                                    kernels[k * c_in + i] = value as f64;
                                }
                            }
                        }
                        KernelOrder::FlippedSwapped => {
                            for i in 0..c_in {
                                let g = &weight[(i * c_out + o) * 9..][..9];
                                for (k, &value) in g.iter().rev().enumerate() {
                                    kernels[k * c_in + i] = value as f64;
                                }
                            }
                        }
                    }
                    // G g: N x 3, column by column; columns[col][row][i].
                    for col in 0..3 {
                        let [g0, g1, g2] =
                            [0, 3, 6].map(|row| &kernels[(row + col) * c_in..][..c_in]);
                        let mut rows = columns[col * N * c_in..][..N * c_in].chunks_exact_mut(c_in);
                        let mut out: [&mut [f64]; N] =
                            std::array::from_fn(|_| rows.next().expect("N rows"));
                        for i in 0..c_in {
                            let values = combine([g0[i], g1[i], g2[i]]);
                            for (out, value) in out.iter_mut().zip(values) {
                                out[i] = value;
                            }
                        }
                    }
                    // (G g) G^T: N x N, row by row, straight into output channel o's row of
                    // each position's matrix.
                    for row in 0..N {
                        let [c0, c1, c2] =
                            [0, 1, 2].map(|col| &columns[(col * N + row) * c_in..][..c_in]);
                        // SAFETY: this job alone handles output channel `o`, so it alone writes
                        // its row of each position's matrix; the N positions are distinct.
                        let mut out: [&mut [std::mem::MaybeUninit<f32>]; N] =
                            std::array::from_fn(|col| unsafe { rows.plane(row * N + col, o) });
                        for i in 0..c_in {
                            let values = combine([c0[i], c1[i], c2[i]]);
                            for (out, value) in out.iter_mut().zip(values) {
                                out[i] = std::mem::MaybeUninit::new(value as f32);
                            }
                        }
                    }
                },
            );
        });
    // SAFETY: every output channel's job wrote its row (`c_in` values) of every position's
    // matrix: all `positions x c_out x c_in` values.
    unsafe { transformed.set_len(len) };
    transformed
}

/// How [`transform_weights_with`] reads its kernels from `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KernelOrder {
    /// `c_out x c_in x 3 x 3`, as given.
    AsGiven,
    /// The kernels of the input gradient's convolution from the forward's weights (`c_in x c_out
    /// x 3 x 3` for this `c_out` and `c_in`): each turned by 180 degrees, input and output
    /// channels swapped, without building that copy (`Winograd::flipped_weights`, now the
    /// tests' reference): a serial pass over the weights at every training step.
    FlippedSwapped,
}

/// A thread's two f64 working buffers for [`transform_weights_with`] (a channel's kernels
/// transposed, and `G g`) and [`weight_grad_with`] (`G^T dU`, and the kernels' gradients).
#[derive(Default)]
struct Buffers(Vec<f64>, Vec<f64>);

/// The kernel gradient `dg = G^T dU G` for every kernel, in f64, added to `dw` (`c_out x c_in
/// x 3 x 3`), from the gradient `du` in Winograd's domain (`N^2 x c_out x c_in`), where
/// `combine` applies `G^T` to `N` values; output channels on every thread. As in
/// [`transform_weights_with`], each step runs over all of a channel's input channels at once,
/// reading each position's row of `du` as one run; each value's operations are those of a
/// kernel-by-kernel computation (tested bit for bit).
pub(super) fn weight_grad_with<const N: usize>(
    (c_out, c_in): (usize, usize),
    du: &[f32],
    dw: &mut [f32],
    combine: impl Fn([f64; N]) -> [f64; 3] + Sync,
) {
    let pairs = c_out * c_in;
    dw[..9 * pairs]
        .par_chunks_mut(9 * c_in)
        .enumerate()
        .for_each_init(Buffers::default, |Buffers(columns, kernels), (o, dw)| {
            let columns = grown(columns, N * 3 * c_in);
            let kernels = grown(kernels, 9 * c_in);
            super::isa::vectorised(
                #[inline(always)]
                || {
                    // G^T dU: 3 x N, column by column; columns[col][row][i].
                    for col in 0..N {
                        let u: [&[f32]; N] = std::array::from_fn(|row| {
                            &du[(row * N + col) * pairs + o * c_in..][..c_in]
                        });
                        let mut rows = columns[col * 3 * c_in..][..3 * c_in].chunks_exact_mut(c_in);
                        let mut out: [&mut [f64]; 3] =
                            std::array::from_fn(|_| rows.next().expect("three rows"));
                        for i in 0..c_in {
                            let values = combine(std::array::from_fn(|row| u[row][i] as f64));
                            for (out, value) in out.iter_mut().zip(values) {
                                out[i] = value;
                            }
                        }
                    }
                    // (G^T dU) G: 3 x 3, row by row; kernels[k][i].
                    for row in 0..3 {
                        let t: [&[f64]; N] =
                            std::array::from_fn(|col| &columns[(col * 3 + row) * c_in..][..c_in]);
                        let mut rows = kernels[row * 3 * c_in..][..3 * c_in].chunks_exact_mut(c_in);
                        let mut out: [&mut [f64]; 3] =
                            std::array::from_fn(|_| rows.next().expect("three columns"));
                        for i in 0..c_in {
                            let values = combine(std::array::from_fn(|col| t[col][i]));
                            for (out, value) in out.iter_mut().zip(values) {
                                out[i] = value;
                            }
                        }
                    }
                },
            );
            for (i, dg) in dw.chunks_exact_mut(9).enumerate() {
                for (k, d) in dg.iter_mut().enumerate() {
                    *d += kernels[k * c_in + i] as f32;
                }
            }
        });
}

/// `dU[p] (c_out x c_in) += dM[p] (c_out x columns) * V[p]^T (columns x c_in)` for every tile
/// position `p` of `positions` (overwritten unless `accumulate`), from the transformed inputs
/// `input` and output gradients `grads` (`channels x positions x columns`: both operands' rows
/// lie `positions * columns` values apart); the positions on every thread when `parallel`.
pub(super) fn position_weight_grads(
    (input, grads): (&[f32], &[f32]),
    (c_in, c_out, columns, positions): GemmSizes,
    du: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    let gemm_at = |(position, du): (usize, &mut [f32])| {
        gemm(
            Gemm {
                m: c_out,
                n: c_in,
                k: columns,
                dst: du,
                accumulate,
                lhs: &grads[position * columns..],
                lhs_rs: positions * columns,
                lhs_cs: 1,
                rhs: &input[position * columns..],
                rhs_rs: 1,
                rhs_cs: positions * columns,
            },
            gemm::Parallelism::None,
        )
    };
    for_each_chunk(du, c_out * c_in, parallel, gemm_at);
}

/// Geometry of one 3x3, stride 1, padding 1 convolution of `c_in x h x w` into `c_out x h x w`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Winograd {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
}

/// Per-thread buffers of the Winograd convolutions ([`super::winograd_f4::WinogradF4::image`]
/// and the batched ones).
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
    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::{transform_weights_with, weight_grad_with, KernelOrder, Tiling};
    use crate::isa::for_each_supported;

    /// `G g G^T` kernel by kernel, as the transform computed it before it ran over whole
    /// channels: the same f64 operations per value.
    fn kernel_by_kernel<const N: usize>(
        (c_out, c_in): (usize, usize),
        weight: &[f32],
        combine: impl Fn([f64; 3]) -> [f64; N],
    ) -> Vec<f32> {
        let mut transformed = vec![f32::NAN; N * N * c_out * c_in];
        for o in 0..c_out {
            for i in 0..c_in {
                let g = &weight[(o * c_in + i) * 9..][..9];
                let columns: [[f64; N]; 3] = std::array::from_fn(|col| {
                    combine([g[col] as f64, g[3 + col] as f64, g[6 + col] as f64])
                });
                for row in 0..N {
                    let values = combine([columns[0][row], columns[1][row], columns[2][row]]);
                    for (col, value) in values.into_iter().enumerate() {
                        transformed[((row * N + col) * c_out + o) * c_in + i] = value as f32;
                    }
                }
            }
        }
        transformed
    }

    #[test]
    fn the_weight_transform_over_whole_channels_gives_each_kernels_bits() {
        // Input channels not a whole number of vectors (1, 5, 13) and conv2b's 96; both
        // algorithms' G; every vector path.
        for (c_out, c_in) in [(3, 1), (2, 5), (4, 13), (2, 96)] {
            let weight: Vec<f32> = (0..c_out * c_in * 9)
                .map(|k| ((k as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0 - 0.5)
                .collect();
            let sizes = (c_out, c_in);
            let f4 = kernel_by_kernel(sizes, &weight, crate::winograd_f4::weight_combination);
            let f6 = kernel_by_kernel(sizes, &weight, crate::winograd_f6::weight_combination);
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for_each_supported(|level| {
                let ours = transform_weights_with(
                    sizes,
                    (&weight, KernelOrder::AsGiven),
                    crate::winograd_f4::weight_combination,
                );
                assert_eq!(
                    bits(&ours),
                    bits(&f4),
                    "F(4x4, 3x3), {c_out}x{c_in}, {level}"
                );
                let ours = transform_weights_with(
                    sizes,
                    (&weight, KernelOrder::AsGiven),
                    crate::winograd_f6::weight_combination,
                );
                assert_eq!(
                    bits(&ours),
                    bits(&f6),
                    "F(6x6, 3x3), {c_out}x{c_in}, {level}"
                );
            });
        }
    }

    /// `G^T dU G` kernel by kernel, added to `dw`, as before it ran over whole channels.
    fn grad_kernel_by_kernel<const N: usize>(
        (c_out, c_in): (usize, usize),
        du: &[f32],
        dw: &mut [f32],
        combine: impl Fn([f64; N]) -> [f64; 3],
    ) {
        let pairs = c_out * c_in;
        for o in 0..c_out {
            for i in 0..c_in {
                let u = |row: usize, col: usize| du[(row * N + col) * pairs + o * c_in + i] as f64;
                let columns: [[f64; 3]; N] =
                    std::array::from_fn(|col| combine(std::array::from_fn(|row| u(row, col))));
                for row in 0..3 {
                    let values = combine(std::array::from_fn(|col| columns[col][row]));
                    for (col, value) in values.into_iter().enumerate() {
                        dw[(o * c_in + i) * 9 + row * 3 + col] += value as f32;
                    }
                }
            }
        }
    }

    #[test]
    fn the_weight_gradient_over_whole_channels_gives_each_kernels_bits() {
        for (c_out, c_in) in [(3, 1), (2, 5), (4, 13), (2, 96)] {
            let values = |count: usize, seed: u32| -> Vec<f32> {
                (0..count as u32)
                    .map(|k| {
                        (k.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                            / 16_777_216.0
                            - 0.5
                    })
                    .collect()
            };
            let start = values(c_out * c_in * 9, 3);
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let (f4, f6) = (
                &crate::winograd_f4::weight_grad_combination,
                &crate::winograd_f6::weight_grad_combination,
            );
            let du4 = values(36 * c_out * c_in, 4);
            let du6 = values(64 * c_out * c_in, 5);
            let mut expected4 = start.clone();
            grad_kernel_by_kernel((c_out, c_in), &du4, &mut expected4, f4);
            let mut expected6 = start.clone();
            grad_kernel_by_kernel((c_out, c_in), &du6, &mut expected6, f6);
            for_each_supported(|level| {
                let mut dw = start.clone();
                weight_grad_with((c_out, c_in), &du4, &mut dw, f4);
                assert_eq!(
                    bits(&dw),
                    bits(&expected4),
                    "F(4x4, 3x3), {c_out}x{c_in}, {level}"
                );
                let mut dw = start.clone();
                weight_grad_with((c_out, c_in), &du6, &mut dw, f6);
                assert_eq!(
                    bits(&dw),
                    bits(&expected6),
                    "F(6x6, 3x3), {c_out}x{c_in}, {level}"
                );
            });
        }
    }

    #[test]
    fn flipped_kernels_read_in_place_give_the_flipped_copys_transform() {
        use crate::winograd::Winograd;
        for (c_out, c_in) in [(3, 1), (2, 5), (5, 13)] {
            let weight: Vec<f32> = (0..c_out * c_in * 9)
                .map(|k| ((k as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0)
                .collect();
            let g = Winograd {
                c_in,
                c_out,
                h: 8,
                w: 8,
            };
            let flipped = g.flipped_weights(&weight);
            let swapped = (c_in, c_out);
            let bits = |values: Vec<f32>| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let f4 = crate::winograd_f4::weight_combination;
            let copy = transform_weights_with(swapped, (&flipped, KernelOrder::AsGiven), f4);
            let read = transform_weights_with(swapped, (&weight, KernelOrder::FlippedSwapped), f4);
            assert_eq!(bits(read), bits(copy), "F(4x4, 3x3), {c_out}x{c_in}");
            let f6 = crate::winograd_f6::weight_combination;
            let copy = transform_weights_with(swapped, (&flipped, KernelOrder::AsGiven), f6);
            let read = transform_weights_with(swapped, (&weight, KernelOrder::FlippedSwapped), f6);
            assert_eq!(bits(read), bits(copy), "F(6x6, 3x3), {c_out}x{c_in}");
        }
    }

    #[test]
    fn training_takes_f6_on_the_middle_planes_only() {
        // conv3b and conv2b at 48 px (5, 11; 6, 12 in the paper's variant), conv2b at 96 px (23,
        // 24), conv3b at 224 px (27, 28), and a non-square plane across the edge.
        for (h, w, tiling) in [
            (5, 5, Tiling::F4),
            (6, 6, Tiling::F4),
            (11, 11, Tiling::F4),
            (12, 12, Tiling::F4),
            (13, 13, Tiling::F4),
            (17, 17, Tiling::F6),
            (23, 23, Tiling::F6),
            (24, 24, Tiling::F6),
            (23, 25, Tiling::F4),
            (27, 27, Tiling::F4),
            (28, 28, Tiling::F4),
        ] {
            assert_eq!(Tiling::for_training(h, w), tiling, "{h}x{w}");
        }
        assert_eq!(Tiling::for_plane(27, 27), Tiling::F6);
    }
}
