//! End-to-end training on small synthetic CK+ sets: determinism, `--fold` merging, resumption
//! after SIGKILL, history files, guards and learning.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use candle_core::{Device, Tensor};
use common::{history, small_config, synthetic, SIDE};
use dexpression_dataset::Dataset;
use dexpression_model::{Adam, Dexpression};
use dexpression_train::testing::train_batch;
use dexpression_train::{
    read_history_jsonl, run, Error, Progress, RunDir, RunOptions, Silent, TrainConfig, WeightsKind,
    HISTORY_JSONL,
};

fn train(
    config: &TrainConfig,
    dataset: &Dataset,
    out: &Path,
    only_fold: Option<usize>,
) -> dexpression_train::Result<()> {
    let options = RunOptions {
        only_fold,
        ..RunOptions::default()
    };
    run(config, dataset, out, &options, &Device::Cpu, &mut Silent).map(|_| ())
}

#[test]
fn same_seed_gives_the_same_history_and_fold_runs_merge_to_it() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 6);
    let config = small_config(&dataset);
    let full = folder.path().join("full");
    train(&config, &dataset, &full, None).unwrap();

    // The same folds run one by one, out of order, into another folder: byte-identical history.
    let by_fold = folder.path().join("by-fold");
    for fold in [3, 1, 2] {
        train(&config, &dataset, &by_fold, Some(fold)).unwrap();
    }
    assert_eq!(history(&full), history(&by_fold));

    // The history parses back, with the report crate and as JSON lines.
    let report = dexpression_report::History::from_run(&full).unwrap();
    assert_eq!(report.records().len(), 3 * 2);
    assert_eq!(report.folds(), vec![1, 2, 3]);
    assert_eq!(
        report.config().and_then(|c| c.split.clone()).as_deref(),
        Some("subject")
    );
    let records = read_history_jsonl(&full.join(HISTORY_JSONL)).unwrap();
    assert_eq!(records.len(), 6);
    for (ours, theirs) in records.iter().zip(report.records()) {
        // One row type: what train writes is what the report reads, field for field.
        assert_eq!(&ours.history_row(), theirs);
        assert!(ours.test.truths.iter().all(|&label| label < 7));
    }

    // Both runs are found under their folder, and each fold offers its best weights.
    let runs = RunDir::discover(folder.path(), 1).unwrap();
    let roots: Vec<&Path> = runs.iter().map(RunDir::root).collect();
    assert_eq!(roots, vec![by_fold.as_path(), full.as_path()]);
    for run in &runs {
        assert_eq!(run.folds(), 1..=3);
        for fold in run.folds() {
            let weights = run.best_or_last_weights(fold).expect("a trained fold");
            assert_eq!((weights.fold, weights.kind), (fold, WeightsKind::Best));
            assert!(weights.path.starts_with(run.fold_dir(fold)) && weights.path.is_file());
            let best = records
                .iter()
                .filter(|record| record.fold == fold)
                .max_by(|a, b| a.test.accuracy.total_cmp(&b.test.accuracy))
                .expect("records of the fold");
            assert_eq!(weights.test_accuracy, Some(best.test.accuracy));
        }
        let first = run.first_weights().expect("fold 1 trained");
        let classifier = run.load_classifier(&first.path, &Device::Cpu).unwrap();
        assert_eq!(classifier.class_names(), config.class_names.as_slice());
        assert_eq!(classifier.image_size(), config.image_size);
    }
    // Without `best.json`, the last epoch's weights; a state naming a file outside the fold
    // folder offers nothing (on the copy trained fold by fold, which only its history serves
    // from here on).
    let fold1 = by_fold.join("fold1");
    std::fs::remove_file(fold1.join("best.json")).unwrap();
    let run = RunDir::open(&by_fold).unwrap();
    let last = run.best_or_last_weights(1).expect("last weights");
    assert_eq!((last.kind, last.epoch), (WeightsKind::Last, 2));
    let state = std::fs::read_to_string(fold1.join("last.json")).unwrap();
    let name = last.path.file_name().unwrap().to_str().unwrap();
    std::fs::write(
        fold1.join("last.json"),
        state.replace(name, "../config.json"),
    )
    .unwrap();
    assert_eq!(run.best_or_last_weights(1), None);
    let n_samples: usize = records
        .iter()
        .filter(|r| r.epoch == 1)
        .map(|r| r.test.truths.len())
        .sum();
    assert_eq!(
        n_samples,
        dataset.samples.len(),
        "test folds partition the samples"
    );
    for fold in 1..=3 {
        let dir = full.join(format!("fold{fold}"));
        assert!(dir.join("last.json").is_file() && dir.join("best.json").is_file());
        assert!(dir.join("last-epoch002.safetensors").is_file());
        assert!(
            !dir.join("last-epoch001.safetensors").exists(),
            "old epochs are not kept"
        );
    }

    // Running again finds every fold finished and changes nothing.
    train(&config, &dataset, &full, None).unwrap();
    assert_eq!(history(&full), history(&by_fold));

    // Other options on the same folder are refused before any training, unless restarting.
    let mut changed = config.clone();
    changed.learning_rate = 1e-4;
    let error = train(&changed, &dataset, &full, None).unwrap_err();
    assert!(matches!(error, Error::ConfigChanged { .. }), "{error}");
    assert!(
        error.to_string().contains("learning_rate")
            && error.to_string().contains("RunOptions::restart")
            && !error.to_string().contains("--"),
        "{error}"
    );
    let error = train(&config, &dataset, &full, Some(4)).unwrap_err();
    assert!(error.to_string().contains("between 1 and 3"), "{error}");
}

