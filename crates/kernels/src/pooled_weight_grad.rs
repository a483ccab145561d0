//! The weight and bias gradients of `max_pool2d(relu(conv2d(x, w) + b))` straight from the pool's
//! winners, where the input needs no gradient: DeXpression's conv1, whose input is the image.
//!
//! The general backward ([`super::fast_conv::backward_from`]) rebuilds each image's full-size
//! output gradient (zeros, then the pooled gradients scattered onto their windows' maxima), forms
//! the im2col matrix again and multiplies the two. With conv1's geometry (7x7 at stride 2, then a
//! 3x3 pool at stride 2) about three quarters of that gradient are zeros the pool never picked.
//! Here each pooled value that passed the ReLU adds its gradient times its maximum's input patch
//! onto the weight gradient: at conv1's geometry a quarter of the multiplications, and neither the
//! output gradient nor the im2col matrix is ever written.
//!
//! The sums run over fixed groups of images, each group's windows in order and the groups added in
//! batch order, so the result is the same on any number of threads.

use rayon::prelude::*;

use super::fast_conv_pool::ConvPoolGeometry;
use super::max_pool::NO_OFFSET;
use super::parallel::{grown, thread_count, with_spare_buffer};

/// Weight values a patch row is padded to: one vector of eight lanes per step of the inner loop.
const LANES: usize = 8;

/// How many partial sums a batch is split into (at most; one image each below that): enough
/// groups for 2, 4 or 8 threads to share evenly.
const PARTIAL_SUMS: usize = 8;

/// Whether the gradients are cheaper from the pool's winners than by the general backward: the
/// input needs no gradient, and the winners' patches (a row of up to eight lanes per kernel row)
/// are at most half the work of the dense weight gradient over every output pixel.
pub(crate) fn applies(geometry: &ConvPoolGeometry, with_input_grad: bool) -> bool {
    let g = &geometry.conv;
    let per_window = g.kernel * g.kernel.next_multiple_of(LANES);
    let dense = g.out_plane() * g.kernel * g.kernel;
    !with_input_grad && g.kernel > 1 && 2 * geometry.pooled_plane() * per_window <= dense
}

/// The pooled side of the forward: the window offsets it recorded, its output (the ReLU passed a
/// window's gradient where that is positive) and the gradient at that output, all
/// `n x c_out x pooled_h x pooled_w`.
pub(crate) struct PoolWinners<'a> {
    pub offsets: &'a [u8],
    pub pooled: &'a [f32],
    pub grad: &'a [f32],
}

/// The weight and bias gradients (`c_out x c_in x k x k`, then `c_out`) of the fused op over the
/// batch `x`, from the pool's winners.
pub(crate) fn parameter_grads(
    x: &[f32],
    winners: &PoolWinners<'_>,
    geometry: &ConvPoolGeometry,
) -> Vec<f32> {
    let g = &geometry.conv;
    let patches = Patches::of(geometry);
    let channel_len = g.c_in * g.kernel * patches.row_len;
    let per_partial = g.n.div_ceil(PARTIAL_SUMS).max(1);
    // Fewer groups than threads: each image's channels are shared out instead.
    let parallel_inside = g.n.div_ceil(per_partial) < thread_count();
    let (in_image, pooled_image) = (g.in_image(), geometry.pooled_image());
    let partial = |(group_idx, x): (usize, &[f32])| {
        let mut sums = vec![0f32; g.c_out * (channel_len + 1)];
        let (dw, db) = sums.split_at_mut(g.c_out * channel_len);
        let mut scratch = Vec::new();
        with_spare_buffer(|buffer| {
            for (image_idx, x) in x.chunks(in_image).enumerate() {
                let image = patches.padded(x, buffer);
                let start = (group_idx * per_partial + image_idx) * pooled_image;
                let plane = geometry.pooled_plane();
                let channel =
                    |scratch: &mut Vec<(usize, f32)>,
                     (c, (dw, db)): (usize, (&mut [f32], &mut f32))| {
                        let winners = PoolWinners {
                            offsets: &winners.offsets[start + c * plane..][..plane],
                            pooled: &winners.pooled[start + c * plane..][..plane],
                            grad: &winners.grad[start + c * plane..][..plane],
                        };
                        patches.add_channel(image, &winners, (dw, db), scratch)
                    };
                let channels = dw.chunks_mut(channel_len).zip(db.iter_mut());
                if parallel_inside {
                    channels
                        .enumerate()
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .for_each_init(Vec::new, channel);
                } else {
                    channels
                        .enumerate()
                        .for_each(|channel_grads| channel(&mut scratch, channel_grads));
                }
            }
        });
        sums
    };
    let partials: Vec<Vec<f32>> = x
        .par_chunks(per_partial * in_image)
        .enumerate()
        .map(partial)
        .collect();
    let mut partials = partials.into_iter();
    // No images (an empty batch): zero gradients.
    let mut total = partials
        .next()
        .unwrap_or_else(|| vec![0f32; g.c_out * (channel_len + 1)]);
    for partial in partials {
        for (t, p) in total.iter_mut().zip(&partial) {
            *t += p;
        }
    }
    // Back from rows padded to whole vectors to the weight's `k x k` kernels.
    let rows = g.c_out * g.c_in * g.kernel;
    let mut params = Vec::with_capacity(rows * g.kernel + g.c_out);
    for row in total[..rows * patches.row_len].chunks_exact(patches.row_len) {
        params.extend_from_slice(&row[..g.kernel]);
    }
    params.extend_from_slice(&total[rows * patches.row_len..]);
    params
}

