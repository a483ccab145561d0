//! 3x3 stride-1 convolutions on small planes by Winograd's F(4x4, 3x3) or F(6x6, 3x3)
//! ([`Tiling`], [`TiledWinograd`]) over several images at once: the forward with its bias, ReLU
//! and max-pool, the weight gradient, and the input gradient by the forward's transpose. A
//! training step runs F(6x6, 3x3) on planes of 13 to 24 pixels where it needs fewer products,
//! F(4x4, 3x3) elsewhere ([`Tiling::for_training`]); an inference F(6x6, 3x3) wherever it needs
//! fewer products (`ConvGeometry::inference_winograd_batch`).
//!
//! One image of an 11x11 plane has 9 tiles, of a 5x5 plane 4: one image at a time
//! ([`super::winograd_f4`]), each tile position's GEMM is 9 or 4 columns wide, where `gemm` runs
//! at a fraction of its rate and re-reads a whole weight matrix for a few thousand
//! multiply-adds. Here the tiles of all the images of a call are the columns of one GEMM per
//! position (288 columns for 32 images at 11x11), and every step is spread over the threads:
//! the transforms by channel, the GEMMs by tile position.
//!
//! The columns are ordered tile by tile, the images of each tile side by side. Tiles this small
//! make the per-image code's row-by-row gathers a series of tiny copies; here each tile element
//! is gathered from a table of plane indices, one run over the images at a time. And an output
//! pixel of every image is one run of the output buffer, so the max-pool compares eight images
//! at a time in vector registers (`max_pool::lanes`), for any window (the pool's row kernel
//! needs rows of eight windows or more, which 5x5 outputs never give it).
//!
//! Each column is computed as it would be alone (the transforms work column by column, and a
//! GEMM's column does not depend on the others), so the forward's values, and the input
//! gradient's, do not depend on how the batch is split into calls; the weight gradient sums over
//! a call's columns, so its split is fixed by the caller (`ConvGeometry::winograd_batch`).

use std::sync::Arc;

use super::max_pool::{pool_lanes, Pool2d};
use super::parallel::{for_each_chunk, for_each_index_with, gemm, grown, Gemm, SharedMut};
use super::winograd::{
    position_gemm, position_weight_grads, transform_weights_with, weight_grad_with, KernelOrder,
    Scratch, Tiling,
};
use super::winograd_f4::{cached_transform, WeightCache, WinogradF4};
use super::{winograd_f4 as f4, winograd_f6 as f6};

/// Geometry of one batched 3x3, stride 1, padding 1 convolution of `c_in x h x w` into `c_out
/// x h x w` (per image), and the Winograd algorithm it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TiledWinograd {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    pub tiling: Tiling,
}

impl TiledWinograd {
    /// The convolution `g` by `tiling`.
    pub(crate) fn new(g: WinogradF4, tiling: Tiling) -> Self {
        let WinogradF4 { c_in, c_out, h, w } = g;
        Self {
            c_in,
            c_out,
            h,
            w,
            tiling,
        }
    }

    /// The per-image geometry of F(4x4, 3x3).
    fn f4(&self) -> WinogradF4 {
        let Self {
            c_in, c_out, h, w, ..
        } = *self;
        WinogradF4 { c_in, c_out, h, w }
    }

    /// Tiles in a row.
    pub(super) fn tiles_w(&self) -> usize {
        self.w.div_ceil(self.tiling.block())
    }

    /// Tiles per image.
    pub(super) fn tiles(&self) -> usize {
        self.h.div_ceil(self.tiling.block()) * self.tiles_w()
    }

    /// Positions in a transformed tile.
    fn positions(&self) -> usize {
        self.tiling.positions()
    }

    /// The length of the transformed weights and of the weight gradient in Winograd's domain,
    /// `positions x c_out x c_in`.
    pub(super) fn transformed_len(&self) -> usize {
        self.positions() * self.c_out * self.c_in
    }

    /// `U = G g G^T` for every kernel of `weight` (`c_out x c_in x 3 x 3`), as `positions`
    /// matrices of `c_out x c_in`.
    pub(super) fn transform_weights(&self, weight: &[f32]) -> Vec<f32> {
        self.transform_weights_read(weight, KernelOrder::AsGiven)
    }

    /// The transform by this algorithm of `weight`'s kernels read in `order`.
    fn transform_weights_read(&self, weight: &[f32], order: KernelOrder) -> Vec<f32> {
        let (sizes, weight) = ((self.c_out, self.c_in), (weight, order));
        match self.tiling {
            Tiling::F4 => transform_weights_with(sizes, weight, f4::weight_combination),
            Tiling::F6 => transform_weights_with(sizes, weight, f6::weight_combination),
        }
    }

    /// [`Self::transform_weights`], taken from `cache` where it holds the same weights for the
    /// same algorithm (and remembered there), else computed.
    pub(super) fn transform_weights_cached(
        &self,
        weight: &[f32],
        cache: Option<&WeightCache>,
    ) -> Arc<Vec<f32>> {
        let key = (self.c_in, self.c_out, self.tiling, false);
        cached_transform(cache, key, weight, || self.transform_weights(weight))
    }

    /// The kernel gradient `dg = G^T dU G` for every kernel, added to `dw` (`c_out x c_in x 3 x
    /// 3`), from the sum `du` of [`Self::batch_weight_grad`].
    pub(super) fn weight_grad(&self, du: &[f32], dw: &mut [f32]) {
        match self.tiling {
            Tiling::F4 => self.f4().weight_grad(du, dw),
            Tiling::F6 => {
                weight_grad_with((self.c_out, self.c_in), du, dw, f6::weight_grad_combination)
            }
        }
    }
}

