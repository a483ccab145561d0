//! A new user's first commands in an empty folder (issue 18): each fails on the first missing
//! thing, names it, and names the command that makes it; a library error reaches the user with
//! the command-line flag that fixes it.

use std::process::Command;

/// Runs xtask in `dir` and returns its exit success and stderr.
fn xtask_in(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("xtask runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_command_in_an_empty_folder_names_what_is_missing_and_what_to_run() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["train", "--device", "cpu"],
            &[
                "data/ckplus48: no such file or folder",
                "cargo xtask download",
                "cargo xtask synth --out data/ckplus48",
            ],
        ),
        (
            &["prepare", "--source", "data/ckplus"],
            &[
                "data/ckplus: no such file or folder",
                "cargo xtask download",
                "cargo xtask synth --out data/ckplus",
            ],
        ),
        (
            &["report"],
            &[
                "results: no such file or folder",
                "cargo xtask train",
                "cargo xtask demo",
            ],
        ),
        (
            &["predict", "--device", "cpu", "face.png"],
            &[
                "data/weights/dexpression-port-fold1.safetensors: no such file",
                "cargo xtask download --weights",
                "cargo xtask train",
            ],
        ),
        (
            &["import-torch", "port.tar"],
            &["port.tar", "checkpoint written by the PyTorch port"],
        ),
        // Library errors name option fields; the command line shows the flag.
        (
            &["prepare", "--source", "data/ckplus", "--image-size", "0"],
            &["image_size", "set with --image-size"],
        ),
    ];
    for (args, expected) in cases {
        let empty = tempfile::tempdir().expect("temp dir");
        let (success, stderr) = xtask_in(empty.path(), args);
        assert!(!success, "xtask {args:?} succeeded in an empty folder");
        for text in *expected {
            assert!(
                stderr.contains(text),
                "xtask {args:?}: {text:?} missing from:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("(os error 2)") || stderr.contains("cargo xtask"),
            "xtask {args:?} gave a bare OS error:\n{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(empty.path()).expect("list").collect();
        assert!(
            left.is_empty(),
            "xtask {args:?} left files behind: {left:?}"
        );
    }
}

#[test]
fn a_cuda_device_without_cuda_names_the_build_flag() {
    if cfg!(feature = "cuda") {
        return;
    }
    let empty = tempfile::tempdir().expect("temp dir");
    let (success, stderr) = xtask_in(empty.path(), &["train", "--device", "cuda"]);
    assert!(!success);
    assert!(stderr.contains("`cuda` feature"), "{stderr}");
    assert!(
        stderr.contains("--features cuda") && stderr.contains("--device cpu"),
        "{stderr}"
    );
}
