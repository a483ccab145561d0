//! Writes the whole report (curves, confusion matrices, summary.md) of one or more histories.
//!
//! ```text
//! cargo run --release -p dexpression-report --example report_from_history -- \
//!     OUT_DIR [HISTORY_CSV_OR_RUN_DIR ...]
//! ```
//!
//! Without histories it reports on `examples/port_history.csv`.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use dexpression_report::{write_report, History, ReportOptions};

fn main() -> ExitCode {
    common::exit_code(try_main())
}

fn try_main() -> dexpression_report::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out_dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("dexpression-report"));
    let mut paths: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if paths.is_empty() {
        paths.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/port_history.csv"));
    }
    let histories = paths
        .iter()
        .map(History::from_run)
        .collect::<dexpression_report::Result<Vec<_>>>()?;
    let summary = write_report(&histories, &out_dir, &ReportOptions::default())?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    for path in &summary.written {
        println!("{}", path.display());
    }
    Ok(())
}
