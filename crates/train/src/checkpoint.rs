//! Checkpoints of a fold: [`TrainState`] (everything that changes during training) as
//! `last.json`, beside the weights and Adam state of that epoch as safetensors; the same for the
//! best epoch as `best.json`.
//!
//! `last.json` is the commit point. An epoch is saved in this order: the weights files (best,
//! then last), `best.json`, `last.json`, and only then are the files the previous state named
//! removed; every file goes through [`dexpression_fsio`] (unique temporary, fsync, rename). A run
//! killed at any moment (SIGKILL, power cut) so finds either the previous epoch's state or this
//! one's, never half of one, and every file a state names exists.
//!
//! Each `last-epochNNN.safetensors` also carries the state that names it (in its safetensors
//! metadata), so a damaged `last.json` falls back to the newest intact weights file. File names
//! read from a state must be ones this module writes (`last-epochNNN.safetensors`,
//! `best-epochNNN.safetensors`): a state naming `../x` is refused, never loaded or deleted.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::Device;
use dexpression_model::{serialize_with_metadata, Adam, Dexpression, WeightsMetadata};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::history::EpochRecord;
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

/// Key of the safetensors metadata entry of a `last-epochNNN.safetensors` that holds the
/// [`TrainState`] naming that file.
pub(crate) const STATE_METADATA_KEY: &str = "dexpression_train_state";

/// Which of the two weights files of a fold a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    /// `last-epochNNN.safetensors`: weights and Adam state of the last finished epoch.
    Last,
    /// `best-epochNNN.safetensors`: the same for the best epoch.
    Best,
}

impl WeightsKind {
    fn prefix(self) -> &'static str {
        match self {
            WeightsKind::Last => "last-epoch",
            WeightsKind::Best => "best-epoch",
        }
    }
}

const WEIGHTS_EXTENSION: &str = ".safetensors";

/// The weights file name this module writes for `kind` at `epoch`.
pub fn weights_name(kind: WeightsKind, epoch: usize) -> String {
    format!("{}{epoch:03}{WEIGHTS_EXTENSION}", kind.prefix())
}

/// The kind and epoch of a weights file name this module writes, or `None` for any other name
/// (`../x`, `notes.safetensors`, `last-epoch1.safetensors`): only such names are ever loaded
/// from, or deleted in, a fold folder.
pub fn parse_weights_name(name: &str) -> Option<(WeightsKind, usize)> {
    [WeightsKind::Last, WeightsKind::Best]
        .into_iter()
        .find_map(|kind| {
            let digits = name
                .strip_prefix(kind.prefix())?
                .strip_suffix(WEIGHTS_EXTENSION)?;
            if digits.len() < 3 || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let epoch: usize = digits.parse().ok()?;
            // Only the canonical spelling: `last-epoch0001` is not a name we write.
            (weights_name(kind, epoch) == name).then_some((kind, epoch))
        })
}

/// Where a fold resumes from: its state, and a message for the user when `last.json` was
/// damaged and an older intact checkpoint was used instead.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    /// The state to resume from.
    pub state: TrainState,
    /// Set when `last.json` could not be used: what was wrong and which file was used instead.
    pub fell_back: Option<String>,
}

/// Reads a fold's `last.json`, if there is one, and checks it belongs to this run and that the
/// files it names are ones this crate writes and are complete.
///
/// A damaged `last.json` (unreadable, naming a missing, truncated or foreign file) falls back to
/// the newest intact `last-epochNNN.safetensors` of the fold (saying so in
/// [`ResumePoint::fell_back`]); with none, the error names `last.json` and
/// [`crate::RunOptions::restart`]. A state of another dataset or other options is an error, not
/// damage.
pub fn load_state(fold_dir: &Path, config: &TrainConfig) -> Result<Option<ResumePoint>> {
    let path = fold_dir.join(LAST_STATE);
    if !path.exists() {
        return Ok(None);
    }
    let damage = match read_state_file(&path) {
        Ok(state) => {
            check_belongs(&path, &state, config)?;
            match check_intact(fold_dir, &state) {
                Ok(()) => {
                    return Ok(Some(ResumePoint {
                        state,
                        fell_back: None,
                    }))
                }
                Err(damage) => damage,
            }
        }
        Err(damage) => damage,
    };
    match newest_intact_checkpoint(fold_dir, config) {
        Some((file, state)) => Ok(Some(ResumePoint {
            fell_back: Some(format!(
                "{}: {damage}; resuming from {} (epoch {}), the newest intact checkpoint of the fold",
                path.display(),
                fold_dir.join(&file).display(),
                state.epoch
            )),
            state,
        })),
        None => Err(Error::Checkpoint {
            path,
            reason: format!(
                "{damage}, and no intact last-epochNNN.safetensors of this run is left in {} to resume from",
                fold_dir.display()
            ),
        }),
    }
}

/// Reads and parses a state file; the error says what is wrong with it.
fn read_state_file(path: &Path) -> std::result::Result<TrainState, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("unreadable ({err})"))?;
    serde_json::from_str(&text).map_err(|err| format!("not a training state ({err})"))
}

