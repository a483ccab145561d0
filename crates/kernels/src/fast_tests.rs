//! The fast CPU kernels (f32) against the reference tensor-op path run in f64, on small random
//! inputs: outputs and every gradient must agree within f32 rounding. `gradient_tests` checks that
//! reference against finite differences.

use candle_core::{DType, Device, Tensor, Var};

use super::conv::{conv2d_relu_max_pool2d_on, conv2d_relu_on};
use super::fast_conv::ConvGeometry;
use super::fast_conv_pool::ConvPoolGeometry;
use super::feat_ex::{feat_ex, feat_ex_composed, ConvLayer, FeatEx};
use super::layer_norm::layer_norm_on;
use super::lrn::{local_response_norm_on, LocalResponseNorm};
use super::max_pool::Pool2d;

/// Deterministic pseudo-random values in [-1, 1).
fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn var(shape: &[usize], seed: u64) -> Var {
    let count = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(values(count, seed), shape, &Device::Cpu).unwrap()).unwrap()
}

/// Max abs difference relative to the reference's max abs value.
fn relative_diff(fast: &Tensor, reference: &Tensor) -> f32 {
    assert_eq!(fast.dims(), reference.dims());
    let fast = fast.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    fast.iter()
        .zip(&reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Runs `f` on the fast kernels in f32 and on the reference path in f64, with the same values
/// in `vars`; compares the output and each variable's gradient. In f64 the reference is exact to
/// far below f32's rounding, so a difference beyond 1e-5 of the scale is an error of the fast
/// kernel, not of the reference, and no max-pool near-tie can resolve differently on another CPU:
/// the inputs are random and small, and their windows' candidates are far apart.
fn check_paths(name: &str, vars: &[Var], f: impl Fn(&[Tensor], bool) -> Tensor) {
    check_paths_tracking(name, vars, true, f)
}

/// [`check_paths`] with the first argument tracked (a variable, whose gradient is compared) or,
/// with `track_first` false, plain data that needs no gradient (a network's input images).
fn check_paths_tracking(
    name: &str,
    vars: &[Var],
    track_first: bool,
    f: impl Fn(&[Tensor], bool) -> Tensor,
) {
    // A fixed random projection of the output makes every output gradient distinct.
    let run = |dtype: DType, fast: bool| {
        let vars: Vec<Var> = vars
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let mut inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        if !track_first {
            inputs[0] = inputs[0].detach();
        }
        let out = f(&inputs, fast);
        let weights = Tensor::from_vec(values(out.elem_count(), 99), out.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let grads = (&out * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads: Vec<Option<Tensor>> = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .map(|g| g.to_dtype(DType::F32).unwrap())
            })
            .collect();
        (out.to_dtype(DType::F32).unwrap(), grads)
    };
    let (fast_out, fast_grads) = run(DType::F32, true);
    let (reference_out, reference_grads) = run(DType::F64, false);
    let diff = relative_diff(&fast_out, &reference_out);
    assert!(diff < 1e-5, "{name}: output differs by {diff:e}");
    for (idx, (fast, reference)) in fast_grads.iter().zip(&reference_grads).enumerate() {
        if idx == 0 && !track_first {
            assert!(
                fast.is_none() && reference.is_none(),
                "{name}: a gradient for the untracked input"
            );
            continue;
        }
        let (fast, reference) = (
            fast.as_ref().expect("fast gradient"),
            reference.as_ref().expect("reference gradient"),
        );
        let diff = relative_diff(fast, reference);
        assert!(
            diff < 1e-5,
            "{name}: gradient of argument {idx} differs by {diff:e}"
        );
    }
}

#[test]
fn fast_conv_relu_matches_the_reference_with_gradients() {
    for (c_in, c_out, side, kernel, stride, padding, batch) in [
        // A 3x3 stride-1 conv by im2col (side 3; side 6 at batch 1, too few tiles to batch), by
        // Winograd over several images at once (WINOGRAD_BATCH_SIDES; in calls of two images and
        // of one in the tests, WINOGRAD_BATCH_VALUES) and past those sides one image at a time.
        (3, 5, 3, 3, 1, 1, 3),
        (3, 5, 9, 3, 1, 1, 3),
        (3, 5, 13, 3, 1, 1, 3),
        (2, 3, 33, 3, 1, 1, 3),
        (1, 4, 15, 7, 2, 3, 2),
        // 1x1, at batch 1 and with 17 images (partial sums over groups of three, PARTIAL_SUMS).
        (6, 4, 5, 1, 1, 0, 17),
        (6, 4, 5, 1, 1, 0, 1),
        (6, 4, 9, 1, 1, 0, 3),
        (4, 3, 8, 3, 2, 0, 1),
        (2, 3, 6, 3, 1, 1, 1),
    ] {
        let xs = var(&[batch, c_in, side, side], 1);
        let weight = var(&[c_out, c_in, kernel, kernel], 2);
        let bias = var(&[c_out], 3);
        let name = format!("conv k{kernel} s{stride} p{padding} n{batch}");
        check_paths(&name, &[xs, weight, bias], |t, fast| {
            conv2d_relu_on(&t[0], &t[1], &t[2], stride, padding, fast).unwrap()
        });
    }
}

#[test]
fn fast_conv_skips_the_gradient_of_a_constant_input() {
    let xs = Tensor::from_vec(values(2 * 9 * 9, 4), (2, 1, 9, 9), &Device::Cpu).unwrap();
    let weight = var(&[4, 1, 3, 3], 5);
    let bias = var(&[4], 6);
    let out = conv2d_relu_on(&xs, weight.as_tensor(), bias.as_tensor(), 2, 1, true).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&xs).is_none());
    assert!(grads.get(weight.as_tensor()).is_some());
}

