//! Winograd's F(6x6, 3x3) for the batched path (`winograd_batch.rs`) on the planes where it
//! needs fewer multiplications than F(4x4, 3x3): each 6x6 block of outputs comes from an 8x8
//! tile, 64 products per input and output channel pair for 36 outputs (F(4x4, 3x3): 36 for 16).
//! Per output that is 1.78 against 2.25, and the planes of small faces fit six-wide blocks
//! better: a 5x5 plane (conv3b at 48 px) is one tile instead of four (64 products against 144),
//! 11x11 and 23x23 (conv2b at 48 and 96 px) four and sixteen against nine and thirty-six (21%
//! fewer). [`Tiling::for_plane`](super::winograd::Tiling::for_plane) picks per plane.
//!
//! The interpolation points are 0, 1, -1, 2, -2, 1/2, -1/2 and infinity (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015; the matrices as NNPACK has them). The
//! transforms multiply by up to 32 and 21/4, so the result rounds further from the direct sum
//! than F(4x4, 3x3)'s: about 7e-6 of the output's scale at most against 4e-6 for 96 input
//! channels (measured in numpy, f32 transforms, f64 weight transform), inside the 1e-5 the
//! fast kernels are held to.
//!
//! The layout follows `winograd_f4`: element `(i, j)` of every tile in row `8i + j` of a `64 x
//! columns` block, each transform a loop over all the columns, which the compiler vectorises.

/// Positions in a transformed 8x8 tile: one GEMM each.
pub(super) const POSITIONS: usize = 64;
/// Side of the output block of one tile.
pub(super) const BLOCK: usize = 6;
/// Side of the input tile.
pub(super) const TILE: usize = 8;

/// 2/9, 1/90, 1/45, 2/45, 8/45, 16/45 and 32/45 in f64: the transforms multiply by them rather
/// than divide (a division costs about ten multiplications; see `winograd_f4`'s constants).
const TWO_NINTHS: f64 = 2.0 / 9.0;
const NINETIETH: f64 = 1.0 / 90.0;
const FORTY_FIFTH: f64 = 1.0 / 45.0;

/// `G` applied to one kernel row or column `g[0..3]`, in f64: the eight values.
#[inline(always)]
pub(super) fn weight_combination(g: [f64; 3]) -> [f64; TILE] {
    let (outer, middle) = (g[0] + g[2], g[1]);
    let (small_outer, small_middle) = (g[0] * NINETIETH + g[2] * (2.0 / 45.0), g[1] * FORTY_FIFTH);
    let (large_outer, large_middle) = (
        g[0] * (32.0 / 45.0) + g[2] * (8.0 / 45.0),
        g[1] * (16.0 / 45.0),
    );
    [
        g[0],
        -(outer + middle) * TWO_NINTHS,
        -(outer - middle) * TWO_NINTHS,
        small_outer + small_middle,
        small_outer - small_middle,
        large_outer + large_middle,
        large_outer - large_middle,
        g[2],
    ]
}

/// `G^T` applied to eight values `u[0..8]`, in f64: the three values of a kernel row or
/// column's gradient (the adjoint of [`weight_combination`]).
#[inline(always)]
pub(super) fn weight_grad_combination(u: [f64; TILE]) -> [f64; 3] {
    let (s12, d12) = (u[1] + u[2], u[1] - u[2]);
    let (s34, d34) = (u[3] + u[4], u[3] - u[4]);
    let (s56, d56) = (u[5] + u[6], u[5] - u[6]);
    [
        u[0] - s12 * TWO_NINTHS + s34 * NINETIETH + s56 * (32.0 / 45.0),
        -d12 * TWO_NINTHS + d34 * FORTY_FIFTH + d56 * (16.0 / 45.0),
        -s12 * TWO_NINTHS + s34 * (2.0 / 45.0) + s56 * (8.0 / 45.0) + u[7],
    ]
}

/// Eight rows of `len` values of `matrix`: rows `first`, `first + step`, ...
#[inline(always)]
fn rows_of(matrix: &mut [f32], len: usize, first: usize, step: usize) -> [&mut [f32]; TILE] {
    let mut rows = matrix.chunks_exact_mut(len).skip(first).step_by(step);
    [(); TILE].map(|_| rows.next().expect("eight rows"))
}

