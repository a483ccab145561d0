//! Nothing lost: `--restart` (and the demo, which restarts) moves an earlier run aside, the
//! stale-weights cleanup touches only the names training writes, checkpoints commit in order
//! and survive a kill between weights and state or a damaged `last.json`, names read from a
//! state cannot leave the fold folder, and concurrent `--fold K` processes sharing one output
//! folder end with the history of a sequential run.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use candle_core::Device;
use common::{history, small_config, synthetic};
use dexpression_dataset::Dataset;
use dexpression_train::{run, EpochRecord, Progress, RunOptions, Silent, TrainConfig, HISTORY_CSV};

fn options(only_fold: Option<usize>, restart: bool) -> RunOptions {
    RunOptions {
        only_fold,
        restart,
        threads_awake: false,
    }
}

fn train_with(
    config: &TrainConfig,
    dataset: &Dataset,
    out: &Path,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> dexpression_train::Result<()> {
    run(config, dataset, out, options, &Device::Cpu, progress).map(|_| ())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Keeps warnings, and copies the whole output folder after fold 1's first epoch is saved: the
/// state of a run killed right after that epoch.
#[derive(Default)]
struct Recorder {
    warnings: Vec<String>,
    snapshot: Option<(PathBuf, PathBuf)>,
}

impl Progress for Recorder {
    fn warning(&mut self, message: &str) {
        self.warnings.push(message.to_string());
    }
    fn epoch_done(&mut self, record: &EpochRecord) {
        if let Some((out, to)) = &self.snapshot {
            if (record.fold, record.epoch) == (1, 1) {
                copy_dir(out, to);
            }
        }
    }
}

/// Trains fold 1 into `folder/full` with a copy of the output folder after its first epoch in
/// `folder/after-epoch1`.
fn fold1_with_snapshot(
    folder: &Path,
    dataset: &Dataset,
    config: &TrainConfig,
) -> (PathBuf, PathBuf) {
    let full = folder.join("full");
    let snapshot = folder.join("after-epoch1");
    let mut recorder = Recorder {
        snapshot: Some((full.clone(), snapshot.clone())),
        ..Recorder::default()
    };
    train_with(
        config,
        dataset,
        &full,
        &options(Some(1), false),
        &mut recorder,
    )
    .unwrap();
    assert!(snapshot.join("fold1/last-epoch001.safetensors").is_file());
    (full, snapshot)
}

#[test]
fn restarting_over_a_real_run_moves_it_aside_instead_of_deleting_it() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 6);
    let mut config = small_config(&dataset);
    config.epochs = 1;
    let out = folder.path().join("results");
    train_with(
        &config,
        &dataset,
        &out,
        &options(Some(1), false),
        &mut Silent,
    )
    .unwrap();
    let best = std::fs::read(out.join("fold1/best-epoch001.safetensors")).unwrap();
    let earlier_history = history(&out);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();

    // What `cargo xtask demo --out results` does: another configuration, restart.
    let mut demo = config.clone();
    demo.seed = 0;
    let mut recorder = Recorder::default();
    train_with(
        &demo,
        &dataset,
        &out,
        &options(Some(2), true),
        &mut recorder,
    )
    .unwrap();

    let aside: Vec<String> = names_in(&out)
        .into_iter()
        .filter(|name| name.starts_with(".previous-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", names_in(&out));
    let aside = out.join(&aside[0]);
    assert_eq!(
        std::fs::read(aside.join("fold1/best-epoch001.safetensors")).unwrap(),
        best,
        "the earlier run's best weights are kept, moved aside"
    );
    assert_eq!(
        std::fs::read_to_string(aside.join(HISTORY_CSV)).unwrap(),
        earlier_history
    );
    assert!(aside.join("config.json").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(!out.join("fold1").exists());
    assert!(out.join("fold2/last.json").is_file());
    assert!(
        recorder.warnings.iter().any(|w| w.contains(".previous-")),
        "{:?}",
        recorder.warnings
    );

    // Restarting one fold with the same options moves only that fold aside.
    train_with(&demo, &dataset, &out, &options(Some(2), true), &mut Silent).unwrap();
    let second: Vec<String> = names_in(&out)
        .into_iter()
        .filter(|name| name.starts_with(".previous-"))
        .collect();
    assert_eq!(second.len(), 2, "{second:?}");
    let newest = second.iter().find(|name| out.join(name) != aside).unwrap();
    assert_eq!(names_in(&out.join(newest)), vec!["fold2"]);
    assert!(out.join("config.json").is_file());
}

#[test]
fn a_kill_between_weights_and_state_resumes_to_the_same_history_keeping_foreign_files() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 6);
    let config = small_config(&dataset);
    let (full, crashed) = fold1_with_snapshot(folder.path(), &dataset, &config);

    // Killed after epoch 2's weights were written but before `last.json` named them: the new
    // weights files are there, the state is epoch 1's.
    for name in names_in(&full.join("fold1")) {
        if name.ends_with("002.safetensors") {
            std::fs::copy(
                full.join("fold1").join(&name),
                crashed.join("fold1").join(&name),
            )
            .unwrap();
        }
    }
    // Files the user put there, which the cleanup of stale weights must leave alone.
    std::fs::write(crashed.join("fold1/pretrained.safetensors"), "user weights").unwrap();
    std::fs::write(crashed.join("fold1/last-epoch7.safetensors"), "user copy").unwrap();

    let mut recorder = Recorder::default();
    train_with(
        &config,
        &dataset,
        &crashed,
        &options(Some(1), false),
        &mut recorder,
    )
    .unwrap();
    assert_eq!(history(&crashed), history(&full));
    assert!(recorder.warnings.is_empty(), "{:?}", recorder.warnings);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(crashed.join("fold1/last.json")).unwrap())
            .unwrap();
    assert_eq!(state["epoch"], 2);
    assert_eq!(
        std::fs::read_to_string(crashed.join("fold1/pretrained.safetensors")).unwrap(),
        "user weights"
    );
    assert!(crashed.join("fold1/last-epoch7.safetensors").is_file());
    assert!(!crashed.join("fold1/last-epoch001.safetensors").exists());
    // Every file a state names exists.
    for state_file in ["last.json", "best.json"] {
        let text = std::fs::read_to_string(crashed.join("fold1").join(state_file)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for name in [&value["weights"], &value["best"]["weights"]] {
            if let Some(name) = name.as_str() {
                assert!(
                    crashed.join("fold1").join(name).is_file(),
                    "{state_file} names {name}"
                );
            }
        }
    }
}