#[test]
fn fast_layer_norm_matches_the_reference_with_gradients() {
    // 168 features, and 2,415: the backward's chunks of features (1,024) with a short last one
    // whose length is not a whole number of vectors.
    for (batch, shape) in [
        (1, [4, 7, 6]),
        (3, [4, 7, 6]),
        (1, [5, 23, 21]),
        (3, [5, 23, 21]),
    ] {
        let xs = var(&[batch, shape[0], shape[1], shape[2]], 7);
        let weight = var(&shape, 8);
        let bias = var(&shape, 9);
        check_paths(
            &format!("layer_norm n{batch} {shape:?}"),
            &[xs, weight, bias],
            |t, fast| layer_norm_on(&t[0], &t[1], &t[2], 1e-5, fast).unwrap(),
        );
    }
}

#[test]
fn fast_conv_relu_pool_matches_the_reference_with_gradients() {
    // conv1 and pool1's geometry at a small size, a stride-1 case with a padded pool, and batches
    // below and above the thread count (the two ways the kernels split work).
    for (c_in, c_out, side, conv, (kernel, stride, padding), batch, ceil_mode) in [
        (1, 4, 17, (2, 3), (3, 2, 0), 3, false),
        (1, 4, 17, (2, 3), (3, 2, 0), 1, false),
        // At batch 1 an output over WHOLE_IMAGE_BYTES (180 KiB here) goes in bands spread over
        // the threads; a smaller one is convolved whole.
        (1, 8, 150, (2, 3), (3, 2, 0), 1, false),
        // An image small enough for one band: its nine channels pooled together, in lanes.
        (1, 9, 9, (2, 3), (3, 2, 0), 3, false),
        (1, 9, 9, (2, 3), (3, 2, 0), 3, true),
        // 3x3 stride 1 with a padded pool, by im2col (side 3), by Winograd over several images
        // (10, 13) and one image at a time (33).
        (3, 5, 3, (1, 1), (3, 1, 1), 2, false),
        (3, 5, 10, (1, 1), (3, 1, 1), 2, false),
        (3, 5, 13, (1, 1), (3, 1, 1), 3, false),
        (2, 3, 33, (1, 1), (3, 1, 1), 2, false),
        // Winograd's F(4x4, 3x3) with the pool, at batch 1: each step spread over the threads.
        (3, 5, 12, (1, 1), (3, 2, 0), 1, false),
        (2, 3, 33, (1, 1), (3, 2, 0), 1, false),
        (2, 3, 9, (1, 0), (2, 2, 0), 1, false),
        // Ceil-mode pools (the paper variant's) with a partial last window: conv1's geometry
        // (an 8x8 convolution output, by bands at batch 1 and by image at 3) and Winograd's.
        (1, 4, 16, (2, 3), (3, 2, 0), 1, true),
        (1, 4, 16, (2, 3), (3, 2, 0), 3, true),
        (3, 5, 12, (1, 1), (3, 2, 0), 1, true),
        (3, 5, 10, (1, 1), (3, 2, 0), 3, true),
        // Planes of 13 to 24 pixels, where a training step takes F(6x6, 3x3)
        // (`Tiling::for_training`): conv2b at 96 px in both variants, and a plane F(6x6, 3x3)
        // covers with a partial tile.
        (3, 5, 23, (1, 1), (3, 2, 0), 2, false),
        (3, 5, 24, (1, 1), (3, 2, 0), 2, true),
        (2, 4, 17, (1, 1), (3, 1, 1), 3, false),
    ] {
        let (conv_kernel, (conv_stride, conv_padding)) = (if conv.0 == 2 { 7 } else { 3 }, conv);
        let xs = var(&[batch, c_in, side, side], 11);
        let weight = var(&[c_out, c_in, conv_kernel, conv_kernel], 12);
        let bias = var(&[c_out], 13);
        let pool = Pool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
        };
        let name =
            format!("conv k{conv_kernel} s{conv_stride} p{conv_padding} + pool {pool:?} n{batch}");
        check_paths(&name, &[xs, weight, bias], |t, fast| {
            let geometry = (conv_stride, conv_padding);
            conv2d_relu_max_pool2d_on(&t[0], &t[1], &t[2], geometry, pool, fast, None).unwrap()
        });
    }
}

