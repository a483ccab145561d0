//! The run configuration `cargo xtask train` writes beside its history as `config.json`.
//!
//! Every field is optional and a field of an unexpected type is dropped rather than refused,
//! because the report must still draw a port-made history that has no configuration, or one
//! written by an older or newer trainer.

use std::path::Path;

use dexpression_runfiles::{CK_PLUS_CLASS_NAMES, NEUTRAL_CLASS_NAME};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// What the report needs to know about how a history was produced; read from `config.json`.
///
/// Unknown fields are ignored and every field may be absent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// How folds were formed: `"subject"`, `"sequence"`, `"frame"`, or `"usage"` (the
    /// dataset's own split: one fold, tested on FER2013's PrivateTest).
    #[serde(deserialize_with = "lenient")]
    pub split: Option<String>,
    /// Which frames of each sequence were used, e.g. `"peak:3"` or `"all"`.
    #[serde(deserialize_with = "lenient")]
    pub selection: Option<String>,
    /// Whether neutral first frames were added as an eighth class.
    #[serde(deserialize_with = "lenient")]
    pub neutral: Option<bool>,
    /// Number of folds the run was asked for.
    #[serde(deserialize_with = "lenient")]
    pub folds: Option<u32>,
    /// Number of epochs each fold was asked for.
    #[serde(deserialize_with = "lenient")]
    pub epochs: Option<u32>,
    /// Mini-batch size.
    #[serde(deserialize_with = "lenient")]
    pub batch_size: Option<u32>,
    /// Optimiser learning rate.
    #[serde(deserialize_with = "lenient")]
    pub learning_rate: Option<f64>,
    /// Side of the square network input in pixels.
    #[serde(deserialize_with = "lenient")]
    pub image_size: Option<u32>,
    /// Random seed of the run.
    #[serde(deserialize_with = "lenient")]
    pub seed: Option<u64>,
    /// Class names in label order; the CK+ names when absent.
    #[serde(deserialize_with = "lenient")]
    pub class_names: Option<Vec<String>>,
    /// Dataset name or path.
    #[serde(deserialize_with = "lenient")]
    pub dataset: Option<String>,
    /// The network trained: `"port"` or `"paper"` (runs from before there were two, and the
    /// PyTorch port's own histories, have none: they trained the port's).
    #[serde(deserialize_with = "lenient")]
    pub variant: Option<String>,
}

impl RunConfig {
    /// Reads a `config.json`.
    pub fn from_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })?;
        serde_json::from_str(&text).map_err(|error| Error::Config {
            path: path.to_path_buf(),
            error,
        })
    }

    /// The split protocol in lower case, or `"unknown"` when the configuration does not say.
    pub fn split_name(&self) -> String {
        self.split
            .as_deref()
            .map(|split| split.trim().to_lowercase())
            .filter(|split| !split.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// Class names for labels `0..n_labels`: the configured names, else the CK+ names (with
    /// Neutral as label 7), padded with `class N` for any label beyond the known names.
    pub fn class_names(&self, n_labels: usize) -> Vec<String> {
        let mut names: Vec<String> = match &self.class_names {
            Some(names) if !names.is_empty() => names.clone(),
            _ => {
                let mut names: Vec<String> = CK_PLUS_CLASS_NAMES
                    .iter()
                    .map(|name| name.to_string())
                    .collect();
                if n_labels > names.len() || self.neutral == Some(true) {
                    names.push(NEUTRAL_CLASS_NAME.to_string());
                }
                names
            }
        };
        while names.len() < n_labels {
            names.push(format!("class {}", names.len()));
        }
        names
    }
}

/// Takes a field when it has the expected type and drops it otherwise, so that a trainer writing
/// e.g. `"split": {"by": "subject"}` still gets its curves drawn (with the split shown as unknown).
fn lenient<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}
