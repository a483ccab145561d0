//! A two-class model on a folder-per-class dataset with labels of your own: `smiling` against
//! `not_smiling`, written from a generated synthetic CK+ (Happiness against every other
//! expression), then trained with subject-independent folds. The class names come from the
//! folder names and end up in every weights file, where `cargo xtask predict` reads them.
//!
//! `cargo run --release -p dexpression-train --example two_classes -- [SIDE] [SUBJECTS] [EPOCHS] [FOLDS]`
//! (defaults 48, 8, 3, 2); the data and results go to a temporary folder.

mod common;

use std::path::Path;

use dexpression_dataset::{prepare, Dataset, Expression, Selection};
use dexpression_model::WeightsMetadata;
use dexpression_train::TrainConfig;

/// Writes each crop of a prepared CK+ into `smiling/` or `not_smiling/`, keeping the CK+ file
/// names so that the folder dataset still knows who is who.
fn write_two_classes(ck: &Dataset, root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let side = ck.image_size as u32;
    for sample in &ck.samples {
        let class = if sample.label == Expression::Happiness.index() {
            "smiling"
        } else {
            "not_smiling"
        };
        let folder = root.join(class);
        std::fs::create_dir_all(&folder)?;
        let image = image::GrayImage::from_raw(side, side, sample.pixels.clone())
            .ok_or("a crop of the wrong size")?;
        image.save(folder.join(format!("{}_{:08}.png", sample.sequence, sample.frame)))?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (side, subjects, epochs, folds) = (
        common::arg(1, 48),
        common::arg(2, 8),
        common::arg(3, 3),
        common::arg(4, 2),
    );
    let folder = tempfile::tempdir()?;
    let crops = common::synthetic_crops(folder.path(), subjects, side)?;
    let faces = folder.path().join("faces");
    write_two_classes(&crops, &faces)?;

    let cache = folder.path().join("cache");
    let dataset = prepare(&faces, &cache, &common::crop_options(side), &|_| {})?;
    println!("{}", dataset.summary);
    let mut config = TrainConfig::port_defaults(&dataset, "faces", Selection::Peak(3), false);
    config.epochs = epochs;
    config.folds = folds;
    let out = folder.path().join("results");
    let summary = common::train_on_cpu(&config, &dataset, &out)?;
    println!(
        "mean final test accuracy {:.1}% (chance: the larger class's share)",
        summary.mean_final_test_accuracy().unwrap_or(f64::NAN)
    );
    let best = std::fs::read_dir(out.join("fold1"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("best-"))
        })
        .ok_or("fold 1 has no best checkpoint")?;
    let metadata = WeightsMetadata::read(&best)?.ok_or("no metadata in the checkpoint")?;
    println!(
        "{} names its classes {:?} at {} px",
        best.display(),
        metadata.class_names,
        metadata.image_size
    );
    Ok(())
}
