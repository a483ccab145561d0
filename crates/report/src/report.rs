//! `write_report`: every figure, CSV and the summary of one (possibly merged) training history.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::history::History;
use crate::metrics::{add_counts, confusion_matrix};
use crate::plot::{draw_confusion_matrix, draw_curves, CurveMetric};
use crate::summary::{write_summary, SummaryInput};
use crate::HistoryRow;

/// Which epoch of each fold the confusion matrices and per-class scores are taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EpochChoice {
    /// The last epoch each fold has reached.
    #[default]
    Final,
    /// The epoch with the highest test accuracy in each fold (the earliest on ties).
    Best,
    /// This epoch number, as written in the history.
    Number(u32),
}

impl EpochChoice {
    /// The record of `records` (one fold, sorted by epoch) this choice picks, if there is one.
    pub fn select<'a>(&self, records: &[&'a HistoryRow]) -> Option<&'a HistoryRow> {
        match self {
            EpochChoice::Final => records.last().copied(),
            EpochChoice::Best => best_test_epoch(records),
            EpochChoice::Number(epoch) => records.iter().find(|r| r.epoch == *epoch).copied(),
        }
    }
}

/// The record with the highest test accuracy, the earliest on ties; NaN accuracies never win.
pub(crate) fn best_test_epoch<'a>(records: &[&'a HistoryRow]) -> Option<&'a HistoryRow> {
    let mut best: Option<&'a HistoryRow> = None;
    for &record in records {
        let is_better = match best {
            None => true,
            Some(current) => {
                record.test_accuracy > current.test_accuracy
                    || (current.test_accuracy.is_nan() && !record.test_accuracy.is_nan())
            }
        };
        if is_better {
            best = Some(record);
        }
    }
    best
}

impl FromStr for EpochChoice {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_lowercase().as_str() {
            "final" | "last" => Ok(EpochChoice::Final),
            "best" => Ok(EpochChoice::Best),
            other => other
                .parse::<u32>()
                .map(EpochChoice::Number)
                .map_err(|_| Error::InvalidEpochChoice(text.to_string())),
        }
    }
}

impl fmt::Display for EpochChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EpochChoice::Final => write!(f, "final epoch"),
            EpochChoice::Best => write!(f, "best test epoch"),
            EpochChoice::Number(epoch) => write!(f, "epoch {epoch}"),
        }
    }
}

/// Options of [`write_report`].
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Epoch of each fold for the confusion matrices and per-class scores.
    pub epoch: EpochChoice,
    /// Overrides the `config.json` found beside the histories.
    pub config: Option<RunConfig>,
}

/// A fold that has fewer epochs than the run was asked for (or than the other folds have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncompleteFold {
    /// Fold number.
    pub fold: u32,
    /// Epochs present in the history.
    pub n_epochs: usize,
    /// Epochs expected (`epochs` of `config.json`, else the most any fold has).
    pub expected_epochs: usize,
}

/// What [`write_report`] wrote and what it found missing.
#[derive(Debug, Clone, Default)]
pub struct ReportSummary {
    /// Every file written, in the order written.
    pub written: Vec<PathBuf>,
    /// Folds expected (by `folds` of `config.json`, else up to the highest fold seen) but absent.
    pub missing_folds: Vec<u32>,
    /// Folds present with fewer epochs than expected.
    pub incomplete_folds: Vec<IncompleteFold>,
    /// Sentences for the user, also in `summary.md`: missing data, renumbered folds, duplicate
    /// rows, a frame split.
    pub warnings: Vec<String>,
}

/// File names written into the output directory.
pub(crate) mod file_names {
    pub const ACCURACY_PNG: &str = "train_test_accuracy.png";
    pub const ACCURACY_SVG: &str = "train_test_accuracy.svg";
    pub const LOSS_PNG: &str = "train_test_loss.png";
    pub const LOSS_SVG: &str = "train_test_loss.svg";
    pub const CONFUSION_ALL_PNG: &str = "confusion_matrix-all.png";
    pub const CONFUSION_ALL_CSV: &str = "confusion_matrix-all.csv";
    pub const SUMMARY: &str = "summary.md";

