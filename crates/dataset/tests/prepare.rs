//! End-to-end tests of `prepare` on generated fixtures: each source layout, each selection,
//! the cache, the crop geometry and every kind of bad input (issue 3).

mod crafted_png;

use dexpression_dataset::{
    decode_image, k_fold, prepare, synth, CropMethod, Dataset, Error, Expression, Layout,
    PrepareOptions, Selection, SkipKind, SplitBy, MAX_IMAGE_SIDE,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

const SIZE: usize = 32;

fn options() -> PrepareOptions {
    PrepareOptions {
        image_size: SIZE,
        ..Default::default()
    }
}

/// A synthetic CK+ with `subjects` people in `dir/ck`.
fn synthetic(dir: &Path, subjects: usize) -> (PathBuf, synth::SynthSummary) {
    let root = dir.join("ck");
    let options = synth::SynthOptions {
        subjects,
        seed: 42,
        min_frames: 5,
        max_frames: 8,
        ..Default::default()
    };
    let summary = synth::generate(&root, &options).expect("synthetic CK+ is written");
    (root, summary)
}

fn run(source: &Path, cache: &Path, options: &PrepareOptions) -> Dataset {
    prepare(source, cache, options, &|_| {}).expect("prepare succeeds")
}

/// The label each labeled sequence's `Emotion/` file holds, read independently of the crate.
fn labels_on_disk(root: &Path) -> BTreeMap<String, usize> {
    let mut labels = BTreeMap::new();
    for subject in fs::read_dir(root.join("Emotion")).expect("Emotion exists") {
        let subject = subject.expect("entry").path();
        for sequence in fs::read_dir(&subject).expect("subject folder") {
            let sequence = sequence.expect("entry").path();
            for file in fs::read_dir(&sequence).expect("sequence folder") {
                let text = fs::read_to_string(file.expect("entry").path()).expect("label");
                let code: f64 = text.trim().parse().expect("float label");
                let id = format!(
                    "{}_{}",
                    subject.file_name().unwrap().to_string_lossy(),
                    sequence.file_name().unwrap().to_string_lossy()
                );
                labels.insert(id, code as usize - 1);
            }
        }
    }
    labels
}

fn frames_on_disk(root: &Path, sequence: &str) -> usize {
    let (subject, number) = sequence.split_once('_').expect("S010_001");
    fs::read_dir(root.join("cohn-kanade-images").join(subject).join(number))
        .expect("sequence folder")
        .filter(|entry| {
            let path = entry.as_ref().expect("entry").path();
            path.extension().is_some_and(|ext| ext == "png")
        })
        .count()
}

#[test]
fn official_layout_peak_all_and_neutral() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, written) = synthetic(dir.path(), 2);
    let labels = labels_on_disk(&root);
    assert_eq!(labels.len(), written.n_labeled_sequences);
    assert_eq!(labels.len(), 14, "7 labeled sequences per subject");

    let peak = run(&root, &dir.path().join("cache"), &options());
    assert_eq!(peak.summary.layout, Layout::Official);
    assert_eq!(peak.samples.len(), 14 * 3);
    assert_eq!(peak.class_names.len(), 7);
    assert_eq!(peak.summary.per_class, vec![6; 7]);
    assert_eq!(peak.summary.n_subjects, 2);
    assert_eq!(peak.summary.crops_by(CropMethod::Landmarks), 42);
    assert!(peak.summary.skipped.is_empty(), "{}", peak.summary);
    assert!(
        peak.summary.n_ignored_files >= 3,
        "the stray .DS_Store and Thumbs.db"
    );
    for sample in &peak.samples {
        assert_eq!(labels[&sample.sequence], sample.label, "{sample:?}");
        assert_eq!(sample.pixels.len(), SIZE * SIZE);
        // The last three frames of the sequence.
        let n_frames = frames_on_disk(&root, &sample.sequence) as u32;
        assert!(
            sample.frame + 3 > n_frames,
            "frame {} of {n_frames}",
            sample.frame
        );
        assert!(sample.source.is_file());
    }

    let all_options = PrepareOptions {
        selection: Selection::All,
        ..options()
    };
    let all = run(&root, &dir.path().join("cache"), &all_options);
    let expected: usize = labels
        .keys()
        .map(|sequence| frames_on_disk(&root, sequence))
        .sum();
    assert_eq!(all.samples.len(), expected);
    assert_ne!(all.key, peak.key);

    let neutral_options = PrepareOptions {
        neutral: true,
        ..options()
    };
    let neutral = run(&root, &dir.path().join("cache"), &neutral_options);
    assert_eq!(neutral.class_names.len(), 8);
    assert_eq!(neutral.summary.per_class[Expression::Neutral.index()], 14);
    assert_eq!(neutral.samples.len(), 14 * 4);
    for sample in neutral.samples.iter().filter(|s| s.label == 7) {
        assert_eq!(sample.frame, 1, "the neutral sample is the first frame");
    }
}

/// The people of the samples at `indices`.
fn subjects_in<'a>(dataset: &'a Dataset, indices: &[usize]) -> HashSet<&'a str> {
    indices
        .iter()
        .map(|&i| dataset.samples[i].subject.as_str())
        .collect()
}

