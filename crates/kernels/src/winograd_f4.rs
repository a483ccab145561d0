//! 3x3 convolutions with stride 1 and padding 1 by Winograd's F(4x4, 3x3), for the forward
//! (inference and training), the input gradient and the weight gradient of conv2b and conv3b:
//! each 4x4 block of outputs comes from a 6x6 block of inputs with
//! 36 multiplications per input and output channel pair, against 64 for F(2x2, 3x3) ([`super::
//! winograd`]) and 144 for im2col. Fewer tiles also mean fewer transformed values to write and
//! read back, which is what bounds the transforms at batch 1.
//!
//! The transforms multiply by small integers (up to 8) and the weight transform divides by 6
//! and 24, so the result rounds a little further from the direct sum than F(2x2, 3x3)'s (about
//! 1e-6 of the output's scale against 1e-7; the tests check both). Like another CPU's summation
//! order, that can flip a max-pool near-tie downstream; the equivalence tests against PyTorch
//! compare gradients as tensors for that reason.
//!
//! Per image: each input channel's 6x6 tiles are gathered position by position and transformed in
//! place (`V = B^T d B`), so every loop runs over all of the channel's tiles and vectorises even
//! where a row holds few tiles (7 at conv3b); 36 GEMMs, one per tile position, multiply the
//! transformed weights (`U = G g G^T`, remembered between calls with the same weights) by them;
//! and each output channel's products are transformed back (`Y = A^T M A`) with the bias and ReLU.
//!
//! The weight gradient takes the adjoint path: per tile position, the transformed output gradient
//! (`A dY A^T`) times the transformed input, summed over the tiles by 36 GEMMs, then `G^T dU G`
//! in f64: a quarter of im2col's multiplications (F(2x2, 3x3) saved 2.25x; a training step on the
//! 2-vCPU Xeon went from about 930 to 875 ms).

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::max_pool::{pool_planes, Pool2d};
use super::parallel::{for_each_chunk, for_each_chunk_with, for_each_index_with, grown, SharedMut};
use super::winograd::{
    position_gemm, position_weight_grads, transform_weights_with, weight_grad_with, KernelOrder,
    Scratch, Tiling, Winograd,
};
use super::winograd_narrow;

/// Positions in a transformed 6x6 tile: one GEMM each.
pub(super) const POSITIONS: usize = 36;
/// Side of the output block of one tile.
pub(super) const BLOCK: usize = 4;
/// Side of the input tile.
pub(super) const TILE: usize = 6;

/// Input channels gathered and transformed together by [`WinogradF4::image_few_tiles`].
const CHANNELS_AT_ONCE: usize = 16;

/// The tiles of an image that takes [`WinogradF4::image_few_tiles`] in inference: planes of 9x9
/// to 32x32. Fewer (8x8 and less) did no better than im2col, whose weights are a quarter of the
/// transformed weights' size, which a batch-1 forward reads from memory once either way (at 5x5,
/// conv3b at 48 px, the block took 0.36 against 0.28 ms); more keep [`WinogradF4::image`], whose
/// per-channel transforms run over rows long enough.
const FEW_TILES: std::ops::RangeInclusive<usize> = 8..=MOST_FEW_TILES;

/// The most tiles in [`FEW_TILES`].
const MOST_FEW_TILES: usize = 64;

/// Geometry of one 3x3, stride 1, padding 1 convolution of `c_in x h x w` into `c_out x h x w`.
#[derive(Debug, Clone, Copy)]
pub(super) struct WinogradF4 {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
}

/// 1/6, 1/12 and 1/24 in f64. The transforms multiply by them rather than divide: a division
/// costs about ten multiplications, the weight transform made about sixty a kernel (2.4 ms for
/// conv2b's weights, a tenth of its training step at 48 px), and the f64 results differ by an ulp
/// or so, far below the rounding to f32 that follows.
const SIXTH: f64 = 1.0 / 6.0;
const TWELFTH: f64 = 1.0 / 12.0;
const TWENTY_FOURTH: f64 = 1.0 / 24.0;

/// `G` applied to one kernel row or column `g[0..3]`, in f64: the six values.
#[inline(always)]
pub(super) fn weight_combination(g: [f64; 3]) -> [f64; 6] {
    let (outer, middle) = (g[0] * TWENTY_FOURTH + g[2] * SIXTH, g[1] * TWELFTH);
    [
        g[0] * 0.25,
        -(g[0] + g[1] + g[2]) * SIXTH,
        -(g[0] - g[1] + g[2]) * SIXTH,
        outer + middle,
        outer - middle,
        g[2],
    ]
}

/// An F(4x4, 3x3) convolution's transformed weights `W` (a slice, or the `Arc` a
/// [`WeightCache`] hands out), in the layout its GEMMs read.
#[derive(Debug, Clone, Copy)]
pub(super) enum TransformedWeights<W> {
    /// `36 x c_out x c_in` ([`WinogradF4::transform_weights`]), for `gemm`.
    Matrices(W),
    /// Packed in panels ([`WinogradF4::packed_weights_cached`]), for the narrow GEMMs of an
    /// image with few tiles.
    Panels(W),
}

impl TransformedWeights<Arc<Vec<f32>>> {
    /// The same weights, borrowed as a slice in the same layout.
    pub(super) fn as_slices(&self) -> TransformedWeights<&[f32]> {
        match self {
            Self::Matrices(values) => TransformedWeights::Matrices(values),
            Self::Panels(values) => TransformedWeights::Panels(values),
        }
    }
}

impl From<Winograd> for WinogradF4 {
    /// The same convolution's geometry, for the larger tiles.
    fn from(geometry: Winograd) -> Self {
        let Winograd { c_in, c_out, h, w } = geometry;
        WinogradF4 { c_in, c_out, h, w }
    }
}

