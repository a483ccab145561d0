//! Checkpoints of a fold: [`TrainState`] (everything that changes during training) as
//! `last.json`, beside the weights and Adam state of that epoch as safetensors; the same for the
//! best epoch as `best.json`.
//!
//! `last.json` is the commit point: it is replaced atomically only after the weights it names
//! are completely written, so a run killed at any moment (SIGKILL included) finds either the
//! previous epoch's state or this one's, never half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use dexpression_model::{save_tensors_with_metadata, Adam, Dexpression, WeightsMetadata};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::history::{write_atomic, EpochRecord};
use crate::metrics::Metrics;
use crate::{Error, Result};

/// The state of the last finished epoch of a fold.
pub const LAST_STATE: &str = "last.json";
/// The state of the best epoch of a fold.
pub const BEST_STATE: &str = "best.json";

/// Everything about a fold's training that a resumed run needs, plus what people want to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Fold, from 1.
    pub fold: usize,
    /// Last finished epoch, from 1 (0: none yet).
    pub epoch: usize,
    /// Whether every epoch of the fold is done.
    pub finished: bool,
    /// File in the fold folder holding this epoch's weights and Adam state.
    pub weights: Option<String>,
    /// The dropout generator: seed and number of training forwards so far.
    pub dropout_rng: (u64, u64),
    /// Adam steps taken.
    pub adam_steps: u64,
    /// The best epoch so far by the selection metric, with its score and weights file.
    pub best: Option<BestEpoch>,
    /// Every finished epoch of the fold.
    pub records: Vec<EpochRecord>,
    /// The prepared dataset's hash.
    pub dataset_key: String,
    /// The run's options.
    pub config: TrainConfig,
    /// Version of the train crate that wrote this.
    pub version: String,
}

/// The epoch a `best` checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Accuracy (percent) on the test or validation samples, whichever selects.
    pub score: f64,
    /// Weights file in the fold folder.
    pub weights: String,
}

/// What `best.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestState {
    /// Fold, from 1.
    pub fold: usize,
    /// The best epoch and its weights file.
    pub best: BestEpoch,
    /// Test metrics of that epoch.
    pub test: Metrics,
    /// Validation metrics of that epoch, when selecting on validation.
    pub validation: Option<Metrics>,
    /// The prepared dataset's hash.
    pub dataset_key: String,
    /// The run's options.
    pub config: TrainConfig,
    /// Version of the train crate that wrote this.
    pub version: String,
}