#[test]
fn a_damaged_last_state_falls_back_to_the_newest_intact_checkpoint() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 6);
    let config = small_config(&dataset);
    let (full, damaged) = fold1_with_snapshot(folder.path(), &dataset, &config);
    let hopeless = folder.path().join("hopeless");
    copy_dir(&damaged, &hopeless);
    let last = damaged.join("fold1/last.json");
    let text = std::fs::read_to_string(&last).unwrap();
    std::fs::write(&last, &text[..text.len() / 2]).unwrap();

    let mut recorder = Recorder::default();
    train_with(
        &config,
        &dataset,
        &damaged,
        &options(Some(1), false),
        &mut recorder,
    )
    .unwrap();
    assert_eq!(history(&damaged), history(&full));
    assert_eq!(recorder.warnings.len(), 1, "{:?}", recorder.warnings);
    let warning = &recorder.warnings[0];
    assert!(
        warning.contains("last.json")
            && warning.contains("not a training state")
            && warning.contains("last-epoch001.safetensors"),
        "{warning}"
    );

    // With no intact checkpoint left, the error names the file and the way out.
    std::fs::write(hopeless.join("fold1/last.json"), "{").unwrap();
    std::fs::remove_file(hopeless.join("fold1/last-epoch001.safetensors")).unwrap();
    let error = train_with(
        &config,
        &dataset,
        &hopeless,
        &options(Some(1), false),
        &mut Silent,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("fold1/last.json")
            && error.contains("RunOptions::restart")
            && !error.contains("--"),
        "{error}"
    );
}