/// A table entry for a tile element outside the plane (the padding, or past the last row or
/// column): zero.
const OUTSIDE: u32 = u32::MAX;

/// The gathers' and scatters' index tables for one plane side, computed per call (a few hundred
/// entries).
struct Tables {
    /// Per tile position `Ti + j` (rows of `tiles`, `T` the tile's side): the plane index of
    /// element `(i, j)` of each tile, input pixel `(Bty + i - 1, Btx + j - 1)` (`B` the output
    /// block's side), or [`OUTSIDE`].
    input: Vec<u32>,
    /// Per block position `Br + c` (rows of `tiles`): the plane index of output `(Bty + r, Btx +
    /// c)` of each tile, or [`OUTSIDE`].
    block: Vec<u32>,
    /// Per output pixel: where its first image's value sits in the output buffer (`BT x
    /// columns`); the other images follow it.
    location: Vec<usize>,
}

impl Tables {
    fn new(g: &TiledWinograd, images: usize) -> Self {
        let (h, w, tiles_w, tiles) = (g.h, g.w, g.tiles_w(), g.tiles());
        let (block, tile) = (g.tiling.block(), g.tiling.tile());
        let columns = tiles * images;
        let index = |y: Option<usize>, x: Option<usize>| match (y, x) {
            (Some(y), Some(x)) if y < h && x < w => (y * w + x) as u32,
            _ => OUTSIDE,
        };
        let per_tile = |rows: usize, cols: usize, first: isize| -> Vec<u32> {
            let mut table = Vec::with_capacity(rows * cols * tiles);
            for i in 0..rows {
                for j in 0..cols {
                    for tile in 0..tiles {
                        let (ty, tx) = (tile / tiles_w, tile % tiles_w);
                        let y = ((block * ty + i) as isize + first).try_into().ok();
                        let x = ((block * tx + j) as isize + first).try_into().ok();
                        table.push(index(y, x));
                    }
                }
            }
            table
        };
        let location = (0..h * w)
            .map(|pixel| {
                let (y, x) = (pixel / w, pixel % w);
                let row = (y % block) * tile + x % block;
                let tile_idx = (y / block) * tiles_w + x / block;
                row * columns + tile_idx * images
            })
            .collect();
        Self {
            input: per_tile(tile, tile, -1),
            block: per_tile(block, block, 0),
            location,
        }
    }
}

impl TiledWinograd {
    /// `images` images `x` (`images x c_in x h x w`) convolved with the transformed weights `u`,
    /// plus `bias`, through the ReLU and max-pooled by `pool` into `out` with the window offsets
    /// in `offsets` where given (both `images x c_out x OH x OW`; an inference, which has no
    /// backward, skips them): by F(4x4, 3x3), the values of [`WinogradF4::image_pooled`] for
    /// each image. Windows of padding alone are left as they were. With `kept_input` (`c_in x
    /// positions x columns`, see [`Self::transformed_input_len`]) the transformed input is
    /// written there, for the weight gradient to use again ([`Self::batch_weight_grad`]),
    /// instead of into the scratch.
    pub(super) fn batch_pooled(
        &self,
        (x, images, u, bias): (&[f32], usize, &[f32], &[f32]),
        pool: Pool2d,
        (out, offsets): (&mut [f32], Option<&mut [u8]>),
        kept_input: Option<&mut [f32]>,
        scratch: &mut Scratch,
    ) {
        let tables = Tables::new(self, images);
        let products = self.batch_products(x, images, u, &tables, kept_input, scratch);
        let pooled = pool.out_side(self.h) * pool.out_side(self.w);
        let out_planes = ChannelPlanes::new(out, images, self.c_out, pooled);
        let offset_planes =
            offsets.map(|offsets| ChannelPlanes::new(offsets, images, self.c_out, pooled));
        let transform_and_pool = |buffer: &mut Vec<f32>, channel: usize| {
            let buffer = self.batch_output(products, channel, Some(bias[channel]), images, buffer);
            let destination = (&out_planes, offset_planes.as_ref(), channel);
            self.pool_images(buffer, &tables.location, images, pool, destination);
        };
        for_each_index_with(self.c_out, true, Vec::new, transform_and_pool);
    }

    /// `images` images `x` (`images x c_in x h x w`) convolved with the transformed weights `u`
    /// into `out` (`images x c_out x h x w`), no bias: by F(4x4, 3x3), the values of
    /// [`WinogradF4::image`] for each image. The tests' plain convolution (the input gradient
    /// took it with the flipped, channel-swapped kernel before [`Self::batch_input_grad`]).
    #[cfg(test)]
    pub(super) fn batch_image(
        &self,
        (x, images): (&[f32], usize),
        u: &[f32],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let tables = Tables::new(self, images);
        let products = self.batch_products(x, images, u, &tables, None, scratch);
        let planes = ChannelPlanes::new(out, images, self.c_out, self.h * self.w);
        let transform_output = |buffer: &mut Vec<f32>, channel: usize| {
            let buffer = self.batch_output(products, channel, None, images, buffer);
            for image in 0..images {
                // SAFETY: this job alone handles output channel `channel`, so it alone writes
                // that channel's plane of each image.
                let plane = unsafe { planes.plane(image, channel) };
                for (value, &at) in plane.iter_mut().zip(&tables.location) {
                    *value = buffer[at + image];
                }
            }
        };
        for_each_index_with(self.c_out, true, Vec::new, transform_output);
    }

