//! Timing of the network on the CPU or a GPU: a training step (forward, NLL, backward, Adam),
//! inference at a batch and at batch 1, peak memory, and a per-layer profile, on the fast kernels
//! and on the reference path, with the machine it ran on ([`Machine`]: CPU model, vector
//! extensions, caches, threads, and the rate of one large GEMM, the physical limit of this
//! network's speed on the CPU).
//!
//! On a GPU, candle queues kernels without waiting for them, so every clock read is preceded by
//! [`Device::synchronize`] (a no-op on the CPU): a figure then covers the work, not its queueing,
//! as PyTorch's `torch.cuda.synchronize()` does in `xtask/gpu_bench_torch.py`.
//! `cargo xtask bench` prints these; the figures are comparable with
//! `shared/anchors/bench_torch.py` (random inputs, medians of timed iterations after warm-up).
//!
//! This module measures and reports; it does not judge the figures or talk to PyTorch.

#![warn(missing_docs)]

use std::time::Instant;

use candle_core::{Device, ModuleT, Tensor, Var};

use dexpression_kernels::{
    batch_norm_train, conv2d_relu, conv2d_relu_max_pool2d, layer_norm, local_response_norm,
    max_pool2d, set_reference_ops,
};
use dexpression_model::{
    Adam, AdamConfig, Dexpression, DexpressionConfig, Result, Variant, POOL_KEEP,
};

/// What to time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchConfig {
    /// Input side (224 in the port).
    pub image_size: usize,
    /// Batch of the training step and of batched inference (32 in the port).
    pub batch_size: usize,
    /// Timed iterations of each measurement, after untimed warm-ups (2 inference batches, 5
    /// single images, 3 training steps: bench_torch.py's); 12 by default, bench_torch.py's
    /// training steps.
    pub iterations: usize,
    /// Timed batch-1 inferences (cheap, so more of them); 30 by default, as bench_torch.py.
    pub latency_iterations: usize,
    /// The network timed: the port's or the paper's.
    #[serde(default)]
    pub variant: Variant,
    /// Keep the pool's threads awake through each training step
    /// (`dexpression_kernels::with_threads_awake`), as a program that owns its pool may, and as
    /// the command line's `train` does by default (on by default here too, so that the bench
    /// times what `train` runs; figures recorded before it existed had it off).
    #[serde(default)]
    pub threads_awake_training: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            image_size: 224,
            batch_size: 32,
            iterations: 12,
            latency_iterations: 30,
            variant: Variant::Port,
            threads_awake_training: true,
        }
    }
}

/// Median, minimum and maximum of a series of measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (not empty).
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }

    /// `count / x` for each value: seconds into items per second (min and max swap).
    fn per_second(&self, count: usize) -> Self {
        let rate = |seconds: f64| count as f64 / seconds;
        Self {
            median: rate(self.median),
            min: rate(self.max),
            max: rate(self.min),
        }
    }

    fn millis(&self) -> Self {
        Self {
            median: self.median * 1e3,
            min: self.min * 1e3,
            max: self.max * 1e3,
        }
    }
}

/// The figures of one path.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathReport {
    /// `fast` or `reference`.
    pub path: String,
    /// Training images per second (forward, NLL, backward, Adam).
    pub train_images_per_s: Spread,
    /// Milliseconds per training step.
    pub train_ms_per_step: Spread,
    /// Milliseconds of the Adam update alone, within the step.
    pub adam_ms: Spread,
    /// Inference images per second at the batch size.
    pub eval_images_per_s: Spread,
    /// Milliseconds per inference batch.
    pub eval_ms_per_batch: Spread,
    /// Milliseconds for one image.
    pub latency_ms_batch1: Spread,
    /// Peak resident memory (VmHWM) during the training measurement, MiB.
    pub train_peak_rss_mib: f64,
    /// Peak resident memory (VmHWM) over the whole path, MiB.
    pub peak_rss_mib: f64,
    /// Process CPU time over wall time times threads during the training measurement: about 1
    /// when the benchmark owns the cores, clearly lower when another process competes for them
    /// (the figures are then not trustworthy), as `bench_torch.py` reports it.
    pub train_cpu_utilisation: f64,
    /// Copies of a GPU tensor to the host and back that the ops made during the timed training
    /// steps (counted by the crate-internal `ops::host_round_trips`): 0 on the CPU and on the
    /// CUDA kernels.
    #[serde(default)]
    pub train_host_round_trips: usize,
}

