//! Cross-validated training on a generated synthetic CK+, printing one line per epoch.
//!
//! `cargo run --release -p dexpression-train --example train_synth -- [SIDE] [SUBJECTS] [EPOCHS] [FOLDS] [BATCH]`
//! (defaults 48, 6, 3, 3, 32); the data and results go to a temporary folder.

mod common;

use dexpression_dataset::Selection;
use dexpression_train::TrainConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (side, subjects, epochs, folds, batch_size) = (
        common::arg(1, 48),
        common::arg(2, 6),
        common::arg(3, 3),
        common::arg(4, 3),
        common::arg(5, 32),
    );
    let folder = tempfile::tempdir()?;
    let dataset = common::synthetic_crops(folder.path(), subjects, side)?;
    println!(
        "{} samples from {} subjects at {side} px",
        dataset.samples.len(),
        dataset.summary.n_subjects
    );
    let mut config = TrainConfig::port_defaults(&dataset, "synthetic", Selection::Peak(3), false);
    config.epochs = epochs;
    config.folds = folds;
    config.batch_size = batch_size;
    let started = std::time::Instant::now();
    let summary = common::train_on_cpu(&config, &dataset, &folder.path().join("results"))?;
    println!(
        "mean final test accuracy {:.1}% in {:.1} s",
        summary.mean_final_test_accuracy().unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
