//! Winograd's F(2x2, 3x3), compiled for the tests only: a second algorithm beside
//! [`super::winograd_f4`]'s F(4x4, 3x3) and the direct sum, which the tests compare them with.
//!
//! Per image: the input's 4x4 tiles are transformed (`V = B^T d B`), sixteen GEMMs multiply the
//! transformed weights (`U = G g G^T`) by them, one per position in the 4x4 tile, and the
//! products are transformed back (`Y = A^T M A`). The transforms only add, subtract and halve,
//! so the rounding stays close to the direct sum's.

use rayon::prelude::*;

use super::parallel::for_each_chunk;
use super::winograd::{position_gemm, GemmSizes, Scratch, Winograd};

/// Positions in a transformed 4x4 tile: one GEMM each.
const POSITIONS: usize = 16;

impl Winograd {
    /// This convolution's [`GemmSizes`] with `positions` per tile.
    pub(crate) fn sizes(&self, positions: usize) -> GemmSizes {
        (self.c_in, self.c_out, self.tiles(), positions)
    }

    fn tiles_h(&self) -> usize {
        self.h.div_ceil(2)
    }

    fn tiles_w(&self) -> usize {
        self.w.div_ceil(2)
    }

    fn tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }

    /// `U = G g G^T` for every kernel, as sixteen `c_out x c_in` matrices (`16 x c_out x c_in`).
    /// `weight` is `c_out x c_in x 3 x 3`.
    pub(crate) fn transform_weights(&self, weight: &[f32]) -> Vec<f32> {
        let (c_out, c_in) = (self.c_out, self.c_in);
        // Per output channel, on every thread: its 16 x c_in block ...
        let per_output: Vec<Vec<f32>> = (0..c_out)
            .into_par_iter()
            .map(|o| {
                let mut block = vec![0f32; POSITIONS * c_in];
                for i in 0..c_in {
                    let g = &weight[(o * c_in + i) * 9..][..9];
                    // G g: 4 x 3.
                    let mut gg = [[0f32; 3]; 4];
                    for col in 0..3 {
                        let (a, b, c) = (g[col], g[3 + col], g[6 + col]);
                        gg[0][col] = a;
                        gg[1][col] = (a + b + c) * 0.5;
                        gg[2][col] = (a - b + c) * 0.5;
                        gg[3][col] = c;
                    }
                    // (G g) G^T: 4 x 4.
                    for (row, &[a, b, c]) in gg.iter().enumerate() {
                        let values = [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
                        for (col, value) in values.into_iter().enumerate() {
                            block[(row * 4 + col) * c_in + i] = value;
                        }
                    }
                }
                block
            })
            .collect();
        // ... then gathered position by position.
        let mut transformed = vec![0f32; POSITIONS * c_out * c_in];
        transformed
            .par_chunks_mut(c_out * c_in)
            .enumerate()
            .for_each(|(position, matrix)| {
                for (row, block) in matrix.chunks_mut(c_in).zip(&per_output) {
                    row.copy_from_slice(&block[position * c_in..(position + 1) * c_in]);
                }
            });
        transformed
    }

    /// Convolves one image `x` (`c_in x h x w`) with the transformed weights `u` into `out`
    /// (`c_out x h x w`); with `bias`, `out = relu(conv + bias)`. `parallel` spreads the
    /// transforms and GEMMs of this one image over every thread (for batches smaller than the
    /// thread count); otherwise the calling thread does everything.
    pub(crate) fn image(
        &self,
        x: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Scratch,
        parallel: bool,
    ) {
        let tiles = self.tiles();
        let plane = self.h * self.w;
        let (input, products) = scratch.buffers(
            self.c_in * POSITIONS * tiles,
            POSITIONS * self.c_out * tiles,
        );
        let transform_channel = |(channel, v): (usize, &mut [f32])| {
            self.transform_input(&x[channel * plane..(channel + 1) * plane], v)
        };
        for_each_chunk(input, POSITIONS * tiles, parallel, transform_channel);
        let input: &[f32] = input;
        let sizes = self.sizes(POSITIONS);
        let gemm_at =
            |(position, m): (usize, &mut [f32])| position_gemm(u, input, position, m, sizes);
        for_each_chunk(products, self.c_out * tiles, parallel, gemm_at);
        let products: &[f32] = products;
        let transform_output = |(channel, out): (usize, &mut [f32])| {
            self.transform_output(products, channel, out);
            if let Some(bias) = bias {
                let b = bias[channel];
                for value in out.iter_mut() {
                    *value = (*value + b).max(0.0);
                }
            }
        };
        for_each_chunk(out, plane, parallel, transform_output);
    }

    /// Values in the transformed weights, or in their gradient: `16 x c_out x c_in`.
    /// `V = B^T d B` for every 4x4 tile of one channel, into `v` (`16 x tiles`). Written as
    /// loops over a whole row of tiles at a time, so the compiler vectorises them: the rows are
    /// combined first (`B^T d`), on the even and odd columns apart, then the columns (`(.) B`).
    fn transform_input(&self, x: &[f32], v: &mut [f32]) {
        super::isa::vectorised(
            #[inline(always)]
            || self.transform_input_portable(x, v),
        )
    }

    #[inline(always)]
    fn transform_input_portable(&self, x: &[f32], v: &mut [f32]) {
        let (h, w, tiles_w, tiles) = (self.h, self.w, self.tiles_w(), self.tiles());
        // Columns of the zero-padded channel (padded column p is input column p - 1), split into
        // even (p = 2k) and odd (p = 2k + 1) ones; padded row q is input row q - 1.
        let half = tiles_w + 1;
        let padded_rows = 2 * self.tiles_h() + 2;
        let mut even = vec![0f32; padded_rows * half];
        let mut odd = vec![0f32; padded_rows * half];
        for y in 0..h {
            let row = &x[y * w..(y + 1) * w];
            let q = y + 1;
            for (dst, value) in odd[q * half..(q + 1) * half]
                .iter_mut()
                .zip(row.iter().step_by(2))
            {
                *dst = *value;
            }
            for (dst, value) in even[q * half + 1..(q + 1) * half]
                .iter_mut()
                .zip(row.iter().skip(1).step_by(2))
            {
                *dst = *value;
            }
        }
        // B^T d for one tile row: four rows, each even and odd columns.
        let mut combined = vec![0f32; 8 * half];
        for ty in 0..self.tiles_h() {
            let q = 2 * ty;
            for (parity, columns) in [&even, &odd].into_iter().enumerate() {
                let d: [&[f32]; 4] =
                    std::array::from_fn(|i| &columns[(q + i) * half..(q + i + 1) * half]);
                for (row, (a, b, sign_a, sign_b)) in [
                    (0, 2, 1.0, -1.0),
                    (1, 2, 1.0, 1.0),
                    (2, 1, 1.0, -1.0),
                    (1, 3, 1.0, -1.0),
                ]
                .into_iter()
                .enumerate()
                {
                    let dst =
                        &mut combined[(row * 2 + parity) * half..(row * 2 + parity + 1) * half];
                    for ((t, &first), &second) in dst.iter_mut().zip(d[a]).zip(d[b]) {
                        *t = sign_a * first + sign_b * second;
                    }
                }
            }
            // (B^T d) B: tile tx uses columns 2tx .. 2tx + 3, i.e. even[tx], odd[tx], even[tx + 1],
            // odd[tx + 1].
            let tile_row = ty * tiles_w;
            for row in 0..4 {
                let e = &combined[(row * 2) * half..(row * 2 + 1) * half];
                let o = &combined[(row * 2 + 1) * half..(row * 2 + 2) * half];
                let (e0, e1, o0, o1) = (&e[..tiles_w], &e[1..], &o[..tiles_w], &o[1..]);
                let at = |col: usize| (row * 4 + col) * tiles + tile_row;
                let dst = &mut v[at(0)..][..tiles_w];
                for ((d, &a), &b) in dst.iter_mut().zip(e0).zip(e1) {
                    *d = a - b;
                }
                let dst = &mut v[at(1)..][..tiles_w];
                for ((d, &a), &b) in dst.iter_mut().zip(o0).zip(e1) {
                    *d = a + b;
                }
                let dst = &mut v[at(2)..][..tiles_w];
                for ((d, &a), &b) in dst.iter_mut().zip(e1).zip(o0) {
                    *d = a - b;
                }
                let dst = &mut v[at(3)..][..tiles_w];
                for ((d, &a), &b) in dst.iter_mut().zip(o0).zip(o1) {
                    *d = a - b;
                }
            }
        }
    }

    /// `Y = A^T M A` for every tile of output channel `channel`, into `out` (`h x w`), a row of
    /// tiles at a time as in [`Self::transform_input`].
    fn transform_output(&self, products: &[f32], channel: usize, out: &mut [f32]) {
        super::isa::vectorised(
            #[inline(always)]
            || self.transform_output_portable(products, channel, out),
        )
    }

    #[inline(always)]
    fn transform_output_portable(&self, products: &[f32], channel: usize, out: &mut [f32]) {
        let (h, w, tiles_w, tiles) = (self.h, self.w, self.tiles_w(), self.tiles());
        let stride = self.c_out * tiles;
        let mut combined = vec![0f32; 8 * tiles_w];
        for ty in 0..self.tiles_h() {
            let start = channel * tiles + ty * tiles_w;
            let m = |i: usize, j: usize| &products[(i * 4 + j) * stride + start..][..tiles_w];
            // A^T m: two rows of four columns.
            for col in 0..4 {
                let (m0, m1, m2, m3) = (m(0, col), m(1, col), m(2, col), m(3, col));
                let (first, second) = combined.split_at_mut(4 * tiles_w);
                let t0 = &mut first[col * tiles_w..(col + 1) * tiles_w];
                for (((t, &a), &b), &c) in t0.iter_mut().zip(m0).zip(m1).zip(m2) {
                    *t = a + b + c;
                }
                let t1 = &mut second[col * tiles_w..(col + 1) * tiles_w];
                for (((t, &b), &c), &d) in t1.iter_mut().zip(m1).zip(m2).zip(m3) {
                    *t = b - c - d;
                }
            }
            // (A^T m) A: outputs 2tx and 2tx + 1 of rows 2ty and 2ty + 1.
            for dy in 0..2 {
                let y = 2 * ty + dy;
                if y >= h {
                    continue;
                }
                let t = |col: usize| &combined[(dy * 4 + col) * tiles_w..][..tiles_w];
                let (t0, t1, t2, t3) = (t(0), t(1), t(2), t(3));
                let out_row = &mut out[y * w..(y + 1) * w];
                let pairs = w / 2;
                let (t0, t1, t2, t3) = (&t0[..pairs], &t1[..pairs], &t2[..pairs], &t3[..pairs]);
                for (tx, pair) in out_row[..2 * pairs].chunks_exact_mut(2).enumerate() {
                    pair[0] = t0[tx] + t1[tx] + t2[tx];
                    pair[1] = t1[tx] - t2[tx] - t3[tx];
                }
                if w % 2 == 1 {
                    let tx = pairs;
                    let (t0, t1, t2) = (t(0), t(1), t(2));
                    out_row[w - 1] = t0[tx] + t1[tx] + t2[tx];
                }
            }
        }
    }
}