    /// Adds the share of `images` images of the weight gradient in the Winograd domain to `du`
    /// (`positions x c_out x c_in`; overwritten unless `accumulate`), from their inputs `x`
    /// (`images x c_in x h x w`) and output gradients `grad` (`images x c_out x h x w`): for
    /// each tile position `p`, `dU[p] += dM[p] * V[p]^T` as in
    /// [`WinogradF4::accumulate_weight_grad`], the GEMMs summing over all the images' tiles at
    /// once. `transformed_input`, where given, is
    /// `V` as the forward kept it ([`Self::batch_pooled`]'s `kept_input`, the same images), which
    /// is then not computed again.
    ///
    /// With `input_grad`, the forward's transformed weights `U` and these images' input gradient
    /// `dx` (`images x c_in x h x w`, zero on entry), it adds the input gradient there too, from
    /// the same `dM` ([`Self::batch_input_grad`]).
    pub(super) fn batch_weight_grad(
        &self,
        (x, grad, images): (&[f32], &[f32], usize),
        transformed_input: Option<&[f32]>,
        (du, accumulate): (&mut [f32], bool),
        input_grad: Option<(&[f32], &mut [f32])>,
        scratch: &mut Scratch,
    ) {
        let tables = Tables::new(self, images);
        let columns = images * self.tiles();
        let (plane, (c_in, c_out)) = (self.h * self.w, (self.c_in, self.c_out));
        // The input buffer holds V where the forward kept none, then dV for the input gradient
        // (as long as V: `c_in x positions x columns`).
        let input_len = if transformed_input.is_some() && input_grad.is_none() {
            0
        } else {
            self.transformed_input_len(images)
        };
        let (input, grads) = scratch.buffers(input_len, c_out * self.positions() * columns);
        let transform_grad = |(channel, m): (usize, &mut [f32])| {
            let grad = (&grad[channel * plane..], c_out * plane);
            self.batch_transform_grad(grad, images, &tables, m)
        };
        for_each_chunk(grads, self.positions() * columns, true, transform_grad);
        let sizes = (c_in, c_out, columns, self.positions());
        match transformed_input {
            Some(kept) => {
                assert_eq!(
                    kept.len(),
                    self.transformed_input_len(images),
                    "kept input's length"
                );
                position_weight_grads((kept, grads), sizes, du, accumulate, true);
            }
            None => {
                let transform_input = |(channel, v): (usize, &mut [f32])| {
                    let x = (&x[channel * plane..], c_in * plane);
                    self.batch_transform_input(x, images, &tables, v)
                };
                for_each_chunk(input, self.positions() * columns, true, transform_input);
                position_weight_grads((input, grads), sizes, du, accumulate, true);
            }
        }
        if let Some((u, dx)) = input_grad {
            self.batch_input_grad((grads, images), u, &tables, input, dx);
        }
    }

    /// The input gradient of `images` images added to `dx` (`images x c_in x h x w`) by the
    /// transpose of the forward: per tile position `dV[p] = U[p]^T dM[p]` (one GEMM each, into
    /// `dv`, `positions x c_in x columns`), from the forward's transformed weights `u` and the
    /// transformed output gradient `dm` (`c_out x positions x columns`, as the weight gradient
    /// has it), then per input channel `B dV B^T` for every tile, each tile element added to the
    /// input pixel the forward's gather read it from. Against the convolution of the output
    /// gradient with the flipped kernel that it replaced, no weights are transformed again, the
    /// output gradient is neither gathered nor transformed again, and the transforms run over
    /// `c_in` channels instead of `c_out` (a 48 px training step 1.09-1.10 times faster). Each
    /// channel's tiles are added in a fixed order by one job, so the result does not depend on
    /// the thread count.
    fn batch_input_grad(
        &self,
        (dm, images): (&[f32], usize),
        u: &[f32],
        tables: &Tables,
        dv: &mut [f32],
        dx: &mut [f32],
    ) {
        let (c_in, c_out, positions) = (self.c_in, self.c_out, self.positions());
        let (columns, plane) = (images * self.tiles(), self.h * self.w);
        assert_eq!(
            u.len(),
            self.transformed_len(),
            "transformed weights' length"
        );
        let gemm_at = |(position, dst): (usize, &mut [f32])| {
            gemm(
                Gemm {
                    m: c_in,
                    n: columns,
                    k: c_out,
                    dst,
                    accumulate: false,
                    lhs: &u[position * c_out * c_in..][..c_out * c_in],
                    lhs_rs: 1,
                    lhs_cs: c_in,
                    rhs: &dm[position * columns..],
                    rhs_rs: positions * columns,
                    rhs_cs: 1,
                },
                gemm::Parallelism::None,
            )
        };
        for_each_chunk(dv, c_in * columns, true, gemm_at);
        let dv: &[f32] = dv;
        let planes = ChannelPlanes::new(dx, images, c_in, plane);
        let transform_and_add = |buffer: &mut Vec<f32>, channel: usize| {
            let tile_values = grown(buffer, positions * columns);
            for (position, row) in tile_values.chunks_exact_mut(columns).enumerate() {
                row.copy_from_slice(&dv[(position * c_in + channel) * columns..][..columns]);
            }
            // SAFETY: this job alone handles input channel `channel`, so it alone holds that
            // channel's plane of each image, one slice each.
            let mut image_planes: Vec<&mut [f32]> = (0..images)
                .map(|image| unsafe { planes.plane(image, channel) })
                .collect();
            super::isa::vectorised(
                #[inline(always)]
                || {
                    match self.tiling {
                        Tiling::F4 => f4::input_grad_transform_tiles(tile_values, columns),
                        Tiling::F6 => f6::input_grad_transform_tiles(tile_values, columns),
                    }
                    scatter_add(
                        tile_values,
                        (&tables.input, self.tiles()),
                        &mut image_planes,
                    );
                },
            )
        };
        for_each_index_with(c_in, true, Vec::new, transform_and_add);
    }

