//! `cargo xtask import-torch` then `cargo xtask predict --no-crop --json` on the PyTorch fixture
//! reproduce PyTorch's eval-mode probabilities (`exp(eval.logp)`) within 1e-4.
//! `DEXPRESSION_TORCH_FIXTURE` points at a fixture made with another seed.

mod common;

use std::path::{Path, PathBuf};

use common::xtask;

use dexpression_model::candle_core::{safetensors, Device};

/// The repository's PyTorch fixture, `../shared/fixtures/torch` beside the repository where it is
/// there, and the folder `DEXPRESSION_TORCH_FIXTURE` names where it is set.
fn fixture_dirs() -> Vec<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![manifest.join("../model/tests/fixtures/torch")];
    let shared = manifest.join("../../../shared/fixtures/torch");
    if shared.join("reference.safetensors").is_file() {
        dirs.push(shared);
    }
    dirs.extend(std::env::var_os("DEXPRESSION_TORCH_FIXTURE").map(PathBuf::from));
    for dir in &dirs {
        assert!(
            dir.join("reference.safetensors").is_file(),
            "PyTorch fixture not found in {}",
            dir.display()
        );
    }
    dirs
}

#[test]
fn imported_port_checkpoint_predicts_pytorch_probabilities() {
    for dir in fixture_dirs() {
        import_and_predict(&dir);
    }
}

fn import_and_predict(dir: &Path) {
    let checkpoint = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .expect("a cnn-fold*.tar checkpoint in the fixture");
    let out = tempfile::tempdir().unwrap();
    let weights = out.path().join("port.safetensors");
    let weights = weights.to_str().unwrap();
    xtask(&[
        "import-torch",
        checkpoint.to_str().unwrap(),
        "--out",
        weights,
    ]);

    let images: Vec<String> = (0..4)
        .map(|idx| dir.join(format!("input-{idx}.png")).display().to_string())
        .collect();
    let mut args = vec![
        "predict",
        "--weights",
        weights,
        "--no-crop",
        "--json",
        "--device",
        "cpu",
    ];
    args.extend(images.iter().map(String::as_str));
    let stdout = xtask(&args);

    let reference = safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let expected = reference["eval.logp"]
        .exp()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let names = [
        "Anger",
        "Contempt",
        "Disgust",
        "Fear",
        "Happiness",
        "Sadness",
        "Surprise",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "one JSON object per image:\n{stdout}");
    for (line, (expected_row, image)) in lines.iter().zip(expected.iter().zip(&images)) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["path"], image.as_str());
        for (name, &p) in names.iter().zip(expected_row) {
            let ours = record["probabilities"][name].as_f64().unwrap() as f32;
            assert!(
                (ours - p).abs() <= 1e-4,
                "{image} {name}: {ours} vs PyTorch {p}"
            );
        }
        let best = names[expected_row.iter().enumerate().fold(0, |best, (i, &p)| {
            if p > expected_row[best] {
                i
            } else {
                best
            }
        })];
        assert_eq!(record["label"], best);
    }
}
