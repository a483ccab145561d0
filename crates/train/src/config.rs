//! [`TrainConfig`]: every choice that shapes a run, saved as `config.json` beside its outputs so
//! the run can be repeated (and resumed) from that file alone.

use std::path::Path;

use dexpression_dataset::{Dataset, Selection, SplitBy};
use dexpression_model::{AdamConfig, DexpressionConfig, Variant};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the checkpoint called `best` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SelectOn {
    /// Highest test accuracy, as the PyTorch port effectively did (optimistic: the test fold
    /// picks the epoch).
    #[default]
    Test,
    /// Highest accuracy on a validation split carved out of the training fold (by the same
    /// split unit), the honest choice; the test fold is then only reported.
    Val,
}

impl std::str::FromStr for SelectOn {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "test" => Ok(SelectOn::Test),
            "val" | "validation" => Ok(SelectOn::Val),
            _ => Err(Error::InvalidOption {
                name: "select_on",
                value: text.into(),
                expected: "`test` or `val`".into(),
            }),
        }
    }
}

/// The run's settings. Field names `split`, `selection`, `neutral`, `folds`, `epochs`,
/// `batch_size`, `learning_rate`, `image_size`, `seed`, `class_names` and `dataset` are the ones
/// the report crate reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Where the data came from (a path, for people; the key below identifies it).
    pub dataset: String,
    /// The prepared dataset's hash (`Dataset::key`): a resumed run refuses other data.
    pub dataset_key: String,
    /// Class names in label order.
    pub class_names: Vec<String>,
    /// Side of the square network input in pixels.
    pub image_size: usize,
    /// Fold unit: `subject`, `sequence` or `frame`; or `usage`, the dataset's own split
    /// (FER2013: one fold, trained on Training, selected on PublicTest, tested on PrivateTest).
    pub split: String,
    /// Frames kept per sequence: `peak:N` or `all`.
    pub selection: String,
    /// Whether first frames were added as a Neutral class.
    pub neutral: bool,
    /// Number of folds (1 with the `usage` split).
    pub folds: usize,
    /// Epochs per fold.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Adam's epsilon.
    pub eps: f64,
    /// Dropout probability before the classifier (and the port's batch normalisation).
    pub dropout: f32,
    /// The network trained: the PyTorch port's or the paper's (runs from before there were two
    /// trained the port's).
    #[serde(default)]
    pub variant: Variant,
    /// Seed of folds, initialisation, shuffling, dropout and augmentation.
    pub seed: u64,
    /// Random flips, rotations, shifts, scaling and brightness/contrast of training images.
    pub augment: bool,
    /// What picks the `best` checkpoint.
    pub select_on: SelectOn,
    /// Share of the training fold's groups held out for validation with `select_on = val`.
    pub validation_fraction: f64,
    /// Keep every epoch's weights instead of only the last and the best.
    pub keep_every_epoch: bool,
    /// Version of this crate when the run started.
    pub version: String,
}

impl TrainConfig {
    /// The PyTorch port's schedule (5 folds, 25 epochs, batch 32, Adam 1e-3, seed 0) on a
    /// prepared dataset, split by subject, with the dataset's class names.
    pub fn port_defaults(
        dataset: &Dataset,
        dataset_name: &str,
        selection: Selection,
        neutral: bool,
    ) -> Self {
        let adam = AdamConfig::default();
        TrainConfig {
            dataset: dataset_name.to_string(),
            dataset_key: dataset.key.clone(),
            class_names: dataset.class_names.clone(),
            image_size: dataset.image_size,
            split: SplitBy::Subject.name().to_string(),
            selection: selection_name(selection),
            neutral,
            folds: 5,
            epochs: 25,
            batch_size: 32,
            learning_rate: adam.learning_rate,
            beta1: adam.beta1,
            beta2: adam.beta2,
            eps: adam.eps,
            dropout: DexpressionConfig::port().dropout,
            variant: Variant::Port,
            seed: 0,
            augment: false,
            select_on: SelectOn::Test,
            validation_fraction: 0.2,
            keep_every_epoch: false,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The fold unit as the dataset crate's type.
    pub fn split_by(&self) -> Result<SplitBy> {
        self.split.parse().map_err(Error::from)
    }

    /// The network this run trains.
    pub fn model_config(&self) -> DexpressionConfig {
        DexpressionConfig {
            dropout: self.dropout,
            ..DexpressionConfig::of(self.variant, self.class_names.len(), self.image_size)
        }
    }

    /// Adam's settings.
    pub fn adam_config(&self) -> AdamConfig {
        AdamConfig {
            learning_rate: self.learning_rate,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }

    /// Checks every value before anything is trained.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &'static str, value: String, expected: &str| {
            Err(Error::InvalidOption {
                name,
                value,
                expected: expected.to_string(),
            })
        };
        let split = self.split_by()?;
        if split == SplitBy::Usage {
            if self.folds != 1 {
                return invalid(
                    "folds",
                    self.folds.to_string(),
                    "1 when `split` is usage (the dataset's own split is one fold)",
                );
            }
            if self.select_on != SelectOn::Val {
                return invalid(
                    "select_on",
                    "test".into(),
                    "val when `split` is usage (PublicTest chooses the epoch, PrivateTest is only reported)",
                );
            }
        } else if self.folds < 2 {
            return invalid("folds", self.folds.to_string(), "at least 2");
        }
        if self.epochs == 0 {
            return invalid("epochs", "0".into(), "at least 1");
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "0".into(), "at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(
                "learning_rate",
                self.learning_rate.to_string(),
                "a positive number such as 1e-3",
            );
        }
        if !(0.0 < self.validation_fraction && self.validation_fraction < 1.0) {
            return invalid(
                "validation_fraction",
                self.validation_fraction.to_string(),
                "between 0 and 1 (exclusive)",
            );
        }
        self.model_config().validate()?;
        Ok(())
    }