#[test]
fn subject_folds_of_a_prepared_dataset_never_share_a_person() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, _) = synthetic(dir.path(), 5);
    let dataset = run(&root, &dir.path().join("cache"), &options());
    for split in [SplitBy::Subject, SplitBy::Sequence, SplitBy::Frame] {
        let folds = k_fold(&dataset.samples, 5, split, 1).expect("5 subjects, 5 folds");
        for fold in &folds {
            let train: HashSet<&str> = subjects_in(&dataset, &fold.train);
            let test: HashSet<&str> = subjects_in(&dataset, &fold.test);
            if split == SplitBy::Subject {
                assert!(train.is_disjoint(&test), "a subject is on both sides");
                assert_eq!(test.len(), 1);
            }
        }
    }
    assert!(matches!(
        k_fold(&dataset.samples, 6, SplitBy::Subject, 1),
        Err(Error::TooFewGroups { n_groups: 5, .. })
    ));
}

#[test]
fn cache_is_reused_and_rebuilt_when_options_or_files_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, _) = synthetic(dir.path(), 1);
    let cache = dir.path().join("cache");
    let first = run(&root, &cache, &options());
    assert!(!first.summary.from_cache);
    assert!(cache.join(&first.key[..16]).join("manifest.csv").is_file());
    assert!(cache
        .join(&first.key[..16])
        .join("pixels.safetensors")
        .is_file());

    let second = run(&root, &cache, &options());
    assert!(second.summary.from_cache);
    assert_eq!(second.key, first.key);
    assert_eq!(second.samples, first.samples);
    assert_eq!(second.summary.per_class, first.summary.per_class);

    let bigger = PrepareOptions {
        image_size: SIZE * 2,
        ..options()
    };
    let rebuilt = run(&root, &cache, &bigger);
    assert!(!rebuilt.summary.from_cache);
    assert_ne!(rebuilt.key, first.key);
    assert_eq!(rebuilt.samples[0].pixels.len(), 4 * SIZE * SIZE);

    // A changed label changes the key.
    let label_file = first_label_file(&root);
    let code: f64 = fs::read_to_string(&label_file)
        .expect("label")
        .trim()
        .parse()
        .expect("code");
    let other_code = code as u32 % 7 + 1;
    fs::write(&label_file, format!("   {other_code}.0000000e+00\n")).expect("rewrite label");
    let relabeled = run(&root, &cache, &options());
    assert!(!relabeled.summary.from_cache);
    assert_ne!(relabeled.key, first.key);

    // A damaged cache is rebuilt rather than trusted.
    let pixels = cache.join(&relabeled.key[..16]).join("pixels.safetensors");
    fs::write(&pixels, b"not a safetensors file").expect("damage cache");
    let repaired = run(&root, &cache, &options());
    assert!(!repaired.summary.from_cache);
    assert_eq!(repaired.samples, relabeled.samples);
}

fn first_label_file(root: &Path) -> PathBuf {
    let sequence = root.join("Emotion").join("S010").join("001");
    fs::read_dir(&sequence)
        .expect("S010/001 is labeled")
        .next()
        .expect("one label file")
        .expect("entry")
        .path()
}

/// A hand-made official tree with one sequence of three frames whose landmarks span a known
/// square, drawn white on black: the crop must be exactly that square.
#[test]
fn landmark_crop_matches_the_known_box() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("ck");
    let (left, top, side) = (200u32, 150u32, 120u32);
    let mut image = image::GrayImage::new(640, 490);
    for y in top..top + side {
        for x in left..left + side {
            image.put_pixel(x, y, image::Luma([255]));
        }
    }
    let points: String = (0..68)
        .map(|i| {
            // Corners of the square, then points inside it.
            let (x, y) = match i {
                0 => (left, top),
                1 => (left + side, top + side),
                _ => (left + 10 + i, top + 20 + i),
            };
            format!("   {x}.0000000e+00   {y}.0000000e+00\n")
        })
        .collect();
    for frame in 1..=3 {
        let stem = format!("S020_001_{frame:08}");
        let images = root.join("cohn-kanade-images/S020/001");
        fs::create_dir_all(&images).expect("dir");
        image.save(images.join(format!("{stem}.png"))).expect("png");
        let landmarks = root.join("Landmarks/S020/001");
        fs::create_dir_all(&landmarks).expect("dir");
        fs::write(landmarks.join(format!("{stem}_landmarks.txt")), &points).expect("txt");
    }
    let emotion = root.join("Emotion/S020/001");
    fs::create_dir_all(&emotion).expect("dir");
    fs::write(
        emotion.join("S020_001_00000003_emotion.txt"),
        "   4.0000000e+00\n",
    )
    .expect("txt");

    let exact = PrepareOptions {
        crop_margin: 0.0,
        ..options()
    };
    let dataset = run(&root, &dir.path().join("cache"), &exact);
    assert_eq!(dataset.samples.len(), 3);
    for sample in &dataset.samples {
        assert_eq!(sample.label, Expression::Fear.index());
        assert_eq!(sample.crop, CropMethod::Landmarks);
        assert!(
            sample.pixels.iter().all(|&value| value == 255),
            "crop is the white square"
        );
    }
    // With a margin of 0.25 the square fills the middle 120/180 of the crop.
    let widened = PrepareOptions {
        crop_margin: 0.25,
        ..options()
    };
    let dataset = run(&root, &dir.path().join("cache"), &widened);
    let pixels = &dataset.samples[0].pixels;
    assert_eq!(pixels[0], 0, "corner is outside the face box");
    assert_eq!(
        pixels[(SIZE / 2) * SIZE + SIZE / 2],
        255,
        "centre is inside"
    );
    let white = pixels.iter().filter(|&&value| value > 127).count() as f64;
    let expected = (SIZE * SIZE) as f64 * (120.0f64 / 180.0).powi(2);
    assert!(
        (white - expected).abs() < SIZE as f64 * 2.0,
        "{white} vs {expected}"
    );
}

