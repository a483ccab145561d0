//! What "reproducible" promises (docs/reproducing.md): the same seed on the same CPU model gives an
//! identical history, byte for byte, whatever the number of threads. Checked at 1, 2 and 3
//! threads, each in its own rayon pool, with the threads asleep between parallel regions or kept
//! awake through each step (`RunOptions::threads_awake`), at 40 and 48 px (the side of FER2013 and the demo, whose
//! small planes take other convolution paths than large ones). The kernels split every sum over
//! the batch in groups fixed by the batch alone, not by the thread count. Across CPU models the
//! promise is only "the same to float rounding" (the GEMMs block their sums by cache size).

use std::path::Path;

use candle_core::Device;
use dexpression_dataset::{prepare, synth, Dataset, PrepareOptions, Selection};
use dexpression_train::{run, RunOptions, Silent, TrainConfig, HISTORY_CSV};

fn synthetic(folder: &Path, image_size: usize) -> Dataset {
    let ck = folder.join("ck");
    if ck.exists() {
        return prepare_at(&ck, folder, image_size);
    }
    synth::generate(
        &ck,
        &synth::SynthOptions {
            subjects: 4,
            seed: 3,
            ..Default::default()
        },
    )
    .expect("synth writes");
    prepare_at(&ck, folder, image_size)
}

/// The synthetic CK+ in `ck`, prepared at `image_size` into its own cache under `folder`.
fn prepare_at(ck: &Path, folder: &Path, image_size: usize) -> Dataset {
    let options = PrepareOptions {
        image_size,
        ..Default::default()
    };
    let cache = folder.join(format!("cache{image_size}"));
    prepare(ck, &cache, &options, &|_| {}).expect("synth prepares")
}

/// One fold of two epochs in `threads` threads, kept awake through each step or not; the history
/// file's bytes.
fn history_with_threads(
    dataset: &Dataset,
    out: &Path,
    threads: usize,
    threads_awake: bool,
) -> Vec<u8> {
    let mut config = TrainConfig::port_defaults(dataset, "synthetic", Selection::Peak(3), false);
    config.folds = 2;
    config.epochs = 2;
    config.seed = 7;
    let options = RunOptions {
        only_fold: Some(1),
        restart: false,
        threads_awake,
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
fn same_seed_gives_an_identical_history_on_any_thread_count() {
    let folder = tempfile::tempdir().unwrap();
    for image_size in [40, 48] {
        let dataset = synthetic(folder.path(), image_size);
        let out =
            |run: &str, threads: usize| folder.path().join(format!("{run}{threads}-{image_size}"));
        let first = history_with_threads(&dataset, &out("a", 1), 1, false);
        assert!(
            first.len() > 100,
            "a history with records ({} bytes)",
            first.len()
        );
        for threads in 1..=3 {
            // Threads kept awake through the steps (as `train` runs) change nothing either.
            let again = history_with_threads(&dataset, &out("b", threads), threads, true);
            assert!(
                again == first,
                "{image_size} px: {threads} threads wrote another history than 1 thread:\n{}\n{}",
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(&again)
            );
        }
    }
}
