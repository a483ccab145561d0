//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when building, loading, saving or running the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A weights file lacks a tensor the network needs.
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?}); is this a DeXpression checkpoint?")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The state_dict key.
        name: String,
        /// The shape the network expects.
        expected: Vec<usize>,
    },

    /// A weights file holds a tensor of the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?} but the network expects {expected:?}; was it trained with another number of classes or input side?")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The state_dict key.
        name: String,
        /// The shape in the file.
        found: Vec<usize>,
        /// The shape the network expects.
        expected: Vec<usize>,
    },

    /// A weights file could not be read or written.
    #[error("{path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },

    /// An image could not be read or decoded.
    #[error("{path}: cannot read image: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },

    /// The configuration is impossible (for example an input side too small for the network).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A device specification could not be honoured.
    #[error("device `{spec}`: {message}")]
    Device {
        /// What the user asked for (`cpu`, `cuda:1`, ...).
        spec: String,
        /// Why it cannot be used.
        message: String,
    },
}

/// The model crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