#[test]
fn folder_per_class_reads_ck48_and_the_mirror_layout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("ck48");
    let small = image::GrayImage::from_pixel(48, 48, image::Luma([90]));
    let full = image::GrayImage::from_pixel(640, 490, image::Luma([90]));
    let write = |class: &str, name: &str, image: &image::GrayImage| {
        let folder = root.join(class);
        fs::create_dir_all(&folder).expect("dir");
        image.save(folder.join(name)).expect("png");
    };
    for frame in 10..=14 {
        write("happy", &format!("S010_004_{frame:08}.png"), &small);
    }
    write("sadness", "S011_002_00000020.png", &small);
    write("surprise", "S010_001_00000030.png", &full); // Mirror: a whole frame.
    write("anger", "angry_face.png", &small); // No CK+ name: its own group.
    write("angry", "S012_001_00000009.png", &small); // Another spelling of the same class.
    write("neutral", "S010_004_00000001.png", &small);
    fs::write(root.join("happy/.DS_Store"), b"junk").expect("stray file");
    fs::create_dir_all(root.join("contempt")).expect("an empty class folder");

    let dataset = run(&root, &dir.path().join("cache"), &options());
    assert_eq!(dataset.summary.layout, Layout::FolderPerClass);
    // Every folder is an expression: CK+'s order, spellings merged, the empty folder left out.
    assert_eq!(
        dataset.class_names,
        ["Anger", "Happiness", "Sadness", "Surprise", "Neutral"]
    );
    let label = |name: &str| dataset.class_names.iter().position(|c| c == name).unwrap();
    // Peak(3) keeps the last three frames of the happy sequence.
    let happy: Vec<u32> = dataset
        .samples
        .iter()
        .filter(|s| s.label == label("Happiness"))
        .map(|s| s.frame)
        .collect();
    assert_eq!(happy, vec![12, 13, 14]);
    assert_eq!(dataset.samples.len(), 3 + 1 + 1 + 2 + 1);
    let anger: Vec<&str> = dataset
        .samples
        .iter()
        .filter(|s| s.label == label("Anger"))
        .map(|s| s.subject.as_str())
        .collect();
    assert_eq!(anger, vec!["S012", "anger/angry_face"]);
    let surprise = dataset
        .samples
        .iter()
        .find(|s| s.label == label("Surprise"))
        .expect("surprise");
    assert_eq!(
        (surprise.subject.as_str(), surprise.crop),
        ("S010", CropMethod::Whole)
    );
    assert_eq!(dataset.summary.crops_by(CropMethod::Precropped), 7);
    assert_eq!(dataset.summary.skipped_by(SkipKind::EmptyClass), 1);
    assert_eq!(
        dataset.summary.n_subjects, 4,
        "S010, S011, S012 and anger/angry_face"
    );
    assert!(dataset.summary.per_usage.is_empty());
}

#[test]
fn any_class_names_tiff_images_and_a_classes_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("drowsy");
    let write = |class: &str, name: &str, value: u8| {
        let folder = root.join(class);
        fs::create_dir_all(&folder).expect("dir");
        image::GrayImage::from_pixel(40, 40, image::Luma([value]))
            .save(folder.join(name))
            .expect("image");
    };
    for index in 0..3 {
        write("drowsy", &format!("d{index}.tiff"), 30);
        write("alert", &format!("a{index}.png"), 220);
        write("Happy", &format!("h{index}.jpg"), 128);
    }
    let cache = dir.path().join("cache");
    let dataset = run(&root, &cache, &options());
    // Not all expressions: alphabetical, ignoring case; known spellings still merge.
    assert_eq!(dataset.class_names, ["alert", "drowsy", "Happiness"]);
    assert_eq!(dataset.summary.per_class, vec![3, 3, 3]);
    let drowsy = dataset
        .samples
        .iter()
        .find(|s| s.label == 1)
        .expect("drowsy");
    assert!(drowsy.source.extension().is_some_and(|ext| ext == "tiff"));
    assert!(
        drowsy.pixels.iter().all(|&value| value == 30),
        "TIFF decoded"
    );

    // classes.txt fixes the order (any spelling) and leaves the unlisted folder out.
    fs::write(root.join("classes.txt"), "drowsy\nalert\n").expect("classes");
    let ordered = run(&root, &cache, &options());
    assert_eq!(ordered.class_names, ["drowsy", "alert"]);
    assert_ne!(ordered.key, dataset.key);
    assert_eq!(ordered.summary.skipped_by(SkipKind::UnknownClass), 1);
    let drowsy = ordered
        .samples
        .iter()
        .find(|s| s.label == 0)
        .expect("drowsy");
    assert!(drowsy.pixels.iter().all(|&value| value == 30));
    let manifest =
        fs::read_to_string(ordered.summary.cache_path.join("manifest.csv")).expect("manifest");
    assert!(
        manifest.lines().next().unwrap().ends_with(",crop"),
        "{manifest}"
    );
    assert!(manifest.contains(",0,drowsy,drowsy/d0.tiff,"), "{manifest}");

    fs::write(root.join("classes.txt"), "drowsy\nasleep\n").expect("classes");
    let error = prepare(&root, &cache, &options(), &|_| {}).expect_err("no asleep folder");
    assert!(matches!(error, Error::Classes { .. }), "{error}");
    assert!(error.to_string().contains("asleep"), "{error}");
}

