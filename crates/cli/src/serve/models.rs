//! The models a server offers: one weights file, or every fold of one or more training runs,
//! each loaded once at start with its class names and what its run says about it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dexpression_model::candle_core::Device;
use dexpression_model::Classifier;
use dexpression_train::{RunDir, WeightsKind};
use serde::Serialize;

use crate::{DEMO_RESULTS_DIR as DEMO_RUN, RESULTS_DIR as RESULTS};

/// Most models one server loads; a folder with more is probably not a run folder.
const MAX_MODELS: usize = 64;

/// A loaded network with what the page shows about it.
pub struct ServedModel {
    /// The network with its class names.
    pub classifier: Classifier,
    /// Its description for `GET /api/model`.
    pub info: ModelInfo,
}

/// What a client learns about a model: never a path it could send back.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Index in the server's list; the only way a client names a model.
    pub id: usize,
    /// For people, e.g. `demo, fold 2 (best epoch 9)`.
    pub name: String,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Side of the square network input in pixels.
    pub input_side: usize,
    /// The network: `port` (the PyTorch port's) or `paper` (Burkert et al.'s).
    pub variant: dexpression_model::Variant,
    /// How the run was trained, when the weights come from a run folder.
    pub protocol: Option<Protocol>,
    /// Test accuracy (percent) of these weights on their fold, when known.
    pub accuracy: Option<f64>,
    /// The epoch these weights are from, when known.
    pub epoch: Option<usize>,
}

/// The training protocol of a run, from its `config.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Protocol {
    /// The dataset it was trained on (as the run recorded it).
    pub dataset: String,
    /// Fold unit: subject, sequence or frame.
    pub split: String,
    /// Frames kept per sequence.
    pub selection: String,
    /// Number of folds of the run.
    pub folds: usize,
    /// This model's fold, from 1.
    pub fold: usize,
    /// Epochs per fold.
    pub epochs: usize,
}

/// Every model a server offers; the first is the default.
pub struct ModelSet {
    /// In the order of their ids.
    pub models: Vec<ServedModel>,
}

impl ModelSet {
    /// The models named on the command line: `weights`, else the folds of the run folder(s)
    /// under `run`, else the demo's run, else anything under results/.
    pub fn discover(
        weights: Option<&Path>,
        run: Option<&Path>,
        device: Device,
    ) -> anyhow::Result<Self> {
        let found = match (weights, run) {
            (Some(weights), _) => vec![Candidate::bare(weights)],
            (None, Some(run)) => {
                let found = run_candidates(run)?;
                if found.is_empty() {
                    bail!(
                        "{}: no fold with weights found (expected config.json and fold*/best.json as `cargo xtask train` writes them)",
                        run.display()
                    );
                }
                found
            }
            (None, None) => {
                let mut found = Vec::new();
                for default in [DEMO_RUN, RESULTS] {
                    if Path::new(default).is_dir() {
                        found = run_candidates(Path::new(default))?;
                    }
                    if !found.is_empty() {
                        break;
                    }
                }
                if found.is_empty() {
                    bail!("no trained model found in {DEMO_RUN} or {RESULTS}: run `cargo xtask demo` first, or pass --weights W.safetensors or --run FOLDER");
                }
                found
            }
        };
        if found.len() > MAX_MODELS {
            bail!(
                "{} models found; a server loads at most {MAX_MODELS}: name one run with --run or one file with --weights",
                found.len()
            );
        }
        let mut models = Vec::with_capacity(found.len());
        for (id, candidate) in found.into_iter().enumerate() {
            models.push(candidate.load(id, &device)?);
        }
        Ok(ModelSet { models })
    }

    /// Lines for the console: each model and where it came from.
    pub fn describe(&self) -> Vec<String> {
        self.models
            .iter()
            .map(|model| {
                let accuracy = model
                    .info
                    .accuracy
                    .map(|a| format!(", test accuracy {a:.1}%"))
                    .unwrap_or_default();
                format!(
                    "model {}: {} ({} classes, {} px{accuracy})",
                    model.info.id,
                    model.info.name,
                    model.info.classes.len(),
                    model.info.input_side
                )
            })
            .collect()
    }
}

/// A weights file found, with its run's records.
struct Candidate {
    weights: PathBuf,
    name: String,
    run: Option<RunDir>,
    fold: usize,
    accuracy: Option<f64>,
    epoch: Option<usize>,
}

impl Candidate {
    fn bare(weights: &Path) -> Self {
        Candidate {
            weights: weights.to_path_buf(),
            name: weights.file_name().map_or_else(
                || weights.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            run: None,
            fold: 0,
            accuracy: None,
            epoch: None,
        }
    }

    fn load(self, id: usize, device: &Device) -> anyhow::Result<ServedModel> {
        let classifier = match &self.run {
            Some(run) => run
                .load_classifier(&self.weights, device)
                .map_err(anyhow::Error::from),
            None => Classifier::load(&self.weights, device).map_err(anyhow::Error::from),
        }
        // The server owns its pool: spinning through a small forward cuts batch-1 latency.
        .map(|classifier| classifier.with_threads_awake(true))
        .with_context(|| {
            format!(
                "loading {} (train one with `cargo xtask demo` or `cargo xtask train`)",
                self.weights.display()
            )
        })?;
        let protocol = self
            .run
            .map(|run| run.config().clone())
            .map(|config| Protocol {
                dataset: config.dataset,
                split: config.split,
                selection: config.selection,
                folds: config.folds,
                fold: self.fold,
                epochs: config.epochs,
            });
        let info = ModelInfo {
            id,
            name: self.name,
            classes: classifier.class_names().to_vec(),
            input_side: classifier.image_size(),
            variant: classifier.network().config().variant,
            protocol,
            accuracy: self.accuracy,
            epoch: self.epoch,
        };
        Ok(ServedModel { classifier, info })
    }
}

/// The folds of the run in `folder`, or of the runs in its subfolders (two levels down: results/
/// holds demo/, which holds quick/).
fn run_candidates(folder: &Path) -> anyhow::Result<Vec<Candidate>> {
    let mut found = Vec::new();
    for run in RunDir::discover(folder, 2)? {
        found.extend(fold_candidates(folder, &run));
    }
    Ok(found)
}

/// Each finished or started fold of one run: its best weights (else its last).
fn fold_candidates(root: &Path, run: &RunDir) -> Vec<Candidate> {
    let run_name = match run.root().strip_prefix(root) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.display().to_string(),
        _ => run.root().file_name().map_or_else(
            || run.root().display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        ),
    };
    run.folds()
        .filter_map(|fold| run.best_or_last_weights(fold))
        .map(|weights| {
            let which = match weights.kind {
                WeightsKind::Best => "best",
                WeightsKind::Last => "last",
            };
            Candidate {
                name: format!(
                    "{run_name}, fold {} ({which} epoch {})",
                    weights.fold, weights.epoch
                ),
                weights: weights.path,
                run: Some(run.clone()),
                fold: weights.fold,
                accuracy: weights.test_accuracy,
                epoch: Some(weights.epoch),
            }
        })
        .collect()
}