    /// Values of the transformed input of `images` images: `c_in x positions x (images x
    /// tiles)`.
    pub(super) fn transformed_input_len(&self, images: usize) -> usize {
        self.c_in * self.positions() * images * self.tiles()
    }

    /// The input transform (into `kept_input` where given, else `scratch`) and the GEMMs, one
    /// per tile position, for `images` images, into `scratch`'s products (`positions x c_out x
    /// columns`), which it returns.
    fn batch_products<'a>(
        &self,
        x: &[f32],
        images: usize,
        u: &[f32],
        tables: &Tables,
        kept_input: Option<&mut [f32]>,
        scratch: &'a mut Scratch,
    ) -> &'a [f32] {
        let columns = images * self.tiles();
        let plane = self.h * self.w;
        let input_len = self.transformed_input_len(images);
        let scratch_input = if kept_input.is_some() { 0 } else { input_len };
        let (scratch_input, products) =
            scratch.buffers(scratch_input, self.positions() * self.c_out * columns);
        let input = match kept_input {
            Some(kept) => {
                assert_eq!(kept.len(), input_len, "kept input's length");
                kept
            }
            None => scratch_input,
        };
        let transform_channel = |(channel, v): (usize, &mut [f32])| {
            let x = (&x[channel * plane..], self.c_in * plane);
            self.batch_transform_input(x, images, tables, v)
        };
        for_each_chunk(input, self.positions() * columns, true, transform_channel);
        let input: &[f32] = input;
        let sizes = (self.c_in, self.c_out, columns, self.positions());
        let gemm_at =
            |(position, m): (usize, &mut [f32])| position_gemm(u, input, position, m, sizes);
        for_each_chunk(products, self.c_out * columns, true, gemm_at);
        products
    }

    /// `V = B^T d B` for every tile of one channel of `images` images (`x[b * image_stride..]`
    /// is image `b`'s plane), into `v` (`positions x columns`): gathered through the table, then
    /// transformed in place, rows first, then columns, each step over all the columns at once.
    fn batch_transform_input(
        &self,
        (x, image_stride): (&[f32], usize),
        images: usize,
        tables: &Tables,
        v: &mut [f32],
    ) {
        super::isa::vectorised(
            #[inline(always)]
            || {
                let columns = images * self.tiles();
                gather(x, image_stride, images, &tables.input, v, columns);
                match self.tiling {
                    Tiling::F4 => f4::input_transform_tiles(v, columns),
                    Tiling::F6 => f6::input_transform_tiles(v, columns),
                }
            },
        )
    }

    /// `dM = A dY A^T` for every `B x B` output block of one channel's output gradient in
    /// `images` images (`grad[b * image_stride..]` is image `b`'s plane), into `m` (`positions x
    /// columns`): the blocks gathered into the rows `Tr + c` (`T` the tile's side) through the
    /// table (zero past the last row or column), then
    /// expanded in place, columns first, then rows.
    fn batch_transform_grad(
        &self,
        (grad, image_stride): (&[f32], usize),
        images: usize,
        tables: &Tables,
        m: &mut [f32],
    ) {
        super::isa::vectorised(
            #[inline(always)]
            || {
                let columns = images * self.tiles();
                let (tile, block) = (self.tiling.tile(), self.tiling.block());
                for (r, rows) in m.chunks_exact_mut(tile * columns).take(block).enumerate() {
                    let table = &tables.block[r * block * self.tiles()..][..block * self.tiles()];
                    gather(grad, image_stride, images, table, rows, columns);
                }
                match self.tiling {
                    Tiling::F4 => f4::grad_transform_tiles(m, columns),
                    Tiling::F6 => f6::grad_transform_tiles(m, columns),
                }
            },
        )
    }

    /// `Y = A^T M A` for every tile of output channel `channel` (with `bias`, `relu(Y + bias)`)
    /// into `buffer`, which it returns: `BT x columns` (`B` the output block's side, `T` the
    /// tile's), output `(Bty + r, Btx + c)` of each image in row `Tr + c` (rows `Tr + B` to `Tr +
    /// T - 1` are left over), at [`Tables::location`].
    fn batch_output<'a>(
        &self,
        products: &[f32],
        channel: usize,
        bias: Option<f32>,
        images: usize,
        buffer: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        let columns = images * self.tiles();
        let buffer = grown(buffer, self.tiling.block() * self.tiling.tile() * columns);
        let channel = (self.c_out, channel);
        super::isa::vectorised(
            #[inline(always)]
            || match self.tiling {
                Tiling::F4 => f4::output_transform_tiles(products, channel, columns, bias, buffer),
                Tiling::F6 => f6::output_transform_tiles(products, channel, columns, bias, buffer),
            },
        );
        buffer
    }

    /// Max-pools output channel `channel` of every image from the output `buffer` (see
    /// [`Self::batch_output`]) into its planes of `out` and, where given, `offsets`, eight images
    /// at a time in vector registers, each getting the scalar kernel's value and offset
    /// (`max_pool::lanes`).
    fn pool_images(
        &self,
        buffer: &[f32],
        location: &[usize],
        images: usize,
        pool: Pool2d,
        (out, offsets, channel): (
            &ChannelPlanes<'_, f32>,
            Option<&ChannelPlanes<'_, u8>>,
            usize,
        ),
    ) {
        // Each image's planes of this channel looked up once: the writer runs once an output
        // and image, and working out (and checking) the plane in it each time made conv2b's
        // forward 7-12% slower at 11x11 and 23x23 (best of 60, batch 32).
        // SAFETY: (both planes) this job alone handles output channel `channel`, so it alone
        // holds that channel's planes of each image, one slice each.
        let mut out_planes: Vec<&mut [f32]> = (0..images)
            .map(|image| unsafe { out.plane(image, channel) })
            .collect();
        let geometry = (self.h, self.w, pool);
        let Some(offsets) = offsets else {
            // Half the scattered writes: about a third of the pool's time at 23x23.
            let write = |image: usize, output: usize, value: f32, _: u8| {
                out_planes[image][output] = value;
            };
            return super::isa::vectorised(
                #[inline(always)]
                || pool_lanes(buffer, |pixel| location[pixel], images, geometry, write),
            );
        };
        let mut offset_planes: Vec<&mut [u8]> = (0..images)
            .map(|image| unsafe { offsets.plane(image, channel) })
            .collect();
        let write = |image: usize, output: usize, value: f32, offset: u8| {
            out_planes[image][output] = value;
            offset_planes[image][output] = offset;
        };
        super::isa::vectorised(
            #[inline(always)]
            || pool_lanes(buffer, |pixel| location[pixel], images, geometry, write),
        )
    }
}