#[test]
fn pool_winners_give_the_parameter_gradients_of_a_conv_on_plain_data() {
    // Where the input needs no gradient (conv1's images) and the pool keeps few of the outputs,
    // the weight and bias gradients come from the pool's winners alone: conv1's geometry (at
    // batch 1 its channels are shared out over the threads), ceil mode's partial windows (the
    // paper's), a padded pool with two input channels (ten weight rows: two blocks of sums), and
    // a 9x9 kernel (rows of two vectors).
    let (floor, ceil) = (Pool2d::floor, |k, s, p| Pool2d {
        ceil_mode: true,
        ..Pool2d::floor(k, s, p)
    });
    for (c_in, c_out, side, kernel, (stride, padding), pool, batch) in [
        (1, 4, 17, 7, (2, 3), floor(3, 2, 0), 3),
        (1, 4, 17, 7, (2, 3), floor(3, 2, 0), 1),
        (1, 4, 16, 7, (2, 3), ceil(3, 2, 0), 3),
        (2, 3, 15, 5, (2, 2), floor(3, 2, 1), 2),
        (1, 3, 40, 9, (3, 4), floor(3, 2, 0), 2),
    ] {
        let xs = var(&[batch, c_in, side, side], 41);
        let weight = var(&[c_out, c_in, kernel, kernel], 42);
        let bias = var(&[c_out], 43);
        let geometry = ConvPoolGeometry {
            conv: ConvGeometry::new(xs.dims(), weight.dims(), stride, padding).unwrap(),
            pool,
        };
        assert!(crate::pooled_weight_grad::applies(&geometry, false));
        let name =
            format!("conv k{kernel} s{stride} p{padding} c_in {c_in} + pool {pool:?} n{batch}");
        check_paths_tracking(&name, &[xs, weight, bias], false, |t, fast| {
            let geometry = (stride, padding);
            conv2d_relu_max_pool2d_on(&t[0], &t[1], &t[2], geometry, pool, fast, None).unwrap()
        });
    }
}

/// A pool that keeps every value: the fused conv+pool op with it is a plain convolution by
/// Winograd's F(4x4, 3x3) (for 3x3 stride-1 kernels).
const NO_POOL: Pool2d = Pool2d::floor(1, 1, 0);

