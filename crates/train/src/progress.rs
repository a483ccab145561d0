//! How a run reports what it is doing: a small observer trait whose methods all default to doing
//! nothing, so a command line can draw bars and print lines, and a test can stay silent.

use crate::history::EpochRecord;

/// Receives a run's events, in order: `run_start`, then per fold `fold_start`, per epoch
/// `epoch_start`, `batch_done` per training batch and `epoch_done`, then `fold_done`.
pub trait Progress {
    /// Before any training, with how many folds will be trained and the epochs per fold.
    fn run_start(&mut self, _info: &RunInfo) {}
    /// Something the user should know that does not stop the run.
    fn warning(&mut self, _message: &str) {}
    /// A fold begins (or resumes after `resumed_epochs` finished epochs).
    fn fold_start(&mut self, _fold: &FoldInfo) {}
    /// A finished fold was found and is not trained again.
    fn fold_skipped(&mut self, _fold: usize) {}
    /// An epoch of `n_batches` training batches holding `n_images` images begins.
    fn epoch_start(&mut self, _fold: usize, _epoch: usize, _n_batches: usize, _n_images: usize) {}
    /// A training batch of `n_images` images is done (`batch` from 1).
    fn batch_done(&mut self, _fold: usize, _epoch: usize, _batch: usize, _n_images: usize) {}
    /// An epoch is done, evaluated and saved.
    fn epoch_done(&mut self, _record: &EpochRecord) {}
    /// A fold is done.
    fn fold_done(&mut self, _fold: usize) {}
}

/// What [`Progress::run_start`] receives.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Folds this invocation trains or skips (all, or the one of `--fold`).
    pub folds: Vec<usize>,
    /// Folds of the whole split.
    pub n_folds: usize,
    /// Epochs per fold.
    pub epochs: usize,
    /// The device name (`cpu`, `cuda:0`).
    pub device: String,
}

/// What [`Progress::fold_start`] receives.
#[derive(Debug, Clone)]
pub struct FoldInfo {
    /// Fold, from 1.
    pub fold: usize,
    /// Training samples.
    pub n_train: usize,
    /// Validation samples (0 unless selecting on validation).
    pub n_validation: usize,
    /// Test samples.
    pub n_test: usize,
    /// Epochs already done (resumed from a checkpoint).
    pub resumed_epochs: usize,
    /// Epochs in total.
    pub epochs: usize,
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}
