//! `cargo xtask bench`: times a training step and inference of the network on the CPU (or a GPU
//! with `--device cuda`), on the fast kernels and the reference path, and prints one JSON line
//! with the machine it ran on (the logic is the `dexpression-bench` crate).

use anyhow::Context;
use dexpression_bench::{
    bench_path_on, profile_layers_on, write_layer_table, BenchConfig, Machine, PathReport,
};
use dexpression_model::candle_core::Device;
use dexpression_model::{device_name, parse_device, Dexpression, DexpressionConfig};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Timed iterations of the training step and of batched inference (after 3 and 2 untimed
    /// warm-ups, as bench_torch.py).
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
    /// The network timed: `port` (the PyTorch port's) or `paper` (Burkert et al.'s); run once
    /// per variant to compare them.
    #[arg(long, default_value = "port", value_parser = crate::parse_variant)]
    variant: dexpression_model::Variant,
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
    /// Where to run: `cpu`, or `cuda` / `cuda:N` (a build with `--features cuda`; see
    /// docs/gpu.md). On a GPU each clock read waits for the queued work first.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = BenchConfig {
        image_size: args.image_size,
        batch_size: args.batch_size,
        iterations: args.iterations,
        latency_iterations: args.latency_iterations,
        variant: args.variant,
    };
    let device = parse_device(&args.device)?;
    let device_label = device_name(&device);
    eprintln!("bench: measuring this machine's GEMM rate");
    let machine = Machine::measure();
    eprintln!(
        "bench: on {device_label}; {}, {} kernels, {} threads (RAYON_NUM_THREADS), GEMM {:.0} GFLOP/s; {} variant, batch {}, {}x{}",
        machine.cpu_model,
        machine.isa,
        machine.threads,
        machine.gemm_gflops,
        config.variant,
        config.batch_size,
        config.image_size,
        config.image_size
    );
    let flops_per_image = Dexpression::new(
        DexpressionConfig::of(config.variant, 7, config.image_size),
        0,
        &Device::Cpu,
    )?
    .training_flops_per_image();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let run_path = |reference: bool, iterations: usize| -> anyhow::Result<PathReport> {
        let path_config = BenchConfig {
            iterations,
            ..config.clone()
        };
        let name = if reference { "reference" } else { "fast" };
        bench_path_on(&device, &path_config, reference, |what| {
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
        Some(profile_layers_on(&device, &config, false).context("per-layer profile")?)
    } else {
        None
    };
    spinner.finish_and_clear();

    let mut report = serde_json::json!({
        "bench": if device.is_cpu() { "dexpression_candle_cpu" } else { "dexpression_candle_cuda" },
        "device": device_label,
        "threads": machine.threads,
        "image_size": config.image_size,
        "variant": config.variant,
        "batch_size": config.batch_size,
        "machine": machine,
        "train_gflop_per_image": flops_per_image / 1e9,
    });
    if let Some(fast) = &fast {
        report["fast"] = serde_json::to_value(fast)?;
        // How much of the GEMM ceiling a training step reaches (PyTorch: about a third).
        let train_gflops = fast.train_images_per_s.median * flops_per_image / 1e9;
        report["fast_train_gflops"] = serde_json::json!(train_gflops);
        // The GEMM ceiling is the CPU's: no measure of a GPU.
        if device.is_cpu() {
            report["fast_train_fraction_of_gemm"] =
                serde_json::json!(train_gflops / machine.gemm_gflops);
        }
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
        write_layer_table(&mut std::io::stderr(), profile)?;
        report["profile"] = serde_json::to_value(profile)?;
    }
    println!("{report}");
    Ok(())
}
