//! Accuracy and loss curves, confusion matrices and a summary table for DeXpression runs.
//!
//! The crate reads the per-epoch `history.csv` that `cargo xtask train` writes (or the PyTorch
//! port's own `history.csv`, with pandas' index column and `"[4, 0, 3]"` label lists) and the
//! optional `config.json` beside it, and writes PNG/SVG figures, confusion-matrix CSVs and a
//! `summary.md`. It only reads files: it knows nothing of candle, the network or the dataset,
//! and it needs no system fonts (DejaVu Sans is embedded and drawn with plotters' `ab_glyph`).
//!
//! ```no_run
//! use dexpression_report::{write_report, EpochChoice, History, ReportOptions};
//!
//! # fn main() -> dexpression_report::Result<()> {
//! // One directory per `--fold K` run, merged into one report.
//! let histories = vec![History::from_run("results/fold1")?, History::from_run("results/fold2")?];
//! let options = ReportOptions { epoch: EpochChoice::Final, ..ReportOptions::default() };
//! let summary = write_report(&histories, "results/report", &options)?;
//! for warning in &summary.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod history;
mod metrics;
mod plot;
mod report;
mod summary;

pub use config::RunConfig;
pub use dexpression_runfiles::HistoryRow;
pub use dexpression_runfiles::CK_PLUS_CLASS_NAMES;
pub use error::{Error, Result};
pub use history::History;
pub use metrics::confusion_matrix;
pub use plot::{draw_confusion_matrix, CONFUSION_SIZE, CURVES_SIZE};
pub use report::{write_report, EpochChoice, IncompleteFold, ReportOptions, ReportSummary};

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