/// Where the pool's winners read their patches: each image copied with the convolution's zero
/// padding around it, its rows long enough to read a whole padded patch row (`row_len` values,
/// whole vectors) from any patch, and the steps from a pooled position and its winner's offset
/// to the patch's corner.
struct Patches {
    /// The image's channels and sides, and the convolution's padding.
    c_in: usize,
    in_h: usize,
    in_w: usize,
    padding: usize,
    /// The padded image's sides.
    h: usize,
    w: usize,
    /// A weight row's length in the sums: the kernel side rounded up to whole vectors.
    row_len: usize,
    pooled_w: usize,
    /// Patch corners one pooled row and one pooled column apart.
    step_y: usize,
    step_x: usize,
    /// The corner of the pooled position (0, 0)'s window, which may lie before the image
    /// (wrapped) where the pool has padding.
    first_corner: usize,
    /// From a window's corner to its winner's patch corner, by the winner's offset.
    window_steps: Vec<usize>,
    /// Each weight row's (input channel, kernel row) start in the padded image.
    row_starts: Vec<usize>,
    /// The patch corner of the convolution's last output pixel: no winner's lies past it.
    last_corner: usize,
}

impl Patches {
    fn of(geometry: &ConvPoolGeometry) -> Self {
        let (g, pool) = (&geometry.conv, geometry.pool);
        let row_len = g.kernel.next_multiple_of(LANES);
        let (h, w) = (
            g.h + 2 * g.padding,
            g.w + 2 * g.padding + (row_len - g.kernel),
        );
        let (stride_y, stride_x) = (g.stride * w, g.stride);
        Self {
            c_in: g.c_in,
            in_h: g.h,
            in_w: g.w,
            padding: g.padding,
            h,
            w,
            row_len,
            pooled_w: geometry.pooled_w(),
            step_y: pool.stride * stride_y,
            step_x: pool.stride * stride_x,
            first_corner: (pool.padding * (stride_y + stride_x)).wrapping_neg(),
            window_steps: (0..pool.kernel * pool.kernel)
                .map(|offset| (offset / pool.kernel) * stride_y + (offset % pool.kernel) * stride_x)
                .collect(),
            row_starts: (0..g.c_in * g.kernel)
                .map(|row| (row / g.kernel) * h * w + (row % g.kernel) * w)
                .collect(),
            last_corner: g.out_h().saturating_sub(1) * stride_y
                + g.out_w().saturating_sub(1) * stride_x,
        }
    }