/// `G^T` applied to six values `u[0..6]`, in f64: the three values of a kernel row or column's
/// gradient (the adjoint of [`weight_combination`]).
#[inline(always)]
pub(super) fn weight_grad_combination(u: [f64; 6]) -> [f64; 3] {
    [
        u[0] * 0.25 - (u[1] + u[2]) * SIXTH + (u[3] + u[4]) * TWENTY_FOURTH,
        (u[2] - u[1]) * SIXTH + (u[3] - u[4]) * TWELFTH,
        (u[3] + u[4] - u[1] - u[2]) * SIXTH + u[5],
    ]
}

impl WinogradF4 {
    /// Rows of tiles.
    pub(super) fn tiles_h(&self) -> usize {
        self.h.div_ceil(BLOCK)
    }

    /// Tiles in a row.
    pub(super) fn tiles_w(&self) -> usize {
        self.w.div_ceil(BLOCK)
    }

    /// Tiles per image.
    pub(super) fn tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }

    /// `U = G g G^T` for every kernel, as 36 `c_out x c_in` matrices (`36 x c_out x c_in`),
    /// computed in f64 and rounded once. `weight` is `c_out x c_in x 3 x 3`.
    pub(super) fn transform_weights(&self, weight: &[f32]) -> Vec<f32> {
        let weight = (weight, KernelOrder::AsGiven);
        transform_weights_with((self.c_out, self.c_in), weight, weight_combination)
    }

    /// [`Self::transform_weights`] of the input gradient's kernels, for this convolution with its
    /// channels swapped ([`Winograd::transposed`]): `weight` is the forward's, `c_in x c_out x 3
    /// x 3` here, each kernel turned by 180 degrees as it is read.
    pub(super) fn transform_flipped_weights(&self, weight: &[f32]) -> Vec<f32> {
        let weight = (weight, KernelOrder::FlippedSwapped);
        transform_weights_with((self.c_out, self.c_in), weight, weight_combination)
    }

    /// [`Self::transform_weights`], taken from `cache` where it holds the same weights (and
    /// remembered there), else computed.
    pub(super) fn transform_weights_cached(
        &self,
        weight: &[f32],
        cache: Option<&WeightCache>,
    ) -> Arc<Vec<f32>> {
        let key = (self.c_in, self.c_out, Tiling::F4, false);
        cached_transform(cache, key, weight, || self.transform_weights(weight))
    }

    /// [`Self::transform_weights_cached`] packed for the narrow GEMMs of an image with few tiles
    /// ([`winograd_narrow::pack`]).
    pub(super) fn packed_weights_cached(
        &self,
        weight: &[f32],
        cache: Option<&WeightCache>,
    ) -> Arc<Vec<f32>> {
        let key = (self.c_in, self.c_out, Tiling::F4, true);
        cached_transform(cache, key, weight, || {
            let sizes = (self.c_in, self.c_out, POSITIONS);
            winograd_narrow::pack(&self.transform_weights(weight), sizes)
        })
    }

    /// Whether one image's inference takes [`Self::image_few_tiles`]'s layout and GEMMs
    /// ([`FEW_TILES`]).
    pub(super) fn few_tiles(&self) -> bool {
        FEW_TILES.contains(&self.tiles())
    }

    /// Convolves one image `x` (`c_in x h x w`) with the transformed weights `u` into `out`
    /// (`c_out x h x w`); with `bias`, `out = relu(conv + bias)`. `parallel` spreads this one
    /// image over every thread; otherwise the calling thread does everything.
    pub(super) fn image(
        &self,
        x: &[f32],
        u: TransformedWeights<&[f32]>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Scratch,
        parallel: bool,
    ) {
        let u = match u {
            TransformedWeights::Matrices(u) => u,
            TransformedWeights::Panels(packed) => {
                return self.image_few_tiles(x, packed, bias, out, scratch, parallel);
            }
        };
        let products = self.products(x, u, scratch, parallel);
        let transform_output = |buffer: &mut Vec<f32>, (channel, out): (usize, &mut [f32])| {
            let bias = bias.map(|bias| bias[channel]);
            self.transform_output(products, channel, bias, out, buffer)
        };
        for_each_chunk_with(out, self.h * self.w, parallel, Vec::new, transform_output);
    }

    /// [`Self::image`] with the bias and ReLU, each output channel max-pooled by `pool` into
    /// `out` (`c_out x OH x OW`), recording the window offsets in `offsets`, as soon as it is
    /// transformed: the channel is pooled while it is in cache, and the full-size output (2.5 MiB
    /// for conv2b, more than a 2 MiB L2) is never written.
    pub(super) fn image_pooled(
        &self,
        (x, u, bias): (&[f32], TransformedWeights<&[f32]>, &[f32]),
        pool: Pool2d,
        (out, offsets): (&mut [f32], &mut [u8]),
        scratch: &mut Scratch,
        parallel: bool,
    ) {
        let (plane, sides) = (self.h * self.w, (self.h, self.w));
        let pooled = pool.out_side(self.h) * pool.out_side(self.w);
        let u = match u {
            TransformedWeights::Matrices(u) => u,
            TransformedWeights::Panels(packed) => {
                // A small image: its whole output fits the L2, and pooled all at once its small
                // planes go eight at a time through the pool's vector lanes.
                return super::parallel::with_spare_buffer(|conv| {
                    let conv = grown(conv, self.c_out * plane);
                    self.image_few_tiles(x, packed, Some(bias), conv, scratch, parallel);
                    pool_planes(conv, sides, pool, out, offsets, parallel);
                });
            }
        };
        let products = self.products(x, u, scratch, parallel);
        let transform_and_pool =
            |(buffer, conv): &mut (Vec<f32>, Vec<f32>),
             (channel, (out, offsets)): (usize, (&mut [f32], &mut [u8]))| {
                let conv = grown(conv, plane);
                self.transform_output(products, channel, Some(bias[channel]), conv, buffer);
                pool_planes(conv, sides, pool, out, offsets, false);
            };
        let init = || (Vec::new(), Vec::new());
        if parallel {
            out.par_chunks_mut(pooled)
                .zip(offsets.par_chunks_mut(pooled))
                .enumerate()
                .for_each_init(init, transform_and_pool);
        } else {
            let mut state = init();
            for item in out
                .chunks_mut(pooled)
                .zip(offsets.chunks_mut(pooled))
                .enumerate()
            {
                transform_and_pool(&mut state, item);
            }
        }
    }

    /// The input transform and the 36 GEMMs of [`Self::image`], into `scratch`'s products
    /// (`36 x c_out x tiles`), which it returns.
    fn products<'a>(
        &self,
        x: &[f32],
        u: &[f32],
        scratch: &'a mut Scratch,
        parallel: bool,
    ) -> &'a [f32] {
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
        let sizes = (self.c_in, self.c_out, tiles, POSITIONS);
        let gemm_at =
            |(position, m): (usize, &mut [f32])| position_gemm(u, input, position, m, sizes);
        for_each_chunk(products, self.c_out * tiles, parallel, gemm_at);
        products
    }

    /// [`Self::image`] for an image with few tiles ([`Self::few_tiles`]), its transformed weights
    /// `packed` in panels ([`Self::packed_weights_cached`]): each tile transformed as there, each
    /// product a sum over the input channels in order, each step fused, laid out for a small
    /// image. Per channel, nine tiles (conv2b at 11x11) left [`Self::image`]'s transform loops a
    /// vector and a bit long, their setup paid 96 and 208 times: here the input is gathered and
    /// transformed sixteen channels at a time, their tiles side by side in each position's row
    /// (`36 x c_in x tiles` in all), so that each position's GEMM reads its `c_in x tiles` block
    /// as one run; the GEMMs are the narrow ones (`winograd_narrow`), which leave the products in
    /// panels of sixteen output channels, and the output transform runs a panel at a time. With
    /// `parallel`, the channel groups, the positions' GEMMs and the panels are spread over the
    /// threads; each value is computed by one thread, so the result does not depend on how many.
    fn image_few_tiles(
        &self,
        x: &[f32],
        packed: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Scratch,
        parallel: bool,
    ) {
        let (c_in, c_out, tiles) = (self.c_in, self.c_out, self.tiles());
        assert!(
            tiles <= MOST_FEW_TILES,
            "{tiles} tiles for the few-tiles layout"
        );
        let plane = self.h * self.w;
        let columns_in = c_in * tiles;
        let columns_out = winograd_narrow::products_len(c_out, tiles);
        let (input, products) = scratch.buffers(POSITIONS * columns_in, POSITIONS * columns_out);
        // The input transform by groups of channels, each gathered and transformed in a buffer
        // of its own, then copied into its columns of every position's row.
        let groups = c_in.div_ceil(CHANNELS_AT_ONCE);
        let shared_input = SharedMut(input.as_mut_ptr());
        let transform_group = |local: &mut Vec<f32>, group: usize| {
            let channels = group * CHANNELS_AT_ONCE..c_in.min((group + 1) * CHANNELS_AT_ONCE);
            let columns = channels.len() * tiles;
            let local = grown(local, POSITIONS * columns);
            super::isa::vectorised(
                #[inline(always)]
                || {
                    let mut gathered = [0f32; POSITIONS * MOST_FEW_TILES];
                    let gathered = &mut gathered[..POSITIONS * tiles];
                    for (at, channel) in channels.clone().enumerate() {
                        self.gather_input_portable(&x[channel * plane..][..plane], gathered);
                        for (row, values) in gathered.chunks_exact(tiles).enumerate() {
                            local[row * columns + at * tiles..][..tiles].copy_from_slice(values);
                        }
                    }
                    input_transform_tiles(local, columns);
                },
            );
            for (row, values) in local.chunks_exact(columns).enumerate() {
                let start = row * columns_in + channels.start * tiles;
                // SAFETY: each group writes its own columns of each row, inside `input`.
                let dst = unsafe { shared_input.get().add(start) };
                unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), dst, columns) };
            }
        };
        for_each_index_with(groups, parallel, Vec::new, transform_group);
        let input: &[f32] = input;
        let gemm_at = |(position, m): (usize, &mut [f32])| {
            let v = (&input[position * columns_in..][..columns_in], tiles);
            winograd_narrow::position_products(packed, position, v, m, (c_in, c_out, tiles))
        };
        for_each_chunk(products, columns_out, parallel, gemm_at);
        let products: &[f32] = products;
        // The output transform panel by panel of the products, each panel's channels placed
        // from it.
        let panel = winograd_narrow::PANEL;
        let panels = c_out.div_ceil(panel);
        let place_panel = |buffer: &mut Vec<f32>, (index, out): (usize, &mut [f32])| {
            let columns = tiles * panel;
            let buffer = grown(buffer, BLOCK * TILE * columns);
            super::isa::vectorised(
                #[inline(always)]
                || {
                    output_transform_tiles(products, (panels, index), columns, None, buffer);
                    for (lane, out) in out.chunks_exact_mut(plane).enumerate() {
                        let bias = bias.map(|bias| bias[index * panel + lane]);
                        self.place_spread_blocks(buffer, columns, (lane, panel), bias, out);
                    }
                },
            );
        };
        for_each_chunk_with(out, panel * plane, parallel, Vec::new, place_panel);
    }

    /// Places one channel's transformed 4x4 blocks into its output plane `out` (`h x w`), with
    /// `bias` as `relu(value + bias)` where given: the values of the channel's tile `t` lie in
    /// column `first + t * step` of `buffer`'s rows (`24 x columns`, output `(r, c)` of every
    /// tile in row `6r + c`).
    #[inline(always)]
    fn place_spread_blocks(
        &self,
        buffer: &[f32],
        columns: usize,
        (first, step): (usize, usize),
        bias: Option<f32>,
        out: &mut [f32],
    ) {
        let (h, w, tiles_w) = (self.h, self.w, self.tiles_w());
        for (y, out_row) in out.chunks_exact_mut(w).enumerate().take(h) {
            let (ty, r) = (y / BLOCK, y % BLOCK);
            for (x, out) in out_row.iter_mut().enumerate() {
                let (tx, dx) = (x / BLOCK, x % BLOCK);
                let value = buffer[(r * TILE + dx) * columns + first + (ty * tiles_w + tx) * step];
                *out = bias.map_or(value, |b| (value + b).max(0.0));
            }
        }
    }

    /// The length of the weight gradient in Winograd's domain, `36 x c_out x c_in`.
    pub(super) fn transformed_len(&self) -> usize {
        POSITIONS * self.c_out * self.c_in
    }

    /// Adds one image's share of the weight gradient in the Winograd domain to `du` (`36 x c_out x
    /// c_in`): for each tile position `p`, `dU[p] += dM[p] * V[p]^T`, where `V = B^T d B` are the
    /// input `x`'s tiles (as in the forward) and `dM = A dY A^T` the output gradient `grad`'s
    /// 4x4 blocks (the adjoint of the output transform). With `accumulate` false, `du` is
    /// overwritten. [`Self::weight_grad`] turns the sum into the kernel's gradient. The 36 GEMMs
    /// sum over the tiles: a quarter of the multiplications of the GEMM over im2col.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn accumulate_weight_grad(
        &self,
        x: &[f32],
        grad: &[f32],
        du: &mut [f32],
        accumulate: bool,
        scratch: &mut Scratch,
        parallel: bool,
    ) {
        let tiles = self.tiles();
        let (plane, (c_in, c_out)) = (self.h * self.w, (self.c_in, self.c_out));
        let (input, grads) = scratch.buffers(c_in * POSITIONS * tiles, c_out * POSITIONS * tiles);
        let transform_input = |(channel, v): (usize, &mut [f32])| {
            self.transform_input(&x[channel * plane..(channel + 1) * plane], v)
        };
        let transform_grad = |(channel, m): (usize, &mut [f32])| {
            self.transform_output_grad(&grad[channel * plane..(channel + 1) * plane], m)
        };
        for_each_chunk(input, POSITIONS * tiles, parallel, transform_input);
        for_each_chunk(grads, POSITIONS * tiles, parallel, transform_grad);
        let sizes = (c_in, c_out, tiles, POSITIONS);
        position_weight_grads((input, grads), sizes, du, accumulate, parallel);
    }

    /// The kernel gradient `dg = G^T dU G` for every kernel, in f64, added to `dw` (`c_out x c_in
    /// x 3 x 3`), from the sum `du` of [`Self::accumulate_weight_grad`] (`36 x c_out x c_in`);
    /// output channels on every thread.
    pub(super) fn weight_grad(&self, du: &[f32], dw: &mut [f32]) {
        weight_grad_with((self.c_out, self.c_in), du, dw, weight_grad_combination)
    }

    /// `dM = A dY A^T` for every 4x4 block of one channel's output gradient `grad` (`h x w`),
    /// into `m` (`36 x tiles`, `m[6i + j]` holding element `(i, j)` of every tile); blocks past
    /// the last row or column are zero. The blocks are gathered into the rows `6r + c`, then
    /// expanded in place, columns first, then rows.
    fn transform_output_grad(&self, grad: &[f32], m: &mut [f32]) {
        super::isa::vectorised(
            #[inline(always)]
            || self.transform_output_grad_portable(grad, m),
        )
    }

    #[inline(always)]
    fn transform_output_grad_portable(&self, grad: &[f32], m: &mut [f32]) {
        let (h, w, tiles_w, tiles) = (self.h, self.w, self.tiles_w(), self.tiles());
        // Element (r, c) of block (ty, tx) is output row 4ty + r, column 4tx + c.
        for r in 0..BLOCK {
            for c in 0..BLOCK {
                let row_of_tiles = &mut m[(r * TILE + c) * tiles..][..tiles];
                for (ty, dst) in row_of_tiles.chunks_exact_mut(tiles_w).enumerate() {
                    let y = BLOCK * ty + r;
                    if y >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let row = &grad[y * w..(y + 1) * w];
                    let mut written = 0;
                    for (d, &value) in dst.iter_mut().zip(row.iter().skip(c).step_by(BLOCK)) {
                        *d = value;
                        written += 1;
                    }
                    dst[written..].fill(0.0);
                }
            }
        }
        grad_transform_tiles(m, tiles);
    }

    /// `V = B^T d B` for every 6x6 tile of one channel, into `v` (`36 x tiles`): the tiles are
    /// gathered position by position (`v[6i + j]` holds element `(i, j)` of every tile), then
    /// transformed in place, rows first (`B^T d`), then columns (`(.) B`). Each step combines six
    /// rows of `tiles` values element by element, so the loops run over all the channel's tiles
    /// and vectorise whatever the width of the layer.
    fn transform_input(&self, x: &[f32], v: &mut [f32]) {
        super::isa::vectorised(
            #[inline(always)]
            || self.transform_input_portable(x, v),
        )
    }

    #[inline(always)]
    fn transform_input_portable(&self, x: &[f32], v: &mut [f32]) {
        self.gather_input_portable(x, v);
        input_transform_tiles(v, self.tiles());
    }

    /// The 6x6 tiles of one channel `x`, gathered position by position into `v` (`36 x tiles`:
    /// `v[6i + j]` holds element `(i, j)` of every tile), untransformed.
    #[inline(always)]
    fn gather_input_portable(&self, x: &[f32], v: &mut [f32]) {
        let (h, w, tiles_w, tiles) = (self.h, self.w, self.tiles_w(), self.tiles());
        // Element (i, j) of tile (ty, tx) is input row 4ty + i - 1, column 4tx + j - 1 (zero
        // outside: the padding). With the row copied one place to the right into zeros, that
        // column is `padded[4tx + j]`: four rows (j = 0..3) read the padded row four values at a
        // time, in a loop the compiler vectorises (a strided gather per row did not, and cost
        // most of the transform), and rows j = 4, 5 are rows 0, 1 one tile on.
        let mut padded = vec![0f32; BLOCK * (tiles_w + 1)];
        for i in 0..TILE {
            let rows = rows_of(v, tiles, i * TILE, 1);
            let [d0, d1, d2, d3, d4, d5] =
                rows.map(|row| row.chunks_exact_mut(tiles_w).take(self.tiles_h()));
            for (ty, (((d0, d1), (d2, d3)), (d4, d5))) in
                d0.zip(d1).zip(d2.zip(d3)).zip(d4.zip(d5)).enumerate()
            {
                let Some(y) = (BLOCK * ty + i).checked_sub(1).filter(|&y| y < h) else {
                    for d in [d0, d1, d2, d3, d4, d5] {
                        d.fill(0.0);
                    }
                    continue;
                };
                padded[1..=w].copy_from_slice(&x[y * w..(y + 1) * w]);
                for ((((four, a), b), c), d) in padded
                    .chunks_exact(BLOCK)
                    .zip(d0.iter_mut())
                    .zip(d1.iter_mut())
                    .zip(d2.iter_mut())
                    .zip(d3.iter_mut())
                {
                    (*a, *b, *c, *d) = (four[0], four[1], four[2], four[3]);
                }
                let last = tiles_w - 1;
                d4[..last].copy_from_slice(&d0[1..]);
                d5[..last].copy_from_slice(&d1[1..]);
                d4[last] = padded[BLOCK * tiles_w];
                d5[last] = padded[BLOCK * tiles_w + 1];
            }
        }
    }

    /// `Y = A^T M A` for every tile of output channel `channel`, into `out` (`h x w`), then with
    /// `bias` `out = relu(out + bias)`. `buffer` holds the channel's `24 x tiles` partial sums.
    fn transform_output(
        &self,
        products: &[f32],
        channel: usize,
        bias: Option<f32>,
        out: &mut [f32],
        buffer: &mut Vec<f32>,
    ) {
        super::isa::vectorised(
            #[inline(always)]
            || self.transform_output_portable(products, channel, bias, out, buffer),
        )
    }

    #[inline(always)]
    fn transform_output_portable(
        &self,
        products: &[f32],
        channel: usize,
        bias: Option<f32>,
        out: &mut [f32],
        buffer: &mut Vec<f32>,
    ) {
        let (h, w, tiles_w, tiles) = (self.h, self.w, self.tiles_w(), self.tiles());
        buffer.resize(BLOCK * TILE * tiles, 0.0);
        output_transform_tiles(products, (self.c_out, channel), tiles, bias, buffer);
        // Output (4ty + r, 4tx + dx) is element (ty, tx) of row 6r + dx.
        for ty in 0..self.tiles_h() {
            for r in 0..BLOCK {
                let y = BLOCK * ty + r;
                if y >= h {
                    break;
                }
                let [o0, o1, o2, o3]: [&[f32]; BLOCK] = std::array::from_fn(|dx| {
                    &buffer[(r * TILE + dx) * tiles + ty * tiles_w..][..tiles_w]
                });
                let out_row = &mut out[y * w..(y + 1) * w];
                // Interleaving the four rows by whole blocks, in a loop the compiler vectorises
                // (indexing each row by tile did not, and cost about as much as the rest of the
                // output transform); then the partial block at the right edge.
                let mut blocks = out_row.chunks_exact_mut(BLOCK);
                for ((block, (&v0, &v1)), (&v2, &v3)) in
                    (&mut blocks).zip(o0.iter().zip(o1)).zip(o2.iter().zip(o3))
                {
                    block.copy_from_slice(&[v0, v1, v2, v3]);
                }
                let last = w / BLOCK;
                for (d, row) in blocks.into_remainder().iter_mut().zip([o0, o1, o2]) {
                    *d = row[last];
                }
            }
        }
    }
}