#[test]
fn one_class_and_thousands_of_classes_are_clear_errors_and_hundreds_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |root: &Path, class: &str| {
        let folder = root.join(class);
        fs::create_dir_all(&folder).expect("dir");
        image::GrayImage::from_pixel(8, 8, image::Luma([1]))
            .save(folder.join("a.png"))
            .expect("png");
    };
    let cache = dir.path().join("cache");
    let single = dir.path().join("single");
    write(&single, "faces");
    let error = prepare(&single, &cache, &options(), &|_| {}).expect_err("one class");
    assert!(matches!(error, Error::TooFewClasses { .. }), "{error}");
    assert!(error.to_string().contains("`faces`"), "{error}");

    let many = dir.path().join("many");
    for class in 0..300 {
        write(&many, &format!("person{class:03}"));
    }
    let dataset = run(&many, &cache, &options());
    assert_eq!(dataset.class_names.len(), 300);
    assert_eq!(dataset.class_names[299], "person299");
    for class in 300..=dexpression_dataset::MAX_CLASSES {
        write(&many, &format!("person{class:04}"));
    }
    let error = prepare(&many, &cache, &options(), &|_| {}).expect_err("1001 classes");
    assert!(matches!(error, Error::TooManyClasses { .. }), "{error}");
}

#[test]
fn subject_patterns_keep_people_apart_and_files_without_people_stratify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("jaffe");
    // JAFFE's names: person, expression and sequence number, then the image number.
    let people = ["KA", "KL", "KM", "KR", "MK", "NA"];
    for (person_idx, person) in people.iter().enumerate() {
        for (class, code) in [("anger", "AN"), ("happy", "HA")] {
            let folder = root.join(class);
            fs::create_dir_all(&folder).expect("dir");
            for take in 1..=2 {
                let name = format!("{person}.{code}{take}.{}.tiff", 30 + person_idx * 4 + take);
                image::GrayImage::from_pixel(32, 32, image::Luma([take as u8 * 50]))
                    .save(folder.join(name))
                    .expect("tiff");
            }
        }
    }
    image::GrayImage::from_pixel(32, 32, image::Luma([9]))
        .save(root.join("happy/unnamed.png"))
        .expect("png");
    let cache = dir.path().join("cache");
    let with_pattern = PrepareOptions {
        subject_pattern: Some(r"^([A-Z]{2})\.".into()),
        ..options()
    };
    let dataset = run(&root, &cache, &with_pattern);
    assert_eq!(dataset.summary.n_subjects, people.len());
    assert_eq!(dataset.samples.len(), people.len() * 4);
    assert_eq!(dataset.summary.skipped_by(SkipKind::NoSubject), 1);
    let folds = k_fold(&dataset.samples, 3, SplitBy::Subject, 0).expect("6 people, 3 folds");
    for fold in &folds {
        let train: HashSet<&str> = subjects_in(&dataset, &fold.train);
        assert!(fold
            .test
            .iter()
            .all(|&i| !train.contains(dataset.samples[i].subject.as_str())));
    }
    let strict = PrepareOptions {
        strict: true,
        ..with_pattern.clone()
    };
    assert!(matches!(
        prepare(&root, &cache, &strict, &|_| {}),
        Err(Error::Strict { .. })
    ));
    let bad = PrepareOptions {
        subject_pattern: Some("([A-Z".into()),
        ..options()
    };
    let error = prepare(&root, &cache, &bad, &|_| {}).expect_err("not a regex");
    assert!(error.to_string().contains("subject-pattern"), "{error}");

    // Without the pattern every file is its own group and folds are stratified by class.
    let dataset = run(&root, &cache, &options());
    assert_eq!(dataset.summary.n_subjects, dataset.samples.len());
    let folds = k_fold(&dataset.samples, 5, SplitBy::Subject, 2).expect("25 files");
    for fold in &folds {
        let per_class = |label: usize| {
            fold.test
                .iter()
                .filter(|&&i| dataset.samples[i].label == label)
                .count()
        };
        // 12 anger and 13 happy files over 5 folds: 2 or 3 of each in every fold.
        assert!((2..=3).contains(&per_class(0)), "{fold:?}");
        assert!((2..=3).contains(&per_class(1)), "{fold:?}");
    }
}

#[test]
fn official_zips_are_extracted_once_and_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, _) = synthetic(dir.path(), 1);
    let zips = dir.path().join("zips");
    fs::create_dir_all(&zips).expect("dir");
    zip_folder(
        &root,
        "cohn-kanade-images",
        &zips.join("extended-cohn-kanade-images.zip"),
        "",
    );
    // The labels archive unzips nested, as the real one sometimes does.
    zip_folder(
        &root,
        "Emotion",
        &zips.join("Emotion_labels.zip"),
        "Emotion_labels/",
    );
    zip_folder(&root, "Landmarks", &zips.join("Landmarks.zip"), "");
    let cache = dir.path().join("cache");
    let from_zips = run(&zips, &cache, &options());
    assert_eq!(from_zips.summary.layout, Layout::OfficialZips);
    let extracted = run(&root, &dir.path().join("cache2"), &options());
    assert_eq!(from_zips.key, extracted.key, "same files, same key");
    assert_eq!(from_zips.samples.len(), extracted.samples.len());
    assert_eq!(from_zips.summary.crops_by(CropMethod::Landmarks), 21);
    let again = run(&zips, &cache, &options());
    assert!(again.summary.from_cache);
}