    pub fn confusion_fold(fold: u32, extension: &str) -> String {
        format!("confusion_matrix-fold{fold}.{extension}")
    }
}

/// Writes the report of `histories` (merged, see [`History::merge`]) into `out_dir`:
/// `train_test_accuracy.{png,svg}`, `train_test_loss.{png,svg}`,
/// `confusion_matrix-fold{k}.{png,csv}`, `confusion_matrix-all.{png,csv}` and `summary.md`.
///
/// Missing and incomplete folds do not stop the report: they are listed in the returned
/// [`ReportSummary`] and in `summary.md`, and the means and the all-fold matrix then use the
/// complete folds only.
pub fn write_report(
    histories: &[History],
    out_dir: impl AsRef<Path>,
    options: &ReportOptions,
) -> Result<ReportSummary> {
    let out_dir = out_dir.as_ref();
    let history = merged_history(histories)?;
    let config = options
        .config
        .clone()
        .or_else(|| history.config().cloned())
        .unwrap_or_default();
    let mut summary = ReportSummary {
        warnings: history.notes().to_vec(),
        ..ReportSummary::default()
    };
    let completeness = check_completeness(&history, &config, &mut summary);
    std::fs::create_dir_all(out_dir).map_err(|error| Error::Io {
        path: out_dir.to_path_buf(),
        error,
    })?;
    draw_learning_curves(&history, out_dir, &mut summary)?;
    let confusion = write_confusion_matrices(
        &history,
        &config,
        options.epoch,
        &completeness,
        out_dir,
        &mut summary,
    )?;

    let summary_path = out_dir.join(file_names::SUMMARY);
    let markdown = write_summary(&SummaryInput {
        history: &history,
        config: &config,
        has_config: options.config.is_some() || history.config().is_some(),
        epoch_choice: options.epoch,
        folds: &completeness.folds,
        aggregate_folds: &completeness.aggregate_folds,
        missing_folds: &summary.missing_folds,
        incomplete_folds: &summary.incomplete_folds,
        expected_epochs: completeness.expected_epochs,
        notes: history.notes(),
        class_names: &confusion.class_names,
        total_counts: confusion.total_counts.as_deref(),
        fold_matrices: &confusion.fold_matrices,
    });
    dexpression_fsio::write_bytes(&summary_path, markdown.as_bytes())?;
    summary.written.push(summary_path);
    Ok(summary)
}

/// The histories merged into one; an error naming them when none holds a record.
fn merged_history(histories: &[History]) -> Result<History> {
    let history = History::merge(histories.iter().cloned());
    if history.records().is_empty() {
        let sources: Vec<String> = history
            .sources()
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        return Err(Error::EmptyHistory {
            path: PathBuf::from(sources.join(", ")),
        });
    }
    Ok(history)
}

/// Which folds a history has, and which of them the means and the all-fold matrix cover.
struct Completeness {
    /// Every fold present, sorted.
    folds: Vec<u32>,
    /// The folds that reached the expected epochs, or all of them when none did.
    aggregate_folds: Vec<u32>,
    /// Epochs each fold should have.
    expected_epochs: usize,
}

