//! Timing of the network on the CPU: a training step (forward, NLL, backward, Adam), inference at
//! a batch and at batch 1, peak memory, and a per-layer profile, on the fast kernels and on the
//! reference path. `cargo xtask bench` prints these; the figures are comparable with
//! `shared/anchors/bench_torch.py` (random inputs, medians of timed iterations after warm-up).
//!
//! This module measures and reports; it does not judge the figures or talk to PyTorch.

use std::time::Instant;

use candle_core::{Device, ModuleT, Tensor, Var};

use super::{
    conv2d_relu, conv2d_relu_max_pool2d, layer_norm, max_pool2d, set_reference_ops, Pool2d,
};
use crate::{Adam, AdamConfig, Dexpression, DexpressionConfig, Result};

/// What to time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchConfig {
    /// Input side (224 in the port).
    pub image_size: usize,
    /// Batch of the training step and of batched inference (32 in the port).
    pub batch_size: usize,
    /// Timed iterations of each measurement (after one untimed warm-up).
    pub iterations: usize,
    /// Timed batch-1 inferences (cheap, so more of them).
    pub latency_iterations: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            image_size: 224,
            batch_size: 32,
            iterations: 5,
            latency_iterations: 20,
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
    /// Median backward milliseconds (gradients of the input, when it needs one, and parameters).
    pub backward_ms: f64,
}

/// Peak resident set size of this process in MiB (`VmHWM`), if the kernel reports it.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_kib("VmHWM:").map(|kib| kib / 1024.0)
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
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are
    // fields 14 and 15, in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn random_batch(batch_size: usize, image_size: usize, seed: u64) -> Result<Tensor> {
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
        &Device::Cpu,
    )?)
}