/// `V = B^T d B` in place for each of the `columns` tiles of `v` (`64 x columns`, element
/// `(i, j)` of every tile in row `8i + j`): rows first (`B^T d`), then columns (`(.) B`).
#[inline(always)]
pub(super) fn input_transform_tiles(v: &mut [f32], columns: usize) {
    for j in 0..TILE {
        input_transform_8(rows_of(v, columns, j, TILE));
    }
    for i in 0..TILE {
        input_transform_8(rows_of(v, columns, i * TILE, 1));
    }
}

/// `dD = B dV B^T` in place for each of the `columns` tiles of `v` (`64 x columns`, element
/// `(i, j)` of every tile in row `8i + j`): the adjoint of [`input_transform_tiles`], which takes
/// the input gradient from the transformed one ([`input_grad_transform_8`] along the columns,
/// then along the rows).
#[inline(always)]
pub(super) fn input_grad_transform_tiles(v: &mut [f32], columns: usize) {
    for i in 0..TILE {
        input_grad_transform_8(rows_of(v, columns, i * TILE, 1));
    }
    for j in 0..TILE {
        input_grad_transform_8(rows_of(v, columns, j, TILE));
    }
}

/// `dM = A dY A^T` in place for each of the `columns` 6x6 blocks of `m` (`64 x columns`,
/// element `(r, c)` of every block in row `8r + c`): each block row's six values expanded to
/// eight, then each of the eight columns.
#[inline(always)]
pub(super) fn grad_transform_tiles(m: &mut [f32], columns: usize) {
    for r in 0..BLOCK {
        grad_transform_8(rows_of(m, columns, r * TILE, 1));
    }
    for j in 0..TILE {
        grad_transform_8(rows_of(m, columns, j, TILE));
    }
}

/// `Y = A^T M A` of output channel `channel` for each of the `columns` tiles of `products`
/// (`64 x c_out x columns`) into `buffer` (`48 x columns`: output `(r, c)` of every tile in row
/// `8r + c`; rows `8r + 6` and `8r + 7` are left over), then with `bias` `relu(Y + bias)` over
/// the whole buffer (the left-over rows are never read).
#[inline(always)]
pub(super) fn output_transform_tiles(
    products: &[f32],
    (c_out, channel): (usize, usize),
    columns: usize,
    bias: Option<f32>,
    buffer: &mut [f32],
) {
    // A^T m: for each column j, rows i = 0..7 of M become rows r = 0..5 (kept as 8r + j).
    for j in 0..TILE {
        let m: [&[f32]; TILE] = std::array::from_fn(|i| {
            &products[((i * TILE + j) * c_out + channel) * columns..][..columns]
        });
        let mut dst = buffer.chunks_exact_mut(columns).skip(j).step_by(TILE);
        let dst = [(); BLOCK].map(|_| dst.next().expect("six rows"));
        output_transform_8(m, dst);
    }
    // (A^T m) A, in place: row r's eight columns become its six outputs (8r .. 8r + 5).
    for r in 0..BLOCK {
        output_transform_8_in_place(rows_of(buffer, columns, r * TILE, 1));
    }
    if let Some(b) = bias {
        for value in buffer.iter_mut() {
            *value = (*value + b).max(0.0);
        }
    }
}

/// `B^T` applied along eight equally long rows `d[0..8]` in place, element by element, with
/// the shared sums first (NNPACK's factorisation): each output costs about four operations.
#[inline(always)]
fn input_transform_8(d: [&mut [f32]; TILE]) {
    let n = d[0].len();
    let [d0, d1, d2, d3, d4, d5, d6, d7] = d.map(|s| &mut s[..n]);
    for k in 0..n {
        let (a0, a1, a2, a3) = (d0[k], d1[k], d2[k], d3[k]);
        let (a4, a5, a6, a7) = (d4[k], d5[k], d6[k], d7[k]);
        d0[k] = (a0 - a6) + 5.25 * (a4 - a2);
        d7[k] = (a7 - a1) + 5.25 * (a3 - a5);
        let (p, q) = (a2 + a6 - 4.25 * a4, a1 + a5 - 4.25 * a3);
        d1[k] = p + q;
        d2[k] = p - q;
        let (p, q) = (a6 + 0.25 * a2 - 1.25 * a4, 0.5 * a1 - 2.5 * a3 + 2.0 * a5);
        d3[k] = p + q;
        d4[k] = p - q;
        let (p, q) = (a6 + 4.0 * a2 - 5.0 * a4, 2.0 * a1 - 2.5 * a3 + 0.5 * a5);
        d5[k] = p + q;
        d6[k] = p - q;
    }
}

