//! `cargo xtask export` on the PyTorch port's checkpoint (no metadata: the side inferred and
//! said), and its refusals: an opset out of range, a corrupt weights file, an output it cannot
//! write; each names what is wrong and leaves no file. What the model computes is tested in
//! crates/model/tests/onnx_export.rs and by ONNX Runtime in .ci/run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{text, xtask};
use dexpression_model::onnx::OPSETS;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .args(args)
        .output()
        .expect("xtask runs")
}

fn fails(args: &[&str]) -> String {
    let output = run(args);
    assert!(!output.status.success(), "xtask {args:?} must fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn port_weights(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/torch");
    let checkpoint = std::fs::read_dir(&fixture)
        .expect("fixture folder")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .expect("the port's checkpoint");
    let weights = dir.join("port.safetensors");
    xtask(&["import-torch", text(&checkpoint), "--out", text(&weights)]);
    weights
}

#[test]
fn export_says_when_it_infers_the_side_and_refuses_bad_input_leaving_no_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = port_weights(dir.path());
    let out = dir.path().join("port.onnx");

    let output = run(&["export", "--weights", text(&weights), "--out", text(&out)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The fixture is 64 px; 61 to 64 give its tensor shapes and nothing records which.
    assert!(
        stderr.contains("records no input side") && stderr.contains("61, 62, 63, 64"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("64 x 64"), "{stdout}");
    assert!(std::fs::metadata(&out).expect("written").len() > 0);

    let refused = dir.path().join("refused.onnx");
    let too_old = (OPSETS.start() - 1).to_string();
    let stderr = fails(&[
        "export",
        "--weights",
        text(&weights),
        "--out",
        text(&refused),
        "--opset",
        &too_old,
    ]);
    let range = format!("{} to {}", OPSETS.start(), OPSETS.end());
    assert!(stderr.contains(&range), "{stderr}");

    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not weights at all").expect("written");
    let stderr = fails(&[
        "export",
        "--weights",
        text(&corrupt),
        "--out",
        text(&refused),
    ]);
    assert!(stderr.contains("corrupt.safetensors"), "{stderr}");

    // The output's folder is a file: no way to write there.
    let blocked = out.join("model.onnx");
    let stderr = fails(&[
        "export",
        "--weights",
        text(&weights),
        "--out",
        text(&blocked),
    ]);
    assert!(stderr.contains("port.onnx"), "{stderr}");

    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("folder")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["corrupt.safetensors", "port.onnx", "port.safetensors"]
    );
}
