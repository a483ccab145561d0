//! `cargo xtask demo`: the quick start with no download. Generates a synthetic CK+, prepares
//! it, trains 5 subject-independent folds at a reduced input side and writes the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use dexpression_dataset::synth::{generate, SynthOptions};
use dexpression_dataset::{prepare, DataDir, PrepareOptions, Selection};
use dexpression_report::{write_report, History, ReportOptions};
use dexpression_train::{run as train, RunOptions, TrainConfig};

use crate::display::{format_seconds, Bars};

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Args {
    /// A smaller, faster run for CI (fewer people and epochs; accuracy near chance).
    #[arg(long)]
    pub quick: bool,
    /// Where the synthetic dataset and its cache go.
    #[arg(long, default_value_os_t = DataDir::default().root().join("demo"))]
    pub data: PathBuf,
    /// Where the training outputs and the plots go; an earlier run there is moved into
    /// OUT/.previous-TIME/, not deleted.
    #[arg(long, default_value = crate::DEMO_RESULTS_DIR)]
    pub out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bars and no per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    /// The network: `port` (the PyTorch port's) or `paper` (Burkert et al.'s).
    #[arg(long, default_value = "port", value_parser = crate::parse_variant)]
    pub variant: dexpression_model::Variant,
}

/// The demo's sizes: chosen so that the full demo finishes in a few minutes on two CPU cores and
/// reaches accuracy well above chance on held-out subjects.
struct Plan {
    subjects: usize,
    image_size: usize,
    epochs: usize,
    batch_size: usize,
    synth_dir: &'static str,
    out_dir: &'static str,
}

const FULL: Plan = Plan {
    subjects: 12,
    image_size: 48,
    epochs: 10,
    batch_size: 8,
    synth_dir: "synth",
    out_dir: "",
};
const QUICK: Plan = Plan {
    subjects: 6,
    image_size: 48,
    epochs: 2,
    batch_size: 8,
    synth_dir: "synth-quick",
    out_dir: "quick",
};
const FOLDS: usize = 5;
const SEED: u64 = 0;

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = if args.quick { QUICK } else { FULL };
    let device = crate::open_device(&args.device)?;

    // 1. A synthetic CK+ in the official layout, generated once.
    let synth_dir = args.data.join(plan.synth_dir);
    if synth_dir
        .join(dexpression_dataset::ckplus_release::IMAGES)
        .is_dir()
    {
        println!("synthetic CK+: {} (already there)", synth_dir.display());
    } else {
        let written = generate(
            &synth_dir,
            &SynthOptions {
                subjects: plan.subjects,
                seed: SEED,
                ..SynthOptions::default()
            },
        )
        .with_context(|| format!("generating the synthetic CK+ in {}", synth_dir.display()))?;
        println!(
            "synthetic CK+: {} ({} people, {} frames)",
            synth_dir.display(),
            written.n_subjects,
            written.n_frames
        );
    }

    // 2. Landmark crops at a reduced side, cached.
    let selection = Selection::default();
    let options = PrepareOptions {
        image_size: plan.image_size,
        selection,
        ..PrepareOptions::default()
    };
    let dataset = prepare(
        &synth_dir,
        &DataDir::new(&args.data).cache_dir(),
        &options,
        &|_| {},
    )?;
    println!(
        "prepared: {} face crops of {} people at {} px",
        dataset.samples.len(),
        dataset.summary.n_subjects,
        dataset.image_size
    );

    // 3. Five subject-independent folds, trained from scratch each time so the numbers are
    //    reproduced rather than read back; an earlier run in `out` (the demo's or a real one)
    //    is moved into `out/.previous-<time>/`, never deleted.
    let out = if plan.out_dir.is_empty() {
        args.out.clone()
    } else {
        args.out.join(plan.out_dir)
    };
    let mut config =
        TrainConfig::port_defaults(&dataset, &synth_dir.display().to_string(), selection, false);
    config.folds = FOLDS;
    config.epochs = plan.epochs;
    config.batch_size = plan.batch_size;
    config.seed = SEED;
    config.variant = args.variant;
    let mut bars = Bars::new(args.quiet);
    let summary = train(
        &config,
        &dataset,
        &out,
        &RunOptions {
            only_fold: None,
            restart: true,
            // The demo owns its pool, as `train` does.
            threads_awake: true,
        },
        &device,
        &mut bars,
    );
    bars.finish();
    let summary = summary?;

    // 4. Plots, confusion matrices and summary.md beside the history.
    let history = History::from_run(&out)?;
    let report = write_report(&[history], &out, &ReportOptions::default())?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }

    let mean = summary.mean_final_test_accuracy().unwrap_or(f64::NAN);
    println!(
        "mean test accuracy over {FOLDS} subject-independent folds: {mean:.1}% (chance: {:.1}%)",
        100.0 / config.class_names.len() as f64
    );
    println!("plots and summary: {}", describe(&out, &report.written));
    println!(
        "total time: {}",
        format_seconds(started.elapsed().as_secs_f64())
    );
    Ok(())
}

/// The folder and the main files in it.
fn describe(out: &Path, written: &[PathBuf]) -> String {
    let names: Vec<String> = written
        .iter()
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "png" || ext == "md")
        })
        .filter(|path| !path.to_string_lossy().contains("-fold"))
        .filter_map(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .collect();
    format!("{}/ ({})", out.display(), names.join(", "))
}