/// `B` applied along eight equally long rows `v[0..8]` in place, element by element: the
/// adjoint of [`input_transform_8`] (its matrix transposed), from the sums and differences of
/// the pairs of rows it weighs alike.
#[inline(always)]
fn input_grad_transform_8(v: [&mut [f32]; TILE]) {
    let n = v[0].len();
    let [v0, v1, v2, v3, v4, v5, v6, v7] = v.map(|s| &mut s[..n]);
    for k in 0..n {
        let (a0, a7) = (v0[k], v7[k]);
        let (s12, d12) = (v1[k] + v2[k], v1[k] - v2[k]);
        let (s34, d34) = (v3[k] + v4[k], v3[k] - v4[k]);
        let (s56, d56) = (v5[k] + v6[k], v5[k] - v6[k]);
        v1[k] = d12 + 0.5 * d34 + 2.0 * d56 - a7;
        v2[k] = s12 + 0.25 * s34 + 4.0 * s56 - 5.25 * a0;
        v3[k] = 5.25 * a7 - 4.25 * d12 - 2.5 * (d34 + d56);
        v4[k] = 5.25 * a0 - 4.25 * s12 - 1.25 * s34 - 5.0 * s56;
        v5[k] = d12 + 2.0 * d34 + 0.5 * d56 - 5.25 * a7;
        v6[k] = s12 + s34 + s56 - a0;
    }
}

/// `A^T` applied along eight equally long rows `m[0..8]`, into six: `o = A^T m`.
#[inline(always)]
fn output_transform_8(m: [&[f32]; TILE], o: [&mut [f32]; BLOCK]) {
    let n = o[0].len();
    let [m0, m1, m2, m3, m4, m5, m6, m7] = m.map(|s| &s[..n]);
    let [o0, o1, o2, o3, o4, o5] = o.map(|s| &mut s[..n]);
    for k in 0..n {
        let (s12, d12) = (m1[k] + m2[k], m1[k] - m2[k]);
        let (s34, d34) = (m3[k] + m4[k], m3[k] - m4[k]);
        let (s56, d56) = (m5[k] + m6[k], m5[k] - m6[k]);
        let (m0, m7) = (m0[k], m7[k]);
        o0[k] = m0 + s12 + s34 + s56;
        o1[k] = d12 + 2.0 * d34 + 0.5 * d56;
        o2[k] = s12 + 4.0 * s34 + 0.25 * s56;
        o3[k] = d12 + 8.0 * d34 + 0.125 * d56;
        o4[k] = s12 + 16.0 * s34 + 0.0625 * s56;
        o5[k] = d12 + 32.0 * d34 + 0.03125 * d56 + m7;
    }
}

/// [`output_transform_8`] in place: the six outputs replace the first six rows.
#[inline(always)]
fn output_transform_8_in_place(m: [&mut [f32]; TILE]) {
    let n = m[0].len();
    let [m0, m1, m2, m3, m4, m5, m6, m7] = m.map(|s| &mut s[..n]);
    for k in 0..n {
        let (s12, d12) = (m1[k] + m2[k], m1[k] - m2[k]);
        let (s34, d34) = (m3[k] + m4[k], m3[k] - m4[k]);
        let (s56, d56) = (m5[k] + m6[k], m5[k] - m6[k]);
        let m7 = m7[k];
        m0[k] += s12 + s34 + s56;
        m1[k] = d12 + 2.0 * d34 + 0.5 * d56;
        m2[k] = s12 + 4.0 * s34 + 0.25 * s56;
        m3[k] = d12 + 8.0 * d34 + 0.125 * d56;
        m4[k] = s12 + 16.0 * s34 + 0.0625 * s56;
        m5[k] = d12 + 32.0 * d34 + 0.03125 * d56 + m7;
    }
}

