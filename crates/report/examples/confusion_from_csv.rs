//! Draws one confusion matrix, pooled over the folds at their final epoch, from a history CSV.
//!
//! ```text
//! cargo run --release -p dexpression-report --example confusion_from_csv -- \
//!     [HISTORY_CSV] [OUTPUT_PNG]
//! ```
//!
//! Without arguments it reads `examples/port_history.csv` (two folds, three epochs, in the
//! PyTorch port's format) and writes `confusion_matrix.png` into the system's temporary directory.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use dexpression_report::{confusion_matrix, draw_confusion_matrix, EpochChoice, History};

fn main() -> ExitCode {
    common::exit_code(try_main())
}

fn try_main() -> dexpression_report::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let csv_path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/port_history.csv")
    });
    let png_path = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("confusion_matrix.png"));

    let history = History::from_run(&csv_path)?;
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    for fold in history.folds() {
        if let Some(record) = EpochChoice::Final.select(&history.fold_records(fold)) {
            truth.extend_from_slice(&record.test_truth);
            pred.extend_from_slice(&record.test_pred);
        }
    }
    let config = history.config().cloned().unwrap_or_default();
    let n_labels = truth
        .iter()
        .chain(&pred)
        .map(|&label| label + 1)
        .max()
        .unwrap_or(0);
    let class_names = config.class_names(n_labels);
    let counts = confusion_matrix(&truth, &pred, class_names.len());
    let title = format!("{} folds, final epoch", history.folds().len());
    draw_confusion_matrix(&counts, &class_names, &title, &png_path)?;
    println!(
        "{} test predictions from {} -> {}",
        truth.len(),
        csv_path.display(),
        png_path.display()
    );
    Ok(())
}