/// Stops the child process in the middle of an epoch: signals the parent and waits to be killed.
struct StallMidEpoch {
    marker: PathBuf,
}

impl Progress for StallMidEpoch {
    fn batch_done(&mut self, fold: usize, epoch: usize, batch: usize, _n_images: usize) {
        if (fold, epoch, batch) == (2, 2, 2) {
            std::fs::write(&self.marker, "mid-epoch").unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

const CHILD_FOLDER: &str = "DEXPRESSION_TRAIN_TEST_CHILD_FOLDER";

/// The child of `a_run_killed_mid_epoch_resumes_to_the_same_history`; does nothing when run as
/// an ordinary test.
#[test]
fn child_trains_until_killed() {
    let Some(folder) = std::env::var_os(CHILD_FOLDER).map(PathBuf::from) else {
        return;
    };
    let dataset = synthetic(&folder, 6);
    let config = small_config(&dataset);
    let mut stall = StallMidEpoch {
        marker: folder.join("marker"),
    };
    run(
        &config,
        &dataset,
        &folder.join("killed"),
        &RunOptions::default(),
        &Device::Cpu,
        &mut stall,
    )
    .unwrap();
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_same_history() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 6);
    let config = small_config(&dataset);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_trains_until_killed",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FOLDER, folder.path())
        .spawn()
        .unwrap();
    let marker = folder.path().join("marker");
    let started = Instant::now();
    while !marker.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended ({status}) before reaching fold 2, epoch 2");
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the child never reached fold 2, epoch 2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL on Unix.
    child.wait().unwrap();

    let killed = folder.path().join("killed");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("fold2/last.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["epoch"], 1,
        "the kill came after fold 2's first epoch was saved"
    );
    train(&config, &dataset, &killed, None).unwrap();

    let uninterrupted = folder.path().join("uninterrupted");
    train(&config, &dataset, &uninterrupted, None).unwrap();
    assert_eq!(history(&killed), history(&uninterrupted));
}

/// The values of the model's first variable.
fn first_weights(model: &Dexpression) -> Vec<f32> {
    model.named_vars()[0]
        .var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn a_nan_loss_stops_the_fold_and_leaves_the_weights_alone() {
    let device = Device::Cpu;
    let model = Dexpression::new(
        dexpression_model::DexpressionConfig::with(7, SIDE),
        0,
        &device,
    )
    .unwrap();
    let mut adam = Adam::new(model.trainable_vars(), Default::default()).unwrap();
    let before = first_weights(&model);
    // ReLU and max-pooling swallow NaN pixels (max(NaN, 0) is 0), so the poison goes where it
    // reaches the loss: the output layer's bias.
    let fc_bias = model
        .named_vars()
        .iter()
        .find(|named| named.name == "fc.bias")
        .unwrap()
        .var
        .clone();
    fc_bias
        .set(&Tensor::full(f32::NAN, 7, &device).unwrap())
        .unwrap();
    let inputs = Tensor::full(0.5f32, (2, 1, SIDE, SIDE), &device).unwrap();
    let targets = Tensor::new(&[1u32, 2], &device).unwrap();
    let outcome = train_batch(&model, &mut adam, &inputs, &targets).unwrap();
    assert!(!outcome.loss.is_finite());
    assert_eq!(adam.step_count(), 0, "no update from a poisoned batch");
    let after = first_weights(&model);
    assert_eq!(before, after);

    // In a run, weights blown up by an absurd learning rate poison the next batch: the run stops
    // with a message naming fold, epoch and batch, and writes no checkpoint for that epoch.
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 4);
    let mut config = small_config(&dataset);
    config.folds = 2;
    config.epochs = 1;
    config.batch_size = 8;
    config.learning_rate = 1e38;
    let out = folder.path().join("out");
    let error = train(&config, &dataset, &out, Some(1)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::NonFiniteLoss {
                fold: 1,
                epoch: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("TrainConfig::learning_rate")
            && !error.to_string().contains("--"),
        "{error}"
    );
    assert!(!out.join("fold1/last.json").exists());
}

#[test]
fn too_few_subjects_for_the_folds_is_an_error_before_training() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 2);
    let mut config = small_config(&dataset);
    config.folds = 3;
    let error = train(&config, &dataset, &folder.path().join("out"), None).unwrap_err();
    assert!(
        error.to_string().contains("only 2 distinct subject"),
        "{error}"
    );
    assert!(!folder.path().join("out/fold1").exists());
}

#[test]
fn learns_well_above_chance_on_held_out_subjects() {
    // Sized from measurements: at 48 px with batches of 8 the network leaves chance after about
    // 60 steps; 10 epochs of 105 images take about 20 s on two cores.
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 10);
    let mut config = small_config(&dataset);
    config.folds = 2;
    config.epochs = 10;
    config.batch_size = 8;
    config.seed = 1;
    let out = folder.path().join("out");
    train(&config, &dataset, &out, Some(2)).unwrap();
    let records = read_history_jsonl(&out.join(HISTORY_JSONL)).unwrap();
    let last_three: Vec<f64> = records
        .iter()
        .rev()
        .take(3)
        .map(|r| r.test.accuracy)
        .collect();
    let mean = last_three.iter().sum::<f64>() / 3.0;
    let chance = 100.0 / 7.0;
    assert!(mean > 2.0 * chance, "test accuracy of the last epochs {last_three:?} is not clearly above chance ({chance:.1}%)");
}

