//! CK+ sources give the same samples as before classes became data (issue 14): the manifests
//! and crops of the official layout, of the official layout with neutral frames and of a
//! folder-per-class copy (CK+48 and mirror spelling) are pinned by their SHA-256, taken with the
//! code before the change.

use dexpression_dataset::{prepare, synth, Dataset, PrepareOptions};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

fn prepared(source: &Path, cache: &Path, neutral: bool) -> Dataset {
    let options = PrepareOptions {
        image_size: 32,
        neutral,
        ..Default::default()
    };
    prepare(source, cache, &options, &|_| {}).expect("prepare succeeds")
}

/// SHA-256 of the manifest and of the crops (the pixel data after the safetensors header,
/// whose metadata holds the cache key, which is allowed to change).
fn digests(dataset: &Dataset) -> (String, String) {
    let folder = &dataset.summary.cache_path;
    let manifest = fs::read(folder.join("manifest.csv")).expect("manifest");
    let pixels = fs::read(folder.join("pixels.safetensors")).expect("pixels");
    let header_len = u64::from_le_bytes(pixels[..8].try_into().expect("8 bytes")) as usize;
    let data = &pixels[8 + header_len..];
    (
        hex::encode(Sha256::digest(&manifest)),
        hex::encode(Sha256::digest(data)),
    )
}

/// Writes the prepared crops as a folder per class, named as CK+48 names its folders
/// (`anger`, `happy`, ...) when `lower` and as the mirror does (`Anger`, `Happiness`) otherwise.
fn write_folders(dataset: &Dataset, root: &Path, lower: bool) {
    const CK48: [&str; 8] = [
        "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise", "neutral",
    ];
    for sample in &dataset.samples {
        let class = if lower {
            CK48[sample.label].to_string()
        } else {
            dataset.class_names[sample.label].clone()
        };
        let folder = root.join(class);
        fs::create_dir_all(&folder).expect("class folder");
        let image = image::GrayImage::from_raw(32, 32, sample.pixels.clone()).expect("32 x 32");
        let name = format!("{}_{:08}.png", sample.sequence, sample.frame);
        image.save(folder.join(name)).expect("png");
    }
}

#[test]
fn ck_plus_sources_give_the_same_manifests_as_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("ck");
    let options = synth::SynthOptions {
        subjects: 3,
        seed: 5,
        min_frames: 4,
        max_frames: 6,
        ..Default::default()
    };
    synth::generate(&root, &options).expect("synthetic CK+");
    let cache = dir.path().join("cache");

    let official = prepared(&root, &cache, false);
    let neutral = prepared(&root, &cache, true);
    let ck48 = dir.path().join("ck48");
    write_folders(&official, &ck48, true);
    let mirror = dir.path().join("mirror");
    write_folders(&official, &mirror, false);
    let folders = prepared(&ck48, &cache, false);
    let mirror = prepared(&mirror, &cache, false);

    let found = [
        digests(&official),
        digests(&neutral),
        digests(&folders),
        digests(&mirror),
    ];
    let expected = [
        (
            "5d9d46a3059620b0afa7bd6b1ce1ae6614fa9198f2c449bc1fdc0354ef3161f2",
            "93bc6d47867c3159fbb14ce609b18e1229b88576befe2aaa1b2ccf0b20530d34",
        ),
        (
            "3d0a027c25b4cfb930f90e3948cac844921b2f140615df75364a53165b095115",
            "800a96de82ebc395f95bb2de2c57b26ce8d0fdfd2da3efb9c27d5cb9fa235f87",
        ),
        (
            "eefc6769ffc8071c10e3f330896162924bd28c88402e49fade432fdeb26472ae",
            "93bc6d47867c3159fbb14ce609b18e1229b88576befe2aaa1b2ccf0b20530d34",
        ),
        (
            "405ae64d3c376db275d81f8254c248ef3c5eaca7fe4ebe8bf1752d6e5200fc06",
            "93bc6d47867c3159fbb14ce609b18e1229b88576befe2aaa1b2ccf0b20530d34",
        ),
    ];
    let ck_names = [
        "Anger",
        "Contempt",
        "Disgust",
        "Fear",
        "Happiness",
        "Sadness",
        "Surprise",
    ];
    assert_eq!(official.class_names, ck_names);
    assert_eq!(neutral.class_names[..7], ck_names);
    assert_eq!(folders.class_names, ck_names);
    assert_eq!(mirror.class_names, ck_names);
    for (found, expected) in found.iter().zip(expected) {
        assert_eq!((found.0.as_str(), found.1.as_str()), expected);
    }
}
