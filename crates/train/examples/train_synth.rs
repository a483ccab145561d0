//! Cross-validated training on a generated synthetic CK+, printing one line per epoch.
//!
//! `cargo run --release -p dexpression-train --example train_synth -- [SIDE] [SUBJECTS] [EPOCHS] [FOLDS] [BATCH]`
//! (defaults 48, 6, 3, 3, 32); the data and results go to a temporary folder.

use dexpression_dataset::{prepare, synth, PrepareOptions, Selection};
use dexpression_train::{run, EpochRecord, Progress, RunOptions, TrainConfig};

struct PrintEpochs;

impl Progress for PrintEpochs {
    fn epoch_done(&mut self, record: &EpochRecord) {
        println!(
            "fold {} epoch {}: train acc {:.1}% loss {:.4}, test acc {:.1}% loss {:.4} ({:.1} s, {:.1} images/s)",
            record.fold,
            record.epoch,
            record.train.accuracy,
            record.train.loss,
            record.test.accuracy,
            record.test.loss,
            record.seconds,
            record.images_per_second
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |idx: usize, default: usize| -> usize {
        std::env::args()
            .nth(idx)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (side, subjects, epochs, folds, batch_size) =
        (arg(1, 48), arg(2, 6), arg(3, 3), arg(4, 3), arg(5, 32));
    let folder = tempfile::tempdir()?;
    let ck = folder.path().join("ck");
    synth::generate(
        &ck,
        &synth::SynthOptions {
            subjects,
            seed: 1,
            ..Default::default()
        },
    )?;
    let options = PrepareOptions {
        image_size: side,
        ..Default::default()
    };
    let dataset = prepare(&ck, &folder.path().join("cache"), &options, &|_| {})?;
    println!(
        "{} samples from {} subjects at {side} px",
        dataset.samples.len(),
        dataset.summary.n_subjects
    );
    let mut config = TrainConfig::port_defaults(&dataset, "synthetic", Selection::Peak(3), false);
    config.epochs = epochs;
    config.folds = folds;
    config.batch_size = batch_size;
    let out = folder.path().join("results");
    let started = std::time::Instant::now();
    let summary = run(
        &config,
        &dataset,
        &out,
        &RunOptions::default(),
        &candle_core::Device::Cpu,
        &mut PrintEpochs,
    )?;
    println!(
        "mean final test accuracy {:.1}% in {:.1} s",
        summary.mean_final_test_accuracy().unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
