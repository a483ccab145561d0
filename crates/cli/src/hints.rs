//! The command-line half of the libraries' error messages: the libraries name their option fields
//! (`RunOptions::restart`), and here each error is given the flag or command that sets or fixes
//! it (`pass --restart`), so that a library used from another program never gives advice only
//! xtask can follow.

use std::error::Error as StdError;
use std::path::Path;

use dexpression_dataset::Error as DatasetError;
use dexpression_model::Error as ModelError;
use dexpression_report::Error as ReportError;
use dexpression_train::Error as TrainError;

/// The flag or command to try for the first error in `err`'s chain that has one, e.g.
/// `pass --restart to train this fold from scratch`; `None` when no error in it has a hint.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(hint_for)
}

/// `err`'s message with its hint, if any, in parentheses: what `main` prints.
pub fn with_hint(err: &anyhow::Error) -> String {
    match hint(err) {
        Some(hint) => format!("{err:#} ({hint})"),
        None => format!("{err:#}"),
    }
}

fn hint_for(err: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(err) = err.downcast_ref::<TrainError>() {
        return train_hint(err);
    }
    if let Some(err) = err.downcast_ref::<DatasetError>() {
        return dataset_hint(err);
    }
    if let Some(err) = err.downcast_ref::<ModelError>() {
        return model_hint(err);
    }
    if let Some(err) = err.downcast_ref::<ReportError>() {
        return report_hint(err);
    }
    None
}

fn train_hint(err: &TrainError) -> Option<String> {
    match err {
        // Transparent variants: the inner error is not in the `source()` chain of its own.
        TrainError::Dataset(inner) => dataset_hint(inner),
        TrainError::Model(inner) => model_hint(inner),
        TrainError::ConfigChanged { .. } => {
            Some("pass --restart to move the earlier run aside, or choose another --out".into())
        }
        TrainError::Checkpoint { .. } => {
            Some("pass --restart to train this fold from scratch".into())
        }
        TrainError::Json { path, .. }
            if path.file_name() == Some(dexpression_train::CONFIG_FILE.as_ref()) =>
        {
            Some("pass --restart to move it aside".into())
        }
        TrainError::NonFiniteLoss { .. } => Some("try a lower --lr".into()),
        TrainError::TooManyFolds { .. } => Some("pass fewer --folds".into()),
        TrainError::InvalidOption { name, .. } => option_hint(name),
        _ => None,
    }
}

fn dataset_hint(err: &DatasetError) -> Option<String> {
    match err {
        DatasetError::SourceMissing { path } => Some(format!(
            "get CK+ with `cargo xtask download`, or write a synthetic one with `cargo xtask synth --out {}`",
            path.display()
        )),
        DatasetError::Strict { .. } => {
            Some("drop --strict to skip and list such files instead".into())
        }
        DatasetError::TooManyClasses { .. } => {
            Some("point --source at the folder whose subfolders are the classes".into())
        }
        DatasetError::InvalidOption { name, .. } => option_hint(name),
        _ => None,
    }
}

fn model_hint(err: &ModelError) -> Option<String> {
    match err {
        ModelError::Device { .. } if !cfg!(feature = "cuda") => Some(
            "this xtask has no CUDA: build one with `cargo run -p xtask --release --features cuda -- <command>`, or pass --device cpu"
                .into(),
        ),
        ModelError::Weights { path, .. } if is_torch_checkpoint(path) => Some(format!(
            "convert it first: `cargo xtask import-torch {}`",
            path.display()
        )),
        _ => None,
    }
}

fn report_hint(err: &ReportError) -> Option<String> {
    match err {
        ReportError::HistoryMissing { .. } | ReportError::NoHistoryInDirectory { .. } => Some(
            "train first with `cargo xtask train` or `cargo xtask demo`, or pass --history with the folder `train --out` wrote"
                .into(),
        ),
        _ => None,
    }
}

/// The flag that sets a library option field, where its name differs from the field's.
fn option_hint(field: &str) -> Option<String> {
    let flag = match field {
        "learning_rate" => "lr".to_string(),
        "only_fold" => "fold".to_string(),
        "selection" => "peak-frames".to_string(),
        "folds" | "epochs" | "batch_size" | "image_size" | "crop_margin" | "select_on"
        | "split" | "subjects" => field.replace('_', "-"),
        _ => return None,
    };
    Some(format!("set with --{flag}"))
}

fn is_torch_checkpoint(path: &Path) -> bool {
    let extension = path.extension().and_then(|ext| ext.to_str());
    matches!(extension, Some("tar" | "pt" | "pth"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_library_error_gets_its_flag() {
        let err = anyhow::Error::new(TrainError::Checkpoint {
            path: "results/fold1/last.json".into(),
            reason: "damaged".into(),
        })
        .context("training");
        assert_eq!(
            hint(&err).as_deref(),
            Some("pass --restart to train this fold from scratch")
        );
        assert!(with_hint(&err).ends_with("(pass --restart to train this fold from scratch)"));
    }

    #[test]
    fn a_dataset_error_inside_a_train_error_gets_the_dataset_hint() {
        let err = anyhow::Error::new(TrainError::Dataset(DatasetError::Strict {
            path: "a.png".into(),
            reason: "not an image".into(),
        }));
        assert!(hint(&err).unwrap().contains("--strict"));
    }

    #[test]
    fn option_fields_become_flags() {
        let err = anyhow::Error::new(TrainError::InvalidOption {
            name: "learning_rate",
            value: "0".into(),
            expected: "a positive number".into(),
        });
        assert_eq!(hint(&err).as_deref(), Some("set with --lr"));
        assert_eq!(hint(&anyhow::anyhow!("plain")), None);
    }
}
