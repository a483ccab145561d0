//! `cargo xtask train`: prepare the dataset, then cross-validated training with per-epoch history
//! and checkpoints (see `dexpression_train`), with progress bars and a line per epoch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use dexpression_dataset::{prepare, DataDir, PrepareOptions, DEFAULT_DATA_DIR};
use dexpression_train::{run as train, RunOptions, SelectOn, TrainConfig};
use indicatif::ProgressDrawTarget;

use crate::display::{format_seconds, prepare_bar, show_prepare, Bars};

/// Arguments of `cargo xtask train`.
#[derive(clap::Args)]
pub struct Args {
    /// The dataset (official CK+, one folder per class with any class names, or FER2013's
    /// fer2013.csv); default: what `download` produced (DATA/ckplus, else DATA/ckplus48).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Data folder used to find the default source.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Where the cache of prepared crops is kept.
    #[arg(long, default_value_os_t = DataDir::default().cache_dir())]
    pub cache: PathBuf,
    /// Number of folds (ignored with --split usage, which is one fold).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Epochs per fold.
    #[arg(long, default_value_t = 25)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Side of the square network input in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// The network: `port` (the PyTorch port's, LayerNorm and BatchNorm) or `paper` (Burkert et
    /// al.'s, local response normalisation; docs/architecture.md).
    #[arg(long, default_value = "port", value_parser = crate::parse_variant)]
    pub variant: dexpression_model::Variant,
    /// Unit kept on one side of each fold: subject (honest), sequence, or frame (the port's);
    /// or usage: FER2013's own split, one model trained on Training, its epoch chosen on
    /// PublicTest, tested on PrivateTest.
    #[arg(long, default_value = "subject", value_parser = ["subject", "sequence", "frame", "usage"])]
    pub split: String,
    #[command(flatten)]
    pub frames: super::prepare::FrameArgs,
    #[command(flatten)]
    pub subjects: super::prepare::SubjectArgs,
    /// Seed of folds, initialisation, shuffling, dropout and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: config.json, history.csv, history.jsonl, fold*/ checkpoints.
    #[arg(long, default_value = crate::RESULTS_DIR)]
    pub out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Train only fold K (from 1), e.g. one job of a scheduler array; runs into one --out merge.
    #[arg(long, value_name = "K")]
    pub fold: Option<usize>,
    /// Start over instead of resuming: the earlier run in --out is moved into
    /// OUT/.previous-TIME/ (never deleted).
    #[arg(long)]
    pub restart: bool,
    /// Random flips, rotations, shifts, scaling and brightness/contrast of training images.
    #[arg(long)]
    pub augment: bool,
    /// What picks the `best` checkpoint: test accuracy (the port's) or a validation split (honest;
    /// always with --split usage).
    #[arg(long, default_value = "test", value_parser = ["test", "val"])]
    pub select_on: String,
    /// Keep every epoch's weights, not only the last and the best.
    #[arg(long)]
    pub keep_every_epoch: bool,
    /// Keep the worker threads awake (spinning) through each training step on the CPU rather
    /// than asleep between its parallel regions: faster at small input sides (about 5% a step at
    /// 48 px, see docs/performance.md); `false` when other programs need the cores.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub threads_awake: bool,
    /// No progress bars and no per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = crate::open_device(&args.device)?;
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| DataDir::new(&args.data).default_source());
    let selection = args.frames.selection();
    let prepare_options = PrepareOptions {
        image_size: args.image_size,
        selection,
        neutral: args.frames.neutral,
        subject_pattern: args.subjects.subject_pattern.clone(),
        ..PrepareOptions::default()
    };
    let bar = prepare_bar();
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let dataset = prepare(&source, &args.cache, &prepare_options, &|p| {
        show_prepare(&bar, p)
    });
    bar.finish_and_clear();
    let dataset = dataset.with_context(|| format!("preparing {}", source.display()))?;
    if !args.quiet {
        println!(
            "dataset: {} samples, {} subjects, {} px, from {}",
            dataset.samples.len(),
            dataset.summary.n_subjects,
            dataset.image_size,
            source.display()
        );
        println!(
            "classes: {} ({})",
            dataset.class_names.len(),
            dataset.class_names.join(", ")
        );
    }

    let mut config = TrainConfig::port_defaults(
        &dataset,
        &source.display().to_string(),
        selection,
        args.frames.neutral,
    );
    config.split = args.split.clone();
    config.folds = args.folds;
    config.epochs = args.epochs;
    config.batch_size = args.batch_size;
    config.learning_rate = args.lr;
    config.seed = args.seed;
    config.augment = args.augment;
    config.select_on = args.select_on.parse::<SelectOn>()?;
    if args.split == "usage" {
        // The dataset's own split is one fold, and PublicTest is what chooses its epoch.
        config.folds = 1;
        config.select_on = SelectOn::Val;
    }
    config.keep_every_epoch = args.keep_every_epoch;
    config.variant = args.variant;

    let options = RunOptions {
        only_fold: args.fold,
        restart: args.restart,
        threads_awake: args.threads_awake,
    };
    let mut bars = Bars::new(args.quiet);
    let summary = train(&config, &dataset, &args.out, &options, &device, &mut bars);
    bars.finish();
    let summary = summary?;
    if let Some(mean) = summary.mean_final_test_accuracy() {
        println!(
            "mean final test accuracy over the folds in {}: {mean:.2}%",
            args.out.display()
        );
    }
    println!("history: {}", summary.history_csv.display());
    println!(
        "total time: {}",
        format_seconds(started.elapsed().as_secs_f64())
    );
    Ok(())
}