/// Forward and backward milliseconds of one layer, alone, at the benchmark's batch size.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerTiming {
    /// The layer's `state_dict` prefix or the port's module name.
    pub layer: String,
    /// Output shape.
    pub output: Vec<usize>,
    /// Median forward milliseconds.
    pub forward_ms: f64,
    /// Median backward milliseconds (gradients of the input, when it needs one, and parameters),
    /// without the objective's own backward (`objective_backward_ms`).
    pub backward_ms: f64,
    /// Median milliseconds of the profiling objective's own backward (the sum of the layer's
    /// output: a copy of the output's size), timed on a leaf and taken off `backward_ms`.
    #[serde(default)]
    pub objective_backward_ms: f64,
}

/// Peak resident set size of this process in MiB (`VmHWM`), if the kernel reports it.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_kib("VmHWM:").map(|kib| kib / 1024.0)
}

/// The machine a benchmark ran on: what makes its figures comparable, or not.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo` (or `unknown`).
    pub cpu_model: String,
    /// The vector extensions the fast kernels use (`ops::isa`): `portable`, `avx2` or `avx512`.
    pub isa: String,
    /// The widest the CPU has (the kernels may be capped below it by `DEXPRESSION_ISA`).
    pub isa_detected: String,
    /// Data and unified cache sizes per level of the first CPU, e.g. `L1d 48K`, `L2 2048K`.
    pub caches: Vec<String>,
    /// Threads of the pool the kernels run on (`RAYON_NUM_THREADS`).
    pub threads: usize,
    /// Rate of one large single-precision GEMM (2048 cubed, the `gemm` crate the convolutions
    /// use, all threads), GFLOP/s: the ceiling of the network's speed on this machine.
    pub gemm_gflops: f64,
}

impl Machine {
    /// Reads the CPU's description and times the reference GEMM (about a second).
    pub fn measure() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu_model,
            isa: dexpression_kernels::isa().name().into(),
            isa_detected: dexpression_kernels::Isa::detected().name().into(),
            caches: cache_sizes(),
            threads: dexpression_kernels::parallel_threads(),
            gemm_gflops: gemm_gflops(2048),
        }
    }
}

/// `L1d 48K`-style entries from `/sys/devices/system/cpu/cpu0/cache` (none off Linux).
fn cache_sizes() -> Vec<String> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |index: &std::path::Path, file: &str| {
        std::fs::read_to_string(index.join(file)).map(|text| text.trim().to_string())
    };
    let mut caches: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let index = entry.ok()?.path();
            let kind = read(&index, "type").ok()?;
            if kind == "Instruction" {
                return None;
            }
            let level = read(&index, "level").ok()?;
            let suffix = if kind == "Data" { "d" } else { "" };
            Some((
                level.clone(),
                format!("L{level}{suffix} {}", read(&index, "size").ok()?),
            ))
        })
        .collect();
    caches.sort();
    caches.into_iter().map(|(_, entry)| entry).collect()
}