fn zip_folder(root: &Path, folder: &str, archive: &Path, prefix: &str) {
    let file = fs::File::create(archive).expect("zip file");
    let mut writer = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut stack = vec![root.join(folder)];
    while let Some(path) = stack.pop() {
        for entry in fs::read_dir(&path).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(root).expect("inside root");
            let name = format!("{prefix}{}", name.to_string_lossy());
            writer.start_file(name, options).expect("zip entry");
            std::io::copy(&mut fs::File::open(&path).expect("file"), &mut writer).expect("copy");
        }
    }
    writer.finish().expect("zip written");
}

/// Every kind of bad file: skipped, counted and listed by default; an error with `strict`.
#[test]
fn bad_inputs_are_skipped_listed_or_strict_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, _) = synthetic(dir.path(), 1);
    let sequence_files = |number: &str, tree: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join(tree).join("S010").join(number))
            .expect("sequence")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| !path.to_string_lossy().contains(".DS_Store"))
            .filter(|path| !path.to_string_lossy().contains("Thumbs.db"))
            .collect();
        files.sort();
        files
    };
    let label = |number: &str| sequence_files(number, "Emotion")[0].clone();
    let last_image = |number: &str| {
        sequence_files(number, "cohn-kanade-images")
            .pop()
            .expect("png")
    };
    let last_landmarks = |number: &str| sequence_files(number, "Landmarks").pop().expect("txt");
    let labeled: Vec<String> = (1..=8)
        .map(|n| format!("{n:03}"))
        .filter(|n| root.join("Emotion/S010").join(n).is_dir())
        .collect();

    // Corrupt image, truncated image, unreadable label, label out of range, 67 landmarks.
    let corrupt = last_image(&labeled[0]);
    fs::write(&corrupt, b"\x89PNG\r\n\x1a\n garbage").expect("corrupt");
    let truncated = last_image(&labeled[1]);
    let bytes = fs::read(&truncated).expect("png");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("truncate");
    let unreadable = label(&labeled[2]);
    fs::write(&unreadable, "happy\n").expect("label");
    let out_of_range = label(&labeled[3]);
    fs::write(&out_of_range, "   9.0000000e+00\n").expect("label");
    let short_landmarks = last_landmarks(&labeled[4]);
    let text = fs::read_to_string(&short_landmarks).expect("landmarks");
    let lines: Vec<&str> = text.lines().take(67).collect();
    fs::write(&short_landmarks, lines.join("\n")).expect("landmarks");
    // A label for a sequence that has no images.
    let orphan = root.join("Emotion/S010/099/S010_099_00000005_emotion.txt");
    fs::create_dir_all(orphan.parent().expect("parent")).expect("dir");
    fs::write(&orphan, "   1.0000000e+00\n").expect("label");

    let dataset = run(&root, &dir.path().join("cache"), &options());
    let summary = &dataset.summary;
    let expect = [
        (SkipKind::CorruptImage, 2),
        (SkipKind::UnreadableLabel, 1),
        (SkipKind::LabelOutOfRange, 1),
        (SkipKind::BadLandmarks, 1),
        (SkipKind::LabelWithoutImages, 1),
    ];
    for (kind, count) in expect {
        assert_eq!(summary.skipped_by(kind), count, "{kind}: {summary}");
    }
    let listed: HashSet<&Path> = summary.skipped.iter().map(|s| s.path.as_path()).collect();
    for path in [
        &corrupt,
        &truncated,
        &unreadable,
        &out_of_range,
        &short_landmarks,
        &orphan,
    ] {
        assert!(
            listed.contains(path.as_path()),
            "{} not listed",
            path.display()
        );
    }
    // 7 sequences x 3 frames, minus 2 unlabeled by bad labels (6 frames), minus 3 bad frames.
    assert_eq!(dataset.samples.len(), 21 - 6 - 3);
    let printed = summary.to_string();
    assert!(printed.contains("corrupt-image 2"), "{printed}");
    assert!(printed.contains(&orphan.display().to_string()), "{printed}");

    // The cache keeps the skipped list.
    let cached = run(&root, &dir.path().join("cache"), &options());
    assert!(cached.summary.from_cache);
    assert_eq!(cached.summary.skipped, dataset.summary.skipped);

    let strict = PrepareOptions {
        strict: true,
        ..options()
    };
    let error = prepare(&root, &dir.path().join("cache"), &strict, &|_| {})
        .expect_err("strict stops at the first bad file");
    assert!(matches!(error, Error::Strict { .. }), "{error}");
    assert!(error.to_string().contains("strict"), "{error}");
}

