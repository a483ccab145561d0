//! Numerical equivalence of the paper's variant (`DexpressionConfig::paper`) with its PyTorch
//! definition, on the repository's fixture `tests/fixtures/paper/` (64x64 inputs, made by
//! `fixtures/make_paper_fixtures.py`): forward in eval and training mode, the loss, every gradient
//! and Adam's step, with the same tolerances and the same tie-robust comparison of gradients as
//! the port's variant in `torch_equivalence.rs` (see there why gradients are compared as whole
//! tensors).
//!
//! The fixture stores no weights: both sides draw them from one formula (splitmix64 of the
//! tensor's and the element's index, in f64, rounded to f32), written out below as in the script.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, ModuleT, Tensor};
use dexpression_model::{Adam, AdamConfig, Dexpression, DexpressionConfig, LrnConstants, Variant};

/// As `torch_equivalence.rs`: the loosest relative L2 distance of a gradient, the multiple of
/// PyTorch's own f32-to-f64 distance, and the floor of that bound.
const GRAD_REL_L2: f64 = 1e-2;
const F64_DISTANCE_FACTOR: f64 = 300.0;
const GRAD_REL_L2_FLOOR: f64 = 1e-4;

/// The parameters in the script's order: the index seeds each one's values.
const PARAMS: [&str; 16] = [
    "conv1.weight",
    "conv1.bias",
    "conv2a.weight",
    "conv2a.bias",
    "conv2b.weight",
    "conv2b.bias",
    "conv2c.weight",
    "conv2c.bias",
    "conv3a.weight",
    "conv3a.bias",
    "conv3b.weight",
    "conv3b.bias",
    "conv3c.weight",
    "conv3c.bias",
    "fc.weight",
    "fc.bias",
];

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paper")
}

fn reference(dir: &Path) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    let path = dir.join("reference.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("reference loads");
    let bytes = std::fs::read(&path).expect("reference readable");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("a header");
    let metadata = header.metadata().clone().unwrap_or_default();
    (tensors, metadata.into_iter().collect())
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The script's `formula_values`.
fn formula_values(index: usize, shape: &[usize], fan_in: usize) -> Tensor {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count as u64)
        .map(|i| {
            let u = (splitmix64(((index as u64) << 32) | i) >> 40) as f64 / (1u64 << 24) as f64;
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The paper's network at the fixture's side, with the fixture's LRN constants and weights.
fn paper_model(metadata: &HashMap<String, String>, dropout: f32) -> Dexpression {
    let number = |key: &str| -> f64 {
        metadata[&format!("lrn.{key}")]
            .parse()
            .unwrap_or_else(|_| panic!("lrn.{key} in the fixture's metadata"))
    };
    let config = DexpressionConfig {
        dropout,
        lrn: LrnConstants {
            size: number("size") as usize,
            alpha: number("alpha"),
            beta: number("beta"),
            k: number("k"),
        },
        ..DexpressionConfig::of(Variant::Paper, 7, metadata["side"].parse().unwrap())
    };
    let shapes: HashMap<String, Vec<usize>> = Dexpression::new(config.clone(), 0, &Device::Cpu)
        .unwrap()
        .named_vars()
        .iter()
        .map(|named| (named.name.clone(), named.var.dims().to_vec()))
        .collect();
    assert_eq!(shapes.len(), PARAMS.len(), "the paper variant's tensors");
    let tensors = PARAMS
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let weight = &shapes[&name.replace(".bias", ".weight")];
            let fan_in = weight[1..].iter().product();
            (
                name.to_string(),
                formula_values(index, &shapes[*name], fan_in),
            )
        })
        .collect();
    Dexpression::from_tensors(config, tensors, Path::new("<formula>"), &Device::Cpu).unwrap()
}

fn values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor, tolerance: f64) {
    assert_eq!(ours.dims(), theirs.dims(), "{name}");
    let diff = values(ours)
        .iter()
        .zip(&values(theirs))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        diff <= tolerance,
        "{name}: max abs diff {diff:e} > {tolerance:e}"
    );
}

