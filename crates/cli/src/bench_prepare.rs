//! `cargo xtask bench-prepare`: how fast full-size frames are decoded, cropped and resized,
//! with one thread and with all of them, and the peak memory.

use crate::display::{prepare_bar, show_prepare};
use dexpression_bench::{peak_rss_mib, process_cpu_seconds};
use dexpression_dataset::synth::{generate, SynthOptions};
use dexpression_dataset::{prepare, PrepareOptions, Selection, Stage, Step};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// At least this many 640x490 frames are prepared.
    #[arg(long, default_value_t = 2000)]
    pub frames: usize,
    /// Side of the crops.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Working folder for the synthetic data and caches (a temporary one by default; removed
    /// afterwards unless given).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Skip the single-thread run (it takes the longest).
    #[arg(long)]
    pub no_single_thread: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let keep = args.work.is_some();
    let work = args.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("dexpression-bench-prepare-{}", std::process::id()))
    });
    // Labeled sequences average 9 frames and each subject has 7: about 63 frames a subject.
    let subjects = args.frames.div_ceil(55).max(1);
    let started = Instant::now();
    let written = generate(
        &work.join("synthetic-ck"),
        &SynthOptions {
            subjects,
            ..Default::default()
        },
    )?;
    println!(
        "generated {} frames ({} subjects) in {:.1} s",
        written.n_frames,
        subjects,
        started.elapsed().as_secs_f64()
    );
    let options = PrepareOptions {
        image_size: args.image_size,
        selection: Selection::All,
        ..Default::default()
    };
    let n_threads = rayon::current_num_threads();
    let mut thread_counts = vec![n_threads];
    if !args.no_single_thread && n_threads > 1 {
        thread_counts.insert(0, 1);
    }
    let mut single_rate = None;
    for threads in thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        // A fresh cache folder per run, so every run crops instead of loading.
        let cache = work.join(format!("cache-{threads}"));
        let bar = prepare_bar();
        let started = Instant::now();
        let cpu_before = process_cpu_seconds();
        // The crop stage alone (decode, crop, resize: the parallel part), timed from the
        // progress reports; scanning and writing the cache are reported separately.
        let crop_times = Mutex::new((None::<Instant>, None::<Instant>));
        let report = |p: Step| {
            show_prepare(&bar, p);
            if p.stage == Stage::Cropping {
                let mut times = crop_times
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                if p.done == 0 {
                    times.0 = Some(Instant::now());
                }
                if p.done == p.total {
                    times.1 = Some(Instant::now());
                }
            }
        };
        let dataset = pool.install(|| prepare(&written.root, &cache, &options, &report));
        bar.finish_and_clear();
        let dataset = dataset?;
        let seconds = started.elapsed().as_secs_f64();
        let crop_seconds = match crop_times.into_inner().unwrap_or_else(|p| p.into_inner()) {
            (Some(start), Some(end)) => end.duration_since(start).as_secs_f64(),
            _ => seconds,
        };
        let rate = dataset.samples.len() as f64 / crop_seconds;
        // CPU seconds per wall second: how many cores the run actually got. On a machine
        // shared with other work this, not the thread count, bounds the speed-up.
        let cores_used = match (cpu_before, process_cpu_seconds()) {
            (Some(before), Some(after)) => {
                format!(", {:.2} cores busy", (after - before) / seconds)
            }
            _ => String::new(),
        };
        let speedup = single_rate.map_or(String::new(), |single: f64| {
            format!(", {:.2}x the single thread", rate / single)
        });
        println!(
            "{threads:>2} thread(s): {} frames at {} px cropped in {crop_seconds:.2} s \
             ({seconds:.2} s with scan and cache write): {rate:.0} frames/s{speedup}{cores_used}",
            dataset.samples.len(),
            args.image_size
        );
        if threads == 1 {
            single_rate = Some(rate);
        }
        if dataset.samples.len() < args.frames {
            anyhow::bail!(
                "only {} frames prepared, fewer than --frames {}",
                dataset.samples.len(),
                args.frames
            );
        }
        let started = Instant::now();
        let cached = prepare(&written.root, &cache, &options, &|_| {})?;
        println!(
            "            cache load: {} samples in {:.3} s",
            cached.samples.len(),
            started.elapsed().as_secs_f64()
        );
    }
    match peak_rss_mib() {
        Some(mib) => println!(
            "peak RSS: {mib:.0} MiB (all frames at full size would be {:.0} MiB)",
            (written.n_frames * 640 * 490) as f64 / (1024.0 * 1024.0)
        ),
        None => println!("peak RSS: unknown (no /proc/self/status)"),
    }
    if !keep {
        std::fs::remove_dir_all(&work).ok();
    }
    Ok(())
}
