//! `cargo xtask report`: curves, confusion matrices and `summary.md` from training histories.
//!
//! Argument parsing and messages only; the report itself is `dexpression_report::write_report`.

use std::path::PathBuf;

use dexpression_report::{write_report, EpochChoice, History, ReportOptions, RunConfig};

/// Arguments of `cargo xtask report`.
#[derive(clap::Args)]
pub struct Args {
    /// History CSVs or run directories (ours or the PyTorch port's `history.csv`); several are
    /// merged, e.g. one directory per `--fold K` run. A directory without `history.csv` stands
    /// for every subdirectory that has one.
    #[arg(long, num_args = 1.., default_value = crate::RESULTS_DIR)]
    history: Vec<PathBuf>,
    /// Directory the figures, CSVs and summary.md are written to.
    #[arg(long, default_value = crate::RESULTS_DIR)]
    out: PathBuf,
    /// Epoch of each fold for the confusion matrices and per-class scores: `final`, `best`
    /// (highest test accuracy) or an epoch number.
    #[arg(long, default_value = "final", value_parser = parse_epoch)]
    epoch: EpochChoice,
    /// Run configuration to use instead of the `config.json` beside the history.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn parse_epoch(text: &str) -> Result<EpochChoice, String> {
    text.parse()
        .map_err(|err: dexpression_report::Error| err.to_string())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let histories = args
        .history
        .iter()
        .map(History::from_run)
        .collect::<Result<Vec<_>, _>>()?;
    let config = args.config.as_ref().map(RunConfig::from_json).transpose()?;
    let options = ReportOptions {
        epoch: args.epoch,
        config,
    };
    let spinner = indicatif::ProgressBar::new_spinner()
        .with_message(format!("drawing the report into {}", args.out.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = write_report(&histories, &args.out, &options);
    spinner.finish_and_clear();
    let summary = result?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "wrote {} files into {} (see {})",
        summary.written.len(),
        args.out.display(),
        args.out.join("summary.md").display()
    );
    Ok(())
}
