//! How [`crate::prepare`] reports where it is, for a progress display: the same shape as the
//! train and download crates' `Progress` (a trait whose methods default to doing nothing, and
//! [`Silent`]). Its one event arrives from worker threads, hence `&self` and `Sync`; a closure
//! taking a [`Step`] is a `Progress` too.

use std::fmt;

/// The step [`crate::prepare`] is at, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Listing files and reading labels (`total` is 0: unknown).
    Scanning,
    /// Extracting zip archives (`done`/`total` in entries).
    Extracting,
    /// Decoding, cropping and resizing images (`done`/`total` in frames).
    Cropping,
    /// Reading the cache (`done`/`total` in samples).
    LoadingCache,
    /// Writing the cache.
    WritingCache,
}

impl fmt::Display for Stage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Stage::Scanning => "scanning",
            Stage::Extracting => "extracting",
            Stage::Cropping => "cropping",
            Stage::LoadingCache => "loading cache",
            Stage::WritingCache => "writing cache",
        })
    }
}

/// Receives [`crate::prepare`]'s progress; called from worker threads, so it must be cheap.
pub trait Progress: Sync {
    /// `done` of `total` units of a stage are done.
    fn step(&self, _step: Step) {}
}

/// Any `Fn(Step)`, such as `&|step| bar.set_position(step.done as u64)`, or `&|_| {}`.
impl<F: Fn(Step) + Sync> Progress for F {
    fn step(&self, step: Step) {
        self(step)
    }
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

/// A progress report from [`crate::prepare`]: enough to drive a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The current step.
    pub stage: Stage,
    /// Units done in this step.
    pub done: usize,
    /// Units in this step (0 when unknown).
    pub total: usize,
}