/// GFLOP/s of the best of three `side x side x side` f32 GEMMs after a warm-up, on all threads.
pub fn gemm_gflops(side: usize) -> f64 {
    let a: Vec<f32> = (0..side * side).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..side * side).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; side * side];
    let threads = dexpression_kernels::parallel_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut best = f64::INFINITY;
    for run in 0..4 {
        let start = Instant::now();
        // SAFETY: each matrix is `side x side`, row-major (row stride `side`, column stride 1),
        // and `c` is not aliased by `a` or `b`.
        unsafe {
            gemm::gemm(
                side,
                side,
                side,
                c.as_mut_ptr(),
                1,
                side as isize,
                false,
                a.as_ptr(),
                1,
                side as isize,
                b.as_ptr(),
                1,
                side as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        if run > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    2.0 * (side as f64).powi(3) / best / 1e9
}

fn proc_status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak-RSS mark to the current RSS (Linux `clear_refs` 5), so each path's peak is its
/// own; returns false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU seconds (user and system) this process has used, from `/proc/self/stat`.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are
    // fields 14 and 15, in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn random_batch(
    batch_size: usize,
    image_size: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let values: Vec<f32> = (0..batch_size * image_size * image_size)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Ok(Tensor::from_vec(
        values,
        (batch_size, 1, image_size, image_size),
        device,
    )?)
}

/// Four distinct batches of `config`'s size and side with random labels, made before timing, as
/// bench_torch.py does.
fn training_batches(config: &BenchConfig, device: &Device) -> Result<Vec<(Tensor, Tensor)>> {
    (0..4)
        .map(|idx| {
            let labels: Vec<u32> = (0..config.batch_size)
                .map(|i| ((i * 5 + idx * 3) % 7) as u32)
                .collect();
            Ok((
                random_batch(config.batch_size, config.image_size, idx as u64, device)?,
                Tensor::new(labels, device)?,
            ))
        })
        .collect()
}

/// Seconds `f` takes on `device`: the device is synchronised before each clock read, so queued
/// GPU work is neither counted before the start nor missed at the end.
fn seconds(device: &Device, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    device.synchronize()?;
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Times one path (`reference` false: fast kernels) on the CPU. `progress` is called with a short
/// description before each measurement.
pub fn bench_path(
    config: &BenchConfig,
    reference: bool,
    progress: impl FnMut(&str),
) -> Result<PathReport> {
    bench_path_on(&Device::Cpu, config, reference, progress)
}

/// [`bench_path`] on `device` (the CPU or a GPU): the network, its inputs and its optimiser live
/// there.
pub fn bench_path_on(
    device: &Device,
    config: &BenchConfig,
    reference: bool,
    mut progress: impl FnMut(&str),
) -> Result<PathReport> {
    set_reference_ops(reference);
    reset_peak_rss();
    let iterations = config.iterations.max(1);
    let model = Dexpression::new(
        DexpressionConfig::of(config.variant, 7, config.image_size),
        0,
        device,
    )?
    .with_threads_awake(true);
    let mut adam = Adam::new(model.trainable_vars(), AdamConfig::default())?;
    let batches = training_batches(config, device)?;

    // The order and warm-ups of bench_torch.py, so that both measure the same thing: inference on
    // the freshly initialised network first (2 warm-up batches, 5 warm-up single images), then
    // training (3 warm-up steps).
    let mut eval_seconds = Vec::new();
    let (xs, _) = &batches[0];
    for step in 0..iterations + 2 {
        progress(&format!("eval batch {step}/{iterations}"));
        let elapsed = seconds(device, || {
            model.forward_t(&xs.detach(), false)?;
            Ok(())
        })?;
        if step >= 2 {
            eval_seconds.push(elapsed);
        }
    }

    let single = random_batch(1, config.image_size, 7, device)?;
    let latency_iterations = config.latency_iterations.max(1);
    let mut latency_seconds = Vec::new();
    for step in 0..latency_iterations + 5 {
        if step % 5 == 0 {
            progress(&format!("latency {step}/{latency_iterations}"));
        }
        let elapsed = seconds(device, || {
            model.forward_t(&single, false)?;
            Ok(())
        })?;
        if step >= 5 {
            latency_seconds.push(elapsed);
        }
    }

    // The training peak is measured from here, so it is training's own.
    let inference_peak_rss_mib = peak_rss_mib().unwrap_or(f64::NAN);
    reset_peak_rss();
    let mut train_seconds = Vec::new();
    let mut adam_seconds = Vec::new();
    let mut cpu_at_first_timed_step = None;
    let mut round_trips_at_first_timed_step = 0;
    for step in 0..iterations + 3 {
        progress(&format!("train step {step}/{iterations}"));
        let (xs, ys) = &batches[step % batches.len()];
        if step == 3 {
            cpu_at_first_timed_step = process_cpu_seconds();
            round_trips_at_first_timed_step = dexpression_kernels::host_round_trips();
        }
        let awake = config.threads_awake_training && !reference;
        let (total, adam_time) = timed_training_step(device, (&model, &mut adam), (xs, ys), awake)?;
        if step >= 3 {
            train_seconds.push(total);
            adam_seconds.push(adam_time);
        }
    }
    let train_peak_rss_mib = peak_rss_mib().unwrap_or(f64::NAN);
    let train_cpu_seconds = match (cpu_at_first_timed_step, process_cpu_seconds()) {
        (Some(start), Some(end)) => end - start,
        _ => f64::NAN,
    };
    let train_cpu_utilisation = train_cpu_seconds
        / (train_seconds.iter().sum::<f64>() * dexpression_kernels::parallel_threads() as f64);

    let train = Spread::of(&train_seconds);
    let eval = Spread::of(&eval_seconds);
    Ok(PathReport {
        path: if reference { "reference" } else { "fast" }.into(),
        train_images_per_s: train.per_second(config.batch_size),
        train_ms_per_step: train.millis(),
        adam_ms: Spread::of(&adam_seconds).millis(),
        eval_images_per_s: eval.per_second(config.batch_size),
        eval_ms_per_batch: eval.millis(),
        latency_ms_batch1: Spread::of(&latency_seconds).millis(),
        train_peak_rss_mib,
        peak_rss_mib: inference_peak_rss_mib.max(train_peak_rss_mib),
        train_cpu_utilisation,
        train_host_round_trips: dexpression_kernels::host_round_trips()
            - round_trips_at_first_timed_step,
    })
}

/// One training step (forward, NLL, backward, Adam) of `model` on a batch: its seconds, and the
/// seconds of the Adam update within it. With `awake` on the CPU the pool's threads spin through
/// the step ([`dexpression_kernels::with_threads_awake`]).
fn timed_training_step(
    device: &Device,
    (model, adam): (&Dexpression, &mut Adam),
    (xs, ys): (&Tensor, &Tensor),
    awake: bool,
) -> Result<(f64, f64)> {
    let mut adam_time = 0.0;
    let total = seconds(device, || {
        let mut step = || {
            let logp = model.forward_t(xs, true)?;
            let loss = candle_nn::loss::nll(&logp, ys)?;
            let grads = loss.backward()?;
            adam_time = seconds(device, || adam.step(&grads))?;
            Ok(())
        };
        if awake && device.is_cpu() {
            dexpression_kernels::with_threads_awake(step)
        } else {
            step()
        }
    })?;
    Ok((total, adam_time))
}

/// Training of the paper's variant against the port's at one side, timed step by step in turn
/// ([`compare_variants_on`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantComparison {
    /// Input side.
    pub image_size: usize,
    /// Pairs of timed steps (one step of each variant per pair).
    pub pairs: usize,
    /// The port's training images per second.
    pub port_train_images_per_s: Spread,
    /// The paper variant's training images per second.
    pub paper_train_images_per_s: Spread,
    /// For each pair, the paper variant's images per second over the port's: its median is the
    /// comparison's figure (below 1: the paper's variant is slower).
    pub paper_over_port_train: Spread,
}

/// Times training steps of both variants on the fast kernels at `config`'s side and batch,
/// alternating them step by step (port then paper, then paper then port, and so on), so that a
/// machine whose speed drifts over seconds (a shared host, a laptop's clock) slows both alike and
/// each pair's ratio compares like with like; separate runs a minute apart can differ by more
/// than the variants do. `config.iterations` pairs are timed after three untimed steps of each;
/// `config.variant` is ignored. `progress` gets a short message before each pair.
pub fn compare_variants_on(
    device: &Device,
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<VariantComparison> {
    set_reference_ops(false);
    let batches = training_batches(config, device)?;
    let mut networks = Variant::ALL
        .map(|variant| -> Result<(Dexpression, Adam)> {
            let model = Dexpression::new(
                DexpressionConfig::of(variant, 7, config.image_size),
                0,
                device,
            )?;
            let adam = Adam::new(model.trainable_vars(), AdamConfig::default())?;
            Ok((model, adam))
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let iterations = config.iterations.max(1);
    // Seconds per step, per variant in `Variant::ALL`'s order (the port's first).
    let mut seconds_of = [Vec::new(), Vec::new()];
    for step in 0..iterations + 3 {
        progress(&format!("variants: pair {step}/{iterations}"));
        let batch = &batches[step % batches.len()];
        let order = if step % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let (model, adam) = &mut networks[index];
            let awake = config.threads_awake_training;
            let (total, _) =
                timed_training_step(device, (model, adam), (&batch.0, &batch.1), awake)?;
            if step >= 3 {
                seconds_of[index].push(total);
            }
        }
    }
    let [port, paper] = seconds_of;
    let ratios: Vec<f64> = port
        .iter()
        .zip(&paper)
        .map(|(port, paper)| port / paper)
        .collect();
    Ok(VariantComparison {
        image_size: config.image_size,
        pairs: ratios.len(),
        port_train_images_per_s: Spread::of(&port).per_second(config.batch_size),
        paper_train_images_per_s: Spread::of(&paper).per_second(config.batch_size),
        paper_over_port_train: Spread::of(&ratios),
    })
}

/// How much faster the fast path is than the reference path on each measurement (reference time
/// over fast time).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Speedups {
    /// Training images per second, fast over reference.
    pub train: f64,
    /// Inference images per second at the batch size, fast over reference.
    pub eval: f64,
    /// Batch-1 milliseconds, reference over fast.
    pub latency: f64,
}

/// The figures of one input side: each path timed, and the fast path's training against the
/// machine's GEMM ceiling. Serialised, these are the fields a single-side `cargo xtask bench`
/// prints beside the machine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideReport {
    /// Input side.
    pub image_size: usize,
    /// Arithmetic of one image's training step (forward and backward), GFLOP.
    pub train_gflop_per_image: f64,
    /// The fast kernels, when timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<PathReport>,
    /// The fast path's training arithmetic rate, GFLOP/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_train_gflops: Option<f64>,
    /// That rate over the machine's GEMM ceiling (on the CPU only; PyTorch reaches about a third).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_train_fraction_of_gemm: Option<f64>,
    /// The reference path, when timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathReport>,
    /// Fast over reference, when both were timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_over_reference: Option<Speedups>,
}

/// Which paths [`bench_side_on`] times, with their timed iterations (`None`: not timed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    /// Iterations on the fast kernels.
    pub fast: Option<usize>,
    /// Iterations on the reference path.
    pub reference: Option<usize>,
}

