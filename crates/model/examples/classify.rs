//! Load DeXpression weights and classify the expression of already cropped face images.
//!
//! ```text
//! cargo run --release -p dexpression-model --example classify -- WEIGHTS.safetensors FACE.png...
//! ```
//! Without arguments it classifies the first input of the repository's PyTorch fixture with the
//! fixture's weights (`tests/fixtures/torch/`, a 64x64 network). The classes are named as the
//! weights record them (the port's weights record none: CK+'s emotions stand in).

use std::path::PathBuf;

use candle_core::Device;
use dexpression_dataset::crop::load_face_pixels;
use dexpression_model::Classifier;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch");
    let weights = args
        .next()
        .unwrap_or_else(|| fixture.join("weights.safetensors"));
    let mut images: Vec<PathBuf> = args.collect();
    if images.is_empty() {
        images.push(fixture.join("input-0.png"));
    }

    let classifier = Classifier::load(&weights, &Device::Cpu)?;
    let side = classifier.image_size();
    println!(
        "{}: {} classes, {side}x{side} input",
        weights.display(),
        classifier.class_names().len()
    );
    for image in &images {
        let face = load_face_pixels(image, side as u32)?;
        let prediction = classifier.classify(&face)?;
        println!(
            "{}: {} ({:.1}%)",
            image.display(),
            prediction.label,
            100.0 * prediction.confidence()
        );
    }
    Ok(())
}
