//! `cargo xtask export`: trained weights as an ONNX model for ONNX Runtime, OpenCV's DNN module
//! or the browser (docs/deploy.md); the export itself is `dexpression_model::onnx`, and `--web`
//! writes the in-browser page around it (`crate::browser`).

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
    #[arg(long, default_value = "model.onnx", conflicts_with = "web")]
    out: PathBuf,
    /// The ONNX opset (LayerNormalization from 17 on, its decomposition below).
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET)]
    opset: i64,
    /// Write a web page that classifies in the browser, with no upload, into this folder: the
    /// page, the model (model.onnx) and onnxruntime-web, for any static web server
    /// (docs/deploy.md, "In the browser"). Replaced whole; never left half written.
    #[arg(long, value_name = "DIR")]
    web: Option<PathBuf>,
    /// Where onnxruntime-web is kept once downloaded (default: dexpression in the user's cache
    /// folder, e.g. ~/.cache/dexpression).
    #[arg(long, value_name = "DIR", requires = "web")]
    cache: Option<PathBuf>,
    /// Use onnxruntime-web from the cache only; never download it.
    #[arg(long, requires = "web")]
    offline: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = args.web.clone() {
        return web::run(args, &dir);
    }
    let summary = onnx::export_weights(
        &args.weights,
        &args.out,
        args.opset,
        default_class_names,
        training_run(&args.weights),
    )
    .with_context(|| format!("exporting {} as ONNX", args.weights.display()))?;
    print_notes(&args.weights, &summary);
    print_summary(&args.out, &summary);
    Ok(())
}

/// What the export had to assume: the input side of weights that record none, CK+'s names.
fn print_notes(weights: &Path, summary: &onnx::ExportSummary) {
    let side = summary.config.image_size;
    if let Some(candidates) = &summary.inferred_side_from {
        eprintln!(
            "note: {} records no input side; exported at {side} px, inferred from its tensor shapes as `predict` does (sides {} all fit them). Weights written by `train` record their side.",
            weights.display(),
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
            weights.display(),
            summary.class_names.join(", ")
        );
    }
}

/// The written model: file, size, opset, input and outputs.
fn print_summary(out: &Path, summary: &onnx::ExportSummary) {
    let side = summary.config.image_size;
    println!(
        "wrote {} ({:.1} MB, opset {}, {} variant, normalisation as {}): input `{}` batch x 1 x {side} x {side} (grayscale / 255), outputs `{}` and `{}` over {} classes: {}",
        out.display(),
        summary.bytes as f64 / 1e6,
        summary.opset,
        summary.config.variant,
        summary.normalisation_nodes(),
        onnx::INPUT,
        onnx::LOG_PROBABILITIES,
        onnx::PROBABILITIES,
        summary.class_names.len(),
        summary.class_names.join(", ")
    );
}

/// `--web DIR`: the in-browser page as a folder (`crate::browser::folder`). Its runtime stack
/// is the `serve` feature's; without it, xtask runs again with it, as `serve` does.
#[cfg(feature = "serve")]
mod web {
    use std::path::Path;

    use anyhow::Context;
    use dexpression_model::onnx;

    use super::{default_class_names, print_notes, print_summary, training_run, Args};
    use crate::browser::folder::{self, MODEL_FILE};
    use crate::browser::runtime::{self, Access, Package};

    pub fn run(args: Args, dir: &Path) -> anyhow::Result<()> {
        let cache = match args.cache.clone().or_else(runtime::default_cache_dir) {
            Some(cache) => cache,
            None => anyhow::bail!(
                "no cache folder for onnxruntime-web (no home folder): pass --cache DIR"
            ),
        };
        let access = if args.offline {
            Access::CacheOnly
        } else {
            Access::Download
        };
        // First the runtime: a failure to get it must not cost the export, nor touch DIR.
        let runtime = runtime::obtain(&Package::onnxruntime_web(), &cache, access)?;
        if !runtime.downloaded {
            eprintln!(
                "{} {}: from the cache, checksum checked ({})",
                runtime.package.name,
                runtime.package.version,
                runtime.tarball.display()
            );
        }
        let name = args.weights.file_stem().map_or_else(
            || "model".to_string(),
            |stem| stem.to_string_lossy().into_owned(),
        );
        let (summary, written) = folder::write_folder(dir, &name, &runtime, |out| {
            onnx::export_weights(
                &args.weights,
                out,
                args.opset,
                default_class_names,
                training_run(&args.weights),
            )
            .with_context(|| format!("exporting {} as ONNX", args.weights.display()))
        })
        .with_context(|| format!("writing the in-browser page into {}", dir.display()))?;
        print_notes(&args.weights, &summary);
        print_summary(&dir.join(MODEL_FILE), &summary);
        let bytes: u64 = written.files.iter().map(|(_, size)| size).sum();
        println!(
            "{} {} ({} files, {:.1} MB): a page that classifies in the browser with {} {}; no image leaves it",
            if written.replaced { "replaced" } else { "wrote" },
            dir.display(),
            written.files.len(),
            bytes as f64 / 1e6,
            runtime.package.name,
            runtime.package.version
        );
        println!(
            "serve the folder over HTTP (.wasm as application/wasm, .mjs as text/javascript), e.g. `python3 -m http.server -d {} 8000` and open http://localhost:8000/",
            dir.display()
        );
        Ok(())
    }
}

#[cfg(not(feature = "serve"))]
mod web {
    use std::path::Path;

    use super::Args;

    /// Runs `export` again through xtask with its `serve` feature, which holds the web stack.
    pub fn run(_args: Args, _dir: &Path) -> anyhow::Result<()> {
        crate::relay::run_with_feature(
            "serve",
            "export",
            "a minute or two",
            crate::relay::Args::from_process(),
        )
    }
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