/// The bit patterns of `values`, for an exact comparison that runs as one `memcmp` (comparing the
/// floats themselves would take 0.0 for -0.0 and never match a NaN).
fn bits(values: &[f32]) -> &[u32] {
    // SAFETY: `u32` has the size and alignment of `f32`, and every bit pattern is a valid `u32`;
    // the slice borrows `values` for its whole life.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len()) }
}

/// The Winograd transforms of the last few 3x3 weights a network ran with, owned by the caller
/// (the model keeps one per network) and handed to [`crate::FeatEx`]: inference calls the same
/// layers with the same weights again and again, and transforming conv2b's weights costs about as
/// much as a tenth of its convolution at batch 1. A hit needs the weights to be equal bit for bit
/// (compared in full, far cheaper than the transform), so weights that changed, as in training,
/// are transformed anew. Clones share the cache. Without one, every forward transforms.
#[derive(Clone, Default)]
pub struct WeightCache {
    recent: Arc<Mutex<Vec<RememberedWeights>>>,
}

impl WeightCache {
    /// Two layers of one network, each in both of inference's algorithms (F(4x4, 3x3) image by
    /// image, F(6x6, 3x3) over a batch on most small planes), and room for a second network.
    const REMEMBERED: usize = 8;
}

impl std::fmt::Debug for WeightCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.recent.lock().map_or(0, |recent| recent.len());
        f.debug_struct("WeightCache").field("held", &held).finish()
    }
}

