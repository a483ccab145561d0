//! [`run`]: the cross-validation loop, top to bottom.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, ModuleT, Tensor};
use dexpression_dataset::{Dataset, Sample};
use dexpression_model::{Adam, Dexpression};
use dexpression_runfiles::{CONFIG_FILE, HISTORY_CSV, HISTORY_JSONL};

use crate::batching::{batch_tensors, derived_rng, derived_seed, epoch_batches, Purpose};
use crate::checkpoint::{
    self, collect_records, load_state, remove_stale_weights, restore, TrainState,
};
use crate::config::TrainConfig;
use crate::folds::{plan_folds, FoldPlan};
use crate::history::{write_history, EpochRecord};
use crate::layout::fold_dir;
use crate::metrics::{Metrics, MetricsAccumulator};
use crate::output::{lock_output, move_aside, write_marker};
use crate::progress::{FoldInfo, Progress, RunInfo};
use crate::{Error, Result};

/// How this invocation treats the output folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Train only this fold (from 1), e.g. one job of a scheduler's array.
    pub only_fold: Option<usize>,
    /// Start over instead of resuming: what an earlier run left in the output folder (the
    /// selected folds, or the whole run when its options differ) is moved into
    /// `<out>/.previous-<time>/`, never deleted.
    pub restart: bool,
    /// Keep the rayon pool's threads awake (spinning) through each training step on the CPU
    /// (`dexpression_kernels::with_threads_awake`) instead of letting them sleep between the
    /// step's parallel regions: at small input sides a step is some forty regions of well under a
    /// millisecond, and waking a sleeping thread for each costs tens of microseconds. For a
    /// program that owns its pool (the command line's `train` does this by default); off by
    /// default here, since spinning threads take CPU time from other work sharing the pool.
    pub threads_awake: bool,
}

/// What [`run`] leaves behind.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Every epoch record in the output folder (all folds found, not only this invocation's).
    pub records: Vec<EpochRecord>,
    /// The `history.csv` written.
    pub history_csv: PathBuf,
}

impl RunSummary {
    /// Mean over folds of the last epoch's test accuracy (percent), for folds that have one.
    pub fn mean_final_test_accuracy(&self) -> Option<f64> {
        let mut finals: Vec<&EpochRecord> = Vec::new();
        for record in &self.records {
            match finals.iter_mut().find(|kept| kept.fold == record.fold) {
                Some(kept) if kept.epoch < record.epoch => *kept = record,
                Some(_) => {}
                None => finals.push(record),
            }
        }
        (!finals.is_empty())
            .then(|| finals.iter().map(|r| r.test.accuracy).sum::<f64>() / finals.len() as f64)
    }
}