impl TrainState {
    /// The state of a fold before its first epoch.
    pub fn new(fold: usize, config: &TrainConfig, dropout_rng: (u64, u64)) -> Self {
        TrainState {
            fold,
            epoch: 0,
            finished: false,
            weights: None,
            dropout_rng,
            adam_steps: 0,
            best: None,
            records: Vec::new(),
            dataset_key: config.dataset_key.clone(),
            config: config.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The folder of fold `fold` (from 1) inside the output folder.
pub fn fold_dir(out: &Path, fold: usize) -> PathBuf {
    out.join(format!("fold{fold}"))
}

/// Reads a fold's `last.json`, if there is one, and checks it belongs to this run.
pub fn load_state(fold_dir: &Path, config: &TrainConfig) -> Result<Option<TrainState>> {
    let path = fold_dir.join(LAST_STATE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|err| Error::Checkpoint {
        path: path.clone(),
        reason: format!("not a training state ({err})"),
    })?;
    if state.dataset_key != config.dataset_key {
        return Err(Error::Checkpoint {
            path,
            reason: "it was trained on another dataset (its dataset key differs)".into(),
        });
    }
    let differences = config.differences(&state.config);
    if !differences.is_empty() {
        return Err(Error::Checkpoint {
            path,
            reason: format!(
                "it was trained with other options ({})",
                differences.join(", ")
            ),
        });
    }
    Ok(Some(state))
}

/// Rebuilds the network and Adam from a state's weights file, with the dropout generator where
/// it was.
pub fn restore(
    fold_dir: &Path,
    state: &TrainState,
    device: &Device,
) -> Result<(Dexpression, Adam)> {
    let name = state.weights.as_deref().ok_or_else(|| Error::Checkpoint {
        path: fold_dir.join(LAST_STATE),
        reason: "names no weights file".into(),
    })?;
    let path = fold_dir.join(name);
    let model = Dexpression::load_with_config(&path, state.config.model_config(), device)?;
    let tensors: HashMap<_, _> =
        candle_core::safetensors::load(&path, device).map_err(|err| Error::Checkpoint {
            path: path.clone(),
            reason: format!("unreadable weights ({err})"),
        })?;
    let mut adam = Adam::new(model.trainable_vars(), state.config.adam_config())?;
    adam.load_state(&tensors, &path)?;
    model.set_dropout_state(state.dropout_rng.0, state.dropout_rng.1);
    Ok((model, adam))
}

/// Saves the epoch `state` has just recorded: weights and Adam state, `best` when `best` is
/// given, then `last.json`; finally removes the previous epoch's files (unless the run keeps
/// every epoch).
pub fn save(
    fold_dir: &Path,
    state: &mut TrainState,
    model: &Dexpression,
    adam: &Adam,
    best: Option<&EpochRecord>,
) -> Result<()> {
    let mut tensors = model.state_dict()?;
    tensors.extend(adam.state()?);
    // The class names and input side go into every weights file, so `predict` needs only it.
    let metadata = WeightsMetadata {
        class_names: state.config.class_names.clone(),
        image_size: state.config.image_size,
    };
    let weights_name = format!("last-epoch{:03}.safetensors", state.epoch);
    save_tensors_with_metadata(&tensors, &metadata, &fold_dir.join(&weights_name))?;
    let previous_last = state.weights.replace(weights_name);

    if let Some(record) = best {
        let best_name = format!("best-epoch{:03}.safetensors", state.epoch);
        save_tensors_with_metadata(&tensors, &metadata, &fold_dir.join(&best_name))?;
        let score = match &record.validation {
            Some(validation) => validation.accuracy,
            None => record.test.accuracy,
        };
        let previous_best = state.best.replace(BestEpoch {
            epoch: state.epoch,
            score,
            weights: best_name,
        });
        let best_state = BestState {
            fold: state.fold,
            best: state.best.clone().expect("just set above"),
            test: record.test.clone(),
            validation: record.validation.clone(),
            dataset_key: state.dataset_key.clone(),
            config: state.config.clone(),
            version: state.version.clone(),
        };
        write_json_atomic(&fold_dir.join(BEST_STATE), &best_state)?;
        if let Some(previous) = previous_best
            .filter(|previous| !state.config.keep_every_epoch && previous.epoch != state.epoch)
        {
            remove_if_present(&fold_dir.join(previous.weights));
        }
    }
    state.dropout_rng = model.dropout_state();
    state.adam_steps = adam.step_count();
    write_json_atomic(&fold_dir.join(LAST_STATE), state)?;
    if let Some(previous) = previous_last.filter(|previous| {
        !state.config.keep_every_epoch && Some(previous) != state.weights.as_ref()
    }) {
        remove_if_present(&fold_dir.join(previous));
    }
    Ok(())
}

/// Removes weights files of a fold that its states no longer name: left over when a run was
/// killed between writing new weights and removing old ones.
pub fn remove_stale_weights(fold_dir: &Path, state: &TrainState) {
    if state.config.keep_every_epoch {
        return;
    }
    let Ok(entries) = std::fs::read_dir(fold_dir) else {
        return;
    };
    let keep: Vec<&str> = state
        .weights
        .iter()
        .map(String::as_str)
        .chain(state.best.iter().map(|b| b.weights.as_str()))
        .collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name.ends_with(".safetensors") || name.ends_with(".safetensors.tmp");
        if is_weights && !keep.contains(&name.as_str()) {
            remove_if_present(&entry.path());
        }
    }
}

/// The epoch records of every fold folder of the run (finished or not), in fold order.
pub fn collect_records(out: &Path, config: &TrainConfig) -> Result<Vec<EpochRecord>> {
    let mut records = Vec::new();
    for fold in 1..=config.folds {
        if let Some(state) = load_state(&fold_dir(out, fold), config)? {
            records.extend(state.records);
        }
    }
    Ok(records)
}

/// Writes `value` as pretty JSON through a temporary file renamed into place.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|err| Error::Json {
        path: path.to_path_buf(),
        message: format!("cannot encode: {err}"),
    })?;
    write_atomic(path, text.as_bytes())
}

fn remove_if_present(path: &Path) {
    // A file already gone is what we wanted; any other failure only leaves a stray file.
    let _ = std::fs::remove_file(path);
}
