//! Load DeXpression weights and classify the expression of already cropped face images.
//!
//! ```text
//! cargo run --release -p dexpression-model --example classify -- WEIGHTS.safetensors FACE.png...
//! ```
//! Without arguments it classifies the first input of the repository's PyTorch fixture with the
//! fixture's weights (`tests/fixtures/torch/`, a 64x64 network).

use std::path::PathBuf;

use candle_core::Device;
use dexpression_dataset::class_names;
use dexpression_dataset::crop::load_face_pixels;
use dexpression_model::{batch_from_pixels, Dexpression};

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

    let model = Dexpression::load(&weights, &Device::Cpu)?;
    let side = model.config().image_size;
    println!(
        "{}: {} classes, {side}x{side} input",
        weights.display(),
        model.config().n_classes
    );
    // The fixture's network, as the port's, uses CK+'s seven emotions in label order.
    let class_names = class_names(false);
    for image in &images {
        let pixels = load_face_pixels(image, side as u32)?;
        let input = batch_from_pixels(&pixels, side, &Device::Cpu)?;
        let probabilities = model.probabilities(&input)?.remove(0);
        let (best, p) =
            probabilities.iter().enumerate().fold(
                (0, 0f32),
                |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
            );
        let name = class_names.get(best).map_or("class", String::as_str);
        println!("{}: {name} ({:.1}%)", image.display(), 100.0 * p);
    }
    Ok(())
}