/// Trains and evaluates every fold (or `options.only_fold`) of `dataset` as `config` says,
/// writing `config.json`, per-fold checkpoints and the history into `out`.
///
/// Folds already finished in `out` are skipped and an unfinished one resumes after its last
/// finished epoch, so the same call after an interruption ends as an uninterrupted run would.
pub fn run(
    config: &TrainConfig,
    dataset: &Dataset,
    out: &Path,
    options: &RunOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<RunSummary> {
    config.validate()?;
    check_dataset(config, dataset)?;
    let (plans, warnings) = plan_folds(config, &dataset.samples)?;
    let selected: Vec<&FoldPlan> = match options.only_fold {
        Some(fold) if (1..=config.folds).contains(&fold) => vec![&plans[fold - 1]],
        Some(fold) => {
            return Err(Error::InvalidOption {
                name: "only_fold",
                value: fold.to_string(),
                expected: format!("a fold between 1 and {}", config.folds),
            })
        }
        None => plans.iter().collect(),
    };
    for warning in prepare_output(out, config, options, &selected)? {
        progress.warning(&warning);
    }
    for warning in &warnings {
        progress.warning(warning);
    }
    progress.run_start(&RunInfo {
        folds: selected.iter().map(|plan| plan.fold).collect(),
        n_folds: config.folds,
        epochs: config.epochs,
        device: dexpression_model::device_name(device),
    });

    for plan in selected {
        train_fold(
            config,
            &dataset.samples,
            plan,
            out,
            (device, options.threads_awake),
            progress,
        )?;
    }

    let records = {
        let _lock = lock_output(out)?;
        let records = collect_records(out, config)?;
        write_history(out, config, &records)?;
        records
    };
    Ok(RunSummary {
        records,
        history_csv: out.join(HISTORY_CSV),
    })
}

/// One fold: a fresh (or restored) network and optimiser, then epochs of training, evaluation
/// and checkpointing.
fn train_fold(
    config: &TrainConfig,
    samples: &[Sample],
    plan: &FoldPlan,
    out: &Path,
    (device, threads_awake): (&Device, bool),
    progress: &mut dyn Progress,
) -> Result<()> {
    let fold = plan.fold;
    let dir = fold_dir(out, fold);
    let saved = match load_state(&dir, config)? {
        Some(point) => {
            if let Some(message) = &point.fell_back {
                progress.warning(message);
                // The fallback becomes the commit point again, so the damaged file is not read
                // twice and the stale-file cleanup below keeps what this state names.
                checkpoint::write_json_atomic(&dir.join(checkpoint::LAST_STATE), &point.state)?;
            }
            Some(point.state)
        }
        None => None,
    };
    if saved.as_ref().is_some_and(|state| state.finished) {
        progress.fold_skipped(fold);
        return Ok(());
    }
    write_marker(&dir)?;
    let (model, mut adam, mut state) = match saved {
        Some(state) if state.epoch > 0 => {
            remove_stale_weights(&dir, &state);
            let (model, adam) = restore(&dir, &state, device)?;
            (model, adam, state)
        }
        _ => {
            let model = Dexpression::new(
                config.model_config(),
                derived_seed(config.seed, Purpose::Init, fold),
                device,
            )?;
            let adam = Adam::new(model.trainable_vars(), config.adam_config())?;
            let state = TrainState::new(fold, config, model.dropout_state());
            (model, adam, state)
        }
    };
    // Threads spin only on the CPU's pool; evaluation's forwards too, when asked.
    let threads_awake = threads_awake && device.is_cpu();
    let model = model.with_threads_awake(threads_awake);
    progress.fold_start(&FoldInfo {
        fold,
        n_train: plan.train.len(),
        n_validation: plan.validation.len(),
        n_test: plan.test.len(),
        resumed_epochs: state.epoch,
        epochs: config.epochs,
    });

    for epoch in state.epoch + 1..=config.epochs {
        let started = Instant::now();
        let batches = epoch_batches(&plan.train, config.batch_size, config.seed, fold, epoch);
        progress.epoch_start(fold, epoch, batches.len(), plan.train.len());
        let mut augment_rng = config
            .augment
            .then(|| derived_rng(config.seed, Purpose::Augment, fold, epoch));
        let mut train = MetricsAccumulator::default();
        for (batch_idx, batch) in batches.iter().enumerate() {
            let (xs, ys) = batch_tensors(
                samples,
                batch,
                config.image_size,
                augment_rng.as_mut(),
                device,
            )?;
            let mut step = || train_batch(&model, &mut adam, &xs, &ys);
            let outcome = if threads_awake {
                dexpression_model::kernels::with_threads_awake(step)?
            } else {
                step()?
            };
            if !outcome.loss.is_finite() {
                let kept = state
                    .weights
                    .as_ref()
                    .map(|name| format!(": {}", dir.join(name).display()))
                    .unwrap_or_default();
                return Err(Error::NonFiniteLoss {
                    fold,
                    epoch,
                    batch: batch_idx + 1,
                    loss: outcome.loss,
                    kept,
                });
            }
            train.add_batch(
                &outcome.log_probabilities,
                &targets_of(samples, batch),
                outcome.loss,
            )?;
            progress.batch_done(fold, epoch, batch_idx + 1, batch.len());
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let n_classes = config.class_names.len();
        let mut train = train.finish(n_classes);
        // Training predictions are many and say little; the test ones feed confusion matrices.
        train.predictions.clear();
        train.truths.clear();
        let test = evaluate(&model, samples, &plan.test, config, device)?;
        let validation = (!plan.validation.is_empty())
            .then(|| evaluate(&model, samples, &plan.validation, config, device))
            .transpose()?;

        let record = EpochRecord {
            fold,
            epoch,
            train,
            test,
            validation,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: plan.train.len() as f64 / train_seconds.max(1e-9),
        };
        let score = record
            .validation
            .as_ref()
            .map_or(record.test.accuracy, |validation| validation.accuracy);
        let is_best = state.best.as_ref().is_none_or(|best| score > best.score);
        state.epoch = epoch;
        state.finished = epoch == config.epochs;
        state.records.push(record.clone());
        checkpoint::save(&dir, &mut state, &model, &adam, is_best.then_some(&record))?;
        {
            // Other fold jobs may be writing the history into the same folder.
            let _lock = lock_output(out)?;
            write_history(out, config, &collect_records(out, config)?)?;
        }
        progress.epoch_done(&record);
    }
    progress.fold_done(fold);
    Ok(())
}

/// What one training step produced.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The network's log-probabilities for the batch (training mode).
    pub log_probabilities: Tensor,
    /// The batch's mean NLL loss; when it is not finite no update was made.
    pub loss: f32,
}

/// One optimisation step on a batch: forward in training mode, NLL loss, backward, Adam. A NaN or
/// infinite loss (poisoned input, diverged weights) skips the update, so the weights stay the
/// last good ones, and is returned for the caller to stop on.
pub fn train_batch(
    model: &Dexpression,
    adam: &mut Adam,
    xs: &Tensor,
    ys: &Tensor,
) -> Result<BatchOutcome> {
    let log_probabilities = model.forward_t(xs, true)?;
    let loss = candle_nn::loss::nll(&log_probabilities, ys)?;
    // The backward is queued before the loss is read: on a GPU, reading it waits for the device,
    // and reading it first would leave the device idle while the backward's kernels are queued.
    // A non-finite loss wastes that backward, which only happens when the run is stopping.
    let grads = loss.backward()?;
    let loss_value = loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
    if loss_value.is_finite() {
        adam.step(&grads)?;
    }
    Ok(BatchOutcome {
        log_probabilities,
        loss: loss_value,
    })
}

/// Accuracy, loss and predictions of the network (evaluation mode) on some samples.
pub(crate) fn evaluate(
    model: &Dexpression,
    samples: &[Sample],
    indices: &[usize],
    config: &TrainConfig,
    device: &Device,
) -> Result<Metrics> {
    let mut metrics = MetricsAccumulator::default();
    for batch in indices.chunks(config.batch_size.max(1)) {
        let (xs, ys) = batch_tensors(samples, batch, config.image_size, None, device)?;
        let log_probabilities = model.forward_t(&xs, false)?;
        let loss = candle_nn::loss::nll(&log_probabilities, &ys)?
            .to_device(&Device::Cpu)?
            .to_scalar::<f32>()?;
        metrics.add_batch(&log_probabilities, &targets_of(samples, batch), loss)?;
    }
    Ok(metrics.finish(config.class_names.len()))
}

fn targets_of(samples: &[Sample], batch: &[usize]) -> Vec<u32> {
    batch.iter().map(|&idx| samples[idx].label as u32).collect()
}

/// The dataset must be the one the configuration describes.
fn check_dataset(config: &TrainConfig, dataset: &Dataset) -> Result<()> {
    if dataset.image_size != config.image_size
        || dataset.key != config.dataset_key
        || dataset.class_names != config.class_names
    {
        return Err(Error::Data(format!(
            "the configuration describes a dataset at {} px with key {} and {} classes, but the dataset given is at {} px with key {} and {} classes; build the configuration from the dataset",
            config.image_size,
            config.dataset_key,
            config.class_names.len(),
            dataset.image_size,
            dataset.key,
            dataset.class_names.len()
        )));
    }
    if dataset.samples.iter().any(|sample| {
        sample.pixels.len() != config.image_size * config.image_size
            || sample.label >= config.class_names.len()
    }) {
        return Err(Error::Data(format!(
            "some samples are not {0}x{0} pixels or have a label beyond the {1} classes; prepare the dataset again",
            config.image_size,
            config.class_names.len()
        )));
    }
    Ok(())
}

/// Writes `config.json`, or checks that the one there matches, under the output folder's lock;
/// `restart` moves the earlier run aside (all of it when the options changed, else the selected
/// folds) into `<out>/.previous-<time>/`. Returns what was moved, for the user.
fn prepare_output(
    out: &Path,
    config: &TrainConfig,
    options: &RunOptions,
    selected: &[&FoldPlan],
) -> Result<Vec<String>> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let _lock = lock_output(out)?;
    let config_path = out.join(CONFIG_FILE);
    let differences = if config_path.exists() {
        match TrainConfig::load(&config_path) {
            Ok(earlier) => config.differences(&earlier),
            Err(err) if options.restart => vec![err.to_string()],
            Err(err) => return Err(err),
        }
    } else {
        Vec::new()
    };
    if !differences.is_empty() && !options.restart {
        return Err(Error::ConfigChanged {
            path: config_path,
            differences: differences.join(", "),
        });
    }
    let mut moved = Vec::new();
    if options.restart {
        let mut earlier: Vec<PathBuf> = Vec::new();
        let folds: Vec<usize> = if differences.is_empty() {
            selected.iter().map(|plan| plan.fold).collect()
        } else {
            // The whole earlier run, whatever its fold count was.
            (1..=64).collect()
        };
        for fold in folds {
            let dir = fold_dir(out, fold);
            if dir.join(checkpoint::LAST_STATE).exists()
                || dir.join(checkpoint::BEST_STATE).exists()
                || dir.join(crate::output::MARKER_FILE).exists()
            {
                earlier.push(dir);
            }
        }
        if !differences.is_empty() {
            for name in [CONFIG_FILE, HISTORY_CSV, HISTORY_JSONL] {
                let path = out.join(name);
                if path.exists() {
                    earlier.push(path);
                }
            }
        }
        if let Some(aside) = move_aside(out, &earlier)? {
            moved.push(format!(
                "starting over: the earlier run's {} moved to {} (delete it yourself when no longer needed)",
                earlier
                    .iter()
                    .filter_map(|path| path.file_name())
                    .map(|name| name.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", "),
                aside.display()
            ));
        }
    }
    remove_stale_temporaries(out);
    write_marker(out)?;
    config.save(&config_path)?;
    Ok(moved)
}

/// Removes temporary files of the shared files left by a process killed while writing them.
/// Called under the output folder's lock, which every writer of these files holds, so none of
/// them is being written now; other files are left alone.
fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let shared = [CONFIG_FILE, HISTORY_CSV, HISTORY_JSONL]
            .iter()
            .any(|target| name.starts_with(&format!(".{target}.fsio-")));
        if shared && dexpression_fsio::is_temporary_name(&name) {
            // Already gone is fine; a failure only leaves a stray file.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