#[test]
fn winograd_conv_matches_the_reference_forward() {
    // 3x3, stride 1, padding 1 runs by Winograd's algorithm in the fused conv+pool op: a batch
    // below and above the thread count, odd and even sides, one image at a time past
    // WINOGRAD_BATCH_SIDES; below them by im2col.
    for (c_in, c_out, side, batch) in [
        (5, 7, 13, 1),
        (4, 3, 12, 3),
        (4, 3, 5, 3),
        (3, 2, 33, 2),
        (4, 3, 3, 3),
    ] {
        let xs = var(&[batch, c_in, side, side], 21);
        let weight = var(&[c_out, c_in, 3, 3], 22);
        let bias = var(&[c_out], 23);
        let (xs, weight, bias) = (xs.as_tensor(), weight.as_tensor(), bias.as_tensor());
        let fast =
            conv2d_relu_max_pool2d_on(xs, weight, bias, (1, 1), NO_POOL, true, None).unwrap();
        let reference = conv2d_relu_on(xs, weight, bias, 1, 1, false).unwrap();
        let diff = relative_diff(&fast, &reference);
        assert!(
            diff < 1e-5,
            "Winograd conv n{batch}: output differs by {diff:e}"
        );
    }
}

#[test]
fn every_vector_path_computes_the_same_bits() {
    // The kernels with vector paths (Winograd's transforms in training and inference, LayerNorm,
    // im2col, the pools) at every level this CPU has, against the portable build: bit for bit.
    // At 13x13 the 3x3 convolution runs by Winograd over several images at once, at 33x33 one
    // image at a time (past WINOGRAD_BATCH_SIDES).
    for side in [13, 33] {
        let xs = var(&[2, 6, side, side], 31);
        let weight = var(&[5, 6, 3, 3], 32);
        let bias = var(&[5], 33);
        let norm_weight = var(&[5, side, side], 34);
        let norm_bias = var(&[5, side, side], 35);
        let pool = Pool2d::floor(3, 2, 0);
        let conv1_weight = var(&[5, 1, 7, 7], 37);
        let conv1_weight = conv1_weight.as_tensor();
        let run = || {
            let (x, w, b) = (xs.as_tensor(), weight.as_tensor(), bias.as_tensor());
            let conv = conv2d_relu_on(x, w, b, 1, 1, true).unwrap();
            let normed = layer_norm_on(
                &conv,
                norm_weight.as_tensor(),
                norm_bias.as_tensor(),
                1e-5,
                true,
            )
            .unwrap();
            let pooled = conv2d_relu_max_pool2d_on(x, w, b, (1, 1), pool, true, None).unwrap();
            let inference =
                conv2d_relu_max_pool2d_on(x, w, b, (1, 1), NO_POOL, true, None).unwrap();
            // conv1's geometry on plain data: its gradients from the pool's winners.
            let image =
                Tensor::from_vec(values(2 * 29 * 29, 36), (2, 1, 29, 29), x.device()).unwrap();
            let conv1 =
                conv2d_relu_max_pool2d_on(&image, conv1_weight, b, (2, 3), pool, true, None)
                    .unwrap();
            let loss = (normed.sum_all().unwrap()
                + pooled.sqr().unwrap().sum_all().unwrap()
                + conv1.sqr().unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let mut bits = Vec::new();
            for tensor in [
                &normed,
                &pooled,
                &inference,
                grads.get(x).unwrap(),
                grads.get(w).unwrap(),
                grads.get(norm_weight.as_tensor()).unwrap(),
                grads.get(conv1_weight).unwrap(),
            ] {
                bits.push(tensor_bits(tensor));
            }
            bits
        };
        assert_same_on_every_path(&format!("side {side}"), run);
    }
}

/// Runs `run` at every level of vector extensions this CPU has and checks that each returns what
/// the portable build does.
fn assert_same_on_every_path<T: PartialEq>(name: &str, run: impl Fn() -> T) {
    let mut portable = None;
    super::isa::for_each_supported(|level| {
        let result = run();
        match &portable {
            None => portable = Some(result),
            Some(expected) => assert!(*expected == result, "{name}: {level} differs from portable"),
        }
    });
}

/// The largest difference between the floats of bit patterns `bits` and `expected`, over the
/// largest magnitude in `expected` (at least 1e-6).
fn relative_gap(bits: &[u32], expected: &[u32]) -> f64 {
    let value = |bits: &u32| f32::from_bits(*bits) as f64;
    let scale = expected.iter().map(|b| value(b).abs()).fold(1e-6, f64::max);
    let largest = bits
        .iter()
        .zip(expected)
        .map(|(a, b)| (value(a) - value(b)).abs())
        .fold(0.0, f64::max);
    largest / scale
}

/// A tensor's values as bit patterns, for exact comparisons.
fn tensor_bits(tensor: &Tensor) -> Vec<u32> {
    let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Each convolution path, forward and gradients, in pools of 1, 2 and 3 threads: the same
    // bits. The parameter gradients sum over the batch's images in groups fixed by the batch
    // alone (batches of 7 and 5 split unevenly over 2 and 3 threads), so training repeats
    // exactly on any number of threads.
    let pool = Pool2d::floor;
    let cases = [
        // conv1's geometry with its pool, the input tracked and (as in a network) plain data,
        // whose parameter gradients come from the pool's winners.
        (1, 4, 17, 7, (2, 3), pool(3, 2, 0), 7),
        (0, 4, 17, 7, (2, 3), pool(3, 2, 0), 7),
        // 3x3 by im2col, by Winograd over several images, by Winograd one image at a time.
        (3, 4, 3, 3, (1, 1), pool(3, 1, 1), 7),
        (3, 4, 9, 3, (1, 1), pool(3, 2, 0), 7),
        (2, 3, 33, 3, (1, 1), pool(3, 2, 0), 5),
        // Winograd's F(6x6, 3x3) over several images (`Tiling::for_training`).
        (3, 4, 23, 3, (1, 1), pool(3, 2, 0), 5),
        // 1x1 convolutions (no pool); 17 images sum their gradients in groups of three.
        (6, 4, 5, 1, (1, 0), NO_POOL, 17),
        (6, 4, 9, 1, (1, 0), NO_POOL, 7),
    ];
    for (c_in, c_out, side, kernel, (stride, padding), pool, batch) in cases {
        // `c_in` 0: one channel of plain data, needing no gradient.
        let (track_input, c_in) = (c_in > 0, c_in.max(1));
        let xs = var(&[batch, c_in, side, side], 51);
        let weight = var(&[c_out, c_in, kernel, kernel], 52);
        let bias = var(&[c_out], 53);
        let run = || {
            let x = &if track_input {
                xs.as_tensor().clone()
            } else {
                xs.as_tensor().detach()
            };
            let (w, b) = (weight.as_tensor(), bias.as_tensor());
            let out =
                conv2d_relu_max_pool2d_on(x, w, b, (stride, padding), pool, true, None).unwrap();
            let grads = projection_grads(&out, 54);
            let input_grad = grads.get(x).map(tensor_bits);
            assert_eq!(input_grad.is_some(), track_input);
            let [out, w, b] = [&out, grads.get(w).unwrap(), grads.get(b).unwrap()].map(tensor_bits);
            (out, w, b, input_grad)
        };
        assert_same_in_pools_of_1_2_3(&format!("k{kernel} side {side} n{batch}"), run);
    }
}

/// The gradients of a fixed random projection of `out` (seeded by `seed`), which makes every
/// output gradient distinct.
fn projection_grads(out: &Tensor, seed: u64) -> candle_core::backprop::GradStore {
    let projection =
        Tensor::from_vec(values(out.elem_count(), seed), out.shape(), out.device()).unwrap();
    (out * &projection)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// Runs `run` in rayon pools of 1, 2 and 3 threads and checks that it returns the same each time.
fn assert_same_in_pools_of_1_2_3<T: PartialEq + Send>(name: &str, run: impl Fn() -> T + Sync) {
    let in_pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(&run)
    };
    let one = in_pool(1);
    for threads in [2, 3] {
        assert!(
            in_pool(threads) == one,
            "{name}: {threads} threads differ from one"
        );
    }
}

#[test]
fn small_inference_images_give_the_same_bits_on_every_path_and_thread_count() {
    // Inference image by image on planes of few tiles (9x9 to 32x32), whose 3x3 convolution
    // takes F(4x4, 3x3) laid out for a small image with the narrow GEMMs: the same bits on
    // every vector path and in pools of 1, 2 and 3 threads, and within F(4x4, 3x3)'s rounding of
    // the composed block (the training ops). The unit tests' batched path takes any batch of 8
    // tiles or more on planes of 4 to 31 pixels, so these run on the planes outside it: 32x32
    // (64 tiles, the most) and 3x40 (10 tiles, two groups in a GEMM pass), 2 images; 17 output
    // channels leave part of a panel empty.
    let tensors = small_feat_ex_tensors(6, (5, 17, 4));
    let block = small_feat_ex(&tensors, false);
    for (n, (h, w)) in [(1, (32, 32)), (2, (3, 40))] {
        let side = format!("{h}x{w}");
        let x = var(&[n, 6, h, w], 60 + w as u64)
            .as_tensor()
            .relu()
            .unwrap();
        let run = || tensor_bits(&feat_ex(&x, &block, false).unwrap());
        let name = format!("batch {n}, side {side}");
        assert_same_on_every_path(&name, run);
        assert_same_in_pools_of_1_2_3(&name, run);
        let composed = tensor_bits(&feat_ex_composed(&x, &block).unwrap());
        let gap = relative_gap(&run(), &composed);
        assert!(
            gap < 1e-5,
            "{name}: {gap:e} of the scale from the composition"
        );
    }
}

#[test]
fn layer_norm_does_not_depend_on_the_thread_count() {
    // The backward's sums over chunks of features (three here, the last short) and its samples,
    // fewer and more than the threads: the same bits in pools of 1, 2 and 3 threads.
    for batch in [1, 2, 5] {
        let xs = var(&[batch, 5, 23, 21], 61);
        let weight = var(&[5, 23, 21], 62);
        let bias = var(&[5, 23, 21], 63);
        let run = || {
            let (x, w, b) = (xs.as_tensor(), weight.as_tensor(), bias.as_tensor());
            let out = layer_norm_on(x, w, b, 1e-5, true).unwrap();
            let grads = projection_grads(&out, 64);
            [
                &out,
                grads.get(x).unwrap(),
                grads.get(w).unwrap(),
                grads.get(b).unwrap(),
            ]
            .map(tensor_bits)
        };
        assert_same_in_pools_of_1_2_3(&format!("layer_norm n{batch}"), run);
    }
}

/// A FeatEx block of small random convolutions (channels in, reduced, conv, pooled), with
/// DeXpression's pools; `tensors` holds the weights and biases it borrows.
fn small_feat_ex(tensors: &[Tensor; 6], ceil_mode: bool) -> FeatEx<'_> {
    let layer = |i: usize, padding| ConvLayer {
        weight: &tensors[2 * i],
        bias: &tensors[2 * i + 1],
        stride: 1,
        padding,
    };
    FeatEx {
        reduce: layer(0, 0),
        conv: layer(1, 1),
        pooled: layer(2, 0),
        keep: Pool2d::floor(3, 1, 1),
        out_pool: Pool2d {
            kernel: 3,
            stride: 2,
            padding: 0,
            ceil_mode,
        },
        cache: None,
    }
}

