//! Which samples each fold trains, validates and tests on, and the checks made on them before
//! any training starts.

use dexpression_dataset::{k_fold, usage_split, Sample, SplitBy};

use crate::batching::{derived_seed, Purpose};
use crate::config::{SelectOn, TrainConfig};
use crate::{Error, Result};

/// The samples of one fold, as indices into the dataset's samples (each list ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldPlan {
    /// Fold number, from 1.
    pub fold: usize,
    /// Samples trained on.
    pub train: Vec<usize>,
    /// Samples held out of training to choose the best epoch (empty unless `select_on = val`).
    pub validation: Vec<usize>,
    /// The fold's held-out test samples.
    pub test: Vec<usize>,
}

/// Deals the folds (grouped by the configured split unit, see `dexpression_dataset::k_fold`),
/// carves validation splits when asked, and returns them with warnings for the user (a class
/// absent from a training fold). Too few samples or groups for the folds is an error.
pub fn plan_folds(
    config: &TrainConfig,
    samples: &[Sample],
) -> Result<(Vec<FoldPlan>, Vec<String>)> {
    let split = config.split_by()?;
    if split == SplitBy::Usage {
        let parts = usage_split(samples)?;
        let plan = FoldPlan {
            fold: 1,
            train: parts.training,
            validation: parts.public_test,
            test: parts.private_test,
        };
        let warnings = missing_class_warning(config, samples, &plan.train, 1)
            .into_iter()
            .collect();
        return Ok((vec![plan], warnings));
    }
    if samples.len() < config.folds {
        return Err(Error::TooManyFolds {
            reason: format!(
                "{} samples cannot make {} folds",
                samples.len(),
                config.folds
            ),
        });
    }
    let folds = k_fold(samples, config.folds, split, config.seed)?;
    let mut plans = Vec::with_capacity(folds.len());
    let mut warnings = Vec::new();
    for (fold_idx, fold) in folds.into_iter().enumerate() {
        let fold_number = fold_idx + 1;
        if fold.test.is_empty() || fold.train.is_empty() {
            return Err(Error::TooManyFolds {
                reason: format!(
                    "fold {fold_number} has {} training and {} test samples",
                    fold.train.len(),
                    fold.test.len()
                ),
            });
        }
        let (train, validation) = match config.select_on {
            SelectOn::Test => (fold.train, Vec::new()),
            SelectOn::Val => carve_validation(config, samples, &fold.train, fold_number)?,
        };
        warnings.extend(missing_class_warning(config, samples, &train, fold_number));
        plans.push(FoldPlan {
            fold: fold_number,
            train,
            validation,
            test: fold.test,
        });
    }
    Ok((plans, warnings))
}

/// The warning for classes that a fold's training samples lack, if any.
fn missing_class_warning(
    config: &TrainConfig,
    samples: &[Sample],
    train: &[usize],
    fold: usize,
) -> Option<String> {
    let mut present = vec![false; config.class_names.len()];
    for &idx in train {
        if let Some(seen) = present.get_mut(samples[idx].label) {
            *seen = true;
        }
    }
    let missing: Vec<&str> = present
        .iter()
        .zip(&config.class_names)
        .filter(|(seen, _)| !**seen)
        .map(|(_, name)| name.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "fold {fold}: no training sample of {}; the network cannot learn {}",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        )
    })
}

/// Splits a training fold into training and validation by the same unit (so no person is in
/// both with a subject split), holding out about `validation_fraction` of the groups.
fn carve_validation(
    config: &TrainConfig,
    samples: &[Sample],
    train: &[usize],
    fold: usize,
) -> Result<(Vec<usize>, Vec<usize>)> {
    // Pixel-free copies: k_fold only looks at groups and labels.
    let light: Vec<Sample> = train
        .iter()
        .map(|&idx| Sample {
            pixels: Vec::new(),
            ..samples[idx].clone()
        })
        .collect();
    let n_parts = ((1.0 / config.validation_fraction).round() as usize).max(2);
    let parts = k_fold(
        &light,
        n_parts,
        config.split_by()?,
        derived_seed(config.seed, Purpose::Shuffle, fold),
    )
    .map_err(|err| {
        Error::Data(format!(
            "fold {fold}: cannot carve a validation split out of the training fold ({err})"
        ))
    })?;
    let first = &parts[0];
    let to_dataset = |local: &[usize]| -> Vec<usize> {
        local.iter().map(|&local_idx| train[local_idx]).collect()
    };
    Ok((to_dataset(&first.train), to_dataset(&first.test)))
}
