//! The pool's forward, both backward paths and the vectorised windows.

use super::*;
use candle_core::{Device, Var};

#[test]
fn forward_matches_hand_computed_values_with_padding() {
    let xs = Tensor::arange(0f32, 16., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 4, 4))
        .unwrap();
    let pool = Pool2d::floor(3, 1, 1);
    let ys = max_pool2d(&xs, pool).unwrap();
    let expected = [
        5., 6., 7., 7., 9., 10., 11., 11., 13., 14., 15., 15., 13., 14., 15., 15.,
    ];
    assert_eq!(
        ys.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        expected
    );
}

#[test]
fn output_sides_round_as_pytorch_and_caffe_do() {
    // (side, kernel, stride, padding, floor, ceil): PyTorch's `MaxPool2d` with and without
    // `ceil_mode` (the paper's 112 -> 56 -> 28 -> 14 is Caffe's rounding up), and a last window
    // that would start in the right padding, which ceil mode drops as PyTorch does.
    for (side, kernel, stride, padding, floor, ceil) in [
        (112, 3, 2, 0, 55, 56),
        (56, 3, 2, 0, 27, 28),
        (28, 3, 2, 0, 13, 14),
        (55, 3, 2, 0, 27, 27),
        (24, 3, 2, 0, 11, 12),
        (7, 3, 1, 1, 7, 7),
        (5, 2, 3, 1, 2, 2),
        (6, 2, 3, 1, 3, 3),
        (7, 4, 3, 2, 3, 3),
        (8, 3, 2, 1, 4, 5),
    ] {
        assert_eq!(
            Pool2d::floor(kernel, stride, padding).out_side(side),
            floor,
            "floor {side} k{kernel} s{stride} p{padding}"
        );
        assert_eq!(
            Pool2d::ceil(kernel, stride, padding).out_side(side),
            ceil,
            "ceil {side} k{kernel} s{stride} p{padding}"
        );
    }
    // A band of rows shorter than the window (the fused kernel's last band): one window.
    assert_eq!(Pool2d::ceil(3, 2, 0).out_side(1), 1);
    assert_eq!(Pool2d::ceil(3, 2, 0).out_side(2), 1);
}