fn small_feat_ex_tensors(c_in: usize, (c_a, c_b, c_c): (usize, usize, usize)) -> [Tensor; 6] {
    let shapes: [&[usize]; 6] = [
        &[c_a, c_in, 1, 1],
        &[c_a],
        &[c_b, c_a, 3, 3],
        &[c_b],
        &[c_c, c_in, 1, 1],
        &[c_c],
    ];
    std::array::from_fn(|i| {
        var(shapes[i], 20 + i as u64)
            .as_tensor()
            .affine(0.4, 0.0)
            .unwrap()
    })
}

/// The fused inference block against the composition it replaces, at batches below, at and above
/// the thread count (each splits the work differently), on sides where the pools' borders and
/// Winograd's partial tiles both occur: the same kernels in the same order, so the same bits;
/// where the inference's batched 3x3 convolution takes F(6x6, 3x3) and the composition's
/// training op F(4x4, 3x3) (10x10 and 12x12), within 1e-5 of the output's scale.
#[test]
fn feat_ex_inference_equals_the_composed_block_bit_for_bit() {
    let tensors = small_feat_ex_tensors(6, (5, 7, 4));
    // The last two with the paper variant's ceil-mode pool (even sides: a partial last window).
    for (n, side, ceil_mode) in [
        (1, 13, false),
        (2, 15, false),
        (5, 10, false),
        (3, 33, false),
        (1, 12, true),
        (5, 10, true),
    ] {
        let block = small_feat_ex(&tensors, ceil_mode);
        let x = var(&[n, 6, side, side], side as u64)
            .as_tensor()
            .relu()
            .unwrap();
        let fused = feat_ex(&x, &block, false).unwrap();
        let composed = feat_ex_composed(&x, &block).unwrap();
        assert_eq!(fused.dims(), composed.dims(), "batch {n}, side {side}");
        let pooled = block.out_pool.out_side(side);
        assert_eq!(fused.dims(), &[n, 7 + 4, pooled, pooled]);
        let (fused, composed) = (tensor_bits(&fused), tensor_bits(&composed));
        if crate::winograd::Tiling::for_plane(side, side) == crate::winograd::Tiling::F6 {
            let gap = relative_gap(&fused, &composed);
            assert!(
                gap < 1e-5,
                "batch {n}, side {side}: {gap:e} of the scale from the composition"
            );
        } else {
            let differing = fused.iter().zip(&composed).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing, 0,
                "batch {n}, side {side}: {differing} values differ"
            );
        }
        // Not all zero: the ReLUs and pools let values through.
        assert!(fused.iter().any(|&b| f32::from_bits(b) > 0.0));
    }
}