/// `transform()` of `weight`, the transform of a convolution of `key` (`c_in`, `c_out` and the
/// algorithm), taken from `cache` where it holds the same weights for the same key (and
/// remembered there), else computed.
pub(super) fn cached_transform(
    cache: Option<&WeightCache>,
    key: TransformKey,
    weight: &[f32],
    transform: impl FnOnce() -> Vec<f32>,
) -> Arc<Vec<f32>> {
    let Some(cache) = cache else {
        return Arc::new(transform());
    };
    let same = |entry: &RememberedWeights| entry.key == key && bits(&entry.weight) == bits(weight);
    if let Ok(mut recent) = cache.recent.lock() {
        if let Some(at) = recent.iter().position(same) {
            let entry = recent.remove(at);
            let transformed = entry.transformed.clone();
            recent.insert(0, entry);
            return transformed;
        }
    }
    let transformed = Arc::new(transform());
    if let Ok(mut recent) = cache.recent.lock() {
        recent.truncate(WeightCache::REMEMBERED - 1);
        recent.insert(
            0,
            RememberedWeights {
                key,
                weight: weight.to_vec(),
                transformed: transformed.clone(),
            },
        );
    }
    transformed
}

/// What a remembered transform is of: `c_in`, `c_out`, the algorithm, and whether it is packed
/// for the narrow GEMMs.
pub(super) type TransformKey = (usize, usize, Tiling, bool);