/// A state of another dataset or other options is the user's to sort out: an error.
fn check_belongs(path: &Path, state: &TrainState, config: &TrainConfig) -> Result<()> {
    if state.dataset_key != config.dataset_key {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "it was trained on another dataset (its dataset key differs)".into(),
        });
    }
    let differences = config.differences(&state.config);
    if !differences.is_empty() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "it was trained with other options ({})",
                differences.join(", ")
            ),
        });
    }
    Ok(())
}

/// Every file the state names is one this module writes, of the right kind, and complete; the
/// state's counters are consistent.
fn check_intact(fold_dir: &Path, state: &TrainState) -> std::result::Result<(), String> {
    if state.records.len() != state.epoch {
        return Err(format!(
            "it records {} epochs but says epoch {}",
            state.records.len(),
            state.epoch
        ));
    }
    let named = state
        .weights
        .iter()
        .map(|name| (WeightsKind::Last, name))
        .chain(
            state
                .best
                .iter()
                .map(|best| (WeightsKind::Best, &best.weights)),
        );
    for (kind, name) in named {
        match parse_weights_name(name) {
            Some((found, _)) if found == kind => {}
            _ => {
                return Err(format!(
                "it names the weights file {name:?}, which is not a name this program writes ({})",
                weights_name(kind, 1).replace("001", "NNN")
            ))
            }
        }
        check_weights_complete(&fold_dir.join(name))?;
    }
    if state.epoch > 0 && state.weights.is_none() {
        return Err("it names no weights file".into());
    }
    Ok(())
}