pub(super) mod tests {
    use super::*;

    /// Direct 3x3 convolution, stride 1, padding 1, in f64.
    pub(crate) fn direct(x: &[f32], weight: &[f32], g: &Winograd) -> Vec<f64> {
        let (h, w) = (g.h as isize, g.w as isize);
        let mut out = vec![0f64; g.c_out * g.h * g.w];
        for o in 0..g.c_out {
            for y in 0..h {
                for xx in 0..w {
                    let mut sum = 0f64;
                    for i in 0..g.c_in {
                        for ky in 0..3isize {
                            for kx in 0..3isize {
                                let (iy, ix) = (y + ky - 1, xx + kx - 1);
                                if iy >= 0 && ix >= 0 && iy < h && ix < w {
                                    sum += x[(i * g.h + iy as usize) * g.w + ix as usize] as f64
                                        * weight[(o * g.c_in + i) * 9 + (ky * 3 + kx) as usize]
                                            as f64;
                                }
                            }
                        }
                    }
                    out[(o * g.h + y as usize) * g.w + xx as usize] = sum;
                }
            }
        }
        out
    }

    /// Deterministic values between -1 and 1.
    pub(crate) fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    /// Checks that `adjoint` is the transpose of `transform`, two in-place maps of `positions x
    /// columns` tile sets: `<T d, v> = <d, T^T v>` for arbitrary `d` and `v`, over five columns
    /// (a coefficient off anywhere, or two positions swapped, breaks it).
    pub(crate) fn assert_adjoint(
        name: &str,
        positions: usize,
        transform: impl Fn(&mut [f32], usize),
        adjoint: impl Fn(&mut [f32], usize),
    ) {
        let columns = 5;
        let (d, v) = (
            values(positions * columns, 3),
            values(positions * columns, 4),
        );
        let (mut transformed, mut back) = (d.clone(), v.clone());
        transform(&mut transformed, columns);
        adjoint(&mut back, columns);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let (left, right) = (dot(&transformed, &v), dot(&d, &back));
        let scale = left.abs().max(right.abs()).max(1.0);
        assert!(
            (left - right).abs() / scale < 1e-5,
            "{name}: <T d, v> = {left}, <d, T^T v> = {right}"
        );
    }