/// Weights and their transform, remembered by a [`WeightCache`].
struct RememberedWeights {
    key: TransformKey,
    weight: Vec<f32>,
    transformed: Arc<Vec<f32>>,
}

/// Six rows of `len` values of `matrix`: rows `first`, `first + step`, ...
#[inline(always)]
pub(super) fn rows_of(
    matrix: &mut [f32],
    len: usize,
    first: usize,
    step: usize,
) -> [&mut [f32]; TILE] {
    let mut rows = matrix.chunks_exact_mut(len).skip(first).step_by(step);
    [(); TILE].map(|_| rows.next().expect("six rows"))
}

/// `V = B^T d B` in place for each of the `columns` tiles of `v` (`36 x columns`, element
/// `(i, j)` of every tile in row `6i + j`): rows first (`B^T d`), then columns (`(.) B`).
#[inline(always)]
pub(super) fn input_transform_tiles(v: &mut [f32], columns: usize) {
    for j in 0..TILE {
        input_transform_6(rows_of(v, columns, j, TILE));
    }
    for i in 0..TILE {
        input_transform_6(rows_of(v, columns, i * TILE, 1));
    }
}

/// `dD = B dV B^T` in place for each of the `columns` tiles of `v` (`36 x columns`, element
/// `(i, j)` of every tile in row `6i + j`): the adjoint of [`input_transform_tiles`], which takes
/// the input gradient from the transformed one ([`input_grad_transform_6`] along the columns,
/// then along the rows).
#[inline(always)]
pub(super) fn input_grad_transform_tiles(v: &mut [f32], columns: usize) {
    for i in 0..TILE {
        input_grad_transform_6(rows_of(v, columns, i * TILE, 1));
    }
    for j in 0..TILE {
        input_grad_transform_6(rows_of(v, columns, j, TILE));
    }
}

