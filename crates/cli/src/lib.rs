//! The dexpression command line: the `dexpression` binary (`cargo install --path crates/cli`)
//! and `cargo xtask <command>` in a checkout run this same code.
//!
//! Each command lives in its own module and is a thin layer of argument parsing and progress
//! display over the library crates, which hold all the logic. The library exists so that both
//! binaries are one line ([`main`]); it is not an API.

#![warn(missing_docs)]

mod bench;
mod bench_prepare;
#[cfg(feature = "serve")]
mod browser;
mod demo;
mod display;
mod download;
mod export;
mod hints;
mod import_torch;
mod predict;
mod prepare;
#[cfg(not(all(feature = "download", feature = "serve")))]
mod relay;
mod report;
mod serve;
mod synth;
mod train;

use clap::{Parser, Subcommand};

/// Where `train` writes a run, and `report` reads and writes, by default.
const RESULTS_DIR: &str = "results";
/// Where `demo` writes its run, which `serve` serves when no model is named.
const DEMO_RESULTS_DIR: &str = "results/demo";

/// `--variant`'s parser: `port` or `paper` (see `dexpression_model::Variant`).
fn parse_variant(text: &str) -> Result<dexpression_model::Variant, String> {
    text.parse()
        .map_err(|err: dexpression_model::Error| err.to_string())
}

/// DeXpression facial expression recognition: data, training, reports.
#[derive(Parser)]
#[command(name = "dexpression", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train on a generated synthetic CK+ and write a report, with no download (the quick start).
    Demo(demo::Args),
    /// Write a synthetic dataset in the official CK+ layout.
    Synth(synth::Args),
    /// Crop, resize and cache a dataset, and print its summary.
    Prepare(prepare::Args),
    /// Measure how fast a dataset is prepared.
    BenchPrepare(bench_prepare::Args),
    /// Download CK+ (Hugging Face mirror), import the official release, or fetch pretrained weights.
    Download(download::Args),
    /// Cross-validated training with per-epoch history and checkpoints.
    Train(train::Args),
    /// Plots, confusion matrices and a summary table from a training history.
    Report(report::Args),
    /// Convert a PyTorch port checkpoint (`.tar`/`.pt`) into safetensors.
    ImportTorch(import_torch::Args),
    /// Classify the expression of faces in images.
    Predict(predict::Args),
    /// Write trained weights as an ONNX model (ONNX Runtime, OpenCV, the browser; docs/deploy.md).
    Export(export::Args),
    /// Time a training step and inference of the network.
    Bench(bench::Args),
    /// A local web page and JSON API for prediction with Grad-CAM heat maps (`--load-test`: its
    /// latency under load).
    Serve(serve::Args),
}

/// The version `--version` prints: the crate's, and the commit it was built from where the build
/// knew it (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DEXPRESSION_COMMIT"),
    ")"
);

/// The device `spec` names (`auto`, `cpu`, `cuda`, `cuda:N`), tuned as a program that repeats
/// steps wants it: a CUDA device keeps its freed memory pooled and allocates without events
/// (`tune_cuda_device`, process-wide for that GPU, hence here and not in the libraries).
fn open_device(spec: &str) -> anyhow::Result<dexpression_model::candle_core::Device> {
    let device = dexpression_model::parse_device(spec)?;
    dexpression_model::kernels::tune_cuda_device(&device)?;
    Ok(device)
}

/// Runs the command line on the process's arguments; prints an error with its hint.
pub fn main() -> std::process::ExitCode {
    match try_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", hints::with_hint(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The kernels' process-wide choices are the program's: the environment's (reference path,
    // vector extensions) and glibc's allocator tuned for repeated training steps.
    dexpression_model::kernels::KernelSettings::from_env()
        .map_err(anyhow::Error::msg)?
        .apply();
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::BenchPrepare(args) => bench_prepare::run(args),
        Command::Download(args) => download::run(args),
        Command::Train(args) => train::run(args),
        Command::Report(args) => report::run(args),
        Command::ImportTorch(args) => import_torch::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
    }
}
