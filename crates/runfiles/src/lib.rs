//! The names and formats of the files a DeXpression training run leaves for other programs: the
//! run folder's file names, `history.csv`'s columns and rows, and the class limit.
//!
//! `dexpression-train` writes these files and `dexpression-report` (and the command line) reads
//! them; both take the names and the format from here so they cannot drift apart. The crate has
//! no dependencies and does no I/O: the train crate owns the folder (`RunDir`), the report crate
//! reads histories leniently (the PyTorch port's own `history.csv` included).
//!
//! ```
//! use dexpression_runfiles::{history_csv, HistoryRow};
//!
//! let row = HistoryRow {
//!     fold: 1,
//!     epoch: 1,
//!     train_accuracy: 50.0,
//!     test_accuracy: 75.0,
//!     train_loss: 0.5,
//!     test_loss: 0.25,
//!     test_pred: vec![1, 0],
//!     test_truth: vec![1, 1],
//! };
//! assert_eq!(
//!     history_csv(&[row]).lines().nth(1),
//!     Some("1,1,50,75,0.5,0.25,\"[1, 0]\",\"[1, 1]\"")
//! );
//! ```

#![warn(missing_docs)]

use std::fmt::Write as _;

/// File name of a run's configuration, in the run folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of a run's history in the PyTorch port's columns, in the run folder.
pub const HISTORY_CSV: &str = "history.csv";
/// File name of a run's complete history, one JSON record per fold and epoch.
pub const HISTORY_JSONL: &str = "history.jsonl";

/// Most classes a run may have: the dataset refuses a class list longer than this (a folder per
/// image rather than per class, most likely), and the report refuses a label of this value or
/// more when no configuration names the classes, before it draws a confusion matrix of that
/// many rows. One limit for both, so that the report draws every run the trainer can make.
pub const MAX_CLASSES: usize = 1000;

/// The seven CK+ emotion names in label order, as the PyTorch port numbers them: the classes of
/// a history or of weights that do not name theirs.
pub const CK_PLUS_CLASS_NAMES: [&str; 7] = [
    "Anger",
    "Contempt",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
];

/// Name of the class the trainer adds after [`CK_PLUS_CLASS_NAMES`] (label 7) when CK+'s
/// neutral first frames are kept.
pub const NEUTRAL_CLASS_NAME: &str = "Neutral";

/// Prefix of a fold's folder name: fold `k` (from 1) lives in `fold{k}`.
const FOLD_DIR_PREFIX: &str = "fold";

/// The name of fold `fold`'s folder (folds count from 1): `fold1`, `fold2`, ...
pub fn fold_dir_name(fold: usize) -> String {
    format!("{FOLD_DIR_PREFIX}{fold}")
}

/// The fold of a folder name [`fold_dir_name`] writes, or `None` for any other name (`fold`,
/// `fold01`, `folder`).
pub fn parse_fold_dir_name(name: &str) -> Option<usize> {
    let fold: usize = name.strip_prefix(FOLD_DIR_PREFIX)?.parse().ok()?;
    (fold_dir_name(fold) == name).then_some(fold)
}

/// The columns of `history.csv`, in the order the PyTorch port wrote them.
pub mod columns {
    /// Fold, from 1 (the port's own files count from 0).
    pub const FOLD: &str = "fold";
    /// Epoch, from 1.
    pub const EPOCH: &str = "epoch";
    /// Training accuracy in percent.
    pub const TRAIN_ACCURACY: &str = "avg_train_accuracy";
    /// Test accuracy in percent.
    pub const TEST_ACCURACY: &str = "avg_test_accuracy";
    /// Mean training loss.
    pub const TRAIN_LOSS: &str = "avg_train_loss";
    /// Mean test loss.
    pub const TEST_LOSS: &str = "avg_test_loss";
    /// Predicted label of each test sample, as `"[4, 0, 3]"`.
    pub const TEST_PRED: &str = "test_pred";
    /// True label of each test sample, paired with [`TEST_PRED`].
    pub const TEST_TRUTH: &str = "test_truth";
    /// All of them, in the file's order.
    pub const ALL: [&str; 8] = [
        FOLD,
        EPOCH,
        TRAIN_ACCURACY,
        TEST_ACCURACY,
        TRAIN_LOSS,
        TEST_LOSS,
        TEST_PRED,
        TEST_TRUTH,
    ];
}

/// One row of `history.csv`: the averages of one epoch of one fold, and the test predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// Fold number, counted from 1.
    pub fold: u32,
    /// Epoch number, counted from 1.
    pub epoch: u32,
    /// Training accuracy in percent.
    pub train_accuracy: f64,
    /// Test accuracy in percent.
    pub test_accuracy: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Predicted label of each test sample; empty when the file has no predictions.
    pub test_pred: Vec<usize>,
    /// True label of each test sample, paired with `test_pred`.
    pub test_truth: Vec<usize>,
}

/// The text of `history.csv` for `rows`, in their order: the header, then one line per row with
/// numbers in Rust's shortest round-trip form (so equal runs give equal bytes) and label lists
/// as `"[1, 2, 3]"`, as the PyTorch port wrote them.
pub fn history_csv(rows: &[HistoryRow]) -> String {
    let mut csv = columns::ALL.join(",");
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
    for row in rows {
        // Writing into a String cannot fail.
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{}",
            row.fold,
            row.epoch,
            row.train_accuracy,
            row.test_accuracy,
            row.train_loss,
            row.test_loss,
            list(&row.test_pred),
            list(&row.test_truth),
        );
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_ports() {
        assert_eq!(
            history_csv(&[]),
            "fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth\n"
        );
    }

    #[test]
    fn rows_in_shortest_round_trip_form() {
        let row = HistoryRow {
            fold: 2,
            epoch: 10,
            train_accuracy: 100.0 / 3.0,
            test_accuracy: 0.0,
            train_loss: 1e-7,
            test_loss: 2.5,
            test_pred: vec![],
            test_truth: vec![],
        };
        assert_eq!(
            history_csv(&[row]).lines().nth(1),
            Some("2,10,33.333333333333336,0,0.0000001,2.5,\"[]\",\"[]\"")
        );
    }

    #[test]
    fn fold_folders_round_trip_and_nothing_else_parses() {
        assert_eq!(fold_dir_name(3), "fold3");
        assert_eq!(parse_fold_dir_name("fold12"), Some(12));
        for other in ["fold", "fold01", "folder", "Fold1", "fold-1", "fold1 "] {
            assert_eq!(parse_fold_dir_name(other), None, "{other}");
        }
    }
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
