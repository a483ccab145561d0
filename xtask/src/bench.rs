//! `cargo xtask bench`: times a training step and inference of the network on the CPU, on the fast
//! kernels and the reference path, and prints one JSON line (the logic is
//! `dexpression_model::ops::benchmark`).

use anyhow::Context;
use dexpression_model::ops::benchmark::{bench_path, profile_layers, BenchConfig, PathReport};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Timed iterations of the training step and of batched inference (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Timed iterations on the reference path (slow: about 25 s a training step at 224).
    #[arg(long, default_value_t = 1)]
    reference_iterations: usize,
    /// Timed batch-1 inferences.
    #[arg(long, default_value_t = 20)]
    latency_iterations: usize,
    /// Input side.
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Batch size of the training step and of batched inference.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Time only the reference path (candle tensor ops).
    #[arg(long, conflicts_with = "fast_only")]
    reference: bool,
    /// Time only the fast kernels.
    #[arg(long)]
    fast_only: bool,
    /// Also time each layer's forward and backward alone on the fast path (printed to stderr as a
    /// table and added to the JSON as `profile`).
    #[arg(long)]
    profile: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = BenchConfig {
        image_size: args.image_size,
        batch_size: args.batch_size,
        iterations: args.iterations,
        latency_iterations: args.latency_iterations,
    };
    let threads = rayon::current_num_threads();
    eprintln!(
        "bench: {threads} threads (RAYON_NUM_THREADS), batch {}, {}x{}",
        config.batch_size, config.image_size, config.image_size
    );
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let run_path = |reference: bool, iterations: usize| -> anyhow::Result<PathReport> {
        let path_config = BenchConfig {
            iterations,
            ..config.clone()
        };
        let name = if reference { "reference" } else { "fast" };
        bench_path(&path_config, reference, |what| {
            spinner.set_message(format!("{name}: {what}"))
        })
        .with_context(|| format!("benchmark of the {name} path"))
    };
    let fast = if args.reference {
        None
    } else {
        Some(run_path(false, args.iterations)?)
    };
    let reference = if args.fast_only {
        None
    } else {
        Some(run_path(true, args.reference_iterations)?)
    };
    let profile = if args.profile {
        spinner.set_message("profiling layers");
        Some(profile_layers(&config, false).context("per-layer profile")?)
    } else {
        None
    };
    spinner.finish_and_clear();

    let mut report = serde_json::json!({
        "bench": "dexpression_candle_cpu",
        "threads": threads,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
    });
    if let Some(fast) = &fast {
        report["fast"] = serde_json::to_value(fast)?;
    }
    if let Some(reference) = &reference {
        report["reference"] = serde_json::to_value(reference)?;
    }
    if let (Some(fast), Some(reference)) = (&fast, &reference) {
        report["fast_over_reference"] = serde_json::json!({
            "train": fast.train_images_per_s.median / reference.train_images_per_s.median,
            "eval": fast.eval_images_per_s.median / reference.eval_images_per_s.median,
            "latency": reference.latency_ms_batch1.median / fast.latency_ms_batch1.median,
        });
    }
    if let Some(profile) = &profile {
        eprintln!(
            "{:<8} {:>22} {:>12} {:>12}",
            "layer", "output", "forward ms", "backward ms"
        );
        for layer in profile {
            eprintln!(
                "{:<8} {:>22} {:>12.1} {:>12.1}",
                layer.layer,
                format!("{:?}", layer.output),
                layer.forward_ms,
                layer.backward_ms
            );
        }
        report["profile"] = serde_json::to_value(profile)?;
    }
    println!("{report}");
    Ok(())
}
