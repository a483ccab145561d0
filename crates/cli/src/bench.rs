//! `cargo xtask bench`: times a training step and inference of the network on the CPU (or a GPU
//! with `--device cuda`), on the fast kernels and the reference path, and prints one JSON line
//! with the machine it ran on, at one input side or, with `--sides`, at several (the logic is the
//! `dexpression-bench` crate).

use anyhow::Context;
use dexpression_bench::{
    bench_side_on, compare_variants_on, profile_layers_on, write_layer_table, BenchConfig, Machine,
    Paths, SideReport, VariantComparison,
};
use dexpression_model::device_name;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Timed iterations of the training step and of batched inference (after 3 and 2 untimed
    /// warm-ups, as bench_torch.py; its 12 timed training steps, against which the figures are
    /// compared, and 10 inference batches).
    #[arg(long, default_value_t = 12)]
    iterations: usize,
    /// Timed iterations on the reference path (slow: about 25 s a training step at 224).
    #[arg(long, default_value_t = 1)]
    reference_iterations: usize,
    /// Timed batch-1 inferences (bench_torch.py's 30).
    #[arg(long, default_value_t = 30)]
    latency_iterations: usize,
    /// Input side; with `--sides`, the side whose figures also sit at the JSON's top level and the
    /// one profiled.
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Also time these sides (e.g. `48,96,144,224`), each on its own freshly built network; their
    /// figures go to the JSON's `sides` list, the `--image-size` side's also to the top level.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(usize))]
    sides: Vec<usize>,
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
    /// Also time the paper variant's training against the port's, step by step in turn (robust
    /// to a machine whose speed drifts), at the side asked and at each of --sides: the pairs'
    /// median ratio and both rates, in the JSON as `variant_comparison` (one entry per side).
    /// --iterations sets the pairs timed (30 or more for a figure to quote).
    #[arg(long)]
    compare_variants: bool,
    /// Keep the pool's threads awake (spinning) through each timed training step
    /// (`dexpression_kernels::with_threads_awake`), as `train` does by default; `false` times
    /// steps with the threads asleep between parallel regions.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    threads_awake_training: bool,
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
        threads_awake_training: args.threads_awake_training,
        variant: args.variant,
    };
    // The side asked is always timed: its figures also sit at the top level, as without `--sides`.
    let mut sides = args.sides.clone();
    if !sides.is_empty() && !sides.contains(&config.image_size) {
        sides.push(config.image_size);
    }
    let device = crate::open_device(&args.device)?;
    let device_label = device_name(&device);
    eprintln!("bench: measuring this machine's GEMM rate");
    let machine = Machine::measure();
    eprintln!(
        "bench: on {device_label}; {}, {} kernels, {} threads (RAYON_NUM_THREADS), GEMM {:.0} GFLOP/s; {} variant, batch {}, {}",
        machine.cpu_model,
        machine.isa,
        machine.threads,
        machine.gemm_gflops,
        config.variant,
        config.batch_size,
        if sides.is_empty() {
            format!("{0}x{0}", config.image_size)
        } else {
            format!("sides {sides:?}")
        }
    );
    let paths = Paths {
        fast: (!args.reference).then_some(args.iterations),
        reference: (!args.fast_only).then_some(args.reference_iterations),
    };
    // The GEMM ceiling is the CPU's: no measure of a GPU.
    let ceiling = device.is_cpu().then_some(machine.gemm_gflops);
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let bench_side = |image_size: usize| -> anyhow::Result<SideReport> {
        let side_config = BenchConfig {
            image_size,
            ..config.clone()
        };
        bench_side_on(&device, &side_config, paths, ceiling, |what| {
            spinner.set_message(format!("{image_size} px, {what}"))
        })
        .with_context(|| format!("benchmark at {image_size} px"))
    };
    let mut side_reports = Vec::new();
    for &side in &sides {
        side_reports.push(bench_side(side)?);
    }
    let asked = match side_reports
        .iter()
        .find(|s| s.image_size == config.image_size)
    {
        Some(report) => report.clone(),
        None => bench_side(config.image_size)?,
    };
    let mut comparisons = Vec::new();
    if args.compare_variants {
        let mut compared_sides = sides.clone();
        if compared_sides.is_empty() {
            compared_sides.push(config.image_size);
        }
        for image_size in compared_sides {
            let side_config = BenchConfig {
                image_size,
                ..config.clone()
            };
            let comparison = compare_variants_on(&device, &side_config, |what| {
                spinner.set_message(format!("{image_size} px, {what}"))
            })
            .with_context(|| format!("variant comparison at {image_size} px"))?;
            comparisons.push(comparison);
        }
    }
    let profile = if args.profile {
        spinner.set_message("profiling layers");
        Some(profile_layers_on(&device, &config, false).context("per-layer profile")?)
    } else {
        None
    };
    spinner.finish_and_clear();

    // The single-side shape: the run's header and the asked side's fields at the top level.
    let mut report = serde_json::json!({
        "bench": if device.is_cpu() { "dexpression_candle_cpu" } else { "dexpression_candle_cuda" },
        "device": device_label,
        "threads": machine.threads,
        "batch_size": config.batch_size,
        "variant": config.variant,
        "threads_awake_training": config.threads_awake_training,
        "machine": machine,
    });
    if let (Some(top), serde_json::Value::Object(fields)) =
        (report.as_object_mut(), serde_json::to_value(&asked)?)
    {
        top.extend(fields);
    }
    if !side_reports.is_empty() {
        for side in &side_reports {
            eprintln!("{}", side_summary(side));
        }
        report["sides"] = serde_json::to_value(&side_reports)?;
    }
    if !comparisons.is_empty() {
        for comparison in &comparisons {
            eprintln!("{}", comparison_summary(comparison));
        }
        report["variant_comparison"] = serde_json::to_value(&comparisons)?;
    }
    if let Some(profile) = &profile {
        write_layer_table(&mut std::io::stderr(), profile)?;
        report["profile"] = serde_json::to_value(profile)?;
    }
    println!("{report}");
    Ok(())
}

/// One line per side for the terminal: the variants' training, pair by pair.
fn comparison_summary(comparison: &VariantComparison) -> String {
    let ratio = comparison.paper_over_port_train;
    format!(
        "{:>4} px: paper variant's training over the port's {:.3} (median of {} pairs, {:.3}-{:.3}); port {:.1} img/s, paper {:.1} img/s",
        comparison.image_size,
        ratio.median,
        comparison.pairs,
        ratio.min,
        ratio.max,
        comparison.port_train_images_per_s.median,
        comparison.paper_train_images_per_s.median
    )
}

/// One line per side for the terminal: the fast path's medians.
fn side_summary(side: &SideReport) -> String {
    match &side.fast {
        Some(fast) => format!(
            "{:>4} px: training {:.1} img/s, inference {:.1} img/s, batch 1 {:.2} ms",
            side.image_size,
            fast.train_images_per_s.median,
            fast.eval_images_per_s.median,
            fast.latency_ms_batch1.median
        ),
        None => format!("{:>4} px: (fast path not timed)", side.image_size),
    }
}