/// Finds the folds absent and those with fewer epochs than expected, recording them (and a frame
/// split) in `summary`.
fn check_completeness(
    history: &History,
    config: &RunConfig,
    summary: &mut ReportSummary,
) -> Completeness {
    let folds = history.folds();
    let highest_fold = folds.last().copied().unwrap_or(0);
    let expected_n_folds = config.folds.unwrap_or(highest_fold).max(highest_fold);
    summary.missing_folds = (1..=expected_n_folds)
        .filter(|fold| !folds.contains(fold))
        .collect();
    let n_epochs_of = |fold: u32| history.fold_records(fold).len();
    let most_epochs = folds
        .iter()
        .map(|&fold| n_epochs_of(fold))
        .max()
        .unwrap_or(0);
    let expected_epochs = config
        .epochs
        .map(|epochs| epochs as usize)
        .unwrap_or(most_epochs);
    summary.incomplete_folds = folds
        .iter()
        .filter(|&&fold| n_epochs_of(fold) < expected_epochs)
        .map(|&fold| IncompleteFold {
            fold,
            n_epochs: n_epochs_of(fold),
            expected_epochs,
        })
        .collect();
    for fold in &summary.missing_folds {
        summary.warnings.push(format!(
            "fold {fold} is missing (expected folds 1 to {expected_n_folds})"
        ));
    }
    for incomplete in &summary.incomplete_folds {
        summary.warnings.push(format!(
            "fold {} is incomplete: {} of {} epochs",
            incomplete.fold, incomplete.n_epochs, incomplete.expected_epochs
        ));
    }
    let complete_folds: Vec<u32> = folds
        .iter()
        .copied()
        .filter(|fold| !summary.incomplete_folds.iter().any(|i| i.fold == *fold))
        .collect();
    // Averages over unfinished folds would mix epochs; they fall back to all folds only when no
    // fold has finished, and the summary says which folds they cover.
    let aggregate_folds = if complete_folds.is_empty() {
        folds.clone()
    } else {
        complete_folds
    };
    if config.split_name() == "frame" {
        summary.warnings.push(
            "the split was by frame: test accuracy includes faces seen in training".to_string(),
        );
    }
    Completeness {
        folds,
        aggregate_folds,
        expected_epochs,
    }
}

/// The accuracy and loss curves, as PNG and SVG.
fn draw_learning_curves(
    history: &History,
    out_dir: &Path,
    summary: &mut ReportSummary,
) -> Result<()> {
    for (metric, png_name, svg_name) in [
        (
            CurveMetric::Accuracy,
            file_names::ACCURACY_PNG,
            file_names::ACCURACY_SVG,
        ),
        (
            CurveMetric::Loss,
            file_names::LOSS_PNG,
            file_names::LOSS_SVG,
        ),
    ] {
        let (png_path, svg_path) = (out_dir.join(png_name), out_dir.join(svg_name));
        draw_curves(history, metric, &png_path, &svg_path)?;
        summary.written.extend([png_path, svg_path]);
    }
    Ok(())
}

/// What the confusion matrices found, for the summary.
struct Confusion {
    /// Class names, one per label seen.
    class_names: Vec<String>,
    /// The counts summed over the aggregate folds, when any fold had a matrix.
    total_counts: Option<Vec<Vec<u64>>>,
    /// The folds that have a matrix.
    fold_matrices: Vec<u32>,
}

/// The confusion matrix (CSV and PNG) of each fold at the chosen epoch, and their sum over the
/// aggregate folds.
fn write_confusion_matrices(
    history: &History,
    config: &RunConfig,
    epoch: EpochChoice,
    completeness: &Completeness,
    out_dir: &Path,
    summary: &mut ReportSummary,
) -> Result<Confusion> {
    let n_labels = history
        .records()
        .iter()
        .flat_map(|record| record.test_pred.iter().chain(&record.test_truth))
        .map(|&label| label + 1)
        .max()
        .unwrap_or(0);
    let class_names = config.class_names(n_labels);
    let n_classes = class_names.len();
    let mut total_counts: Option<Vec<Vec<u64>>> = None;
    let mut fold_matrices: Vec<u32> = Vec::new();
    for &fold in &completeness.folds {
        let records = history.fold_records(fold);
        let Some(record) = epoch.select(&records) else {
            summary.warnings.push(format!(
                "fold {fold} has no {epoch}; no confusion matrix for it"
            ));
            continue;
        };
        if record.test_truth.is_empty() {
            summary.warnings.push(format!(
                "fold {fold} epoch {} has no test predictions; no confusion matrix for it",
                record.epoch
            ));
            continue;
        }
        let counts = confusion_matrix(&record.test_truth, &record.test_pred, n_classes);
        let title = match epoch {
            EpochChoice::Final => format!("Fold {fold}, final epoch ({})", record.epoch),
            EpochChoice::Best => format!("Fold {fold}, best test epoch ({})", record.epoch),
            EpochChoice::Number(_) => format!("Fold {fold}, epoch {}", record.epoch),
        };
        let (csv_name, png_name) = (
            file_names::confusion_fold(fold, "csv"),
            file_names::confusion_fold(fold, "png"),
        );
        write_confusion(
            &counts,
            &class_names,
            &title,
            out_dir,
            &csv_name,
            &png_name,
            summary,
        )?;
        fold_matrices.push(fold);
        if completeness.aggregate_folds.contains(&fold) {
            add_counts(total_counts.get_or_insert_with(Vec::new), &counts);
        }
    }
    if let Some(total) = &total_counts {
        let (n_aggregate, n_folds) = (completeness.aggregate_folds.len(), completeness.folds.len());
        let folds_label = if n_aggregate == n_folds {
            format!("All {n_folds} folds")
        } else {
            format!("{n_aggregate} complete folds")
        };
        let title = match epoch {
            EpochChoice::Final => format!("{folds_label}, final epochs"),
            EpochChoice::Best => format!("{folds_label}, best test epochs"),
            EpochChoice::Number(epoch) => format!("{folds_label}, epoch {epoch}"),
        };
        write_confusion(
            total,
            &class_names,
            &title,
            out_dir,
            file_names::CONFUSION_ALL_CSV,
            file_names::CONFUSION_ALL_PNG,
            summary,
        )?;
    }
    Ok(Confusion {
        class_names,
        total_counts,
        fold_matrices,
    })
}