/// Fills the `rows` of `columns` values with a gather of `table` (rows of `table.len() / rows`
/// tiles): entry `(row, tile)` of the table names a plane index, whose value in each of the
/// `images` images (`x[b * image_stride..]`) goes to `rows[row][tile * images + b]`; [`OUTSIDE`]
/// gives zeros.
#[inline(always)]
fn gather(
    x: &[f32],
    image_stride: usize,
    images: usize,
    table: &[u32],
    rows: &mut [f32],
    columns: usize,
) {
    let tiles = columns / images;
    // The same pixel of every image lies an image apart; where that is a multiple of 4 KiB (96
    // channels of 24x24, the paper variant's conv2b at 96 px), all of them fall in one L1 set,
    // and sixteen images evicted one another's lines before the next tile's pixels, mostly in
    // the same lines, were read: conv2b at 24x24 took 12% longer than at 23x23, with as many
    // tiles. Such strides gather a few images at a time; others all at once (in blocks, 23x23
    // lost 5-10%: the rows written and the table are swept once a block).
    let at_once = if (image_stride * size_of::<f32>()).is_multiple_of(ALIASING_STRIDE) {
        GATHER_IMAGES
    } else {
        images.max(1)
    };
    for first in (0..images).step_by(at_once) {
        let block = first..(first + at_once).min(images);
        for (row, sources) in rows
            .chunks_exact_mut(columns)
            .zip(table.chunks_exact(tiles))
        {
            for (dst, &source) in row.chunks_exact_mut(images).zip(sources) {
                let dst = &mut dst[block.clone()];
                if source == OUTSIDE {
                    for value in dst.iter_mut() {
                        *value = 0.0;
                    }
                    continue;
                }
                for (image, value) in block.clone().zip(dst.iter_mut()) {
                    *value = x[image * image_stride + source as usize];
                }
            }
        }
    }
}

/// The adjoint of [`gather`] for one channel: each value of `rows` (rows of `tiles` tiles, the
/// images of each tile side by side, one row per `tiles` entries of `table`) added to the pixel
/// its table entry names, in each image's plane (`planes`); [`OUTSIDE`] entries are dropped. The
/// adds run row by row, tile by tile, so each pixel sums its tiles' values in a fixed order.
#[inline(always)]
fn scatter_add(rows: &[f32], (table, tiles): (&[u32], usize), planes: &mut [&mut [f32]]) {
    let images = planes.len();
    for (row, sources) in rows
        .chunks_exact(tiles * images)
        .zip(table.chunks_exact(tiles))
    {
        for (values, &source) in row.chunks_exact(images).zip(sources) {
            if source == OUTSIDE {
                continue;
            }
            for (plane, value) in planes.iter_mut().zip(values) {
                plane[source as usize] += value;
            }
        }
    }
}

/// Images [`gather`] reads at a time where the image stride aliases ([`ALIASING_STRIDE`]):
/// fewer than the L1's eight ways, with room for the rows it writes.
const GATHER_IMAGES: usize = 4;

/// Image strides (in bytes) that are a multiple of this put every image's same pixel in one L1
/// set (4 KiB a way). Multiples of 2 KiB alone (two sets: 96 channels of 12x12, the paper
/// variant's conv2b at 48 px) gathered faster all at once: 5.3-5.5 against 5.7-8.5 ms forward.
const ALIASING_STRIDE: usize = 4096;

