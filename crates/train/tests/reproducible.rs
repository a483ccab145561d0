//! What "reproducible" promises (docs/reproducing.md): the same seed on the same CPU model with the
//! same number of threads gives an identical history, byte for byte. Checked at 1, 2 and 3
//! threads, each in its own rayon pool. Across thread counts (and CPU models) the promise is only
//! "the same to float rounding": the kernels split their sums by thread.

use std::path::Path;

use candle_core::Device;
use dexpression_dataset::{prepare, synth, Dataset, PrepareOptions, Selection};
use dexpression_train::{run, RunOptions, Silent, TrainConfig, HISTORY_CSV};

fn synthetic(folder: &Path) -> Dataset {
    let ck = folder.join("ck");
    synth::generate(
        &ck,
        &synth::SynthOptions {
            subjects: 4,
            seed: 3,
            ..Default::default()
        },
    )
    .expect("synth writes");
    let options = PrepareOptions {
        image_size: 40,
        ..Default::default()
    };
    prepare(&ck, &folder.join("cache"), &options, &|_| {}).expect("synth prepares")
}

/// One fold of two epochs in `threads` threads; the history file's bytes.
fn history_with_threads(dataset: &Dataset, out: &Path, threads: usize) -> Vec<u8> {
    let mut config = TrainConfig::port_defaults(dataset, "synthetic", Selection::Peak(3), false);
    config.folds = 2;
    config.epochs = 2;
    config.seed = 7;
    let options = RunOptions {
        only_fold: Some(1),
        restart: false,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.install(|| run(&config, dataset, out, &options, &Device::Cpu, &mut Silent))
        .expect("training runs");
    std::fs::read(out.join(HISTORY_CSV)).expect("history.csv is written")
}

#[test]
fn same_seed_and_thread_count_give_an_identical_history() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path());
    for threads in 1..=3 {
        let first = history_with_threads(
            &dataset,
            &folder.path().join(format!("a{threads}")),
            threads,
        );
        let second = history_with_threads(
            &dataset,
            &folder.path().join(format!("b{threads}")),
            threads,
        );
        assert!(
            first.len() > 100,
            "a history with records ({} bytes)",
            first.len()
        );
        assert!(
            first == second,
            "{threads} threads: two runs with the same seed wrote different histories"
        );
    }
}
