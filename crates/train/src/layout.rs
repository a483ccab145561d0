//! The layout of a run folder, for the programs that read one: where its configuration, history
//! and fold folders are, which weights of a fold to load (its best, else its last), and finding
//! runs under a folder.
//!
//! The names themselves are [`dexpression_runfiles`]'s (the report reads them too); [`crate::run`]
//! writes this layout, [`RunDir`] reads it.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use candle_core::Device;
use dexpression_model::{Classifier, Dexpression};
use dexpression_runfiles::{fold_dir_name, parse_fold_dir_name, CONFIG_FILE, HISTORY_CSV};

use crate::checkpoint::{parse_weights_name, BestState, TrainState, BEST_STATE, LAST_STATE};
use crate::config::TrainConfig;
use crate::{Error, Result, WeightsKind};

/// The folder of fold `fold` (from 1) inside the output folder `out`.
pub(crate) fn fold_dir(out: &Path, fold: usize) -> PathBuf {
    out.join(fold_dir_name(fold))
}

/// A run folder as [`crate::run`] writes it: `config.json`, `history.csv`, `history.jsonl` and
/// one `fold{K}` folder per fold with its `best.json`, `last.json` and weights files.
///
/// ```no_run
/// use dexpression_train::RunDir;
///
/// # fn main() -> dexpression_train::Result<()> {
/// for run in RunDir::discover("results".as_ref(), 2)? {
///     for fold in run.folds() {
///         if let Some(weights) = run.best_or_last_weights(fold) {
///             println!("{}: epoch {}", weights.path.display(), weights.epoch);
///         }
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    config: TrainConfig,
}

/// The weights a fold offers: its best epoch's, else its last finished epoch's.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldWeights {
    /// Fold, from 1.
    pub fold: usize,
    /// The weights file, inside the fold's folder.
    pub path: PathBuf,
    /// Whether they are the best or the last epoch's.
    pub kind: WeightsKind,
    /// The epoch they are from, from 1.
    pub epoch: usize,
    /// Test accuracy (percent) of that epoch, when the state records it.
    pub test_accuracy: Option<f64>,
}

impl RunDir {
    /// Opens the run in `root`: reads its `config.json` (an error names the file when it is
    /// missing or not a training configuration).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let config = TrainConfig::load(&root.join(CONFIG_FILE))?;
        Ok(RunDir { root, config })
    }

    /// The runs in `folder` and in its subfolders down to `depth` levels (results/ holds demo/,
    /// which holds quick/: depth 2), sorted by path; a folder is a run when it holds
    /// `config.json`, and fold folders are not searched. An unreadable `config.json` is an error
    /// naming it.
    pub fn discover(folder: &Path, depth: usize) -> Result<Vec<RunDir>> {
        let mut roots = Vec::new();
        collect_runs(folder, depth, &mut roots)?;
        roots.sort();
        roots.into_iter().map(RunDir::open).collect()
    }

    /// The run folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run's configuration, as its `config.json` holds it.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The run's `history.csv` (present once an epoch has finished).
    pub fn history_csv(&self) -> PathBuf {
        self.root.join(HISTORY_CSV)
    }

    /// The fold numbers the run was configured with, from 1 (a `--fold K` job trains only some
    /// of them).
    pub fn folds(&self) -> RangeInclusive<usize> {
        1..=self.config.folds
    }

    /// The folder of fold `fold` (from 1).
    pub fn fold_dir(&self, fold: usize) -> PathBuf {
        fold_dir(&self.root, fold)
    }

    /// The weights of fold `fold` to use: the best epoch's named by `best.json`, else the last
    /// finished epoch's named by `last.json`; `None` when the fold has neither (not started, or
    /// its states are unreadable). A state naming any file but a weights file this crate writes
    /// (`../x`, an absolute path) is ignored, so nothing outside the fold folder is offered.
    pub fn best_or_last_weights(&self, fold: usize) -> Option<FoldWeights> {
        let dir = self.fold_dir(fold);
        let (name, kind, epoch, test_accuracy) =
            if let Some(best) = read_json::<BestState>(&dir.join(BEST_STATE)) {
                let accuracy = Some(best.test.accuracy);
                (
                    best.best.weights,
                    WeightsKind::Best,
                    best.best.epoch,
                    accuracy,
                )
            } else {
                let last = read_json::<TrainState>(&dir.join(LAST_STATE))?;
                let accuracy = last.records.last().map(|record| record.test.accuracy);
                (last.weights?, WeightsKind::Last, last.epoch, accuracy)
            };
        parse_weights_name(&name)?;
        Some(FoldWeights {
            fold,
            path: dir.join(name),
            kind,
            epoch,
            test_accuracy,
        })
    }

    /// The first fold's weights that [`RunDir::best_or_last_weights`] finds, in fold order.
    pub fn first_weights(&self) -> Option<FoldWeights> {
        self.folds()
            .find_map(|fold| self.best_or_last_weights(fold))
    }

    /// Loads `weights` (a file of this run) as a [`Classifier`] with the run's input side and
    /// class names. The run says its side: the tensor shapes alone leave a few to choose from
    /// (45 to 48 give the same shapes), and [`Classifier::load`] takes the smallest.
    pub fn load_classifier(&self, weights: &Path, device: &Device) -> Result<Classifier> {
        let network = Dexpression::load_with_config(weights, self.config.model_config(), device)?;
        Ok(Classifier::new(network, self.config.class_names.clone())?)
    }
}

fn collect_runs(folder: &Path, depth: usize, roots: &mut Vec<PathBuf>) -> Result<()> {
    if folder.join(CONFIG_FILE).is_file() {
        roots.push(folder.to_path_buf());
    }
    if depth == 0 {
        return Ok(());
    }
    let entries = std::fs::read_dir(folder).map_err(Error::io(folder))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_fold = parse_fold_dir_name(&entry.file_name().to_string_lossy()).is_some();
        if path.is_dir() && !is_fold {
            collect_runs(&path, depth - 1, roots)?;
        }
    }
    Ok(())
}

/// A state file's content, or `None` when it is missing or unreadable: a reader of a run that
/// is still training may meet either, and then uses what else the fold offers.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}