    /// The `name: old -> new` list of fields that differ from `earlier`, ignoring the version and
    /// the dataset's path (the same data reached by another path, or on another machine of a
    /// `--fold` job array, is the same run: `dataset_key` identifies the data).
    pub fn differences(&self, earlier: &TrainConfig) -> Vec<String> {
        let (Ok(new), Ok(old)) = (serde_json::to_value(self), serde_json::to_value(earlier)) else {
            return vec!["unreadable".into()];
        };
        let (Some(new), Some(old)) = (new.as_object(), old.as_object()) else {
            return vec!["unreadable".into()];
        };
        new.iter()
            .filter(|(name, _)| !matches!(name.as_str(), "version" | "dataset"))
            .filter_map(|(name, value)| {
                let before = old.get(name).cloned().unwrap_or(serde_json::Value::Null);
                (before != *value).then(|| format!("{name}: {before} -> {value}"))
            })
            .collect()
    }

    /// Reads a `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        serde_json::from_str(&text).map_err(|err| Error::Json {
            path: path.to_path_buf(),
            message: format!(
                "not a training configuration ({err}); `RunOptions::restart` moves it aside"
            ),
        })
    }

    /// Writes it as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_json_atomic(path, self)
    }
}

/// `peak:N` or `all`, the form the report reads.
pub(crate) fn selection_name(selection: Selection) -> String {
    match selection {
        Selection::Peak(n_frames) => format!("peak:{n_frames}"),
        Selection::All => "all".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrainConfig {
        TrainConfig {
            dataset: "data/ckplus".into(),
            dataset_key: "abc".into(),
            class_names: vec!["a".into(), "b".into()],
            image_size: 64,
            split: "subject".into(),
            selection: "peak:3".into(),
            neutral: false,
            folds: 5,
            epochs: 25,
            batch_size: 32,
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            dropout: 0.2,
            variant: Variant::Port,
            seed: 0,
            augment: false,
            select_on: SelectOn::Test,
            validation_fraction: 0.2,
            keep_every_epoch: false,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn the_usage_split_is_one_fold_selected_on_validation() {
        let mut usage = config();
        usage.split = "usage".into();
        assert!(usage.validate().unwrap_err().to_string().contains("folds"));
        usage.folds = 1;
        assert!(usage
            .validate()
            .unwrap_err()
            .to_string()
            .contains("select_on"));
        usage.select_on = SelectOn::Val;
        assert!(usage.validate().is_ok());
        let mut one_fold = config();
        one_fold.folds = 1;
        assert!(one_fold.validate().is_err());
    }

    #[test]
    fn differences_name_the_fields_but_not_the_path_or_version() {
        let earlier = config();
        let mut moved = config();
        moved.dataset = "/mnt/other/ckplus".into();
        moved.version = "0.2.0".into();
        assert!(moved.differences(&earlier).is_empty());
        let mut changed = config();
        changed.epochs = 3;
        changed.dataset_key = "def".into();
        assert_eq!(
            changed.differences(&earlier),
            vec!["dataset_key: \"abc\" -> \"def\"", "epochs: 25 -> 3"]
        );
        assert!(config().validate().is_ok());
        changed.batch_size = 0;
        assert!(changed
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
    }
}