#[test]
fn unknown_layouts_and_missing_sources_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let missing =
        prepare(&dir.path().join("nope"), &cache, &options(), &|_| {}).expect_err("missing source");
    assert!(matches!(missing, Error::SourceMissing { .. }));

    let random = dir.path().join("random");
    fs::create_dir_all(random.join("photos/2024")).expect("dir");
    fs::write(random.join("photos/2024/a.png"), b"x").expect("file");
    fs::write(random.join("readme.txt"), b"x").expect("file");
    let error = prepare(&random, &cache, &options(), &|_| {}).expect_err("unknown layout");
    let message = error.to_string();
    assert!(matches!(error, Error::UnknownLayout { .. }));
    assert!(message.contains("cohn-kanade-images") && message.contains("one folder per class"));

    // Images only, no Emotion folder: not the official layout.
    let (root, _) = synthetic(dir.path(), 1);
    fs::remove_dir_all(root.join("Emotion")).expect("remove labels");
    assert!(matches!(
        prepare(&root, &cache, &options(), &|_| {}),
        Err(Error::UnknownLayout { .. })
    ));

    let bad_size = PrepareOptions {
        image_size: 0,
        ..options()
    };
    assert!(matches!(
        prepare(&random, &cache, &bad_size, &|_| {}),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn synthetic_generation_is_deterministic_and_has_the_release_quirks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = synth::SynthOptions {
        subjects: 4,
        seed: 9,
        min_frames: 3,
        max_frames: 4,
        colour_fraction: 0.5,
        short_frame_fraction: 0.5,
        ..Default::default()
    };
    let first = synth::generate(&dir.path().join("a"), &options).expect("written");
    let second = synth::generate(&dir.path().join("b"), &options).expect("written");
    assert_eq!(first.n_frames, second.n_frames);
    assert_eq!(first.per_class, vec![4; 7]);
    assert_eq!(first.n_sequences, 4 * 8);
    assert!(first.n_colour_frames > 0 && first.n_short_frames > 0);
    let image = "cohn-kanade-images/S010/001/S010_001_00000001.png";
    assert_eq!(
        fs::read(dir.path().join("a").join(image)).expect("png"),
        fs::read(dir.path().join("b").join(image)).expect("png")
    );
    // Rerunning into the same folder replaces it; a foreign CK+ folder is left alone.
    synth::generate(&dir.path().join("a"), &options).expect("rewritten");
    let foreign = dir.path().join("real");
    fs::create_dir_all(foreign.join("Emotion")).expect("dir");
    assert!(synth::generate(&foreign, &options).is_err());
}

/// The demo trains on synthetic crops and must beat chance on people it has not seen: even a
/// nearest-class-mean classifier on standardised 32 x 32 pixels has to manage that.
#[test]
fn synthetic_expressions_are_learnable_across_subjects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, _) = synthetic(dir.path(), 8);
    let dataset = run(&root, &dir.path().join("cache"), &options());
    let standardise = |pixels: &[u8]| -> Vec<f32> {
        let mean = pixels.iter().map(|&v| v as f32).sum::<f32>() / pixels.len() as f32;
        let var = pixels
            .iter()
            .map(|&v| (v as f32 - mean).powi(2))
            .sum::<f32>()
            / pixels.len() as f32;
        pixels
            .iter()
            .map(|&v| (v as f32 - mean) / var.sqrt().max(1.0))
            .collect()
    };
    let features: Vec<Vec<f32>> = dataset
        .samples
        .iter()
        .map(|s| standardise(&s.pixels))
        .collect();
    let folds = k_fold(&dataset.samples, 4, SplitBy::Subject, 0).expect("8 subjects");
    let (mut correct, mut total) = (0, 0);
    for fold in &folds {
        let mut means = vec![vec![0.0f32; SIZE * SIZE]; 7];
        let mut counts = [0usize; 7];
        for &index in &fold.train {
            let label = dataset.samples[index].label;
            counts[label] += 1;
            for (mean, value) in means[label].iter_mut().zip(&features[index]) {
                *mean += value;
            }
        }
        for (mean, count) in means.iter_mut().zip(counts) {
            mean.iter_mut()
                .for_each(|value| *value /= count.max(1) as f32);
        }
        for &index in &fold.test {
            let distance = |mean: &Vec<f32>| -> f32 {
                mean.iter()
                    .zip(&features[index])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum()
            };
            let predicted = (0..7)
                .min_by(|&a, &b| distance(&means[a]).total_cmp(&distance(&means[b])))
                .expect("7 classes");
            correct += usize::from(predicted == dataset.samples[index].label);
            total += 1;
        }
    }
    let accuracy = correct as f64 / total as f64;
    println!("nearest-class-mean accuracy on held-out subjects: {accuracy:.2}");
    assert!(
        accuracy > 0.5,
        "held-out-subject accuracy {accuracy:.2} (chance 0.14)"
    );
}

/// Without landmark files the SeetaFace detector finds the synthetic faces, close to where
/// the landmarks put them; a frame with no face falls back to the whole image.
#[test]
fn detector_crops_faces_without_landmarks() {
    use dexpression_dataset::crop::{landmark_box, CropBox};
    use dexpression_dataset::testing::{detect_faces, parse_landmarks};

    let dir = tempfile::tempdir().expect("temp dir");
    let (root, _) = synthetic(dir.path(), 1);
    let iou = |a: CropBox, b: CropBox| -> f64 {
        let overlap_x = (a.x + a.width)
            .min(b.x + b.width)
            .saturating_sub(a.x.max(b.x));
        let overlap_y = (a.y + a.height)
            .min(b.y + b.height)
            .saturating_sub(a.y.max(b.y));
        let overlap = (overlap_x * overlap_y) as f64;
        overlap / ((a.width * a.height + b.width * b.height) as f64 - overlap)
    };
    for sequence in ["001", "004"] {
        let stem = format!("S010_{sequence}_00000005");
        let image_path = root.join(format!("cohn-kanade-images/S010/{sequence}/{stem}.png"));
        let image = image::open(&image_path)
            .expect("synthetic frame")
            .to_luma8();
        let landmarks_path = root.join(format!("Landmarks/S010/{sequence}/{stem}_landmarks.txt"));
        let points = parse_landmarks(&fs::read_to_string(landmarks_path).expect("landmarks"))
            .expect("68 points");
        let expected = landmark_box(&points, 0.1, image.width(), image.height()).expect("box");
        let detected = detect_faces(&image);
        assert_eq!(detected.len(), 1, "{detected:?}");
        let overlap = iou(detected[0].face, expected);
        assert!(
            overlap > 0.5,
            "detector {:?} vs landmarks {expected:?}: IoU {overlap:.2}",
            detected[0]
        );
    }

    fs::remove_dir_all(root.join("Landmarks")).expect("remove landmarks");
    let dataset = run(&root, &dir.path().join("cache"), &options());
    assert_eq!(
        dataset.summary.crops_by(CropMethod::Detector),
        dataset.samples.len()
    );
}

