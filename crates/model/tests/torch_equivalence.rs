//! Numerical equivalence with the PyTorch port, against `../shared/fixtures/torch/`
//! (made by `shared/anchors/make_fixtures.py --seed 1`; see its README for every key).
//! `DEXPRESSION_TORCH_FIXTURE` points the tests at another fixture directory (another seed).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, ModuleT, Tensor};
use dexpression_model::{import_torch, Adam, AdamConfig, Dexpression, DexpressionConfig};

fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("DEXPRESSION_TORCH_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/torch")
        });
    assert!(
        dir.join("reference.safetensors").is_file(),
        "PyTorch fixture not found in {}: the tests need ../shared/ beside the repository",
        dir.display()
    );
    dir
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors loads")
}

fn checkpoint_tar() -> PathBuf {
    let dir = fixture_dir();
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tar"))
        .expect("a cnn-fold*.tar checkpoint in the fixture")
}

/// Every element as f32, in row-major order.
fn values(tensor: &Tensor) -> Vec<f32> {
    tensor
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// The largest absolute value: the scale of relative tolerances.
fn max_abs(tensor: &Tensor) -> f32 {
    values(tensor).iter().map(|v| v.abs()).fold(0f32, f32::max)
}

/// Max absolute difference and max absolute reference value.
fn max_diff(ours: &Tensor, theirs: &Tensor) -> (f32, f32) {
    assert_eq!(ours.dims(), theirs.dims());
    let diff = values(ours)
        .iter()
        .zip(&values(theirs))
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (diff, max_abs(theirs))
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor, tolerance: f32) {
    let (diff, _) = max_diff(ours, theirs);
    assert!(
        diff <= tolerance,
        "{name}: max abs diff {diff:e} > {tolerance:e}"
    );
}

fn load_training_model() -> Dexpression {
    let weights = fixture_dir().join("weights.safetensors");
    // The fixture's training-mode outputs were made with dropout disabled.
    let config = DexpressionConfig {
        dropout: 0.0,
        ..DexpressionConfig::port()
    };
    Dexpression::load_with_config(&weights, config, &Device::Cpu).unwrap()
}

#[test]
fn imported_checkpoint_equals_the_safetensors_weights() {
    let out = tempfile::tempdir().unwrap();
    let converted = out.path().join("port.safetensors");
    let summary = import_torch(&checkpoint_tar(), &converted).unwrap();
    assert_eq!(summary.config, DexpressionConfig::port());
    let ours = candle_core::safetensors::load(&converted, &Device::Cpu).unwrap();
    let theirs =
        candle_core::safetensors::load(fixture_dir().join("weights.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(ours.len(), theirs.len(), "same number of tensors");
    for (name, tensor) in &theirs {
        let mine = ours
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing after import"));
        assert_eq!(mine.dims(), tensor.dims(), "{name}");
        let (diff, _) = max_diff(mine, tensor);
        assert_eq!(diff, 0.0, "{name} differs after import");
    }
}

#[test]
fn eval_log_probabilities_match_pytorch() {
    let reference = reference();
    let model =
        Dexpression::load(&fixture_dir().join("weights.safetensors"), &Device::Cpu).unwrap();
    let logp = model.forward_t(&reference["x"], false).unwrap();
    assert_close("eval.logp", &logp, &reference["eval.logp"], 1e-4);
}

#[test]
fn training_forward_backward_and_adam_match_pytorch() {
    let reference = reference();
    let model = load_training_model();
    let targets = reference["y"].to_dtype(DType::U32).unwrap();
    let logp = model.forward_t(&reference["x"], true).unwrap();
    assert_close("train.logp", &logp, &reference["train.logp"], 1e-4);
    let loss = candle_nn::loss::nll(&logp, &targets).unwrap();
    assert_close("train.loss", &loss, &reference["train.loss"], 1e-4);

    let state: HashMap<String, Tensor> = model.state_dict().unwrap().into_iter().collect();
    for stat in ["running_mean", "running_var"] {
        let name = format!("batch_normalization.{stat}");
        assert_close(
            &name,
            &state[&name],
            &reference[&format!("train.{name}")],
            1e-4,
        );
    }

    let grads = loss.backward().unwrap();
    for param in model.trainable_vars() {
        let grad = grads
            .get(param.var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {}", param.name));
        let reference = &reference[&format!("grad.{}", param.name)];
        assert_matches_except_ties(
            &format!("grad.{}", param.name),
            grad,
            reference,
            1e-3 * max_abs(reference),
        );
    }

    // One Adam step on our gradients.
    let mut adam = Adam::new(model.trainable_vars(), AdamConfig::default()).unwrap();
    adam.step(&grads).unwrap();
    for param in model.trainable_vars() {
        // For |g| well above eps, Adam's first step is about lr * sign(g): where the reference
        // gradient is smaller than the gradient tolerance its sign is not determined, so those
        // elements are left to the strict test on PyTorch's own gradients below.
        let reference_grad = &reference[&format!("grad.{}", param.name)];
        let scale = max_abs(reference_grad);
        let determined: Vec<f32> = values(reference_grad)
            .iter()
            .map(|g| if g.abs() > 1e-3 * scale { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(determined, param.var.dims(), &Device::Cpu).unwrap();
        let name = format!("adam.{}", param.name);
        let ours = param.var.as_tensor().mul(&mask).unwrap();
        let theirs = reference[&name].mul(&mask).unwrap();
        assert_matches_except_ties(&name, &ours, &theirs, 1e-5);
    }
}

#[test]
fn adam_step_on_pytorch_gradients_matches_pytorch_exactly() {
    let reference = reference();
    let model = load_training_model();
    // GradStore has no public constructor: take one from a trivial backward, then overwrite.
    let params = model.trainable_vars();
    let mut grads = params[0]
        .var
        .as_tensor()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for param in model.trainable_vars() {
        grads.insert(
            param.var.as_tensor(),
            reference[&format!("grad.{}", param.name)].clone(),
        );
    }
    let mut adam = Adam::new(model.trainable_vars(), AdamConfig::default()).unwrap();
    adam.step(&grads).unwrap();
    for param in model.trainable_vars() {
        assert_close(
            &format!("adam.{}", param.name),
            param.var.as_tensor(),
            &reference[&format!("adam.{}", param.name)],
            1e-5,
        );
    }
}

/// How many elements of lrn1's per-element weight and bias may differ from the fixture.
///
/// pool2a takes maxima of LayerNorm outputs, and LayerNorm maps the zeros left by ReLU to values
/// that tie exactly; the gradient goes to the first of tied elements. Our LayerNorm rounds in
/// PyTorch's order of f32 operations, but PyTorch accumulates its statistics with a vectorised
/// cascade whose last bit we do not reproduce, so a tie can exist on one side and not on the
/// other. Measured on the seed-1 fixture: 2 of 193,600 gradient elements (with PyTorch's own f64 and
/// f32 re-runs on another machine disagreeing with the fixture at thousands). Every other
/// parameter, and every other lrn1 element, must be within tolerance.
const LRN1_TIE_ELEMENTS: usize = 8;

fn assert_matches_except_ties(name: &str, ours: &Tensor, theirs: &Tensor, tolerance: f32) {
    assert_eq!(ours.dims(), theirs.dims(), "{name}");
    let (a, b) = (values(ours), values(theirs));
    let outliers: Vec<(usize, f32, f32)> = a
        .iter()
        .zip(&b)
        .enumerate()
        .filter(|(_, (x, y))| (*x - *y).abs() > tolerance)
        .map(|(i, (x, y))| (i, *x, *y))
        .collect();
    let allowed = if name.contains("lrn1.") {
        LRN1_TIE_ELEMENTS
    } else {
        0
    };
    assert!(
        outliers.len() <= allowed,
        "{name}: {} of {} elements differ by more than {tolerance:e} (allowed {allowed}); first: {:?}",
        outliers.len(),
        a.len(),
        &outliers[..outliers.len().min(5)]
    );
}

#[test]
fn predicting_the_fixture_pngs_reproduces_eval_probabilities() {
    let reference = reference();
    let model =
        Dexpression::load(&fixture_dir().join("weights.safetensors"), &Device::Cpu).unwrap();
    let mut pixels = Vec::new();
    for idx in 0..4 {
        pixels.extend(
            dexpression_model::load_face_pixels(
                &fixture_dir().join(format!("input-{idx}.png")),
                224,
            )
            .unwrap(),
        );
    }
    let batch = dexpression_model::batch_from_pixels(&pixels, 224, &Device::Cpu).unwrap();
    assert_close("x from PNG", &batch, &reference["x"], 0.0);
    let probabilities = model.probabilities(&batch).unwrap();
    let expected = reference["eval.logp"]
        .exp()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (ours, theirs) in probabilities.iter().zip(&expected) {
        for (a, b) in ours.iter().zip(theirs) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
    }
}