/// The planes of an `images x channels x plane` tensor, for jobs that each write one channel of
/// every image (strided pieces, so not expressible as disjoint chunks of one slice).
pub(super) struct ChannelPlanes<'a, T> {
    start: SharedMut<T>,
    images: usize,
    channels: usize,
    plane: usize,
    /// The tensor stays borrowed mutably for as long as its planes are handed out.
    _values: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T> ChannelPlanes<'a, T> {
    /// The planes of `values`, which must hold `images x channels x plane` values.
    pub(super) fn new(values: &'a mut [T], images: usize, channels: usize, plane: usize) -> Self {
        assert!(
            values.len() >= images * channels * plane,
            "winograd: {} values for {images} images of {channels} planes of {plane}",
            values.len()
        );
        Self {
            start: SharedMut(values.as_mut_ptr()),
            images,
            channels,
            plane,
            _values: std::marker::PhantomData,
        }
    }

    /// Image `image`'s plane of channel `channel`.
    ///
    /// # Safety
    /// No two slices of the same plane may be alive at once (each job writes its own channel).
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn plane(&self, image: usize, channel: usize) -> &mut [T] {
        assert!(
            image < self.images && channel < self.channels,
            "winograd: plane ({image}, {channel}) outside {} x {}",
            self.images,
            self.channels
        );
        // SAFETY: inside the tensor (the bounds just checked and `new`'s length check), which
        // stays borrowed for `'a`; the caller keeps the slices of one plane from overlapping.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.start
                    .0
                    .add((image * self.channels + channel) * self.plane),
                self.plane,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_pool::pool_planes;
    use crate::winograd::Winograd;
    use crate::winograd_f2_oracle::tests::{direct, values};
    use crate::winograd_f4::tests::direct_weight_grad;
    use crate::winograd_f4::TransformedWeights;

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_gather_reads_every_image_whatever_its_stride() {
        // Image strides of 1024 floats (4 KiB: a few images at a time) and 500 (all at once), 1 to
        // 9 images (blocks of four and a remainder), a table with padding entries: each row
        // element is the named pixel of its image, or zero.
        let (tiles, rows) = (5, 3);
        let table: Vec<u32> = (0..rows * tiles)
            .map(|i| {
                if i % 4 == 3 {
                    OUTSIDE
                } else {
                    (i * 37 % 500) as u32
                }
            })
            .collect();
        for image_stride in [1024, 500] {
            for images in 1..=9 {
                let x = values(images * image_stride, 7);
                let columns = tiles * images;
                let mut gathered = vec![f32::NAN; rows * columns];
                gather(&x, image_stride, images, &table, &mut gathered, columns);
                for row in 0..rows {
                    for tile in 0..tiles {
                        for image in 0..images {
                            let source = table[row * tiles + tile];
                            let expected = if source == OUTSIDE {
                                0.0
                            } else {
                                x[image * image_stride + source as usize]
                            };
                            let at = row * columns + tile * images + image;
                            assert_eq!(
                                gathered[at].to_bits(),
                                expected.to_bits(),
                                "stride {image_stride}, {images} images: row {row}, tile {tile}, image {image}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_gives_each_image_its_values_alone_bit_for_bit() {
        // Three images in one call against each image through the per-image kernels: the plain
        // convolution, and with bias, ReLU and pool (values and window offsets), on sides with
        // partial tiles, a pool with padding, a bias that leaves many windows tied at zero, and a
        // NaN in one image.
        let pools = [
            Pool2d::floor(3, 2, 0),
            Pool2d::floor(3, 1, 1),
            // The paper variant's: a last window that runs past the end on even sides.
            Pool2d::ceil(3, 2, 0),
        ];
        for (c_in, c_out, h, w) in [(3, 5, 7, 6), (4, 3, 11, 11), (2, 4, 5, 5), (2, 9, 4, 4)] {
            let alone = WinogradF4 { c_in, c_out, h, w };
            let g = TiledWinograd::new(alone, Tiling::F4);
            let (plane, images) = (h * w, 3);
            let mut x = values(images * c_in * plane, 41);
            x[c_in * plane + 5] = f32::NAN;
            let u = g.transform_weights(&values(c_out * c_in * 9, 42));
            let bias: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.4 - 1.0).collect();
            let mut scratch = Scratch::default();
            let mut together = vec![f32::NAN; images * c_out * plane];
            g.batch_image((&x, images), &u, &mut together, &mut scratch);
            for pool in pools {
                let pooled = pool.out_side(h) * pool.out_side(w);
                let mut pooled_together = vec![f32::NAN; images * c_out * pooled];
                let mut offsets_together = vec![u8::MAX; images * c_out * pooled];
                g.batch_pooled(
                    (&x, images, &u, &bias),
                    pool,
                    (&mut pooled_together, Some(&mut offsets_together)),
                    None,
                    &mut scratch,
                );
                // Without offsets (an inference), and keeping the transformed input (a training
                // step), the same values.
                let mut pooled_without_offsets = vec![f32::NAN; images * c_out * pooled];
                let mut kept = vec![f32::NAN; g.transformed_input_len(images)];
                g.batch_pooled(
                    (&x, images, &u, &bias),
                    pool,
                    (&mut pooled_without_offsets, None),
                    Some(&mut kept),
                    &mut scratch,
                );
                assert_eq!(
                    bits(&pooled_without_offsets),
                    bits(&pooled_together),
                    "{g:?}, {pool:?}: values without offsets"
                );
                for image in 0..images {
                    let x = &x[image * c_in * plane..][..c_in * plane];
                    let mut alone = vec![f32::NAN; c_out * plane];
                    let matrices = TransformedWeights::Matrices(u.as_slice());
                    g.f4()
                        .image(x, matrices, None, &mut alone, &mut scratch, false);
                    let range = image * c_out * plane..(image + 1) * c_out * plane;
                    assert_eq!(bits(&together[range]), bits(&alone), "{g:?}, image {image}");
                    let mut pooled_alone = vec![f32::NAN; c_out * pooled];
                    let mut offsets_alone = vec![u8::MAX; c_out * pooled];
                    g.f4().image_pooled(
                        (x, matrices, &bias),
                        pool,
                        (&mut pooled_alone, &mut offsets_alone),
                        &mut scratch,
                        false,
                    );
                    let range = image * c_out * pooled..(image + 1) * c_out * pooled;
                    let case = format!("{g:?}, {pool:?}, image {image}");
                    assert_eq!(
                        bits(&pooled_together[range.clone()]),
                        bits(&pooled_alone),
                        "{case}"
                    );
                    assert_eq!(offsets_together[range], offsets_alone, "{case}");
                }
            }
        }
    }

    /// The gradient tests' convolutions, `(c_in, c_out, h, w)` with each tiling: partial tiles,
    /// one tile, several, and a plane smaller than one output block.
    fn shapes_and_tilings() -> impl Iterator<Item = ((usize, usize, usize, usize), Tiling)> {
        let shapes = [
            (3, 5, 7, 6),
            (4, 2, 8, 9),
            (2, 3, 11, 11),
            (5, 4, 5, 5),
            (3, 2, 13, 12),
            (2, 3, 2, 3),
        ];
        shapes
            .into_iter()
            .flat_map(|shape| [(shape, Tiling::F4), (shape, Tiling::F6)])
    }

    #[test]
    fn the_weight_gradient_of_a_batch_matches_the_direct_sum() {
        // Three images' share in one call, and a second call of two more added to it; planes of
        // three pixels and more, which its kept-input pass pools 3x3.
        let pooled_shapes = shapes_and_tilings().filter(|((_, _, h, w), _)| (*h).min(*w) >= 3);
        for ((c_in, c_out, h, w), tiling) in pooled_shapes {
            let f4 = WinogradF4 { c_in, c_out, h, w };
            let g = TiledWinograd::new(f4, tiling);
            let plane = h * w;
            let x = values(5 * c_in * plane, 61);
            let grad = values(5 * c_out * plane, 62);
            let mut expected = vec![0f64; c_out * c_in * 9];
            for image in 0..5 {
                let x = &x[image * c_in * plane..][..c_in * plane];
                let grad = &grad[image * c_out * plane..][..c_out * plane];
                for (e, d) in expected.iter_mut().zip(direct_weight_grad(x, grad, &f4)) {
                    *e += d;
                }
            }
            let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
            let mut du = vec![f32::NAN; g.transformed_len()];
            let mut scratch = Scratch::default();
            let (first, second) = (
                x.split_at(3 * c_in * plane),
                grad.split_at(3 * c_out * plane),
            );
            let arguments = (first.0, second.0, 3);
            g.batch_weight_grad(arguments, None, (&mut du, false), None, &mut scratch);
            let arguments = (first.1, second.1, 2);
            g.batch_weight_grad(arguments, None, (&mut du, true), None, &mut scratch);
            let mut dw = vec![0f32; c_out * c_in * 9];
            g.weight_grad(&du, &mut dw);
            for (a, e) in dw.iter().zip(&expected) {
                assert!(((*a as f64) - e).abs() / scale < 5e-6, "{g:?}: {a} vs {e}");
            }
            // With the transformed inputs a forward kept, the same bits.
            let (u, bias) = (vec![0.5f32; g.transformed_len()], vec![0f32; c_out]);
            let pool = Pool2d::floor(3, 2, 0);
            let pooled = pool.out_side(h) * pool.out_side(w);
            let mut du_kept = vec![f32::NAN; g.transformed_len()];
            for ((x, grad, images), accumulate) in [
                ((first.0, second.0, 3), false),
                ((first.1, second.1, 2), true),
            ] {
                let mut kept = vec![f32::NAN; g.transformed_input_len(images)];
                let mut out = vec![0f32; images * c_out * pooled];
                let arguments = (x, images, u.as_slice(), bias.as_slice());
                g.batch_pooled(
                    arguments,
                    pool,
                    (&mut out, None),
                    Some(&mut kept),
                    &mut scratch,
                );
                let arguments = (x, grad, images);
                g.batch_weight_grad(
                    arguments,
                    Some(&kept),
                    (&mut du_kept, accumulate),
                    None,
                    &mut scratch,
                );
            }
            assert_eq!(bits(&du_kept), bits(&du), "{g:?}: kept transformed input");
        }
    }

    #[test]
    fn the_input_gradient_of_a_batch_matches_the_direct_transposed_convolution() {
        // The transpose of the forward (dV = U^T dM per position, then B dV B^T added into the
        // planes) for three images in one call, against the convolution of each image's output
        // gradient with the flipped, channel-swapped kernel in f64: both tilings, sides with
        // partial tiles, one tile and several, with and without a kept transformed input (which
        // leaves the weight gradient's bits as they were).
        for ((c_in, c_out, h, w), tiling) in shapes_and_tilings() {
            let g = TiledWinograd::new(WinogradF4 { c_in, c_out, h, w }, tiling);
            let (plane, images) = (h * w, 3);
            let x = values(images * c_in * plane, 71);
            let grad = values(images * c_out * plane, 72);
            let weight = values(c_out * c_in * 9, 73);
            let u = g.transform_weights(&weight);
            let swapped = Winograd {
                c_in: c_out,
                c_out: c_in,
                h,
                w,
            };
            let flipped = Winograd { c_in, c_out, h, w }.flipped_weights(&weight);
            let mut scratch = Scratch::default();
            let mut du_alone = vec![f32::NAN; g.transformed_len()];
            let arguments = (x.as_slice(), grad.as_slice(), images);
            g.batch_weight_grad(arguments, None, (&mut du_alone, false), None, &mut scratch);
            let mut kept = vec![f32::NAN; g.transformed_input_len(images)];
            let mut pooled = vec![0f32; images * c_out * plane];
            let zero_bias = vec![0f32; c_out];
            g.batch_pooled(
                (&x, images, &u, &zero_bias),
                Pool2d::floor(1, 1, 0),
                (&mut pooled, None),
                Some(&mut kept),
                &mut scratch,
            );
            for kept in [None, Some(kept.as_slice())] {
                let mut dx = vec![0f32; images * c_in * plane];
                let mut du = vec![f32::NAN; g.transformed_len()];
                let input_grad = Some((u.as_slice(), dx.as_mut_slice()));
                g.batch_weight_grad(arguments, kept, (&mut du, false), input_grad, &mut scratch);
                let case = format!("{g:?}, kept input {}", kept.is_some());
                assert_eq!(bits(&du), bits(&du_alone), "{case}: weight gradient");
                for image in 0..images {
                    let grad = &grad[image * c_out * plane..][..c_out * plane];
                    let expected = direct(grad, &flipped, &swapped);
                    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
                    let ours = &dx[image * c_in * plane..][..c_in * plane];
                    for (at, (a, e)) in ours.iter().zip(&expected).enumerate() {
                        let gap = ((*a as f64) - e).abs() / scale;
                        assert!(gap < 1e-5, "{case}, image {image}, value {at}: {a} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn f6_batches_match_a_direct_convolution_and_pool_their_own_outputs() {
        // F(6x6, 3x3) over three images: the plain convolution within 1e-5 of the direct sum in
        // f64 (sides with partial blocks, one tile, several), and with bias, ReLU and pool the
        // values and window offsets of pooling its own plain output image by image, bit for bit.
        let pools = [
            Pool2d::floor(3, 2, 0),
            Pool2d::floor(3, 1, 1),
            Pool2d::ceil(3, 2, 0),
        ];
        let shapes = [
            (3, 5, 7, 6),
            (4, 3, 11, 11),
            (2, 4, 5, 5),
            (3, 2, 12, 13),
            (6, 4, 23, 23),
        ];
        for (c_in, c_out, h, w) in shapes {
            let g = TiledWinograd::new(WinogradF4 { c_in, c_out, h, w }, Tiling::F6);
            let (plane, images) = (h * w, 3);
            let x = values(images * c_in * plane, 43);
            let weight = values(c_out * c_in * 9, 44);
            let u = g.transform_weights(&weight);
            let bias: Vec<f32> = (0..c_out).map(|o| o as f32 * 0.4 - 1.0).collect();
            let mut scratch = Scratch::default();
            let mut conv = vec![f32::NAN; images * c_out * plane];
            g.batch_image((&x, images), &u, &mut conv, &mut scratch);
            for image in 0..images {
                let x = &x[image * c_in * plane..][..c_in * plane];
                let expected = direct(x, &weight, &Winograd { c_in, c_out, h, w });
                let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
                let ours = &conv[image * c_out * plane..][..c_out * plane];
                for (a, e) in ours.iter().zip(&expected) {
                    assert!(((*a as f64) - e).abs() / scale < 1e-5, "{g:?}: {a} vs {e}");
                }
            }
            let activated: Vec<f32> = conv
                .iter()
                .enumerate()
                .map(|(idx, v)| (v + bias[idx / plane % c_out]).max(0.0))
                .collect();
            for pool in pools {
                let pooled = pool.out_side(h) * pool.out_side(w);
                let mut out = vec![f32::NAN; images * c_out * pooled];
                let mut offsets = vec![u8::MAX; images * c_out * pooled];
                let arguments = (x.as_slice(), images, u.as_slice(), bias.as_slice());
                let outputs = (out.as_mut_slice(), Some(offsets.as_mut_slice()));
                g.batch_pooled(arguments, pool, outputs, None, &mut scratch);
                let mut expected = vec![f32::NAN; images * c_out * pooled];
                let mut expected_offsets = vec![u8::MAX; images * c_out * pooled];
                pool_planes(
                    &activated,
                    (h, w),
                    pool,
                    &mut expected,
                    &mut expected_offsets,
                    false,
                );
                assert_eq!(bits(&out), bits(&expected), "{g:?}, {pool:?}: values");
                assert_eq!(offsets, expected_offsets, "{g:?}, {pool:?}: offsets");
            }
        }
    }

    #[test]
    fn each_plane_takes_the_tiling_with_fewer_products() {
        for (side, tiling) in [
            (4, Tiling::F4),
            (5, Tiling::F6),
            (6, Tiling::F6),
            (8, Tiling::F4),
            (11, Tiling::F6),
            (13, Tiling::F4),
            (23, Tiling::F6),
            (27, Tiling::F6),
        ] {
            assert_eq!(Tiling::for_plane(side, side), tiling, "{side}x{side}");
        }
    }
}