/// `dM = A dY A^T` in place for each of the `columns` 4x4 blocks of `m` (`36 x columns`,
/// element `(r, c)` of every block in row `6r + c`): each block row's four values expanded to
/// six, then each of the six columns.
#[inline(always)]
pub(super) fn grad_transform_tiles(m: &mut [f32], columns: usize) {
    for r in 0..BLOCK {
        grad_transform_6(rows_of(m, columns, r * TILE, 1));
    }
    for j in 0..TILE {
        grad_transform_6(rows_of(m, columns, j, TILE));
    }
}

/// `Y = A^T M A` of output channel `channel` for each of the `columns` tiles of `products`
/// (`36 x c_out x columns`) into `buffer` (`24 x columns`: output `(r, c)` of every tile in row
/// `6r + c`; rows `6r + 4` and `6r + 5` are left over), then with `bias` `relu(Y + bias)` over
/// the whole buffer (a loop the compiler vectorises; the left-over rows are never read).
#[inline(always)]
pub(super) fn output_transform_tiles(
    products: &[f32],
    (c_out, channel): (usize, usize),
    columns: usize,
    bias: Option<f32>,
    buffer: &mut [f32],
) {
    // A^T m: for each column j, rows i = 0..5 of M become rows r = 0..3 (kept as 6r + j).
    for j in 0..TILE {
        let m: [&[f32]; TILE] = std::array::from_fn(|i| {
            &products[((i * TILE + j) * c_out + channel) * columns..][..columns]
        });
        let mut dst = buffer.chunks_exact_mut(columns).skip(j).step_by(TILE);
        let dst = [(); BLOCK].map(|_| dst.next().expect("four rows"));
        output_transform_6(m, dst);
    }
    // (A^T m) A, in place: row r's six columns become its four outputs (6r .. 6r + 3).
    for r in 0..BLOCK {
        output_transform_6_in_place(rows_of(buffer, columns, r * TILE, 1));
    }
    if let Some(b) = bias {
        for value in buffer.iter_mut() {
            *value = (*value + b).max(0.0);
        }
    }
}

/// `B^T` applied along six equally long rows `d[0..6]` in place, element by element. The
/// products are arranged as in the usual factorisation (shared sums first), so each output costs
/// two or three operations.
#[inline(always)]
pub(super) fn input_transform_6(d: [&mut [f32]; TILE]) {
    let n = d[0].len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &mut s[..n]);
    for k in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
        d0[k] = 4.0 * a0 - 5.0 * a2 + a4;
        let (p, q) = (a3 + a4, a1 + a2);
        d1[k] = p - 4.0 * q;
        let (p, q) = (a4 - a3, a1 - a2);
        d2[k] = p + 4.0 * q;
        let (p, q) = (a4 - a2, a3 - a1);
        d3[k] = p + 2.0 * q;
        d4[k] = p - 2.0 * q;
        d5[k] = 4.0 * a1 - 5.0 * a3 + a5;
    }
}

