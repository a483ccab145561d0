//! How [`crate::prepare`] reports where it is, for a progress display.

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

/// A progress report from [`crate::prepare`]: enough to drive a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The current step.
    pub stage: Stage,
    /// Units done in this step.
    pub done: usize,
    /// Units in this step (0 when unknown).
    pub total: usize,
}