/// One confusion matrix as CSV and as a figure, both recorded in `summary`.
fn write_confusion(
    counts: &[Vec<u64>],
    class_names: &[String],
    title: &str,
    out_dir: &Path,
    csv_name: &str,
    png_name: &str,
    summary: &mut ReportSummary,
) -> Result<()> {
    let (csv_path, png_path) = (out_dir.join(csv_name), out_dir.join(png_name));
    write_confusion_csv(counts, class_names, &csv_path)?;
    draw_confusion_matrix(counts, class_names, title, &png_path)?;
    summary.written.extend([png_path, csv_path]);
    Ok(())
}

/// Writes counts with class names as the first row and column (rows: true, columns: predicted).
fn write_confusion_csv(counts: &[Vec<u64>], class_names: &[String], path: &Path) -> Result<()> {
    let io_error = |error: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let csv_error = |err: csv::Error| io_error(std::io::Error::other(err.to_string()));
    dexpression_fsio::write_with(path, |out| {
        let mut writer = csv::Writer::from_writer(out);
        let name = |class_idx: usize| {
            class_names
                .get(class_idx)
                .cloned()
                .unwrap_or_else(|| format!("class {class_idx}"))
        };
        let mut header = vec!["true\\predicted".to_string()];
        header.extend((0..counts.len()).map(name));
        writer.write_record(&header).map_err(csv_error)?;
        for (class_idx, row) in counts.iter().enumerate() {
            let mut fields = vec![name(class_idx)];
            fields.extend(row.iter().map(u64::to_string));
            writer.write_record(&fields).map_err(csv_error)?;
        }
        writer.flush().map_err(io_error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u32, test_accuracy: f64) -> HistoryRow {
        HistoryRow {
            fold: 1,
            epoch,
            train_accuracy: 0.0,
            test_accuracy,
            train_loss: 0.0,
            test_loss: 0.0,
            test_pred: Vec::new(),
            test_truth: Vec::new(),
        }
    }

    #[test]
    fn best_epoch_is_the_earliest_maximum_and_skips_nan() {
        let records = [
            record(1, f64::NAN),
            record(2, 70.0),
            record(3, 90.0),
            record(4, 90.0),
            record(5, f64::NAN),
        ];
        let refs: Vec<&HistoryRow> = records.iter().collect();
        assert_eq!(best_test_epoch(&refs).map(|r| r.epoch), Some(3));
        assert_eq!(EpochChoice::Final.select(&refs).map(|r| r.epoch), Some(5));
        assert_eq!(
            EpochChoice::Number(2).select(&refs).map(|r| r.epoch),
            Some(2)
        );
        assert_eq!(EpochChoice::Number(9).select(&refs), None);
        assert_eq!(best_test_epoch(&[]), None);
    }
}