/// `A` applied along eight equally long rows in place: the first six hold `y[0..6]`, and all
/// eight become `m = A y`, the adjoint of [`output_transform_8`].
#[inline(always)]
fn grad_transform_8(m: [&mut [f32]; TILE]) {
    let n = m[0].len();
    let [m0, m1, m2, m3, m4, m5, m6, m7] = m.map(|s| &mut s[..n]);
    for k in 0..n {
        let (y0, y1, y2, y3, y4, y5) = (m0[k], m1[k], m2[k], m3[k], m4[k], m5[k]);
        let (even, odd) = (y0 + y2 + y4, y1 + y3 + y5);
        m1[k] = even + odd;
        m2[k] = even - odd;
        let (even, odd) = (y0 + 4.0 * y2 + 16.0 * y4, 2.0 * y1 + 8.0 * y3 + 32.0 * y5);
        m3[k] = even + odd;
        m4[k] = even - odd;
        let (even, odd) = (
            y0 + 0.25 * y2 + 0.0625 * y4,
            0.5 * y1 + 0.125 * y3 + 0.03125 * y5,
        );
        m5[k] = even + odd;
        m6[k] = even - odd;
        m7[k] = y5;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `A^T [(G g) . (B^T d)]` in f64 from the f32 transforms' arithmetic: one tile row.
    fn one_dimensional(d: [f32; TILE], g: [f64; 3]) -> [f64; BLOCK] {
        let mut rows: Vec<Vec<f32>> = d.iter().map(|&v| vec![v]).collect();
        let mut refs = rows.iter_mut();
        input_transform_8([(); TILE].map(|_| refs.next().expect("row").as_mut_slice()));
        let u = weight_combination(g);
        let products: Vec<Vec<f32>> = (0..TILE)
            .map(|i| vec![(rows[i][0] as f64 * u[i]) as f32])
            .collect();
        let mut out: Vec<Vec<f32>> = vec![vec![0.0]; BLOCK];
        let mut outs = out.iter_mut();
        output_transform_8(
            std::array::from_fn(|i| products[i].as_slice()),
            [(); BLOCK].map(|_| outs.next().expect("row").as_mut_slice()),
        );
        std::array::from_fn(|r| out[r][0] as f64)
    }

    #[test]
    fn the_transforms_compute_a_correlation_of_six_outputs() {
        let d: [f32; TILE] = [0.5, -1.25, 2.0, 0.75, -0.5, 1.5, -2.0, 0.25];
        let g = [0.3, -0.7, 1.1];
        let y = one_dimensional(d, g);
        for (r, value) in y.iter().enumerate() {
            let expected: f64 = (0..3).map(|k| d[r + k] as f64 * g[k]).sum();
            assert!(
                (value - expected).abs() < 1e-5,
                "output {r}: {value} vs {expected}"
            );
        }
    }

    #[test]
    fn the_gradient_transforms_are_the_adjoints() {
        // <A^T m, y> = <m, A y> and <G g, u> = <g, G^T u>, for arbitrary vectors.
        let m: [f32; TILE] = [0.3, -1.0, 0.7, 2.0, -0.4, 1.3, -0.9, 0.6];
        let y: [f32; BLOCK] = [1.2, -0.3, 0.8, -1.1, 0.5, 0.9];
        let mut out = vec![vec![0f32]; BLOCK];
        let inputs: Vec<Vec<f32>> = m.iter().map(|&v| vec![v]).collect();
        let mut outs = out.iter_mut();
        output_transform_8(
            std::array::from_fn(|i| inputs[i].as_slice()),
            [(); BLOCK].map(|_| outs.next().expect("row").as_mut_slice()),
        );
        let left: f64 = (0..BLOCK).map(|r| out[r][0] as f64 * y[r] as f64).sum();
        let mut expanded: Vec<Vec<f32>> = (0..TILE)
            .map(|i| vec![if i < BLOCK { y[i] } else { 0.0 }])
            .collect();
        let mut rows = expanded.iter_mut();
        grad_transform_8([(); TILE].map(|_| rows.next().expect("row").as_mut_slice()));
        let right: f64 = (0..TILE).map(|i| m[i] as f64 * expanded[i][0] as f64).sum();
        assert!((left - right).abs() < 1e-4, "{left} vs {right}");

        let (g, u) = (
            [0.4, -1.2, 0.9],
            [0.5, -0.2, 1.1, 0.3, -0.8, 0.6, 1.4, -0.7],
        );
        let left: f64 = weight_combination(g)
            .iter()
            .zip(u)
            .map(|(a, b)| a * b)
            .sum();
        let right: f64 = weight_grad_combination(u)
            .iter()
            .zip(g)
            .map(|(a, b)| a * b)
            .sum();
        assert!((left - right).abs() < 1e-12, "{left} vs {right}");
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