/// Times the chosen paths at `config`'s side on `device` ([`bench_path_on`] for each, the fast one
/// first). `gemm_gflops` is the machine's ceiling ([`Machine::gemm_gflops`]; `None` off the CPU).
/// `progress` gets `fast: ...` or `reference: ...` before each measurement.
pub fn bench_side_on(
    device: &Device,
    config: &BenchConfig,
    paths: Paths,
    gemm_gflops: Option<f64>,
    mut progress: impl FnMut(&str),
) -> Result<SideReport> {
    let flops_per_image = Dexpression::new(
        DexpressionConfig::of(config.variant, 7, config.image_size),
        0,
        &Device::Cpu,
    )?
    .training_flops_per_image();
    let mut run = |reference: bool, iterations: usize| {
        let name = if reference { "reference" } else { "fast" };
        let path_config = BenchConfig {
            iterations,
            ..config.clone()
        };
        bench_path_on(device, &path_config, reference, |what| {
            progress(&format!("{name}: {what}"))
        })
    };
    let fast = paths.fast.map(|n| run(false, n)).transpose()?;
    let reference = paths.reference.map(|n| run(true, n)).transpose()?;
    let fast_train_gflops = fast
        .as_ref()
        .map(|fast| fast.train_images_per_s.median * flops_per_image / 1e9);
    let fast_over_reference = match (&fast, &reference) {
        (Some(fast), Some(reference)) => Some(Speedups {
            train: fast.train_images_per_s.median / reference.train_images_per_s.median,
            eval: fast.eval_images_per_s.median / reference.eval_images_per_s.median,
            latency: reference.latency_ms_batch1.median / fast.latency_ms_batch1.median,
        }),
        _ => None,
    };
    Ok(SideReport {
        image_size: config.image_size,
        train_gflop_per_image: flops_per_image / 1e9,
        fast_train_fraction_of_gemm: fast_train_gflops
            .zip(gemm_gflops)
            .map(|(rate, ceiling)| rate / ceiling),
        fast_train_gflops,
        fast,
        reference,
        fast_over_reference,
    })
}

