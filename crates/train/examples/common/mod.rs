//! What both examples do the same way: read their numeric arguments, make the synthetic CK+
//! crops they start from, and train on the CPU printing one line per epoch.

use std::path::Path;

use dexpression_dataset::{prepare, synth, Dataset, PrepareOptions};
use dexpression_train::{run, EpochRecord, Progress, RunOptions, RunSummary, TrainConfig};

/// The `index`-th command-line argument as a number, or `default` when absent or not a number.
pub fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(default)
}

/// A synthetic CK+ of `subjects` people written to `folder/ck` and cropped to `side` pixels,
/// its cache in `folder/cache`.
pub fn synthetic_crops(
    folder: &Path,
    subjects: usize,
    side: usize,
) -> Result<Dataset, Box<dyn std::error::Error>> {
    let ck = folder.join("ck");
    let synth_options = synth::SynthOptions {
        subjects,
        seed: 1,
        ..Default::default()
    };
    synth::generate(&ck, &synth_options)?;
    Ok(prepare(
        &ck,
        &folder.join("cache"),
        &crop_options(side),
        &|_| {},
    )?)
}

/// Default preparation at `side` pixels.
pub fn crop_options(side: usize) -> PrepareOptions {
    PrepareOptions {
        image_size: side,
        ..Default::default()
    }
}

/// Trains `config` on `dataset` on the CPU into `out`, one printed line per epoch.
pub fn train_on_cpu(
    config: &TrainConfig,
    dataset: &Dataset,
    out: &Path,
) -> Result<RunSummary, Box<dyn std::error::Error>> {
    let device = candle_core::Device::Cpu;
    Ok(run(
        config,
        dataset,
        out,
        &RunOptions::default(),
        &device,
        &mut PrintEpochs,
    )?)
}

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