/// The safetensors file is there, its header parses and its length is what the header says.
/// Returns the header's metadata.
fn check_weights_complete(path: &Path) -> std::result::Result<HashMap<String, String>, String> {
    // A checkpoint's header is a few tens of kilobytes; anything far larger is not ours.
    const MAX_HEADER_LEN: u64 = 64 << 20;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let mut file = std::fs::File::open(path).map_err(|err| format!("{name}: {err}"))?;
    let file_len = file
        .metadata()
        .map_err(|err| format!("{name}: {err}"))?
        .len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| format!("{name} is truncated (no header)"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN || header_len + 8 > file_len {
        return Err(format!(
            "{name} is truncated or not safetensors (header length {header_len})"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|err| format!("{name}: {err}"))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|err| format!("{name} has an unreadable header ({err})"))?;
    let data_len = header
        .iter()
        .filter(|(key, _)| key.as_str() != "__metadata__")
        .filter_map(|(_, info)| info.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    if 8 + header_len + data_len != file_len {
        return Err(format!(
            "{name} is truncated ({file_len} bytes, its header describes {})",
            8 + header_len + data_len
        ));
    }
    let metadata = header
        .get("__metadata__")
        .and_then(|metadata| metadata.as_object())
        .map(|metadata| {
            metadata
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(metadata)
}

/// The newest `last-epochNNN.safetensors` of the fold whose embedded state belongs to this run
/// and whose named files are all intact.
fn newest_intact_checkpoint(fold_dir: &Path, config: &TrainConfig) -> Option<(String, TrainState)> {
    let mut candidates: Vec<(usize, String)> = std::fs::read_dir(fold_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            match parse_weights_name(&name)? {
                (WeightsKind::Last, epoch) => Some((epoch, name)),
                (WeightsKind::Best, _) => None,
            }
        })
        .collect();
    candidates.sort();
    candidates.into_iter().rev().find_map(|(_, name)| {
        let metadata = check_weights_complete(&fold_dir.join(&name)).ok()?;
        let state: TrainState = serde_json::from_str(metadata.get(STATE_METADATA_KEY)?).ok()?;
        let usable = state.weights.as_deref() == Some(name.as_str())
            && state.dataset_key == config.dataset_key
            && config.differences(&state.config).is_empty()
            && check_intact(fold_dir, &state).is_ok();
        usable.then_some((name, state))
    })
}

/// Rebuilds the network and Adam from a state's weights file, with the dropout generator where
/// it was.
pub(crate) fn restore(
    fold_dir: &Path,
    state: &TrainState,
    device: &Device,
) -> Result<(Dexpression, Adam)> {
    let name = state.weights.as_deref().ok_or_else(|| Error::Checkpoint {
        path: fold_dir.join(LAST_STATE),
        reason: "names no weights file".into(),
    })?;
    if parse_weights_name(name).is_none() {
        return Err(Error::Checkpoint {
            path: fold_dir.join(LAST_STATE),
            reason: format!(
                "names the weights file {name:?}, which is not a name this program writes"
            ),
        });
    }
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

/// Saves the epoch `state` has just recorded, in commit order: the best weights (when `best`
/// is given), the last weights (carrying the new state), `best.json`, `last.json`; only then
/// the files the previous state named and the new one does not (unless the run keeps every
/// epoch).
pub(crate) fn save(
    fold_dir: &Path,
    state: &mut TrainState,
    model: &Dexpression,
    adam: &Adam,
    best: Option<&EpochRecord>,
) -> Result<()> {
    let mut tensors = model.state_dict()?;
    tensors.extend(adam.state()?);
    let tensors: Vec<(String, candle_core::Tensor)> = tensors
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    // The class names, input side and variant go into every weights file, so `predict` needs
    // only it.
    let metadata = WeightsMetadata::of(model.config(), &state.config.class_names);
    let previous_last = state.weights.clone();
    let previous_best = state.best.clone();

    let mut best_state = None;
    if let Some(record) = best {
        let best_name = weights_name(WeightsKind::Best, state.epoch);
        write_weights(&fold_dir.join(&best_name), &tensors, &metadata, None)?;
        let score = match &record.validation {
            Some(validation) => validation.accuracy,
            None => record.test.accuracy,
        };
        let best_epoch = BestEpoch {
            epoch: state.epoch,
            score,
            weights: best_name,
        };
        state.best = Some(best_epoch.clone());
        best_state = Some(BestState {
            fold: state.fold,
            best: best_epoch,
            test: record.test.clone(),
            validation: record.validation.clone(),
            dataset_key: state.dataset_key.clone(),
            config: state.config.clone(),
            version: state.version.clone(),
        });
    }
    let last_name = weights_name(WeightsKind::Last, state.epoch);
    state.weights = Some(last_name.clone());
    state.dropout_rng = model.dropout_state();
    state.adam_steps = adam.step_count();
    let state_json = serde_json::to_string(&*state).map_err(|err| Error::Json {
        path: fold_dir.join(LAST_STATE),
        message: format!("cannot encode: {err}"),
    })?;
    write_weights(
        &fold_dir.join(&last_name),
        &tensors,
        &metadata,
        Some(state_json),
    )?;
    if let Some(best_state) = &best_state {
        write_json_atomic(&fold_dir.join(BEST_STATE), best_state)?;
    }
    write_json_atomic(&fold_dir.join(LAST_STATE), state)?;

    if !state.config.keep_every_epoch {
        let still_named: Vec<&str> = state
            .weights
            .iter()
            .map(String::as_str)
            .chain(state.best.iter().map(|best| best.weights.as_str()))
            .collect();
        let replaced = previous_last
            .into_iter()
            .chain(previous_best.map(|best| best.weights));
        for name in replaced {
            if !still_named.contains(&name.as_str()) && parse_weights_name(&name).is_some() {
                remove_if_present(&fold_dir.join(name));
            }
        }
    }
    Ok(())
}

/// Writes named tensors as safetensors, with the state that names them as metadata when given.
fn write_weights(
    path: &Path,
    tensors: &[(String, candle_core::Tensor)],
    metadata: &WeightsMetadata,
    state_json: Option<String>,
) -> Result<()> {
    let mut entries: BTreeMap<String, String> = metadata.to_map().into_iter().collect();
    if let Some(json) = state_json {
        entries.insert(STATE_METADATA_KEY.to_string(), json);
    }
    let bytes = serialize_with_metadata(tensors, &entries)?;
    dexpression_fsio::write_bytes(path, &bytes)?;
    Ok(())
}

/// Removes weights files of a fold that its state no longer names: left over when a run was
/// killed between writing new weights and removing old ones. Only names this module writes
/// (and their temporary files) are removed; anything else in the folder is left alone.
pub(crate) fn remove_stale_weights(fold_dir: &Path, state: &TrainState) {
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
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let ours = parse_weights_name(&name).is_some() || is_our_temporary(&name);
        if ours && !keep.contains(&name.as_str()) {
            remove_if_present(&entry.path());
        }
    }
}

/// A temporary file of a weights or state file, as [`dexpression_fsio`] names them
/// (`.last-epoch003.safetensors.fsio-….tmp`) or as earlier versions did
/// (`last-epoch003.safetensors.tmp`).
fn is_our_temporary(name: &str) -> bool {
    let target = if dexpression_fsio::is_temporary_name(name) {
        name.strip_prefix('.')
            .and_then(|rest| rest.split(".fsio-").next())
    } else {
        name.strip_suffix(".tmp")
    };
    target.is_some_and(|target| {
        parse_weights_name(target).is_some() || target == LAST_STATE || target == BEST_STATE
    })
}

/// The epoch records of every fold folder of the run (finished or not), in fold order.
pub(crate) fn collect_records(out: &Path, config: &TrainConfig) -> Result<Vec<EpochRecord>> {
    let mut records = Vec::new();
    for fold in 1..=config.folds {
        if let Some(point) = load_state(&crate::layout::fold_dir(out, fold), config)? {
            records.extend(point.state.records);
        }
    }
    Ok(records)
}

/// Writes `value` as pretty JSON, atomically and durably.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|err| Error::Json {
        path: path.to_path_buf(),
        message: format!("cannot encode: {err}"),
    })?;
    dexpression_fsio::write_bytes(path, text.as_bytes())?;
    Ok(())
}

fn remove_if_present(path: &Path) {
    // A file already gone is what we wanted; any other failure only leaves a stray file.
    let _ = std::fs::remove_file(path);
}