/// Writes `layers` as an aligned table: layer, output shape, forward and backward milliseconds.
pub fn write_layer_table(
    out: &mut impl std::io::Write,
    layers: &[LayerTiming],
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:>22} {:>12} {:>12}",
        "layer", "output", "forward ms", "backward ms"
    )?;
    for layer in layers {
        writeln!(
            out,
            "{:<14} {:>22} {:>12.1} {:>12.1}",
            layer.layer,
            format!("{:?}", layer.output),
            layer.forward_ms,
            layer.backward_ms
        )?;
    }
    Ok(())
}

/// Forward and backward time of each layer alone, at the benchmark's batch size and input side, on
/// the chosen path: the feature-extraction layers, then the head (batch norm, fc, log-softmax;
/// dropout and NLL are not timed). Adam and whatever the whole step spends between the ops are
/// the difference to the step.
pub fn profile_layers(config: &BenchConfig, reference: bool) -> Result<Vec<LayerTiming>> {
    profile_layers_on(&Device::Cpu, config, reference)
}

/// [`profile_layers`] on `device`. Off the CPU the profile also times the 3x3 convolutions of
/// FeatEx without their pool (`conv2b`, `conv3b`), so that a fused conv+ReLU+pool can be weighed
/// against the pool it would save (docs/gpu.md).
pub fn profile_layers_on(
    device: &Device,
    config: &BenchConfig,
    reference: bool,
) -> Result<Vec<LayerTiming>> {
    set_reference_ops(reference);
    let model = Dexpression::new(
        DexpressionConfig::of(config.variant, 7, config.image_size),
        0,
        device,
    )?;
    let vars: std::collections::HashMap<String, Var> = model
        .named_vars()
        .iter()
        .map(|n| (n.name.clone(), n.var.clone()))
        .collect();
    let param = |name: &str| vars[name].as_tensor().clone();
    let n = config.batch_size;
    // Channel counts from the weights, sides from the config: the network defines both.
    let channels = |name: &str| {
        let dims = param(&format!("{name}.weight")).dims().to_vec();
        (dims[0], dims[1])
    };
    let (pool_reduce, pool_keep) = (model.config().reduce_pool(), POOL_KEEP);
    let side2 = model.config().block1_side();
    let side3 = pool_reduce.out_side(side2);
    let (_, block1) = channels("conv2a");
    let (_, featex) = channels("conv3a");
    // Profiling needs no reproducible values: candle's own generator will do.
    let random = |shape: &[usize]| Tensor::rand(-1f32, 1f32, shape, device);
    type Layer<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;
    let conv = |name: &str, stride: usize, padding: usize| -> Layer<'_> {
        let (w, b) = (
            param(&format!("{name}.weight")),
            param(&format!("{name}.bias")),
        );
        Box::new(move |xs: &Tensor| conv2d_relu(xs, &w, &b, stride, padding))
    };
    // As the training step runs FeatEx: the conv branch's 3x3 convolution, ReLU and pool as one
    // op, then the concatenation with the pooled pool branch (a second, fixed input).
    let conv_pool = |name: &str| -> Layer<'_> {
        let (w, b) = (
            param(&format!("{name}.weight")),
            param(&format!("{name}.bias")),
        );
        Box::new(move |xs: &Tensor| conv2d_relu_max_pool2d(xs, &w, &b, 1, 1, pool_reduce))
    };
    let pool_cat = |second_shape: &[usize]| -> candle_core::Result<Layer<'_>> {
        let second = Var::from_tensor(&random(second_shape)?)?;
        Ok(Box::new(move |xs: &Tensor| {
            Tensor::cat(&[xs, &max_pool2d(second.as_tensor(), pool_reduce)?], 1)
        }))
    };
    // One FeatEx block (`block` 2 or 3) on `input` channels of side `side`, as the training step
    // runs it: the conv branch's 1x1 convolution, then its 3x3 convolution with the pool; the pool
    // branch's pool, then its 1x1 convolution; the concatenation. Off the CPU also the 3x3
    // convolution without its pool.
    let featex_block = |block: usize, input: usize, side: usize| {
        let conv_name = |branch: char| format!("conv{block}{branch}");
        let (a_out, _) = channels(&conv_name('a'));
        let (b_out, _) = channels(&conv_name('b'));
        let (c_out, _) = channels(&conv_name('c'));
        let side_out = pool_reduce.out_side(side);
        let mut layers: Vec<(String, Vec<usize>, bool, Layer<'_>)> = vec![
            (
                conv_name('a'),
                vec![n, input, side, side],
                true,
                conv(&conv_name('a'), 1, 0),
            ),
            (
                format!("conv{block}b+pool{block}b"),
                vec![n, a_out, side, side],
                true,
                conv_pool(&conv_name('b')),
            ),
            (
                format!("pool{block}a"),
                vec![n, input, side, side],
                true,
                Box::new(move |xs: &Tensor| max_pool2d(xs, pool_keep)),
            ),
            (
                conv_name('c'),
                vec![n, input, side, side],
                true,
                conv(&conv_name('c'), 1, 0),
            ),
            (
                format!("pool{block}b+cat"),
                vec![n, b_out, side_out, side_out],
                true,
                pool_cat(&[n, c_out, side, side])?,
            ),
        ];
        if !device.is_cpu() {
            layers.push((
                conv_name('b'),
                vec![n, a_out, side, side],
                true,
                conv(&conv_name('b'), 1, 1),
            ));
        }
        candle_core::Result::Ok(layers)
    };
    let image = config.image_size;
    let mut layers: Vec<(String, Vec<usize>, bool, Layer<'_>)> = vec![(
        "conv1+pool1".to_string(),
        vec![n, 1, image, image],
        false,
        {
            let (w, b) = (param("conv1.weight"), param("conv1.bias"));
            Box::new(move |xs: &Tensor| conv2d_relu_max_pool2d(xs, &w, &b, 2, 3, pool_reduce))
        },
    )];
    // The port's LayerNorm, or the paper's LRN, after pool1.
    layers.push(match config.variant {
        Variant::Port => ("lrn1".to_string(), vec![n, block1, side2, side2], true, {
            let (w, b) = (param("lrn1.weight"), param("lrn1.bias"));
            Box::new(move |xs: &Tensor| layer_norm(xs, &w, &b, 1e-5)) as Layer<'_>
        }),
        Variant::Paper => ("lrn".to_string(), vec![n, block1, side2, side2], true, {
            let lrn = model.config().lrn.op();
            Box::new(move |xs: &Tensor| local_response_norm(xs, lrn)) as Layer<'_>
        }),
    });
    layers.extend(featex_block(2, block1, side2)?);
    layers.extend(featex_block(3, featex, side3)?);
    // The head in training mode, less dropout (a mask multiply): at small sides it is no longer
    // negligible beside the convolutions.
    let head_side = model.config().head_side();
    let (fc_w, fc_b) = (param("fc.weight"), param("fc.bias"));
    let classify = move |xs: &Tensor| -> candle_core::Result<Tensor> {
        let logits = xs
            .flatten_from(1)?
            .matmul(&fc_w.t()?)?
            .broadcast_add(&fc_b)?;
        candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)
    };
    // The port's head has a batch norm before the classifier; the paper's has none.
    let head: (&str, Layer<'_>) = match config.variant {
        Variant::Port => {
            let (bn_w, bn_b) = (
                param("batch_normalization.weight"),
                param("batch_normalization.bias"),
            );
            (
                "bn+fc+softmax",
                Box::new(move |xs: &Tensor| {
                    let (ys, _) = batch_norm_train(xs, &bn_w, &bn_b, 1e-5)?;
                    classify(&ys)
                }),
            )
        }
        Variant::Paper => ("fc+softmax", Box::new(classify)),
    };
    layers.push((
        head.0.to_string(),
        vec![n, featex, head_side, head_side],
        true,
        head.1,
    ));
    // Small batches take milliseconds: more repeats then steady the medians.
    let repeats = config.iterations.clamp(1, 5) * if n <= 4 { 4 } else { 1 };
    let mut timings = Vec::new();
    for (name, shape, needs_grad, layer) in layers {
        let input = random(&shape)?;
        let input = if needs_grad {
            Var::from_tensor(&input)?.as_tensor().clone()
        } else {
            input
        };
        let mut forward = Vec::new();
        let mut backward = Vec::new();
        let mut objective_backward = Vec::new();
        let mut output = Vec::new();
        for _ in 0..=repeats {
            let mut out = None;
            forward.push(seconds(device, || {
                out = Some(layer(&input)?);
                Ok(())
            })?);
            let out = out.ok_or_else(|| candle_core::Error::Msg("no layer output".into()))?;
            output = out.dims().to_vec();
            // A plain sum as the objective. Its own backward is not free: candle stores the
            // gradient reaching the layer's output (ones, broadcast from the sum) as a contiguous
            // copy of the output's size, which the training step never makes. So the same
            // backward on a leaf of the output's shape (a detached copy that tracks only itself)
            // is timed right after, and taken off.
            let backward_seconds = |output: &Tensor| -> Result<f64> {
                let objective = output.sum_all()?;
                let mut grads = None;
                let elapsed = seconds(device, || {
                    grads = Some(objective.backward()?);
                    Ok(())
                })?;
                // Freed outside the timing, as the layer's output.
                drop(grads);
                Ok(elapsed)
            };
            let layer_seconds = backward_seconds(&out)?;
            let sum_seconds = backward_seconds(Var::from_tensor(&out.detach())?.as_tensor())?;
            backward.push(layer_seconds - sum_seconds);
            objective_backward.push(sum_seconds);
        }
        timings.push(LayerTiming {
            layer: name,
            output,
            forward_ms: Spread::of(&forward[1..]).median * 1e3,
            backward_ms: Spread::of(&backward[1..]).median.max(0.0) * 1e3,
            objective_backward_ms: Spread::of(&objective_backward[1..]).median * 1e3,
        });
    }
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_comparison_times_each_pair_and_compares_like_with_like() {
        let config = BenchConfig {
            image_size: 40,
            batch_size: 2,
            iterations: 3,
            ..BenchConfig::default()
        };
        let comparison = compare_variants_on(&Device::Cpu, &config, |_| {}).expect("comparison");
        assert_eq!((comparison.image_size, comparison.pairs), (40, 3));
        let ratio = comparison.paper_over_port_train;
        assert!(ratio.min > 0.0 && ratio.min <= ratio.median && ratio.median <= ratio.max);
        // Each ratio is a pair's, so the median ratio lies between the extreme pairs' rates.
        let (port, paper) = (
            comparison.port_train_images_per_s,
            comparison.paper_train_images_per_s,
        );
        assert!(ratio.max >= paper.min / port.max && ratio.min <= paper.max / port.min);
    }

    #[test]
    fn the_profile_runs_each_variants_layers_at_their_sides() {
        // Run, not timed: the layers and shapes must be the variant's (the paper's has an LRN, no
        // batch norm, and pools that round up: 48 px gives 12, 6 and 3 instead of 11, 5 and 2).
        for (variant, norm, head, sides) in [
            (Variant::Port, "lrn1", "bn+fc+softmax", [11, 5, 2]),
            (Variant::Paper, "lrn", "fc+softmax", [12, 6, 3]),
        ] {
            let config = BenchConfig {
                image_size: 48,
                batch_size: 2,
                iterations: 1,
                variant,
                ..BenchConfig::default()
            };
            let layers = profile_layers(&config, false).expect("profile");
            let output_of = |name: &str| -> Vec<usize> {
                layers
                    .iter()
                    .find(|layer| layer.layer == name)
                    .map(|layer| layer.output.clone())
                    .unwrap_or_else(|| panic!("{variant}: no layer {name}"))
            };
            assert_eq!(output_of(norm), [2, 64, sides[0], sides[0]], "{variant}");
            assert_eq!(
                output_of("pool2b+cat"),
                [2, 272, sides[1], sides[1]],
                "{variant}"
            );
            assert_eq!(
                output_of("pool3b+cat"),
                [2, 272, sides[2], sides[2]],
                "{variant}"
            );
            assert_eq!(output_of(head), [2, 7], "{variant}");
        }
    }
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