#[test]
fn validation_splits_keep_subjects_apart() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 8);
    let mut config = small_config(&dataset);
    config.folds = 4;
    config.select_on = dexpression_train::SelectOn::Val;
    let (plans, warnings) =
        dexpression_train::testing::plan_folds(&config, &dataset.samples).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let subjects = |indices: &[usize]| -> std::collections::BTreeSet<String> {
        indices
            .iter()
            .map(|&idx| dataset.samples[idx].subject.clone())
            .collect()
    };
    for plan in &plans {
        assert!(!plan.validation.is_empty());
        let (train, validation, test) = (
            subjects(&plan.train),
            subjects(&plan.validation),
            subjects(&plan.test),
        );
        assert!(
            train.is_disjoint(&validation)
                && train.is_disjoint(&test)
                && validation.is_disjoint(&test)
        );
        assert_eq!(
            plan.train.len() + plan.validation.len() + plan.test.len(),
            dataset.samples.len()
        );
    }
}

#[test]
fn augmentation_is_seeded_and_validation_selects_the_best_epoch() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 5);
    let mut config = small_config(&dataset);
    config.folds = 5;
    config.epochs = 1;
    config.batch_size = 16;
    config.augment = true;
    let (first, again, plain) = (
        folder.path().join("a"),
        folder.path().join("b"),
        folder.path().join("c"),
    );
    train(&config, &dataset, &first, Some(1)).unwrap();
    train(&config, &dataset, &again, Some(1)).unwrap();
    assert_eq!(history(&first), history(&again));
    let mut unaugmented = config.clone();
    unaugmented.augment = false;
    unaugmented.select_on = dexpression_train::SelectOn::Val;
    unaugmented.validation_fraction = 0.34;
    train(&unaugmented, &dataset, &plain, Some(1)).unwrap();
    assert_ne!(history(&first), history(&plain));
    let best: dexpression_train::testing::BestState =
        serde_json::from_str(&std::fs::read_to_string(plain.join("fold1/best.json")).unwrap())
            .unwrap();
    let validation = best.validation.expect("selected on validation");
    assert_eq!(best.best.score, validation.accuracy);
    assert!(plain.join("fold1").join(&best.best.weights).is_file());
}
