//! The run's history: `history.csv` in the PyTorch port's columns (read by the port's tools and
//! the report crate) and `history.jsonl` with everything, both rewritten by atomic replace
//! ([`dexpression_fsio`]) after every epoch.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// File name of the port-compatible history.
pub const HISTORY_CSV: &str = "history.csv";
/// File name of the complete history, one JSON record per fold and epoch.
pub const HISTORY_JSONL: &str = "history.jsonl";
/// The port's columns, in its order.
pub const CSV_HEADER: &str = "fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth";

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
pub fn write_history(out: &Path, config: &TrainConfig, records: &[EpochRecord]) -> Result<()> {
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

/// The CSV text: accuracy in percent, lists as `"[1, 2, 3]"`, numbers in Rust's shortest
/// round-trip form (so equal runs give equal bytes).
pub fn history_csv(records: &[&EpochRecord]) -> String {
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    let list = |values: &[usize]| {
        format!(
            "\"[{}]\"",
            values
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    for record in records {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{}",
            record.fold,
            record.epoch,
            record.train.accuracy,
            record.test.accuracy,
            record.train.loss,
            record.test.loss,
            list(&record.test.predictions),
            list(&record.test.truths),
        );
    }
    csv
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