#[test]
fn names_in_a_state_cannot_reach_outside_the_fold_folder() {
    let folder = tempfile::tempdir().unwrap();
    let dataset = synthetic(folder.path(), 6);
    let config = small_config(&dataset);
    let (full, crafted) = fold1_with_snapshot(folder.path(), &dataset, &config);

    // A state naming files outside the fold: valid weights to load and a file to delete.
    std::fs::copy(
        crafted.join("fold1/last-epoch001.safetensors"),
        crafted.join("outside.safetensors"),
    )
    .unwrap();
    std::fs::write(crafted.join("victim.safetensors"), "not yours").unwrap();
    let last = crafted.join("fold1/last.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
    state["weights"] = "../outside.safetensors".into();
    state["best"]["weights"] = "../victim.safetensors".into();
    std::fs::write(&last, state.to_string()).unwrap();

    let mut recorder = Recorder::default();
    train_with(
        &config,
        &dataset,
        &crafted,
        &options(Some(1), false),
        &mut recorder,
    )
    .unwrap();
    assert_eq!(recorder.warnings.len(), 1, "{:?}", recorder.warnings);
    assert!(
        recorder.warnings[0].contains("\"../outside.safetensors\"")
            && recorder.warnings[0].contains("not a name this program writes"),
        "{}",
        recorder.warnings[0]
    );
    assert_eq!(
        std::fs::read_to_string(crafted.join("victim.safetensors")).unwrap(),
        "not yours"
    );
    assert!(crafted.join("outside.safetensors").is_file());
    assert_eq!(history(&crafted), history(&full));
}

const CHILD_OUT: &str = "DEXPRESSION_TRAIN_TEST_FOLD_JOB_OUT";
const CHILD_DATA: &str = "DEXPRESSION_TRAIN_TEST_FOLD_JOB_DATA";
const CHILD_FOLD: &str = "DEXPRESSION_TRAIN_TEST_FOLD_JOB_FOLD";

/// One job of `concurrent_fold_jobs_share_one_output_folder`; does nothing as an ordinary test.
#[test]
fn child_fold_job() {
    let (Some(out), Some(data), Some(fold)) = (
        std::env::var_os(CHILD_OUT),
        std::env::var_os(CHILD_DATA),
        std::env::var(CHILD_FOLD).ok(),
    ) else {
        return;
    };
    let dataset = synthetic(Path::new(&data), 6);
    let config = small_config(&dataset);
    let fold: usize = fold.parse().unwrap();
    train_with(
        &config,
        &dataset,
        Path::new(&out),
        &options(Some(fold), false),
        &mut Silent,
    )
    .unwrap();
}

#[test]
fn concurrent_fold_jobs_share_one_output_folder() {
    let folder = tempfile::tempdir().unwrap();
    // Prepared once here, so the jobs only read the cache.
    let dataset = synthetic(folder.path(), 6);
    let config = small_config(&dataset);
    let sequential = folder.path().join("sequential");
    train_with(
        &config,
        &dataset,
        &sequential,
        &options(None, false),
        &mut Silent,
    )
    .unwrap();

    let shared = folder.path().join("shared");
    let jobs: Vec<_> = (1..=3)
        .map(|fold| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "child_fold_job",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_OUT, &shared)
                .env(CHILD_DATA, folder.path())
                .env(CHILD_FOLD, fold.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut job in jobs {
        let status = job.wait().unwrap();
        assert!(status.success(), "a fold job failed: {status}");
    }
    assert_eq!(history(&shared), history(&sequential));
    assert_eq!(
        std::fs::read_to_string(shared.join("history.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    // No temporary files left behind.
    for name in names_in(&shared) {
        assert!(
            !name.ends_with(".tmp"),
            "{name} left in {}",
            shared.display()
        );
    }
}
