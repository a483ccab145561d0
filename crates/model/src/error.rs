//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when building, loading, saving or running the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle; shown as one line (see [`CandleError`]).
    #[error("{0}")]
    Candle(CandleError),

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

impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        Error::Candle(CandleError(error))
    }
}

/// A candle error, displayed as one line without the backtrace that candle pastes into its own
/// message when `RUST_BACKTRACE` is set (a report's own backtrace covers that case); `Debug`
/// and [`CandleError::inner`] keep everything.
#[derive(Debug)]
pub struct CandleError(candle_core::Error);

impl CandleError {
    /// The error as candle reported it, backtrace included.
    pub fn inner(&self) -> &candle_core::Error {
        &self.0
    }
}

impl std::fmt::Display for CandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&one_line(&self.0))
    }
}

// No `source()`: candle's message is already in the one line, and a report walking the chain
// would print candle's Display, backtrace and all.
impl std::error::Error for CandleError {}

/// A candle error as one line: backtraces dropped, context and path kept, line breaks joined.
pub(crate) fn one_line(error: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match error {
        E::WithBacktrace { inner, .. } => one_line(inner),
        E::Context { inner, context } => format!("{context}: {}", one_line(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), one_line(inner)),
        other => other
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The model crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candle_error_with_a_backtrace_shows_as_one_line() {
        let candle = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch in matmul".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let shown = Error::from(candle).to_string();
        assert_eq!(shown, "shape mismatch in matmul");
    }

    #[test]
    fn context_and_path_stay_on_the_line() {
        let candle = candle_core::Error::Msg("bad header".into())
            .with_path("w.safetensors")
            .context("loading");
        assert_eq!(
            Error::from(candle).to_string(),
            "loading: w.safetensors: bad header"
        );
    }
}
