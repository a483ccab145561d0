//! `cargo xtask export`: trained weights as an ONNX model for ONNX Runtime, OpenCV's DNN module
//! or the browser (docs/deploy.md); the export itself is `dexpression_model::onnx`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dexpression_dataset::DataDir;
use dexpression_model::onnx::{self, keys};
use dexpression_train::{TrainConfig, CONFIG_FILE};

/// Write trained weights as an ONNX model (inference only, dynamic batch size).
#[derive(clap::Args)]
pub struct Args {
    /// Safetensors weights (from `train`, `download --weights` or `import-torch`).
    #[arg(long, default_value_os_t = DataDir::default().port_weights())]
    weights: PathBuf,
    /// The ONNX file to write (replaced whole, never left half written).
    #[arg(long, default_value = "model.onnx")]
    out: PathBuf,
    /// The ONNX opset (LayerNormalization from 17 on, its decomposition below).
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET)]
    opset: i64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let summary = onnx::export_weights(
        &args.weights,
        &args.out,
        args.opset,
        default_class_names,
        training_run(&args.weights),
    )
    .with_context(|| format!("exporting {} as ONNX", args.weights.display()))?;
    let side = summary.config.image_size;
    if let Some(candidates) = &summary.inferred_side_from {
        eprintln!(
            "note: {} records no input side; exported at {side} px, inferred from its tensor shapes as `predict` does (sides {} all fit them). Weights written by `train` record their side.",
            args.weights.display(),
            candidates
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !summary.class_names_recorded {
        eprintln!(
            "note: {} records no class names; exported with CK+'s: {}",
            args.weights.display(),
            summary.class_names.join(", ")
        );
    }
    println!(
        "wrote {} ({:.1} MB, opset {}, LayerNorm as {}): input `{}` batch x 1 x {side} x {side} (grayscale / 255), outputs `{}` and `{}` over {} classes: {}",
        args.out.display(),
        summary.bytes as f64 / 1e6,
        summary.opset,
        if summary.layer_normalization_node {
            "LayerNormalization"
        } else {
            "ReduceMean/Sub/Mul/Sqrt/Div"
        },
        onnx::INPUT,
        onnx::LOG_PROBABILITIES,
        onnx::PROBABILITIES,
        summary.class_names.len(),
        summary.class_names.join(", ")
    );
    Ok(())
}

/// What `predict` calls weights without class names: CK+'s 7 emotions, or 8 with Neutral.
fn default_class_names(n_classes: usize) -> Option<Vec<String>> {
    let names = dexpression_dataset::class_names(n_classes > 7);
    (names.len() == n_classes).then_some(names)
}

/// The training protocol when the weights sit in a run folder (`<run>/fold<k>/<weights>`, as
/// `train` writes them): the run's configuration and the fold. Nothing for other weights, or
/// when the configuration cannot be read (the export does not need it).
fn training_run(weights: &Path) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let Some(fold_dir) = weights.parent() else {
        return entries;
    };
    let Some(fold) = fold_dir
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("fold"))
        .and_then(|number| number.parse::<usize>().ok())
    else {
        return entries;
    };
    let Some(config) = fold_dir
        .parent()
        .and_then(|run| TrainConfig::load(&run.join(CONFIG_FILE)).ok())
    else {
        return entries;
    };
    if let Ok(json) = serde_json::to_string(&config) {
        entries.insert(keys::TRAINING_CONFIG.to_string(), json);
        entries.insert(keys::TRAINING_FOLD.to_string(), fold.to_string());
    }
    entries
}