#[test]
fn ceil_mode_pools_the_partial_last_windows() {
    // 4x4 input 0..16, 3x3 windows, stride 2: floor mode keeps the one whole window, ceil mode
    // adds the windows that start at row or column 2 and run past the edge.
    let xs = Var::from_tensor(
        &Tensor::arange(0f32, 16., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap(),
    )
    .unwrap();
    let floor = max_pool2d(xs.as_tensor(), Pool2d::floor(3, 2, 0)).unwrap();
    assert_eq!(
        floor.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [10.]
    );
    let ceil = max_pool2d(xs.as_tensor(), Pool2d::ceil(3, 2, 0)).unwrap();
    assert_eq!(ceil.dims(), &[1, 1, 2, 2]);
    assert_eq!(
        ceil.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [10., 11., 14., 15.]
    );
    // Each window's gradient goes to its maximum, inside the image.
    let grads = ceil.sum_all().unwrap().backward().unwrap();
    let grad = input_grad(&grads, &xs);
    let mut expected = vec![0f32; 16];
    for idx in [10, 11, 14, 15] {
        expected[idx] = 1.0;
    }
    assert_eq!(grad, expected);
}

#[test]
fn backward_sends_gradient_to_the_first_tied_maximum() {
    // All equal: every window's gradient goes to its top-left element.
    let xs = Var::from_tensor(
        &Tensor::zeros((1, 1, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let pool = Pool2d::floor(3, 2, 0);
    let ys = max_pool2d(xs.as_tensor(), pool).unwrap();
    assert_eq!(ys.dims(), &[1, 1, 2, 2]);
    let grads = ys.sum_all().unwrap().backward().unwrap();
    let grad = input_grad(&grads, &xs);
    let mut expected = vec![0f32; 25];
    for idx in [0, 2, 10, 12] {
        expected[idx] = 1.0;
    }
    assert_eq!(grad, expected);
}

#[test]
fn recorded_backward_equals_searching_again_with_ties_and_padding() {
    // Values on a coarse grid make ties common, as LayerNorm of ReLU zeros does.
    let values: Vec<f32> = (0..2 * 3 * 9 * 8)
        .map(|i| ((i * 7919 % 13) / 4) as f32)
        .collect();
    for pool in [
        Pool2d::floor(3, 1, 1),
        Pool2d::floor(3, 2, 0),
        Pool2d::floor(2, 3, 1),
        Pool2d::ceil(3, 2, 0),
        Pool2d::ceil(3, 2, 1),
    ] {
        let xs = Var::from_tensor(
            &Tensor::from_vec(values.clone(), (2, 3, 9, 8), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let ys = max_pool2d(xs.as_tensor(), pool).unwrap();
        let weights: Vec<f32> = (0..ys.elem_count()).map(|i| (i % 5) as f32 + 1.0).collect();
        let weights = Tensor::from_vec(weights, ys.shape(), &Device::Cpu).unwrap();
        let grads = (&ys * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let recorded = input_grad(&grads, &xs);
        let searched = pool_backward(
            &values,
            &weights.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &[2, 3, 9, 8],
            pool,
        );
        assert_eq!(recorded, searched, "{pool:?}");
    }
}

/// The gradient backpropagation gave the input `xs`, as one flat vector.
fn input_grad(grads: &candle_core::backprop::GradStore, xs: &Var) -> Vec<f32> {
    let grad = grads.get(xs.as_tensor()).expect("a gradient for the input");
    grad.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Values on a coarse grid (many ties), with NaNs and infinities sprinkled in.
fn tricky_values(count: usize, with_nan: bool) -> Vec<f32> {
    (0..count)
        .map(|i| match (i * 7919 + 13) % 101 {
            0 if with_nan => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 => f32::INFINITY,
            r => ((r * 37 % 11) / 3) as f32 - 1.0,
        })
        .collect()
}

#[test]
fn vectorised_windows_equal_the_scalar_ones_bit_for_bit() {
    let pools = [(1, 0), (1, 1), (2, 0), (2, 1)]
        .into_iter()
        .flat_map(|(stride, padding)| {
            [
                Pool2d::floor(3, stride, padding),
                Pool2d::ceil(3, stride, padding),
            ]
        });
    // Every vector path this CPU can run (none on a CPU without AVX2: nothing to compare).
    let isas = [crate::isa::Isa::Avx2, crate::isa::Isa::Avx512]
        .into_iter()
        .filter(|&isa| isa <= crate::isa::Isa::detected());
    for (pool, isa) in pools
        .into_iter()
        .flat_map(|pool| isas.clone().map(move |isa| (pool, isa)))
    {
        let Some(kernel) = interior_kernel_f32_for(pool, isa) else {
            continue;
        };
        // Sides that give no full block, exactly one, and a last block that overlaps.
        for (h, w) in [
            (9, 11),
            (5, 20),
            (12, 27),
            (55, 55),
            (3, 40),
            (4, 17),
            (6, 37),
            (7, 70),
            (24, 24),
            (13, 13),
            (11, 4),
        ] {
            for with_nan in [false, true] {
                let values = tricky_values(2 * h * w, with_nan);
                let geometry = PoolGeometry {
                    pool,
                    n: 2,
                    c: 1,
                    h,
                    w,
                };
                let (fast, fast_offsets) = pool_forward(&values, geometry, (Some(kernel), None));
                let (slow, slow_offsets) = pool_forward(&values, geometry, (None, None));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&fast),
                    bits(&slow),
                    "{isa:?} {pool:?} {h}x{w} nan {with_nan}"
                );
                assert_eq!(
                    fast_offsets, slow_offsets,
                    "{isa:?} {pool:?} {h}x{w} nan {with_nan}"
                );
            }
        }
    }
}

/// That `kernel` pools the `h x w` planes of `values` as the scalar kernel does plane by plane,
/// values and offsets bit for bit, at every vector level this CPU has and the portable one.
fn assert_equals_the_scalar_kernel(
    kernel: kernel::PlanesKernel<f32>,
    values: &[f32],
    (h, w, pool): (usize, usize, Pool2d),
    case: &str,
) {
    let pooled = pool.out_side(h) * pool.out_side(w);
    let planes = values.len() / (h * w);
    let fresh = || {
        (
            vec![0f32; planes * pooled],
            vec![NO_OFFSET; planes * pooled],
        )
    };
    let mut scalar = fresh();
    for ((plane, out), offsets) in values
        .chunks(h * w)
        .zip(scalar.0.chunks_mut(pooled))
        .zip(scalar.1.chunks_mut(pooled))
    {
        kernel::pool_plane(plane, h, w, pool, out, offsets, None);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    crate::isa::for_each_supported(|level| {
        // A fresh buffer, and one left over from other work: larger, its values stale.
        for mut buffer in [Vec::new(), vec![f32::NAN; 3 * values.len() + 7]] {
            let mut fast = fresh();
            kernel(values, (h, w, pool), &mut fast.0, &mut fast.1, &mut buffer);
            assert_eq!(bits(&fast.0), bits(&scalar.0), "{level}: {case}");
            assert_eq!(fast.1, scalar.1, "{level}: {case}");
        }
    });
}

#[test]
fn planes_pooled_in_lanes_equal_the_scalar_ones_bit_for_bit() {
    // Groups of eight planes and a remainder, windows with and without padding, strides that
    // skip pixels, ties and NaNs: each plane's values and offsets as the scalar kernel's.
    // Ceil mode too (the paper variant's pools): its last windows run past the plane.
    let pools = [(3, 1, 1), (3, 2, 0), (3, 2, 1), (2, 3, 1), (1, 1, 0)]
        .into_iter()
        .flat_map(|(kernel, stride, padding)| {
            [
                Pool2d::floor(kernel, stride, padding),
                Pool2d::ceil(kernel, stride, padding),
            ]
        });
    for pool in pools {
        for (h, w) in [(5, 5), (11, 11), (2, 3), (9, 4), (13, 13), (24, 24)] {
            if !pool.fits(h, w) {
                continue;
            }
            for planes in [1, 8, 11, 19] {
                for with_nan in [false, true] {
                    let values = tricky_values(planes * h * w, with_nan);
                    let case = format!("{pool:?} {h}x{w}, {planes} planes, nan {with_nan}");
                    let kernel: kernel::PlanesKernel<f32> = lanes::pool_planes_in_lanes;
                    assert_equals_the_scalar_kernel(kernel, &values, (h, w, pool), &case);
                }
            }
        }
    }
}

#[test]
fn separable_same_size_pool_equals_the_scalar_one_bit_for_bit() {
    // 3x3 windows at stride 1 and padding 1 as two passes of three: every side from one pixel
    // (no interior at all) up, non-square planes, ties, infinities and NaNs, several planes a
    // call; values and offsets as the scalar kernel's, at every vector level and the portable one.
    for pool in [Pool2d::floor(3, 1, 1), Pool2d::ceil(3, 1, 1)] {
        for (h, w) in [
            (1, 1),
            (1, 5),
            (5, 1),
            (2, 2),
            (2, 9),
            (3, 3),
            (11, 11),
            (23, 23),
            (7, 16),
        ] {
            for planes in [1, 3] {
                for with_nan in [false, true] {
                    let values = tricky_values(planes * h * w, with_nan);
                    let case = format!("{pool:?} {h}x{w}, {planes} planes, nan {with_nan}");
                    let kernel: kernel::PlanesKernel<f32> = same::pool_planes_same;
                    assert_equals_the_scalar_kernel(kernel, &values, (h, w, pool), &case);
                }
            }
        }
    }
}

#[test]
fn pools_keeping_the_side_equal_the_scalar_one_bit_for_bit() {
    // Windows that keep the side at stride 1 (3x3, 5x5, 7x7 and 1x1, either rounding), planes
    // from one pixel to the largest the AVX-512 plane kernel takes and one beyond it, several
    // planes a call (a plane's last register partly outside it), ties, infinities and NaNs: the
    // planes kernel this CPU picks at each vector level gives the scalar kernel's values and
    // offsets.
    let pools = [(3, 1), (5, 2), (7, 3), (1, 0)]
        .into_iter()
        .flat_map(|(kernel, padding)| {
            [
                Pool2d::floor(kernel, 1, padding),
                Pool2d::ceil(kernel, 1, padding),
            ]
        });
    for pool in pools {
        for (h, w) in [
            (1, 1),
            (1, 5),
            (5, 1),
            (2, 2),
            (5, 5),
            (6, 6),
            (4, 17),
            (11, 11),
            (12, 12),
            (23, 23),
            (32, 32),
            (33, 33),
        ] {
            if !pool.fits(h, w) {
                continue;
            }
            for planes in [1, 3, 17] {
                let values = tricky_values(planes * h * w, true);
                let case = format!("{pool:?} {h}x{w}, {planes} planes");
                let kernel: kernel::PlanesKernel<f32> = kernel::pool_planes_f32;
                assert_equals_the_scalar_kernel(kernel, &values, (h, w, pool), &case);
            }
        }
    }
    crate::isa::for_each_supported(|level| {
        let takes = plane_vectors::applies(Pool2d::floor(3, 1, 1), (5, 5));
        assert_eq!(takes, level == crate::isa::Isa::Avx512, "{level:?}");
        assert!(!plane_vectors::applies(Pool2d::floor(3, 1, 1), (33, 33)));
        assert!(!plane_vectors::applies(Pool2d::floor(3, 2, 1), (5, 5)));
    });
}

#[test]
fn the_ops_planes_kernels_equal_the_scalar_one_bit_for_bit() {
    // As the op runs them (`pool_forward`, several planes a task, each thread's spare buffer):
    // FeatEx's pools at 48 px in both variants, whole batches, at every vector level.
    let cases = [
        (Pool2d::floor(3, 1, 1), 5),
        (Pool2d::ceil(3, 1, 1), 6),
        (Pool2d::floor(3, 2, 0), 11),
        (Pool2d::ceil(3, 2, 0), 12),
        (Pool2d::floor(3, 2, 0), 5),
        (Pool2d::ceil(3, 2, 0), 6),
    ];
    crate::isa::for_each_supported(|level| {
        for (pool, side) in cases {
            let geometry = PoolGeometry {
                pool,
                n: 3,
                c: 37,
                h: side,
                w: side,
            };
            let values = tricky_values(3 * 37 * side * side, true);
            let planes_kernel = Some(kernel::pool_planes_f32_spare_buffer as _);
            let (fast, fast_offsets) = pool_forward(&values, geometry, (None, planes_kernel));
            let (slow, slow_offsets) = pool_forward(&values, geometry, (None, None));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{level:?} {pool:?} {side}");
            assert_eq!(fast_offsets, slow_offsets, "{level:?} {pool:?} {side}");
        }
    });
}

#[test]
fn a_nan_wins_its_window_as_in_pytorch() {
    // PyTorch's CPU kernel takes a value when `val > max || isnan(val)`: the last NaN wins.
    let mut values = vec![0f32; 16];
    values[5] = f32::NAN;
    values[6] = 3.0;
    values[9] = f32::NAN;
    let pool = Pool2d::floor(3, 1, 0);
    let geometry = PoolGeometry {
        pool,
        n: 1,
        c: 1,
        h: 4,
        w: 4,
    };
    let (out, offsets) = pool_forward(&values, geometry, (None, None));
    assert!(out.iter().all(|v| v.is_nan()));
    // Window (0, 0) covers rows 0-2, columns 0-2: input 9 is its row 2, column 1.
    assert_eq!(offsets[0], 7);
}