    #[test]
    fn matches_a_direct_convolution_on_odd_and_even_sides() {
        for (c_in, c_out, h, w) in [(3, 5, 7, 6), (4, 2, 8, 9), (1, 1, 1, 1), (2, 3, 2, 5)] {
            let g = Winograd { c_in, c_out, h, w };
            let x = values(c_in * h * w, 1);
            let weight = values(c_out * c_in * 9, 2);
            let expected = direct(&x, &weight, &g);
            let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
            for parallel in [false, true] {
                let mut out = vec![f32::NAN; c_out * h * w];
                let u = g.transform_weights(&weight);
                g.image(&x, &u, None, &mut out, &mut Scratch::default(), parallel);
                for (a, e) in out.iter().zip(&expected) {
                    assert!(((*a as f64) - e).abs() / scale < 1e-6, "{g:?}: {a} vs {e}");
                }
                let bias: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.1 - 0.2).collect();
                g.image(
                    &x,
                    &u,
                    Some(&bias),
                    &mut out,
                    &mut Scratch::default(),
                    parallel,
                );
                for (idx, (a, e)) in out.iter().zip(&expected).enumerate() {
                    let e = (e + bias[idx / (h * w)] as f64).max(0.0);
                    assert!(
                        ((*a as f64) - e).abs() / scale < 1e-6,
                        "{g:?}, bias: {a} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_flipped_swapped_kernel_gives_the_adjoint() {
        // <conv(x), y> == <x, conv'(y)> where conv' uses the flipped kernel with channels swapped.
        let g = Winograd {
            c_in: 3,
            c_out: 4,
            h: 7,
            w: 5,
        };
        let x = values(g.c_in * g.h * g.w, 3);
        let y = values(g.c_out * g.h * g.w, 4);
        let weight = values(g.c_out * g.c_in * 9, 5);
        let mut forward = vec![0f32; y.len()];
        g.image(
            &x,
            &g.transform_weights(&weight),
            None,
            &mut forward,
            &mut Scratch::default(),
            false,
        );
        let swapped = g.transposed();
        let mut backward = vec![0f32; x.len()];
        let flipped = g.flipped_weights(&weight);
        swapped.image(
            &y,
            &swapped.transform_weights(&flipped),
            None,
            &mut backward,
            &mut Scratch::default(),
            false,
        );
        let lhs: f64 = forward
            .iter()
            .zip(&y)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let rhs: f64 = x
            .iter()
            .zip(&backward)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
