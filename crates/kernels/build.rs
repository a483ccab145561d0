//! With the `cuda` feature: compiles the custom ops' CUDA kernels (src/cuda_ops.cu, and the
//! training step's element-wise kernels in src/cuda_train.cu) to PTX with nvcc, for the compute
//! capability in `CUDA_COMPUTE_CAP` (as candle's kernels are built), into
//! `$OUT_DIR/dexpression_ops.ptx` and `$OUT_DIR/dexpression_train.ptx`. Without it, does nothing.
//! No GPU is needed to build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Each CUDA source and the PTX file it becomes.
const KERNELS: [(&str, &str); 2] = [
    ("src/cuda_ops.cu", "dexpression_ops.ptx"),
    ("src/cuda_train.cu", "dexpression_train.ptx"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for (source, _) in KERNELS {
        println!("cargo:rerun-if-changed={source}");
    }
    for var in ["CUDA_COMPUTE_CAP", "NVCC", "CUDA_ROOT", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for (source, ptx) in KERNELS {
        if let Err(message) = compile_kernels(source, ptx) {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}

fn compile_kernels(source: &str, ptx: &str) -> Result<(), String> {
    let compute_cap = compute_cap()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let ptx = out_dir.join(ptx);
    let nvcc = nvcc();
    let output = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{compute_cap}"))
        // The kernels reproduce the CPU's f32 and f64 roundings: no fused multiply-adds.
        .arg("--fmad=false")
        .arg("-o")
        .arg(&ptx)
        .arg(source)
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); install CUDA's compiler with `eval \"$(.ci/cuda-toolchain.sh)\"` \
                 (docs/gpu.md) or set NVCC",
                nvcc.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "{} failed on {source}:\n{}{}",
            nvcc.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// `CUDA_COMPUTE_CAP` (`90` for sm_90), else the first GPU's from nvidia-smi.
fn compute_cap() -> Result<String, String> {
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        let cap = cap.trim().replace('.', "");
        if !cap.is_empty() && cap.chars().all(|c| c.is_ascii_digit()) {
            return Ok(cap);
        }
        return Err(format!(
            "CUDA_COMPUTE_CAP={cap:?} is not a compute capability; set it like 90 (H100/H200) or 80 (A100)"
        ));
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(|line| line.trim().replace('.', ""))
        })
        .filter(|cap| !cap.is_empty());
    smi.ok_or_else(|| {
        "no GPU to ask for its compute capability: set CUDA_COMPUTE_CAP (90 for H100/H200, 80 for A100)"
            .to_string()
    })
}

/// `NVCC`, else `$CUDA_ROOT/bin/nvcc` or `$CUDA_PATH/bin/nvcc`, else `nvcc` on the PATH.
fn nvcc() -> PathBuf {
    if let Some(nvcc) = std::env::var_os("NVCC") {
        return PathBuf::from(nvcc);
    }
    ["CUDA_ROOT", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| Path::new(&root).join("bin").join("nvcc"))
        .find(|nvcc| nvcc.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"))
}
