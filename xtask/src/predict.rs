//! `cargo xtask predict`: the expression of the face in each image.

use std::path::PathBuf;

use anyhow::Context;
use dexpression_model::{batch_from_pixels, load_face_pixels, parse_device, Dexpression};

/// Classify the facial expression in each image with trained weights.
#[derive(clap::Args)]
pub struct Args {
    /// Safetensors weights (from `train`, `download --weights` or `import-torch`).
    #[arg(long, default_value = "data/weights/dexpression-port-fold1.safetensors")]
    weights: PathBuf,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Treat each image as an already cropped face: grayscale, resized to the input side, /255
    /// (how the port fed its network).
    #[arg(long)]
    no_crop: bool,
    /// Print one JSON object per image: {"path", "label", "probabilities": {name: p}}.
    #[arg(long)]
    json: bool,
    /// Where to run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let model = Dexpression::load(&args.weights, &device).with_context(|| {
        format!("loading {} (get weights with `cargo xtask download --weights` or `cargo xtask train`)", args.weights.display())
    })?;
    let side = model.config().image_size;
    let class_names = dexpression_dataset::class_names(model.config().n_classes > 7);
    anyhow::ensure!(
        class_names.len() == model.config().n_classes,
        "{} has {} classes; expected 7 (CK+ emotions) or 8 (with neutral)",
        args.weights.display(),
        model.config().n_classes
    );
    if !args.no_crop {
        eprintln!("note: no face detector is built in yet; each whole image is taken as the face (as with --no-crop)");
    }
    for path in &args.images {
        let pixels = load_face_pixels(path, side)?;
        let batch = batch_from_pixels(&pixels, side, &device)?;
        let probabilities = model.probabilities(&batch)?.remove(0);
        let best = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(idx, _)| idx)
            .context("the network returned no probabilities")?;
        if args.json {
            let by_name: serde_json::Map<String, serde_json::Value> =
                class_names.iter().zip(&probabilities).map(|(name, p)| (name.clone(), serde_json::json!(p))).collect();
            let record = serde_json::json!({"path": path, "label": class_names[best], "probabilities": by_name});
            println!("{record}");
        } else {
            let detail: Vec<String> = class_names.iter().zip(&probabilities).map(|(name, p)| format!("{name} {:.1}%", 100.0 * p)).collect();
            println!("{}: {} ({})", path.display(), class_names[best], detail.join(", "));
        }
    }
    Ok(())
}