fn seconds(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Times one path (`reference` false: fast kernels) on the CPU. `progress` is called with a short
/// description before each measurement.
pub fn bench_path(
    config: &BenchConfig,
    reference: bool,
    mut progress: impl FnMut(&str),
) -> Result<PathReport> {
    set_reference_ops(reference);
    reset_peak_rss();
    let iterations = config.iterations.max(1);
    let model = Dexpression::new(
        DexpressionConfig::with(7, config.image_size),
        0,
        &Device::Cpu,
    )?;
    let mut adam = Adam::new(model.trainable_vars(), AdamConfig::default())?;
    // Four distinct batches with random labels, made before timing, as bench_torch.py does.
    let batches: Vec<(Tensor, Tensor)> = (0..4)
        .map(|idx| {
            let labels: Vec<u32> = (0..config.batch_size)
                .map(|i| ((i * 5 + idx * 3) % 7) as u32)
                .collect();
            Ok((
                random_batch(config.batch_size, config.image_size, idx as u64)?,
                Tensor::new(labels, &Device::Cpu)?,
            ))
        })
        .collect::<Result<_>>()?;

    // The order and warm-ups of bench_torch.py, so that both measure the same thing: inference on
    // the freshly initialised network first (2 warm-up batches, 5 warm-up single images), then
    // training (3 warm-up steps).
    let mut eval_seconds = Vec::new();
    let (xs, _) = &batches[0];
    for step in 0..iterations + 2 {
        progress(&format!("eval batch {step}/{iterations}"));
        let elapsed = seconds(|| {
            let logp = model.forward_t(&xs.detach(), false)?;
            logp.to_vec2::<f32>()?;
            Ok(())
        })?;
        if step >= 2 {
            eval_seconds.push(elapsed);
        }
    }

    let single = random_batch(1, config.image_size, 7)?;
    let latency_iterations = config.latency_iterations.max(1);
    let mut latency_seconds = Vec::new();
    for step in 0..latency_iterations + 5 {
        if step % 5 == 0 {
            progress(&format!("latency {step}/{latency_iterations}"));
        }
        let elapsed = seconds(|| {
            model.forward_t(&single, false)?.to_vec2::<f32>()?;
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
    for step in 0..iterations + 3 {
        progress(&format!("train step {step}/{iterations}"));
        let (xs, ys) = &batches[step % batches.len()];
        if step == 3 {
            cpu_at_first_timed_step = process_cpu_seconds();
        }
        let mut adam_time = 0.0;
        let total = seconds(|| {
            let logp = model.forward_t(xs, true)?;
            let loss = candle_nn::loss::nll(&logp, ys)?;
            let grads = loss.backward()?;
            adam_time = seconds(|| adam.step(&grads))?;
            Ok(())
        })?;
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
        / (train_seconds.iter().sum::<f64>() * super::parallel::thread_count() as f64);

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
    })
}

/// Forward and backward time of each feature-extraction layer alone, at the benchmark's batch size
/// and input side, on the chosen path. The head (dropout, batch norm, fc, log-softmax, NLL) and
/// Adam are not listed: they are the difference to the whole step.
pub fn profile_layers(config: &BenchConfig, reference: bool) -> Result<Vec<LayerTiming>> {
    set_reference_ops(reference);
    let model = Dexpression::new(
        DexpressionConfig::with(7, config.image_size),
        0,
        &Device::Cpu,
    )?;
    let vars: std::collections::HashMap<String, Var> = model
        .named_vars()
        .iter()
        .map(|n| (n.name.clone(), n.var.clone()))
        .collect();
    let param = |name: &str| vars[name].as_tensor().clone();
    let n = config.batch_size;
    let side1 = (config.image_size + 6 - 7) / 2 + 1;
    let pool_reduce = Pool2d {
        kernel: 3,
        stride: 2,
        padding: 0,
    };
    let pool_keep = Pool2d {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let side2 = pool_reduce.out_side(side1);
    let side3 = pool_reduce.out_side(side2);
    let side4 = pool_reduce.out_side(side3);
    // Profiling needs no reproducible values: candle's own generator will do.
    let random = |shape: &[usize]| Tensor::rand(-1f32, 1f32, shape, &Device::Cpu);
    type Layer<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;
    let conv = |name: &'static str, stride: usize, padding: usize| -> Layer<'_> {
        let (w, b) = (
            param(&format!("{name}.weight")),
            param(&format!("{name}.bias")),
        );
        Box::new(move |xs: &Tensor| conv2d_relu(xs, &w, &b, stride, padding))
    };
    // The FeatEx pooling of the conv branch (the layer's input) and of the pool branch (a second,
    // fixed input) into one concatenated output.
    // As the training step runs FeatEx: the conv branch's 3x3 convolution, ReLU and pool as one
    // op, then the concatenation with the pooled pool branch (a second, fixed input).
    let conv_pool = |name: &'static str| -> Layer<'_> {
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
    let layers: Vec<(&str, Vec<usize>, bool, Layer<'_>)> = vec![
        (
            "conv1+pool1",
            vec![n, 1, config.image_size, config.image_size],
            false,
            {
                let (w, b) = (param("conv1.weight"), param("conv1.bias"));
                Box::new(move |xs: &Tensor| conv2d_relu_max_pool2d(xs, &w, &b, 2, 3, pool_reduce))
            },
        ),
        ("lrn1", vec![n, 64, side2, side2], true, {
            let (w, b) = (param("lrn1.weight"), param("lrn1.bias"));
            Box::new(move |xs: &Tensor| layer_norm(xs, &w, &b, 1e-5))
        }),
        (
            "conv2a",
            vec![n, 64, side2, side2],
            true,
            conv("conv2a", 1, 0),
        ),
        (
            "conv2b+pool2b",
            vec![n, 96, side2, side2],
            true,
            conv_pool("conv2b"),
        ),
        (
            "pool2a",
            vec![n, 64, side2, side2],
            true,
            Box::new(move |xs: &Tensor| max_pool2d(xs, pool_keep)),
        ),
        (
            "conv2c",
            vec![n, 64, side2, side2],
            true,
            conv("conv2c", 1, 0),
        ),
        (
            "pool2b+cat",
            vec![n, 208, side3, side3],
            true,
            pool_cat(&[n, 64, side2, side2])?,
        ),
        (
            "conv3a",
            vec![n, 272, side3, side3],
            true,
            conv("conv3a", 1, 0),
        ),
        (
            "conv3b+pool3b",
            vec![n, 96, side3, side3],
            true,
            conv_pool("conv3b"),
        ),
        (
            "pool3a",
            vec![n, 272, side3, side3],
            true,
            Box::new(move |xs: &Tensor| max_pool2d(xs, pool_keep)),
        ),
        (
            "conv3c",
            vec![n, 272, side3, side3],
            true,
            conv("conv3c", 1, 0),
        ),
        (
            "pool3b+cat",
            vec![n, 208, side4, side4],
            true,
            pool_cat(&[n, 64, side3, side3])?,
        ),
    ];
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
        let mut output = Vec::new();
        for _ in 0..=repeats {
            let start = Instant::now();
            let out = layer(&input)?;
            forward.push(start.elapsed().as_secs_f64());
            output = out.dims().to_vec();
            // A plain sum: its backward is one tensor of ones, so the timing is the layer's own.
            let objective = out.sum_all()?;
            let start = Instant::now();
            let grads = objective.backward()?;
            backward.push(start.elapsed().as_secs_f64());
            drop(grads);
        }
        timings.push(LayerTiming {
            layer: name.to_string(),
            output,
            forward_ms: Spread::of(&forward[1..]).median * 1e3,
            backward_ms: Spread::of(&backward[1..]).median * 1e3,
        });
    }
    Ok(timings)
}