    /// Copies image `x` (`c_in x in_h x in_w`) into `buffer` with its padding. The buffer is a
    /// thread's spare one ([`with_spare_buffer`]) and keeps its length: cut to this image's, it
    /// made the next kernel to borrow it zero it again up to its own size (the 14 MiB output
    /// gradient of conv2b's backward at 96 px, on one thread, every training step).
    fn padded<'b>(&self, x: &[f32], buffer: &'b mut Vec<f32>) -> &'b [f32] {
        let buffer = grown(buffer, self.c_in * self.h * self.w);
        buffer.fill(0.0);
        for (padded, x) in buffer
            .chunks_exact_mut(self.h * self.w)
            .zip(x.chunks_exact(self.in_h * self.in_w))
        {
            for (y, row) in x.chunks_exact(self.in_w).enumerate() {
                let start = (y + self.padding) * self.w + self.padding;
                padded[start..][..self.in_w].copy_from_slice(row);
            }
        }
        buffer
    }

    /// Adds one channel's windows of one padded image onto its weight rows `dw` (`c_in x k`
    /// rows of `row_len`) and its bias gradient `db`; `scratch` holds the winners' patches.
    fn add_channel(
        &self,
        image: &[f32],
        winners: &PoolWinners<'_>,
        (dw, db): (&mut [f32], &mut f32),
        scratch: &mut Vec<(usize, f32)>,
    ) {
        // Each window that passes a gradient: its winner's patch corner and the gradient. A
        // window's corner, pool padding included, may lie before the image: the index wraps
        // and comes back into range once the winner's step is added (as
        // `max_pool::scatter_plane` does). Every window is written and the count moves past it
        // only where it passes: a branch on the ReLU would be mispredicted every other window.
        if scratch.len() < winners.offsets.len() {
            scratch.resize(winners.offsets.len(), (0, 0.0));
        }
        let (mut count, mut bias) = (0, 0f32);
        let last_step = self.window_steps.len() - 1;
        let rows = winners
            .offsets
            .chunks_exact(self.pooled_w)
            .zip(winners.pooled.chunks_exact(self.pooled_w))
            .zip(winners.grad.chunks_exact(self.pooled_w));
        for (oy, ((offsets, pooled), grad)) in rows.enumerate() {
            let row_corner = self.first_corner.wrapping_add(oy * self.step_y);
            for (ox, ((&offset, &value), &gradient)) in
                offsets.iter().zip(pooled).zip(grad).enumerate()
            {
                // The ReLU passes no gradient where the window's maximum is not positive.
                let passes = offset != NO_OFFSET && value > 0.0;
                let step = self.window_steps[(offset as usize).min(last_step)];
                let corner = row_corner.wrapping_add(ox * self.step_x).wrapping_add(step);
                // A winner is an output pixel, whose corner is at most the last one's: the
                // bound keeps the reads below inside the image whatever the offsets say.
                scratch[count] = (corner.min(self.last_corner), gradient);
                count += passes as usize;
                bias += if passes { gradient } else { 0.0 };
            }
        }
        let patches = &scratch[..count];
        *db += bias;
        if patches.is_empty() {
            return;
        }
        // The weight rows in blocks of up to ROWS_AT_ONCE, each block's sums held in registers
        // over all of the channel's windows.
        let mut sums = [[0f32; LANES]; ROWS_AT_ONCE];
        for (block, first) in self
            .row_starts
            .chunks(ROWS_AT_ONCE)
            .zip((0..).step_by(ROWS_AT_ONCE))
        {
            for column in (0..self.row_len).step_by(LANES) {
                let sums = &mut sums[..block.len()];
                patch_sums(image, (patches, self.last_corner), (block, column), sums);
                for (row, sum) in (first..).zip(&*sums) {
                    let dw = &mut dw[row * self.row_len + column..][..LANES];
                    for (d, s) in dw.iter_mut().zip(sum) {
                        *d += s;
                    }
                }
            }
        }
    }
}

/// Weight rows whose sums [`patch_sums`] keeps in registers at once (with the gradient and a
/// loaded row, within AVX2's sixteen).
const ROWS_AT_ONCE: usize = 8;

