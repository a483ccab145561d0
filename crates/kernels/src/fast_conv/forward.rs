//! The forward: `relu(W * im2col(x) + b)` per image by one GEMM (bands of output rows when the
//! batch is smaller than the thread count), or by Winograd's F(4x4, 3x3) where it applies.

use rayon::prelude::*;

use super::geometry::{im2col_rows, ConvGeometry};
use crate::parallel::{filled, gemm, image_groups, with_spare_buffer, Gemm, Parallel, SharedMut};

/// Forward of one image into `out` (`c_out x out_plane`): `relu(W * im2col(x) + b)`. With
/// `Parallel::None` the calling thread does it all. Otherwise (a batch smaller than the thread
/// count) the output rows are split into bands, one per thread, each with its own im2col and
/// single-threaded GEMM writing its rows of every channel in place, then adding the bias and
/// applying the ReLU to them. (Splitting the output channels instead measured 5-30% slower: every
/// thread then packs the whole im2col matrix.)
pub(crate) fn forward_image(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    out: &mut [f32],
    col: &mut Vec<f32>,
    par: Parallel,
) {
    let (oh, ow, plane) = (g.out_h(), g.out_w(), g.out_plane());
    let threads = match par {
        Parallel::None => 1,
        _ => crate::parallel::thread_count(),
    };
    if threads == 1 || oh < 2 * threads {
        forward_band(x, weight, g, 0..oh, out, col);
        bias_relu(out, bias, plane);
        return;
    }
    let rows_per_band = oh.div_ceil(threads);
    let n_bands = oh.div_ceil(rows_per_band);
    let out = &mut out[..g.c_out * plane];
    let (col_rows, c_out) = (g.col_rows(), g.c_out);
    assert!(
        weight.len() >= c_out * col_rows && bias.len() >= c_out,
        "conv2d: weight or bias too short"
    );
    let shared_out = SharedMut(out.as_mut_ptr());
    (0..n_bands).into_par_iter().for_each(|band| {
        let rows = band * rows_per_band..((band + 1) * rows_per_band).min(oh);
        let (start, len) = (rows.start * ow, rows.len() * ow);
        with_spare_buffer(|col| {
            let (rhs, rhs_rs): (&[f32], usize) = if g.is_pointwise() {
                (&x[start..], plane)
            } else {
                im2col_rows(x, g, rows.clone(), col);
                (col, len)
            };
            assert!(
                rhs.len() >= col_rows.saturating_sub(1) * rhs_rs + len,
                "conv2d: input too short for its geometry"
            );
            // SAFETY: the GEMM writes rows 0..c_out, columns 0..len of a matrix with row stride
            // `plane` starting at `start`: output values `o * plane + start + j`, inside `out`
            // (start + len <= plane) and in this band's columns alone, so no two bands write the
            // same value and nothing reads `out` meanwhile. It reads `weight` (c_out x col_rows)
            // and `rhs` (col_rows x len, row stride rhs_rs) inside their lengths, checked above.
            unsafe {
                gemm::gemm(
                    c_out,
                    len,
                    col_rows,
                    shared_out.get().add(start),
                    1,
                    plane as isize,
                    false,
                    weight.as_ptr(),
                    1,
                    col_rows as isize,
                    rhs.as_ptr(),
                    1,
                    rhs_rs as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallel::None,
                )
            };
            for (channel, b) in bias.iter().enumerate().take(c_out) {
                // SAFETY: this band's columns of one channel, written by this thread alone (as
                // above); the slice lives only in this iteration.
                let values = unsafe {
                    std::slice::from_raw_parts_mut(
                        shared_out.get().add(channel * plane + start),
                        len,
                    )
                };
                for value in values {
                    *value = (*value + b).max(0.0);
                }
            }
        })
    });
}

/// `relu(W * im2col(x) + b)` for the output rows `rows` only, into `out` (`c_out x (rows *
/// out_w)`), on the calling thread.
pub(crate) fn forward_rows(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    col: &mut Vec<f32>,
) {
    let band = rows.len() * g.out_w();
    forward_band(x, weight, g, rows, out, col);
    bias_relu(&mut out[..g.c_out * band], bias, band);
}

/// `W * im2col(x)` for the output rows `rows` into `out` (`c_out x (rows * out_w)`), on the
/// calling thread.
fn forward_band(
    x: &[f32],
    weight: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    col: &mut Vec<f32>,
) {
    let (plane, col_rows) = (g.out_plane(), g.col_rows());
    let band = rows.len() * g.out_w();
    let (rhs, rhs_rs): (&[f32], usize) = if g.is_pointwise() {
        (&x[rows.start * g.out_w()..], plane)
    } else {
        im2col_rows(x, g, rows, col);
        (col, band)
    };
    gemm(
        Gemm {
            m: g.c_out,
            n: band,
            k: col_rows,
            dst: out,
            accumulate: false,
            lhs: weight,
            lhs_rs: col_rows,
            lhs_cs: 1,
            rhs,
            rhs_rs,
            rhs_cs: 1,
        },
        Parallel::None,
    );
}

/// Adds each channel's bias and applies the ReLU, in place.
fn bias_relu(out: &mut [f32], bias: &[f32], plane: usize) {
    for (row, b) in out.chunks_mut(plane).zip(bias) {
        for value in row {
            *value = (*value + b).max(0.0);
        }
    }
}

/// `relu(conv2d(x, weight) + bias)` for a whole batch, by im2col and GEMM: direct sums, the
/// reference that the Winograd paths (the fused conv+pool) are tested against.
pub(crate) fn forward(x: &[f32], weight: &[f32], bias: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let mut out = filled(g.n * g.out_image(), 0f32);
    let (per_group, par) = image_groups(g.n);
    out.par_chunks_mut(per_group * g.out_image())
        .zip(x.par_chunks(per_group * g.in_image()))
        .for_each(|(out, x)| {
            with_spare_buffer(|col| {
                for (out, x) in out.chunks_mut(g.out_image()).zip(x.chunks(g.in_image())) {
                    forward_image(x, weight, bias, g, out, col, par);
                }
            })
        });
    out
}