/// Property test over whole trees: overwrite random files of a fresh synthetic CK+ with random
/// bytes, truncations, text or flipped bits, and check each damaged file's fate against what
/// the files themselves say (worked out by [`expected_outcome`], not by the crate): a label,
/// frame or landmarks file that no longer reads is listed as skipped with its kind, one that
/// still reads (or is never used) is not, and a tree left with no usable sample is the
/// `NoSamples` error. `strict` turns the first listed skip into the error.
#[test]
fn every_damaged_file_is_a_listed_skip_or_an_error() {
    use rand::{seq::IndexedRandom, Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    // How often each fate was met over all rounds, so the test cannot pass by never damaging
    // anything that matters.
    let mut listed_kinds: BTreeMap<SkipKind, usize> = BTreeMap::new();
    let mut n_harmless = 0;
    let mut n_errors = 0;
    for round in 0..6 {
        let round_dir = dir.path().join(format!("round-{round}"));
        fs::create_dir_all(&round_dir).expect("round dir");
        let (root, _) = synthetic(&round_dir, 1);
        let clean = expected_outcome(&root);
        let all_files = files_under(&root);
        let mut victims: Vec<PathBuf> = if round == 5 {
            // Every label unreadable: nothing is left to train on.
            clean.labels.clone()
        } else {
            let mut victims = Vec::new();
            victims.extend(clean.used_images.choose_multiple(&mut rng, 3).cloned());
            victims.extend(clean.used_landmarks.choose_multiple(&mut rng, 3).cloned());
            victims.extend(clean.labels.choose_multiple(&mut rng, 2).cloned());
            victims.extend(all_files.choose_multiple(&mut rng, 4).cloned());
            victims
        };
        victims.sort();
        victims.dedup();
        for victim in &victims {
            let original = fs::read(victim).expect("file");
            let damaged: Vec<u8> = match (round == 5, rng.random_range(0..4)) {
                (true, _) => b"happy\n".to_vec(),
                (false, 0) => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
                (false, 1) => original[..rng.random_range(0..=original.len())].to_vec(),
                (false, 2) => b"   nan\n1e999 2\n-0\n".to_vec(),
                (false, _) => {
                    let mut flipped = original;
                    for _ in 0..8 {
                        if !flipped.is_empty() {
                            let at = rng.random_range(0..flipped.len());
                            flipped[at] ^= rng.random::<u8>() | 1;
                        }
                    }
                    flipped
                }
            };
            fs::write(victim, damaged).expect("damage");
        }

        let expected = expected_outcome(&root);
        for victim in &victims {
            match expected.skipped.get(victim) {
                Some(kind) => *listed_kinds.entry(*kind).or_default() += 1,
                None => n_harmless += 1,
            }
        }
        let cache = round_dir.join("cache");
        let result = prepare(&root, &cache, &options(), &|_| {});
        if expected.samples.is_empty() {
            n_errors += 1;
            let error = result.expect_err("no usable sample is an error");
            assert!(matches!(error, Error::NoSamples { .. }), "{error}");
            let first = expected
                .skipped
                .keys()
                .next()
                .expect("something was skipped");
            assert!(
                error.to_string().contains(&first.display().to_string()),
                "the error names the first skipped file: {error}"
            );
            continue;
        }
        let dataset = result.unwrap_or_else(|error| panic!("round {round}: {error}"));
        let skipped: BTreeMap<PathBuf, SkipKind> = dataset
            .summary
            .skipped
            .iter()
            .map(|skip| (skip.path.clone(), skip.kind))
            .collect();
        assert_eq!(skipped, expected.skipped, "round {round}: {victims:#?}");
        assert_eq!(
            skipped.len(),
            dataset.summary.skipped.len(),
            "each file listed once"
        );
        let samples: BTreeSet<(String, u32, usize)> = dataset
            .samples
            .iter()
            .map(|s| (s.sequence.clone(), s.frame, s.label))
            .collect();
        assert_eq!(samples, expected.samples, "round {round}");
        assert_eq!(dataset.samples.len(), expected.samples.len());
        assert!(dataset
            .samples
            .iter()
            .all(|sample| sample.pixels.len() == SIZE * SIZE));
        let printed = dataset.summary.to_string();
        for path in expected.skipped.keys() {
            let shown = path.display().to_string();
            assert!(printed.contains(&shown), "{shown} not printed: {printed}");
        }

        let strict = PrepareOptions {
            strict: true,
            ..options()
        };
        match prepare(&root, &cache, &strict, &|_| {}) {
            Err(Error::Strict { path, .. }) => {
                assert!(expected.skipped.contains_key(&path), "{}", path.display())
            }
            Ok(_) => assert!(expected.skipped.is_empty(), "strict passed over a bad file"),
            Err(other) => panic!("round {round}: strict gave {other}"),
        }
    }
    for kind in [
        SkipKind::CorruptImage,
        SkipKind::BadLandmarks,
        SkipKind::UnreadableLabel,
    ] {
        assert!(
            listed_kinds.get(&kind).is_some_and(|&n| n > 0),
            "no damage ended as {kind}: {listed_kinds:?}"
        );
    }
    assert!(n_harmless > 0 && n_errors > 0, "{n_harmless} {n_errors}");
}

/// What `prepare` must make of a (possibly damaged) synthetic CK+, read from its files with the
/// `image` crate and the CK+ rules (label codes 1 to 7 without the neutral option, the last
/// three frames up to the labelled one, 68 `x y` landmark lines), not with the crate's code.
struct ExpectedOutcome {
    /// The label file of every labelled sequence.
    labels: Vec<PathBuf>,
    /// Frames whose label reads, i.e. frames `prepare` decodes.
    used_images: Vec<PathBuf>,
    /// Landmark files of used frames that decode.
    used_landmarks: Vec<PathBuf>,
    skipped: BTreeMap<PathBuf, SkipKind>,
    /// (sequence, frame, label) of every sample.
    samples: BTreeSet<(String, u32, usize)>,
}

fn expected_outcome(root: &Path) -> ExpectedOutcome {
    let mut outcome = ExpectedOutcome {
        labels: Vec::new(),
        used_images: Vec::new(),
        used_landmarks: Vec::new(),
        skipped: BTreeMap::new(),
        samples: BTreeSet::new(),
    };
    let frame_of = |path: &Path| -> u32 {
        let stem = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        stem.split('_')
            .nth(2)
            .expect("S010_001_00000005")
            .parse()
            .expect("frame")
    };
    for sequence_dir in sorted_dirs(&root.join("Emotion/S010")) {
        let number = sequence_dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let label_file = files_under(&sequence_dir)
            .into_iter()
            .find(|path| path.extension().is_some_and(|ext| ext == "txt"))
            .expect("a label file");
        outcome.labels.push(label_file.clone());
        let text = String::from_utf8_lossy(&fs::read(&label_file).expect("label")).into_owned();
        let label = match text
            .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
            .parse::<f64>()
        {
            Err(_) => {
                outcome
                    .skipped
                    .insert(label_file, SkipKind::UnreadableLabel);
                continue;
            }
            Ok(code) if code.fract() == 0.0 && (1.0..=7.0).contains(&code) => code as usize - 1,
            Ok(_) => {
                outcome
                    .skipped
                    .insert(label_file, SkipKind::LabelOutOfRange);
                continue;
            }
        };
        let peak = frame_of(&label_file);
        let mut frames: Vec<PathBuf> =
            files_under(&root.join("cohn-kanade-images/S010").join(&number))
                .into_iter()
                .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
                .filter(|path| frame_of(path) <= peak)
                .collect();
        frames.sort_by_key(|path| frame_of(path));
        for image in &frames[frames.len().saturating_sub(3)..] {
            outcome.used_images.push(image.clone());
            if image::load_from_memory(&fs::read(image).expect("image")).is_err() {
                outcome
                    .skipped
                    .insert(image.clone(), SkipKind::CorruptImage);
                continue;
            }
            let stem = image
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            let landmarks = root
                .join("Landmarks/S010")
                .join(&number)
                .join(format!("{stem}_landmarks.txt"));
            outcome.used_landmarks.push(landmarks.clone());
            let text =
                String::from_utf8_lossy(&fs::read(&landmarks).expect("landmarks")).into_owned();
            if !holds_68_points(&text) {
                outcome.skipped.insert(landmarks, SkipKind::BadLandmarks);
                continue;
            }
            outcome
                .samples
                .insert((format!("S010_{number}"), frame_of(image), label));
        }
    }
    outcome
}

/// 68 non-blank lines of exactly two finite numbers.
fn holds_68_points(text: &str) -> bool {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines.len() == 68
        && lines.iter().all(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() == 2
                && fields
                    .iter()
                    .all(|field| field.parse::<f32>().is_ok_and(f32::is_finite))
        })
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every file below `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in fs::read_dir(&folder).expect("folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A root holding two copies must not pair the first copy's images with the second's labels.
#[test]
fn labels_are_taken_from_the_copy_holding_the_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("datasets");
    let options_for = |subjects| synth::SynthOptions {
        subjects,
        min_frames: 4,
        max_frames: 5,
        ..Default::default()
    };
    // `a/` has images only; `b/` is complete. Sorted search meets `a/cohn-kanade-images` first.
    synth::generate(&root.join("a"), &options_for(1)).expect("written");
    fs::remove_dir_all(root.join("a/Emotion")).expect("remove a's labels");
    synth::generate(&root.join("b"), &options_for(2)).expect("written");
    let dataset = run(&root, &dir.path().join("cache"), &options());
    assert!(dataset.summary.skipped.is_empty(), "{}", dataset.summary);
    assert_eq!(dataset.samples.len(), 2 * 7 * 3);
    assert!(dataset
        .samples
        .iter()
        .all(|s| s.source.starts_with(root.join("b"))));
}

#[test]
fn an_image_beyond_the_side_limit_is_refused_from_its_header() {
    let reason = decode_image(&crafted_png::png_header(MAX_IMAGE_SIDE + 1, 10)).unwrap_err();
    assert_eq!(
        reason.to_string(),
        "the image is 8193x10 pixels, more than the limit of 8192 a side"
    );
}
