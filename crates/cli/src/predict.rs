//! `cargo xtask predict`: the class (expression, or whatever the weights were trained on) of the
//! face in each image, named as the weights file's metadata names it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dexpression_dataset::crop::{load_face_pixels, open_image, CropBox};
use dexpression_dataset::faces::{detect_face_inputs, whole_image_input, FaceInput};
use dexpression_dataset::DataDir;
use dexpression_model::candle_core::Device;
use dexpression_model::{Classifier, Prediction};
use dexpression_train::RunDir;

/// Classify the facial expression in each image with trained weights.
#[derive(clap::Args)]
pub struct Args {
    /// Safetensors weights (from `train`, `download --weights` or `import-torch`), or the run
    /// folder `train --out` wrote: its first fold's best weights (else its last).
    #[arg(long, default_value_os_t = DataDir::default().port_weights())]
    weights: PathBuf,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Treat each image as an already cropped face: grayscale, resized to the input side, /255
    /// (how the port fed its network). Without it, every face the detector finds is classified.
    #[arg(long)]
    no_crop: bool,
    /// Print one JSON object per face: {"path", "label", "probabilities": {name: p}}, with the
    /// class names stored in the weights file.
    #[arg(long)]
    json: bool,
    /// Where to run: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also write each image with a Grad-CAM heat map of the predicted class over every face
    /// into this folder, as `<image name>-heatmap.png`.
    #[arg(long, value_name = "OUT_DIR")]
    heatmap: Option<PathBuf>,
    /// The variant the weights must be (`port` or `paper`); without it, whichever the file
    /// records. Weights of the other variant are refused.
    #[arg(long, value_parser = crate::parse_variant)]
    variant: Option<dexpression_model::Variant>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = crate::open_device(&args.device)?;
    let classifier = load_classifier(&args.weights, &device)
        .with_context(|| {
            format!(
                "loading {} (get weights with `cargo xtask download --weights` or `cargo xtask train`)",
                args.weights.display()
            )
        })?
        .with_threads_awake(true);
    if let Some(variant) = args.variant {
        classifier.check_variant(variant, &args.weights)?;
    }
    if !classifier.names_recorded() && !args.json {
        eprintln!(
            "{}: no class names recorded, using the PyTorch port's (CK+ emotions)",
            args.weights.display()
        );
    }
    let side = classifier.image_size();
    if let Some(dir) = &args.heatmap {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the heat map folder {}", dir.display()))?;
    }
    for path in &args.images {
        let faces = faces_of(path, side, args.no_crop)?;
        let mut overlay = args
            .heatmap
            .as_ref()
            .map(|_| image::open(path).map(|image| image.to_rgb8()))
            .transpose()
            .with_context(|| format!("{}: cannot read the image", path.display()))?;
        for face in &faces {
            let Some(image) = overlay.as_mut() else {
                let prediction = classifier.classify(&face.pixels)?;
                print_prediction(path, face, &prediction, classifier.class_names(), args.json);
                continue;
            };
            let (prediction, heatmap) = classifier.explain(&face.pixels, None)?;
            print_prediction(path, face, &prediction, classifier.class_names(), args.json);
            let CropBox {
                x,
                y,
                width,
                height,
            } = face.region.unwrap_or(CropBox {
                x: 0,
                y: 0,
                width: image.width(),
                height: image.height(),
            });
            heatmap.blend_onto(image, x, y, width, height);
        }
        if let (Some(dir), Some(image)) = (&args.heatmap, overlay) {
            let stem = path
                .file_stem()
                .map_or_else(|| "image".into(), |stem| stem.to_string_lossy());
            let out = dir.join(format!("{stem}-heatmap.png"));
            image
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            if !args.json {
                println!("heat map: {}", out.display());
            }
        }
    }
    Ok(())
}

/// The classifier of a weights file, or of a run folder's first fold with weights (with the
/// run's input side and class names).
fn load_classifier(weights: &Path, device: &Device) -> anyhow::Result<Classifier> {
    if !weights.is_dir() {
        return Ok(Classifier::load(weights, device)?);
    }
    let run = RunDir::open(weights)?;
    let Some(found) = run.first_weights() else {
        anyhow::bail!(
            "{}: no fold with weights yet (expected fold*/best.json or fold*/last.json as `cargo xtask train` writes them)",
            weights.display()
        );
    };
    Ok(run.load_classifier(&found.path, device)?)
}

/// The faces of an image: every face the detector finds (cropped as `prepare` crops frames
/// without landmarks), the whole image when it finds none, or the whole image as an already
/// cropped face with `--no-crop`.
fn faces_of(path: &Path, side: usize, no_crop: bool) -> anyhow::Result<Vec<FaceInput>> {
    if no_crop {
        return Ok(vec![FaceInput {
            pixels: load_face_pixels(path, side as u32)?,
            region: None,
        }]);
    }
    let image = open_image(path)?;
    let detected = detect_face_inputs(&image, side as u32, None);
    if detected.is_empty() {
        eprintln!(
            "{}: no face found, classifying the whole image",
            path.display()
        );
        return Ok(vec![whole_image_input(&image, side as u32)]);
    }
    Ok(detected)
}

fn print_prediction(
    path: &Path,
    face: &FaceInput,
    prediction: &Prediction,
    class_names: &[String],
    json: bool,
) {
    let probabilities = &prediction.probabilities;
    if json {
        let by_name: serde_json::Map<String, serde_json::Value> = class_names
            .iter()
            .zip(probabilities)
            .map(|(name, p)| (name.clone(), serde_json::json!(p)))
            .collect();
        let mut record = serde_json::json!({
            "path": path,
            "label": prediction.label,
            "probabilities": by_name,
        });
        if let Some(r) = face.region {
            record["box"] =
                serde_json::json!({"x": r.x, "y": r.y, "width": r.width, "height": r.height});
        }
        println!("{record}");
    } else {
        let detail: Vec<String> = class_names
            .iter()
            .zip(probabilities)
            .map(|(name, p)| format!("{name} {:.1}%", 100.0 * p))
            .collect();
        let at = face
            .region
            .map(|r| format!(" [face at {},{} {}x{}]", r.x, r.y, r.width, r.height))
            .unwrap_or_default();
        println!(
            "{}{at}: {} ({})",
            path.display(),
            prediction.label,
            detail.join(", ")
        );
    }
}
