//! How the library reports progress without drawing anything itself: the caller (xtask) passes
//! a [`Progress`] implementation and decides how to show it.

/// Receives progress of one step at a time: a transfer, a conversion or an import.
///
/// The same shape as the dataset and train crates' `Progress`: every method defaults to doing
/// nothing, and [`Silent`] is the implementation that shows nothing. Calls arrive from the
/// thread doing the work (and, for Hub transfers, from hf-hub's runtime thread), so
/// implementations take `&self`, must be cheap and must not block.
pub trait Progress: Send + Sync {
    /// A new step starts; `total` is its size in `unit`s when known.
    fn begin(&self, _label: &str, _total: Option<u64>, _unit: Unit) {}
    /// The current step has reached `done` bytes (or items) in all.
    fn set_position(&self, _done: u64) {}
    /// The current step ended, successfully or not.
    fn end(&self) {}
    /// A one-line message worth showing to the user (a skipped file, a resumed transfer).
    fn note(&self, _message: &str) {}
}

/// What a step counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of a transfer.
    Bytes,
    /// Files or images of a conversion or import.
    Items,
}

/// A [`Progress`] that shows nothing; for tests and quiet callers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

/// The earlier name of [`Silent`].
pub use Silent as NoProgress;