/// `A^T` applied along six equally long rows `m[0..6]`, into four: `o = A^T m`.
#[inline(always)]
pub(super) fn output_transform_6(m: [&[f32]; TILE], o: [&mut [f32]; BLOCK]) {
    let n = o[0].len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let [o0, o1, o2, o3] = o.map(|s| &mut s[..n]);
    for k in 0..n {
        let (s12, d12) = (m1[k] + m2[k], m1[k] - m2[k]);
        let (s34, d34) = (m3[k] + m4[k], m3[k] - m4[k]);
        o0[k] = m0[k] + s12 + s34;
        o1[k] = d12 + 2.0 * d34;
        o2[k] = s12 + 4.0 * s34;
        o3[k] = d12 + 8.0 * d34 + m5[k];
    }
}

/// [`output_transform_6`] in place: the four outputs replace the first four rows.
#[inline(always)]
pub(super) fn output_transform_6_in_place(m: [&mut [f32]; TILE]) {
    let n = m[0].len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &mut s[..n]);
    for k in 0..n {
        let (s12, d12) = (m1[k] + m2[k], m1[k] - m2[k]);
        let (s34, d34) = (m3[k] + m4[k], m3[k] - m4[k]);
        let m5 = m5[k];
        m0[k] += s12 + s34;
        m1[k] = d12 + 2.0 * d34;
        m2[k] = s12 + 4.0 * s34;
        m3[k] = d12 + 8.0 * d34 + m5;
    }
}

/// `A` applied along six equally long rows in place: the first four hold `y[0..4]`, and all six
/// become `m = A y`, the adjoint of [`output_transform_6`].
#[inline(always)]
pub(super) fn grad_transform_6(m: [&mut [f32]; TILE]) {
    let n = m[0].len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &mut s[..n]);
    for k in 0..n {
        let (y0, y1, y2, y3) = (m0[k], m1[k], m2[k], m3[k]);
        let (even, odd) = (y0 + y2, y1 + y3);
        let (even4, odd4) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
        m1[k] = even + odd;
        m2[k] = even - odd;
        m3[k] = even4 + odd4;
        m4[k] = even4 - odd4;
        m5[k] = y3;
    }
}

