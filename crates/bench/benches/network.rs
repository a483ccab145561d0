//! `cargo bench -p dexpression-bench`: the training step (batch 32) and inference (batch 32 and 1)
//! at 224x224 on the fast CPU kernels, as medians over timed iterations after warm-ups. It prints
//! the same figures as `cargo xtask bench --fast-only`, comparable with
//! `shared/anchors/bench_torch.py`; `BENCH_IMAGE_SIZE`, `BENCH_BATCH_SIZE` and `BENCH_ITERATIONS`
//! override the defaults, `DEXPRESSION_REFERENCE_OPS=1` times the reference path instead.
//! `BENCH_PROFILE=1` prints only the per-layer profile (forward and backward of each layer alone)
//! at `BENCH_BATCH_SIZE`, which is quicker when working on one kernel.
//!
//! A plain harness rather than criterion: one 224x224 training step takes about a second, so
//! criterion's many-sample statistics would take minutes and add nothing to a median and a range.

use dexpression_bench::{bench_path, profile_layers, write_layer_table, BenchConfig};
use dexpression_kernels::{reference_ops, KernelSettings};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the command line does at start-up: the environment's kernel choices, a tuned allocator,
    // candle's elementwise ops on the calling thread.
    KernelSettings::from_env()?.apply();
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick run.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let defaults = BenchConfig::default();
    let config = if quick {
        BenchConfig {
            image_size: 64,
            batch_size: 2,
            iterations: 1,
            latency_iterations: 1,
            ..defaults.clone()
        }
    } else {
        BenchConfig {
            image_size: env_or("BENCH_IMAGE_SIZE", defaults.image_size),
            batch_size: env_or("BENCH_BATCH_SIZE", defaults.batch_size),
            iterations: env_or("BENCH_ITERATIONS", defaults.iterations),
            // BENCH_VARIANT=paper times the paper's network.
            variant: std::env::var("BENCH_VARIANT")
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(defaults.variant),
            ..defaults.clone()
        }
    };
    if std::env::var("BENCH_PROFILE").is_ok_and(|value| value == "1") {
        println!(
            "{} path, batch {} at {}x{}, each layer alone (median ms)",
            if reference_ops() { "reference" } else { "fast" },
            config.batch_size,
            config.image_size,
            config.image_size
        );
        let layers = profile_layers(&config, reference_ops())?;
        write_layer_table(&mut std::io::stdout(), &layers)?;
        let forward: f64 = layers.iter().map(|layer| layer.forward_ms).sum();
        let backward: f64 = layers.iter().map(|layer| layer.backward_ms).sum();
        println!("total forward {forward:.1} ms, backward {backward:.1} ms");
        return Ok(());
    }
    let report = bench_path(&config, reference_ops(), |_| {})?;
    println!(
        "{} path, batch {} at {}x{}: train {:.1} images/s ({:.0} ms/step, {:.0}-{:.0}), eval {:.1} images/s, batch-1 latency {:.1} ms, training peak RSS {:.0} MiB",
        report.path,
        config.batch_size,
        config.image_size,
        config.image_size,
        report.train_images_per_s.median,
        report.train_ms_per_step.median,
        report.train_ms_per_step.min,
        report.train_ms_per_step.max,
        report.eval_images_per_s.median,
        report.latency_ms_batch1.median,
        report.train_peak_rss_mib,
    );
    Ok(())
}
