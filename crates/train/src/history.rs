//! The run's history: `history.csv` in the PyTorch port's columns (read by the port's tools and
//! the report crate) and `history.jsonl` with everything, both rewritten by atomic replace
//! ([`dexpression_fsio`]) after every epoch.

use std::path::Path;

use dexpression_runfiles::{HistoryRow, HISTORY_CSV, HISTORY_JSONL};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// What one epoch of one fold measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Fold, from 1.
    pub fold: usize,
    /// Epoch, from 1.
    pub epoch: usize,
    /// On the training samples, measured during the epoch in training mode (dropout on, batch
    /// statistics), as the port did; predictions are not kept.
    pub train: Metrics,
    /// On the fold's test samples, in evaluation mode after the epoch.
    pub test: Metrics,
    /// On the validation split, when the run selects on it.
    pub validation: Option<Metrics>,
    /// Wall time of the epoch (training and evaluation), in seconds.
    pub seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// Writes `history.csv` and `history.jsonl` into `out` from `records` (sorted by fold and epoch
/// here), each through a temporary file renamed into place.
pub(crate) fn write_history(
    out: &Path,
    config: &TrainConfig,
    records: &[EpochRecord],
) -> Result<()> {
    let mut sorted: Vec<&EpochRecord> = records.iter().collect();
    sorted.sort_by_key(|record| (record.fold, record.epoch));
    write_atomic(&out.join(HISTORY_CSV), history_csv(&sorted).as_bytes())?;
    let mut jsonl = String::new();
    for record in sorted {
        let mut value = serde_json::to_value(record).map_err(|err| json_error(out, err))?;
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "options".into(),
                serde_json::to_value(config).map_err(|err| json_error(out, err))?,
            );
        }
        jsonl.push_str(&value.to_string());
        jsonl.push('\n');
    }
    write_atomic(&out.join(HISTORY_JSONL), jsonl.as_bytes())
}

/// The CSV text ([`dexpression_runfiles::history_csv`]): accuracy in percent, the test
/// predictions and truths of each epoch.
pub(crate) fn history_csv(records: &[&EpochRecord]) -> String {
    let rows: Vec<HistoryRow> = records.iter().map(|record| record.history_row()).collect();
    dexpression_runfiles::history_csv(&rows)
}

impl EpochRecord {
    /// Its row of `history.csv`, in the port's columns (test predictions included).
    pub fn history_row(&self) -> HistoryRow {
        // Folds and epochs are counted by this crate in the thousands at most.
        let count = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        HistoryRow {
            fold: count(self.fold),
            epoch: count(self.epoch),
            train_accuracy: self.train.accuracy,
            test_accuracy: self.test.accuracy,
            train_loss: self.train.loss,
            test_loss: self.test.loss,
            test_pred: self.test.predictions.clone(),
            test_truth: self.test.truths.clone(),
        }
    }
}

/// Reads `history.jsonl` back.
pub fn read_history_jsonl(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(line_idx, line)| {
            serde_json::from_str(line).map_err(|err| Error::Json {
                path: path.to_path_buf(),
                message: format!("line {}: not an epoch record ({err})", line_idx + 1),
            })
        })
        .collect()
}

/// Writes `bytes` as the whole of `path`, atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    dexpression_fsio::write_bytes(path, bytes)?;
    Ok(())
}

fn json_error(out: &Path, err: serde_json::Error) -> Error {
    Error::Json {
        path: out.join(HISTORY_JSONL),
        message: format!("cannot encode a record: {err}"),
    }
}
