//! The one error type of this crate; every message names the file (and line) it is about.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong while reading a history or writing a report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    // The cause is part of the message and deliberately not a `source()`, so that `anyhow`'s
    // chained display does not print it twice.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// Writing an output file (through a temporary renamed into place) failed.
    #[error(transparent)]
    Write(#[from] dexpression_fsio::Error),
    /// The history path (a CSV file or a run's folder) does not exist.
    #[error("{path}: no such file or folder; pass a history.csv or the output folder of a training run (`dexpression_train::run`)")]
    HistoryMissing {
        /// The path that was given.
        path: PathBuf,
    },
    /// A directory was given as a history but neither it nor a subdirectory holds `history.csv`.
    #[error("{dir}: no history.csv in this directory or its subdirectories; pass the CSV file itself or the output folder of a training run (`dexpression_train::run`)")]
    NoHistoryInDirectory {
        /// The directory.
        dir: PathBuf,
    },
    /// The CSV could not be parsed at all (bad quoting, unequal field counts, not UTF-8).
    #[error("{path}:{line}: not a valid CSV row: {message}")]
    Csv {
        /// The history file.
        path: PathBuf,
        /// One-based line number in the file.
        line: u64,
        /// The CSV reader's description.
        message: String,
    },
    /// The header lacks a column the report needs.
    #[error("{path}: the header has no `{column}` column; a history needs fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss (and test_pred,test_truth for confusion matrices)")]
    MissingColumn {
        /// The history file.
        path: PathBuf,
        /// The column name that was looked for.
        column: &'static str,
    },
    /// One field of a row does not hold what its column should.
    #[error("{path}:{line}: column `{column}` holds {value:?}, expected {expected}; fix or delete this row")]
    MalformedRow {
        /// The history file.
        path: PathBuf,
        /// One-based line number in the file.
        line: u64,
        /// The column name.
        column: &'static str,
        /// The text found in the field.
        value: String,
        /// What the field should hold.
        expected: &'static str,
    },
    /// A row's `test_pred` and `test_truth` lists differ in length.
    #[error("{path}:{line}: test_pred has {n_pred} labels but test_truth has {n_truth}; the two lists must pair up")]
    PredictionLengthMismatch {
        /// The history file.
        path: PathBuf,
        /// One-based line number in the file.
        line: u64,
        /// Length of `test_pred`.
        n_pred: usize,
        /// Length of `test_truth`.
        n_truth: usize,
    },
    /// A `test_pred` or `test_truth` label is not one of the run's classes.
    #[error(
        "{path}:{line}: column `{column}` holds label {label}, but {limit}; fix or delete this row"
    )]
    LabelOutOfRange {
        /// The history file.
        path: PathBuf,
        /// One-based line number in the file.
        line: u64,
        /// `test_pred` or `test_truth`.
        column: &'static str,
        /// The label found.
        label: usize,
        /// Which limit it breaks, e.g. `config.json names 7 classes (labels 0 to 6)`.
        limit: String,
    },
    /// The history holds no rows, so there is nothing to report.
    #[error("{path}: the history has a header but no rows; wait for the first epoch to finish")]
    EmptyHistory {
        /// The history file (or files, joined).
        path: PathBuf,
    },
    /// `config.json` is not the JSON object `cargo xtask train` writes.
    #[error("{path}: not a valid run configuration: {error}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What the JSON parser said.
        error: serde_json::Error,
    },
    /// The epoch choice was neither `final`, `best` nor an epoch number.
    #[error("epoch choice {0:?} is not `final`, `best` or an epoch number such as 25")]
    InvalidEpochChoice(String),
    /// The embedded font could not be registered with plotters.
    #[error("the embedded font could not be loaded; the crate's assets/DejaVuSans.ttf is damaged")]
    Font,
    /// Plotters failed to draw a figure.
    #[error("{path}: could not draw the figure: {message}")]
    Draw {
        /// The figure being drawn.
        path: PathBuf,
        /// Plotters' description.
        message: String,
    },
    /// A PNG could not be encoded or written.
    #[error("{path}: could not write the PNG: {error}")]
    Png {
        /// The image file.
        path: PathBuf,
        /// The encoder's description.
        error: image::ImageError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_history_names_the_training_run_not_a_command() {
        let message = Error::NoHistoryInDirectory {
            dir: PathBuf::from("results"),
        }
        .to_string();
        assert!(message.starts_with("results: no history.csv"), "{message}");
        assert!(message.contains("dexpression_train::run"), "{message}");
        assert!(!message.contains("xtask"), "{message}");
    }
}