/// For each row start `s` in `starts` (at most [`ROWS_AT_ONCE`]), `sum(gradient * image[corner +
/// s + column..][..LANES])` over `patches` (no corner past `last_corner`) in order, into
/// `sums` (one per start). In AVX2 registers where the CPU (and the crate's ISA limit) allows,
/// lane by lane otherwise: the same multiplies and adds in the same order (no fused
/// multiply-add), so the same bits.
fn patch_sums(
    image: &[f32],
    (patches, last_corner): (&[(usize, f32)], usize),
    (starts, column): (&[usize], usize),
    sums: &mut [[f32; LANES]],
) {
    let last_start = starts.iter().copied().max().unwrap_or(0) + column;
    assert!(
        last_corner + last_start + LANES <= image.len(),
        "conv2d_relu_max_pool2d backward: a window's patch outside its padded image"
    );
    macro_rules! by_rows {
        ($($rows:literal)*) => {
            match starts.len() {
                $($rows => {
                    let starts: [usize; $rows] = std::array::from_fn(|row| starts[row] + column);
                    // SAFETY: every patch row read lies inside `image` (checked above: no
                    // patch's corner is past `last_corner`).
                    sums.copy_from_slice(&unsafe { sums_for(image, patches, starts) })
                })*
                rows => unreachable!("{rows} rows at once"),
            }
        };
    }
    by_rows!(1 2 3 4 5 6 7 8)
}

/// [`patch_sums`] for `ROWS` rows, on the widest path the CPU allows.
///
/// # Safety
/// `corner + start + LANES <= image.len()` for every patch's corner and every start.
unsafe fn sums_for<const ROWS: usize>(
    image: &[f32],
    patches: &[(usize, f32)],
    starts: [usize; ROWS],
) -> [[f32; LANES]; ROWS] {
    #[cfg(target_arch = "x86_64")]
    if super::isa::isa() >= super::isa::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (`isa()` reports no level the CPU lacks); the reads are the
        // caller's to keep in bounds.
        return unsafe { x86::sums_avx2(image, patches, starts) };
    }
    let mut sums = [[0f32; LANES]; ROWS];
    for &(corner, gradient) in patches {
        for (sum, start) in sums.iter_mut().zip(starts) {
            for (s, v) in sum.iter_mut().zip(&image[corner + start..][..LANES]) {
                *s += gradient * v;
            }
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// [`super::sums_for`] in AVX2 registers.
    ///
    /// # Safety
    /// The CPU must have AVX2, and `corner + start + LANES <= image.len()` for every patch's
    /// corner and every start.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sums_avx2<const ROWS: usize>(
        image: &[f32],
        patches: &[(usize, f32)],
        starts: [usize; ROWS],
    ) -> [[f32; LANES]; ROWS] {
        let mut sums = [_mm256_setzero_ps(); ROWS];
        for &(corner, gradient) in patches {
            let gradient = _mm256_set1_ps(gradient);
            // SAFETY: `corner + start + LANES` values lie inside `image` (the caller's promise).
            let base = unsafe { image.as_ptr().add(corner) };
            for (sum, start) in sums.iter_mut().zip(starts) {
                let values = unsafe { _mm256_loadu_ps(base.add(start)) };
                *sum = _mm256_add_ps(*sum, _mm256_mul_ps(gradient, values));
            }
        }
        sums.map(|sum| {
            let mut out = [0f32; LANES];
            // SAFETY: `out` holds eight floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{parameter_grads, PoolWinners};
    use crate::fast_conv::ConvGeometry;
    use crate::fast_conv_pool::ConvPoolGeometry;
    use crate::max_pool::Pool2d;

    #[test]
    fn an_empty_batch_has_zero_gradients() {
        let geometry = ConvPoolGeometry {
            conv: ConvGeometry::new(&[0, 2, 17, 17], &[3, 2, 7, 7], 2, 3).unwrap(),
            pool: Pool2d::floor(3, 2, 0),
        };
        let winners = PoolWinners {
            offsets: &[],
            pooled: &[],
            grad: &[],
        };
        let params = parameter_grads(&[], &winners, &geometry);
        assert_eq!(params, vec![0.0; 3 * 2 * 7 * 7 + 3]);
    }
}