#[test]
fn a_backward_through_the_inference_block_says_what_to_do_instead() {
    let tensors = small_feat_ex_tensors(2, (3, 4, 2));
    let x = var(&[1, 2, 9, 9], 8);
    let out = feat_ex(x.as_tensor(), &small_feat_ex(&tensors, false), false).unwrap();
    let error = out.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(error.contains("training-mode forward"), "{error}");
}

#[test]
fn fast_local_response_norm_matches_the_reference_with_gradients() {
    // A large alpha, so that the window's cross terms matter; batches below and above the thread
    // count; channels fewer than the window.
    for (batch, channels, lrn) in [
        (
            1,
            6,
            LocalResponseNorm {
                size: 5,
                alpha: 3.0,
                beta: 0.75,
                k: 1.0,
            },
        ),
        (
            3,
            9,
            LocalResponseNorm {
                size: 4,
                alpha: 2.0,
                beta: 0.6,
                k: 2.0,
            },
        ),
        (
            2,
            2,
            LocalResponseNorm {
                size: 5,
                alpha: 1.0,
                beta: 0.75,
                k: 1.0,
            },
        ),
    ] {
        let xs = var(&[batch, channels, 5, 7], 41);
        check_paths(
            &format!("local_response_norm n{batch} c{channels} {lrn:?}"),
            &[xs],
            |t, fast| local_response_norm_on(&t[0], lrn, fast).unwrap(),
        );
    }
}

#[test]
fn every_vector_path_computes_the_same_local_response_norm_bits() {
    // The LRN kernel's loops at every level this CPU has, against the portable build, for the
    // square-root exponent and the general power: bit for bit, forward and backward.
    let xs = var(&[2, 7, 9, 11], 42);
    let run = || {
        let mut bits = Vec::new();
        for lrn in [
            LocalResponseNorm::ALEXNET,
            LocalResponseNorm {
                size: 4,
                alpha: 2.0,
                beta: 0.6,
                k: 2.0,
            },
        ] {
            let out = local_response_norm_on(xs.as_tensor(), lrn, true).unwrap();
            let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for tensor in [&out, grads.get(xs.as_tensor()).unwrap()] {
                let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                bits.push(values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
            }
        }
        bits
    };
    assert_same_on_every_path("local response norm", run);
}
