//! k-fold cross-validated training of DeXpression: the loop, per-epoch metrics, the history the
//! report reads, checkpoints and resumption.
//!
//! [`run`] deals folds that do not share people (by default), trains a fresh network per fold
//! with Adam and NLL loss (the PyTorch port's schedule by default), evaluates every epoch, and
//! writes into the output folder `config.json` ([`TrainConfig`]), `history.csv` (the port's
//! columns), `history.jsonl` (everything) and per fold `last`/`best` checkpoints (read back
//! through [`RunDir`]). A killed run started again resumes after its last finished epoch and
//! ends with the same history; the same seed, options and thread count on the CPU give the same
//! history byte for byte.
//!
//! It does not read CK+ (the dataset crate prepares samples), define the network (the model
//! crate) or draw anything (the report crate, from the files written here).
//!
//! ```no_run
//! use dexpression_dataset::{prepare, PrepareOptions, Selection};
//! use dexpression_train::{run, RunOptions, Silent, TrainConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let options = PrepareOptions { image_size: 64, ..Default::default() };
//! let dataset = prepare("data/ckplus".as_ref(), "data/cache".as_ref(), &options, &|_| {})?;
//! let mut config = TrainConfig::port_defaults(&dataset, "data/ckplus", Selection::Peak(3), false);
//! config.epochs = 3;
//! let device = dexpression_model::parse_device("cpu")?;
//! let summary = run(&config, &dataset, "results".as_ref(), &RunOptions::default(), &device, &mut Silent)?;
//! println!("mean test accuracy {:?}", summary.mean_final_test_accuracy());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod augment;
mod batching;
mod checkpoint;
mod config;
mod error;
mod folds;
mod history;
mod layout;
mod metrics;
mod output;
mod progress;
mod run;

pub use checkpoint::WeightsKind;
pub use config::{SelectOn, TrainConfig};
pub use dexpression_runfiles::{CONFIG_FILE, HISTORY_CSV, HISTORY_JSONL};
pub use error::{Error, Result};
pub use history::{read_history_jsonl, EpochRecord};
pub use layout::{FoldWeights, RunDir};
pub use metrics::Metrics;
pub use progress::{FoldInfo, Progress, RunInfo, Silent};
pub use run::{run, RunOptions, RunSummary};

/// The loop's parts and the checkpoint files' contents, for tests and benchmarks that drive a
/// training step by hand or check what a fold folder holds; not a stable API (the `testing`
/// feature turns it on).
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::batching::{batch_tensors, epoch_batches};
    pub use crate::checkpoint::{
        load_state, parse_weights_name, weights_name, BestEpoch, BestState, ResumePoint,
        TrainState, BEST_STATE, LAST_STATE,
    };
    pub use crate::folds::{plan_folds, FoldPlan};
    pub use crate::run::{train_batch, BatchOutcome};
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
