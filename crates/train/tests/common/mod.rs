//! The synthetic data set and the small training configuration that the training tests share.

#![allow(dead_code)]

use std::path::Path;

use dexpression_dataset::{prepare, synth, Dataset, PrepareOptions, Selection};
use dexpression_train::{TrainConfig, HISTORY_CSV};

/// Side of the crops: small enough for seconds per epoch on two cores.
pub const SIDE: usize = 48;

/// A synthetic CK+ with `subjects` people, prepared at [`SIDE`] into `folder/cache`.
pub fn synthetic(folder: &Path, subjects: usize) -> Dataset {
    let ck = folder.join("ck");
    if !ck.exists() {
        synth::generate(
            &ck,
            &synth::SynthOptions {
                subjects,
                seed: 5,
                ..Default::default()
            },
        )
        .expect("synth writes");
    }
    let options = PrepareOptions {
        image_size: SIDE,
        ..Default::default()
    };
    prepare(&ck, &folder.join("cache"), &options, &|_| {}).expect("synth prepares")
}

/// 3 folds of 2 epochs in batches of 32 (3 batches per epoch with 6 subjects).
pub fn small_config(dataset: &Dataset) -> TrainConfig {
    let mut config = TrainConfig::port_defaults(dataset, "synthetic", Selection::Peak(3), false);
    config.folds = 3;
    config.epochs = 2;
    config.seed = 11;
    config
}

/// The history CSV a run wrote into `out`.
pub fn history(out: &Path) -> String {
    std::fs::read_to_string(out.join(HISTORY_CSV)).expect("history.csv is written")
}