/// `B` applied along six equally long rows `v[0..6]` in place, element by element: the adjoint
/// of [`input_transform_6`] (its matrix transposed), with the differences and sums of the rows
/// it pairs formed once.
#[inline(always)]
pub(super) fn input_grad_transform_6(v: [&mut [f32]; TILE]) {
    let n = v[0].len();
    let [v0, v1, v2, v3, v4, v5] = v.map(|s| &mut s[..n]);
    for k in 0..n {
        let (a0, a5) = (v0[k], v5[k]);
        let (s12, d21) = (v1[k] + v2[k], v2[k] - v1[k]);
        let (s34, d43) = (v3[k] + v4[k], v4[k] - v3[k]);
        v0[k] = 4.0 * a0;
        v1[k] = 4.0 * (d21 + a5) + 2.0 * d43;
        v2[k] = -5.0 * a0 - 4.0 * s12 - s34;
        v3[k] = -d21 - 2.0 * d43 - 5.0 * a5;
        v4[k] = a0 + s12 + s34;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::winograd::Winograd;
    use crate::winograd_f2_oracle::tests::{self as oracle, values};

    /// Direct 3x3 convolution, stride 1, padding 1, in f64.
    fn direct(x: &[f32], weight: &[f32], g: &WinogradF4) -> Vec<f64> {
        let (c_in, c_out, h, w) = (g.c_in, g.c_out, g.h, g.w);
        oracle::direct(x, weight, &Winograd { c_in, c_out, h, w })
    }

    #[test]
    fn matches_a_direct_convolution_on_every_side_modulo_four() {
        for (c_in, c_out, h, w) in [
            (3, 5, 7, 6),
            (4, 2, 8, 9),
            (1, 1, 1, 1),
            (2, 3, 2, 5),
            (5, 4, 13, 11),
            (16, 8, 27, 27),
        ] {
            let g = WinogradF4 { c_in, c_out, h, w };
            let x = values(c_in * h * w, 1);
            let weight = values(c_out * c_in * 9, 2);
            let expected = direct(&x, &weight, &g);
            let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
            let u = g.transform_weights(&weight);
            let packed = winograd_narrow::pack(&u, (c_in, c_out, POSITIONS));
            let layouts = [
                TransformedWeights::Matrices(u.as_slice()),
                TransformedWeights::Panels(packed.as_slice()),
            ];
            for (parallel, u) in [false, true]
                .into_iter()
                .flat_map(|p| layouts.map(|u| (p, u)))
            {
                let mut out = vec![f32::NAN; c_out * h * w];
                g.image(&x, u, None, &mut out, &mut Scratch::default(), parallel);
                for (a, e) in out.iter().zip(&expected) {
                    assert!(((*a as f64) - e).abs() / scale < 5e-6, "{g:?}: {a} vs {e}");
                }
                let bias: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.1 - 0.2).collect();
                let mut scratch = Scratch::default();
                g.image(&x, u, Some(&bias), &mut out, &mut scratch, parallel);
                for (idx, (a, e)) in out.iter().zip(&expected).enumerate() {
                    let e = (e + bias[idx / (h * w)] as f64).max(0.0);
                    assert!(
                        ((*a as f64) - e).abs() / scale < 5e-6,
                        "{g:?}, bias: {a} vs {e}"
                    );
                }
            }
        }
    }

    /// Direct weight gradient of a 3x3 convolution, stride 1, padding 1, in f64:
    /// `dW[o][i][ky][kx] = sum over (y, x) of dY[o][y][x] * x[i][y + ky - 1][x + kx - 1]`.
    pub(crate) fn direct_weight_grad(x: &[f32], grad: &[f32], g: &WinogradF4) -> Vec<f64> {
        let (c_in, c_out, h, w) = (g.c_in, g.c_out, g.h, g.w);
        let mut dw = vec![0f64; c_out * c_in * 9];
        for o in 0..c_out {
            for i in 0..c_in {
                for k in 0..9 {
                    let (ky, kx) = (k / 3, k % 3);
                    let mut sum = 0f64;
                    for y in 0..h {
                        for xx in 0..w {
                            let (sy, sx) = (y + ky, xx + kx);
                            if sy < 1 || sx < 1 || sy > h || sx > w {
                                continue;
                            }
                            sum += grad[(o * h + y) * w + xx] as f64
                                * x[(i * h + sy - 1) * w + sx - 1] as f64;
                        }
                    }
                    dw[(o * c_in + i) * 9 + k] = sum;
                }
            }
        }
        dw
    }

    #[test]
    fn weight_gradient_matches_the_direct_sum_on_every_side_modulo_four() {
        for (c_in, c_out, h, w) in [
            (3, 5, 7, 6),
            (4, 2, 8, 9),
            (1, 1, 1, 1),
            (2, 3, 2, 5),
            (5, 4, 13, 11),
            (16, 8, 27, 27),
        ] {
            let g = WinogradF4 { c_in, c_out, h, w };
            // Two images summed, the second added to the first's share.
            let images: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                .map(|k| (values(c_in * h * w, 3 + k), values(c_out * h * w, 5 + k)))
                .collect();
            let mut expected = vec![0f64; c_out * c_in * 9];
            for (x, grad) in &images {
                for (e, d) in expected.iter_mut().zip(direct_weight_grad(x, grad, &g)) {
                    *e += d;
                }
            }
            let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
            for parallel in [false, true] {
                let mut du = vec![f32::NAN; g.transformed_len()];
                let mut scratch = Scratch::default();
                for (index, (x, grad)) in images.iter().enumerate() {
                    g.accumulate_weight_grad(x, grad, &mut du, index > 0, &mut scratch, parallel);
                }
                let mut dw = vec![0f32; c_out * c_in * 9];
                g.weight_grad(&du, &mut dw);
                for (a, e) in dw.iter().zip(&expected) {
                    assert!(((*a as f64) - e).abs() / scale < 5e-6, "{g:?}: {a} vs {e}");
                }
            }
        }
    }

    #[test]
    fn remembers_the_transform_of_the_same_weights_only() {
        let g = WinogradF4 {
            c_in: 3,
            c_out: 2,
            h: 5,
            w: 5,
        };
        let weight = values(g.c_out * g.c_in * 9, 11);
        let cache = WeightCache::default();
        let first = g.transform_weights_cached(&weight, Some(&cache));
        assert_eq!(*first, g.transform_weights(&weight));
        assert!(Arc::ptr_eq(
            &first,
            &g.transform_weights_cached(&weight, Some(&cache))
        ));
        // Another cache (or none) holds nothing of it.
        let elsewhere = g.transform_weights_cached(&weight, Some(&WeightCache::default()));
        assert!(!Arc::ptr_eq(&first, &elsewhere));
        assert!(!Arc::ptr_eq(
            &first,
            &g.transform_weights_cached(&weight, None)
        ));
        let mut changed = weight.clone();
        changed[17] += 1e-3;
        let other = g.transform_weights_cached(&changed, Some(&cache));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(*other, g.transform_weights(&changed));
        // The same weights for the other algorithm are another entry, and both stay.
        let key = (g.c_in, g.c_out, Tiling::F6, false);
        let f6 = cached_transform(Some(&cache), key, &weight, || vec![7.0; 64 * 6]);
        assert_eq!(*f6, vec![7.0; 64 * 6]);
        assert!(Arc::ptr_eq(
            &first,
            &g.transform_weights_cached(&weight, Some(&cache))
        ));
        let again = cached_transform(Some(&cache), key, &weight, || unreachable!("remembered"));
        assert!(Arc::ptr_eq(&f6, &again));
        // So is the packed form for the narrow GEMMs.
        let packed = g.packed_weights_cached(&weight, Some(&cache));
        let sizes = (g.c_in, g.c_out, POSITIONS);
        assert_eq!(*packed, winograd_narrow::pack(&first, sizes));
        assert!(Arc::ptr_eq(
            &packed,
            &g.packed_weights_cached(&weight, Some(&cache))
        ));
        assert!(Arc::ptr_eq(
            &first,
            &g.transform_weights_cached(&weight, Some(&cache))
        ));
    }

    #[test]
    fn agrees_with_f2x2_on_a_feat_ex_sized_layer() {
        // conv3b's shape with fewer channels: both algorithms give the same outputs to within
        // their rounding.
        let f4 = WinogradF4 {
            c_in: 24,
            c_out: 12,
            h: 27,
            w: 27,
        };
        let f2 = Winograd {
            c_in: 24,
            c_out: 12,
            h: 27,
            w: 27,
        };
        let x = values(f4.c_in * f4.h * f4.w, 7);
        let weight = values(f4.c_out * f4.c_in * 9, 8);
        let (mut a, mut b) = (vec![0f32; 12 * 27 * 27], vec![0f32; 12 * 27 * 27]);
        let u4 = f4.transform_weights(&weight);
        f4.image(
            &x,
            TransformedWeights::Matrices(u4.as_slice()),
            None,
            &mut a,
            &mut Scratch::default(),
            false,
        );
        let u2 = f2.transform_weights(&weight);
        f2.image(&x, &u2, None, &mut b, &mut Scratch::default(), false);
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() / scale < 5e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn the_input_gradient_transform_is_the_adjoint_of_the_input_transform() {
        crate::winograd_f2_oracle::tests::assert_adjoint(
            "B dV B^T",
            POSITIONS,
            input_transform_tiles,
            input_grad_transform_tiles,
        );
    }
}
