//! Crops the faces of a CK+ folder (a synthetic one by default) and writes a contact sheet:
//! one row per class, the first crops of that class side by side.
//!
//! ```text
//! cargo run --release -p dexpression-dataset --example crop_folder -- [SOURCE] [SHEET.png]
//! ```
//!
//! Without SOURCE it generates a synthetic CK+ with 6 subjects in a temporary folder.

use dexpression_dataset::{prepare, synth, PrepareOptions};
use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let work = std::env::temp_dir().join(format!("dexpression-crop-folder-{}", std::process::id()));
    let source = match args.next() {
        Some(source) => PathBuf::from(source),
        None => {
            let source = work.join("synthetic-ck");
            let options = synth::SynthOptions {
                subjects: 6,
                ..Default::default()
            };
            let written = synth::generate(&source, &options)?;
            println!(
                "wrote {} synthetic frames to {}",
                written.n_frames,
                source.display()
            );
            source
        }
    };
    let sheet_path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "contact-sheet.png".to_string()),
    );
    let options = PrepareOptions {
        image_size: 64,
        ..Default::default()
    };
    let dataset = prepare(&source, &work.join("cache"), &options, &|_progress| {})?;
    println!("{}", dataset.summary);

    const PER_ROW: usize = 12;
    let side = dataset.image_size;
    let n_classes = dataset.class_names.len();
    let mut sheet = image::GrayImage::new((PER_ROW * side) as u32, (n_classes * side) as u32);
    for class in 0..n_classes {
        let crops = dataset
            .samples
            .iter()
            .filter(|sample| sample.label == class);
        for (column, sample) in crops.take(PER_ROW).enumerate() {
            for (pixel_idx, value) in sample.pixels.iter().enumerate() {
                let x = column * side + pixel_idx % side;
                let y = class * side + pixel_idx / side;
                sheet.put_pixel(x as u32, y as u32, image::Luma([*value]));
            }
        }
    }
    sheet.save(&sheet_path)?;
    println!(
        "contact sheet: {} (rows: {})",
        sheet_path.display(),
        dataset.class_names.join(", ")
    );
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}
