//! The train crate's error type: each variant names the file, fold or option involved and what
//! to do about it, so that a message printed alone is enough to act on.

use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building, running or saving the network failed.
    #[error(transparent)]
    Model(#[from] dexpression_model::Error),

    /// Preparing the dataset or dealing folds failed.
    #[error(transparent)]
    Dataset(#[from] dexpression_dataset::Error),

    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Writing a file (through a temporary renamed into place) failed.
    #[error(transparent)]
    Write(#[from] dexpression_fsio::Error),

    /// Reading or writing a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (configuration, checkpoint state) could not be read or written.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },

    /// An option is out of its valid range.
    #[error("invalid option {name} = {value}: {expected}")]
    InvalidOption {
        /// The option, as its options struct names the field (`batch_size`, `image_size`).
        name: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: String,
    },

    /// The output folder holds a run made with other options or another dataset.
    #[error("{path}: the output folder holds a run with other settings ({differences}); set `RunOptions::restart` to move it aside, or choose another output folder")]
    ConfigChanged {
        /// The `config.json` of the earlier run.
        path: PathBuf,
        /// Which fields differ, old and new value.
        differences: String,
    },

    /// A checkpoint does not belong to this run or is damaged.
    #[error("{path}: {reason}; set `RunOptions::restart` to train this fold from scratch")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The loss became NaN or infinite: training of the fold stopped.
    #[error("fold {fold}, epoch {epoch}, batch {batch}: the loss is {loss}, training of this fold stopped (the last good checkpoint is kept{kept}); try a lower `TrainConfig::learning_rate`, or check the input data")]
    NonFiniteLoss {
        /// Fold, from 1.
        fold: usize,
        /// Epoch, from 1.
        epoch: usize,
        /// Batch within the epoch, from 1.
        batch: usize,
        /// The loss value.
        loss: f32,
        /// `: <path>` of the kept checkpoint, or empty when none was written yet.
        kept: String,
    },

    /// The data cannot be dealt into the requested number of folds.
    #[error("{reason}; lower `TrainConfig::folds` or give more data")]
    TooManyFolds {
        /// How many samples or folds there are, in words.
        reason: String,
    },

    /// The data does not fit the configuration or the output folder.
    #[error("{0}")]
    Data(String),
}

/// The train crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_folds_names_the_config_field_not_a_flag() {
        let message = Error::TooManyFolds {
            reason: "3 samples cannot make 5 folds".into(),
        }
        .to_string();
        assert_eq!(
            message,
            "3 samples cannot make 5 folds; lower `TrainConfig::folds` or give more data"
        );
    }
}
