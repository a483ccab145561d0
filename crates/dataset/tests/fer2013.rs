//! FER2013's CSV as distributed (issue 14): rows, classes, its own split, the cache, and every
//! kind of bad row.

use dexpression_dataset::{
    fer2013_class_names, prepare, synth, usage_split, Error, Layout, PrepareOptions, SkipKind,
    Usage,
};
use std::fs;

fn options(image_size: usize) -> PrepareOptions {
    PrepareOptions {
        image_size,
        ..Default::default()
    }
}

/// A row of 2304 pixels all `value`.
fn row(emotion: &str, value: &str, usage: &str) -> String {
    let pixels = vec![value; 48 * 48].join(" ");
    format!("{emotion},{pixels},{usage}\n")
}

#[test]
fn generated_rows_are_read_with_their_classes_and_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("fer2013.csv");
    synth::write_fer2013_csv(&csv, 70, 1).expect("csv");
    let cache = dir.path().join("cache");
    let dataset = prepare(&csv, &cache, &options(48), &|_| {}).expect("prepared");
    assert_eq!(dataset.summary.layout, Layout::Fer2013Csv);
    assert_eq!(dataset.class_names, fer2013_class_names());
    assert_eq!(
        dataset.class_names,
        [
            "Anger",
            "Disgust",
            "Fear",
            "Happiness",
            "Sadness",
            "Surprise",
            "Neutral"
        ]
    );
    assert_eq!(dataset.samples.len(), 70);
    assert_eq!(dataset.summary.per_class, vec![10; 7]);
    assert_eq!(
        dataset.summary.per_usage,
        vec![
            (Usage::Training, 56),
            (Usage::PublicTest, 7),
            (Usage::PrivateTest, 7)
        ]
    );
    assert!(dataset.summary.skipped.is_empty(), "{}", dataset.summary);
    // Row i has class i % 7, and the pixels are the file's numbers.
    let text = fs::read_to_string(&csv).expect("csv");
    let third: Vec<u8> = text
        .lines()
        .nth(3)
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .split(' ')
        .map(|value| value.parse().unwrap())
        .collect();
    assert_eq!(dataset.samples[2].pixels, third);
    assert_eq!(dataset.samples[2].label, 2);
    assert_eq!(dataset.samples[2].subject, "row3");

    let split = usage_split(&dataset.samples).expect("all three parts");
    assert_eq!(
        (
            split.training.len(),
            split.public_test.len(),
            split.private_test.len()
        ),
        (56, 7, 7)
    );
    assert_eq!(split.private_test[0], 63);

    // The cache gives back the same samples, usage included, and holds u8 crops.
    let cached = prepare(&csv, &cache, &options(48), &|_| {}).expect("from cache");
    assert!(cached.summary.from_cache);
    assert_eq!(cached.samples, dataset.samples);
    let folder = &dataset.summary.cache_path;
    let pixels_len = fs::metadata(folder.join("pixels.safetensors"))
        .expect("pixels")
        .len();
    assert!(
        pixels_len < 70 * 48 * 48 + 4096,
        "{pixels_len} bytes: u8, not f32"
    );
    let manifest = fs::read_to_string(folder.join("manifest.csv")).expect("manifest");
    assert!(
        manifest.starts_with("index,subject,sequence,frame,label,label_name,source,crop,usage\n")
    );
    assert!(
        manifest.contains(",Disgust,fer2013.csv,precropped,Training\n"),
        "{manifest}"
    );

    // Another side is resized from 48.
    let larger = prepare(&csv, &cache, &options(64), &|_| {}).expect("at 64");
    assert_eq!(larger.samples[0].pixels.len(), 64 * 64);
    assert_ne!(larger.key, dataset.key);
}

#[test]
fn bad_rows_are_counted_and_listed_and_strict_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("fer2013.csv");
    let mut text = String::from("emotion,pixels,Usage\n");
    text.push_str(&row("3", "7", "Training")); // row 1: good
    text.push_str(&row("7", "7", "Training")); // row 2: label outside 0-6
    text.push_str(&row("happy", "7", "Training")); // row 3: label not a number
    text.push_str(&row("0", "300", "Training")); // row 4: pixel above 255
    text.push_str("1,1 2 3,PublicTest\n"); // row 5: 3 pixels
    text.push_str(&row("2", "x", "PrivateTest")); // row 6: not a number
    text.push_str(&row("4", "9", "Validation")); // row 7: unknown usage
    text.push_str(&row("6", "255", "PrivateTest")); // row 8: good
    fs::write(&csv, text).expect("csv");
    let cache = dir.path().join("cache");
    let dataset = prepare(&csv, &cache, &options(48), &|_| {}).expect("prepared");
    assert_eq!(dataset.samples.len(), 2);
    assert_eq!(dataset.samples[1].label, 6);
    assert_eq!(dataset.samples[1].pixels, vec![255; 48 * 48]);
    let summary = &dataset.summary;
    for (kind, count) in [
        (SkipKind::LabelOutOfRange, 1),
        (SkipKind::UnreadableLabel, 1),
        (SkipKind::CorruptImage, 3),
        (SkipKind::UnknownUsage, 1),
    ] {
        assert_eq!(summary.skipped_by(kind), count, "{kind}: {summary}");
    }
    let reasons: Vec<&str> = summary.skipped.iter().map(|s| s.reason.as_str()).collect();
    for expected in [
        "row 2: emotion 7 is not a FER2013 class (0..=6)",
        "row 3: emotion `happy` is not a number",
        "row 4: pixel 1 is 300, outside 0..=255",
        "row 5: 3 pixel values, 48 x 48 = 2304 expected",
        "row 6: pixel 1 is not a whole number",
        "row 7: Usage `Validation` is none of",
    ] {
        assert!(
            reasons.iter().any(|reason| reason.starts_with(expected)),
            "{expected} not in {reasons:#?}"
        );
    }
    let printed = summary.to_string();
    assert!(printed.contains("skipped:   6"), "{printed}");

    let strict = PrepareOptions {
        strict: true,
        ..options(48)
    };
    let error = prepare(&csv, &dir.path().join("strict"), &strict, &|_| {}).expect_err("strict");
    assert!(matches!(error, Error::Strict { .. }), "{error}");
    assert!(error.to_string().contains("row 2"), "{error}");
}

#[test]
fn files_that_are_not_fer2013_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let write = |name: &str, text: &str| -> std::path::PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, text).expect("csv");
        path
    };
    let no_pixels = write("labels.csv", "emotion,image\n0,a.png\n");
    let error = prepare(&no_pixels, &cache, &options(48), &|_| {}).expect_err("no pixels");
    assert!(matches!(error, Error::Csv { .. }), "{error}");
    assert!(error.to_string().contains("`pixels`"), "{error}");

    // The Kaggle challenge's train.csv has no Usage: read, without a split of its own.
    let no_usage = write(
        "train.csv",
        &format!("emotion,pixels\n{}", row("1", "5", "")),
    );
    let no_usage_text = fs::read_to_string(&no_usage).unwrap().replace(",\n", "\n");
    fs::write(&no_usage, no_usage_text).unwrap();
    let dataset = prepare(&no_usage, &cache, &options(48), &|_| {}).expect("read");
    assert_eq!(dataset.samples[0].usage, None);
    assert!(usage_split(&dataset.samples).is_err());

    let empty = write("empty.csv", "emotion,pixels,Usage\n");
    let error = prepare(&empty, &cache, &options(48), &|_| {}).expect_err("no rows");
    assert!(matches!(error, Error::NoSamples { .. }), "{error}");
}
