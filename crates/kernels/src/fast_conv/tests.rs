//! im2col, col2im and the forward against a direct convolution.

use super::geometry::{col2im_add, im2col};
use super::*;

/// Direct convolution, for checking im2col and col2im on odd geometries.
fn naive(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (oh, ow, k) = (g.out_h(), g.out_w(), g.kernel);
    let mut out = vec![0f32; g.n * g.c_out * oh * ow];
    for n in 0..g.n {
        for o in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = b[o];
                    for c in 0..g.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    sum += x[((n * g.c_in + c) * g.h + iy as usize) * g.w
                                        + ix as usize]
                                        * w[((o * g.c_in + c) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    out[((n * g.c_out + o) * oh + oy) * ow + ox] = sum.max(0.0);
                }
            }
        }
    }
    out
}

#[test]
fn forward_matches_a_direct_convolution_for_strides_and_paddings() {
    for (kernel, stride, padding, h, w) in [
        (3, 1, 1, 5, 6),
        (7, 2, 3, 9, 8),
        (1, 1, 0, 4, 4),
        (3, 2, 0, 7, 7),
        (2, 3, 1, 6, 5),
    ] {
        let g = ConvGeometry {
            n: 3,
            c_in: 2,
            h,
            w,
            c_out: 4,
            kernel,
            stride,
            padding,
        };
        let x: Vec<f32> = (0..g.n * g.in_image())
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let wt: Vec<f32> = (0..g.c_out * g.col_rows())
            .map(|i| ((i * 11 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b = [0.1, -0.2, 0.3, 0.0];
        let fast = forward(&x, &wt, &b, &g);
        let slow = naive(&x, &wt, &b, &g);
        for (a, e) in fast.iter().zip(&slow) {
            assert!(
                (a - e).abs() < 1e-4,
                "k{kernel} s{stride} p{padding}: {a} vs {e}"
            );
        }
    }
}

#[test]
fn col2im_is_the_adjoint_of_im2col() {
    // <im2col(x), c> == <x, col2im(c)> for any x and c.
    let g = ConvGeometry {
        n: 1,
        c_in: 2,
        h: 7,
        w: 6,
        c_out: 1,
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let x: Vec<f32> = (0..g.in_image()).map(|i| (i % 5) as f32 - 2.0).collect();
    let mut col = Vec::new();
    im2col(&x, &g, &mut col);
    let c: Vec<f32> = (0..col.len()).map(|i| (i % 7) as f32 - 3.0).collect();
    let mut back = vec![0f32; x.len()];
    col2im_add(&c, &g, &mut back);
    let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
    let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
    assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
}