/// Relative L2 distance and `1 - cosine` of `ours` from `theirs`.
fn agreement(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    assert_eq!(ours.dims(), theirs.dims());
    let (a, b) = (values(ours), values(theirs));
    let (mut diff2, mut a2, mut b2, mut dot) = (0.0, 0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        diff2 += (x - y) * (x - y);
        a2 += x * x;
        b2 += y * y;
        dot += x * y;
    }
    let norm = |v: f64| v.sqrt().max(f64::MIN_POSITIVE);
    (diff2.sqrt() / norm(b2), 1.0 - dot / (norm(a2) * norm(b2)))
}

#[test]
fn the_fixture_is_the_paper_variant_and_its_weights_follow_the_formula() {
    let (reference, metadata) = reference(&fixture());
    assert_eq!(metadata["variant"], "paper");
    let model = paper_model(&metadata, 0.0);
    assert_eq!(model.config().variant, Variant::Paper);
    // No LayerNorm and no BatchNorm: the state holds the convolutions and fc only.
    let names: Vec<&str> = model.named_vars().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, PARAMS);
    // The pools round up as the fixture's (PyTorch's ceil_mode=True): 64 px gives 32, 16, 8, 4.
    assert_eq!(metadata["ceil_mode"], model.config().ceil_mode.to_string());
    assert_eq!(model.config().head_side(), 4);
    // The constants are the fixture's strong ones, not AlexNet's near-identity.
    assert!(model.config().lrn.alpha >= 0.5, "{:?}", model.config().lrn);
    for param in PARAMS {
        assert!(reference.contains_key(&format!("grad.{param}")), "{param}");
    }
}

#[test]
fn paper_eval_and_training_forward_and_backward_match_pytorch() {
    let (reference, metadata) = reference(&fixture());
    let model = paper_model(&metadata, 0.0);
    let logp = model.forward_t(&reference["x"], false).unwrap();
    assert_close("eval.logp", &logp, &reference["eval.logp"], 1e-4);

    let targets = reference["y"].to_dtype(DType::U32).unwrap();
    let logp = model.forward_t(&reference["x"], true).unwrap();
    assert_close("train.logp", &logp, &reference["train.logp"], 1e-4);
    let loss = candle_nn::loss::nll(&logp, &targets).unwrap();
    assert_close("train.loss", &loss, &reference["train.loss"], 1e-4);

    let grads = loss.backward().unwrap();
    for param in model.trainable_vars() {
        let grad = grads
            .get(param.var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {}", param.name));
        let name = format!("grad.{}", param.name);
        let (rel_l2, one_minus_cos) = agreement(grad, &reference[&name]);
        let distance = reference[&format!("f64.grad_rel_l2.{}", param.name)]
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let bound = (F64_DISTANCE_FACTOR * distance).clamp(GRAD_REL_L2_FLOOR, GRAD_REL_L2);
        eprintln!("  {name}: rel L2 {rel_l2:.2e} (bound {bound:.1e}), 1-cos {one_minus_cos:.2e}");
        assert!(
            rel_l2 <= bound && one_minus_cos <= bound * bound,
            "{name}: relative L2 distance {rel_l2:.3e} (bound {bound:.1e}), 1 - cosine {one_minus_cos:.3e}"
        );
    }
}

#[test]
fn paper_adam_step_on_pytorch_gradients_matches_pytorch() {
    let (reference, metadata) = reference(&fixture());
    let model = paper_model(&metadata, 0.0);
    let params = model.trainable_vars();
    let mut grads = params[0]
        .var
        .as_tensor()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for param in &params {
        grads.insert(
            param.var.as_tensor(),
            reference[&format!("grad.{}", param.name)].clone(),
        );
    }
    let mut adam = Adam::new(params.clone(), AdamConfig::default()).unwrap();
    adam.step(&grads).unwrap();
    let mut compared = 0;
    for param in &params {
        if let Some(theirs) = reference.get(&format!("adam.{}", param.name)) {
            assert_close(
                &format!("adam.{}", param.name),
                param.var.as_tensor(),
                theirs,
                1e-5,
            );
            compared += 1;
        }
    }
    assert!(compared >= 3, "only {compared} Adam results compared");
}
