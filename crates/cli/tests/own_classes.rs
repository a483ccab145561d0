//! Datasets with their own classes end to end (issue 14): a generated `fer2013.csv` trained
//! with `--split usage`, and a two-class folder dataset with non-expression names, each through
//! `prepare -> train -> report -> predict`; the report and `predict --json` name the dataset's
//! own classes.

mod common;

use std::path::Path;

use common::{text, xtask};

/// `cargo xtask COMMAND` on `source` with the crops cached in `cache` at 48 px, then `extra`.
fn xtask_on(command: &str, source: &Path, cache: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        command,
        "--source",
        text(source),
        "--cache",
        text(cache),
        "--image-size",
        "48",
    ];
    args.extend(extra);
    xtask(&args)
}

/// A JSON file a run wrote.
fn json_file(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

/// The one `best-*.safetensors` of fold 1.
fn best_weights(out: &Path) -> String {
    std::fs::read_dir(out.join("fold1"))
        .expect("fold 1 trained")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("best-") && name.ends_with(".safetensors")
        })
        .expect("a best checkpoint")
        .display()
        .to_string()
}

/// `predict --json --no-crop` on one image: the class names of its probabilities, in order.
fn predicted_names(weights: &str, image: &Path) -> Vec<String> {
    let output = xtask(&[
        "predict",
        "--weights",
        weights,
        "--no-crop",
        "--json",
        "--device",
        "cpu",
        text(image),
    ]);
    let line = output.lines().next().expect("one line per image");
    let record: serde_json::Value = serde_json::from_str(line).expect("JSON");
    let probabilities = record["probabilities"].as_object().expect("probabilities");
    let total: f64 = probabilities.values().filter_map(|p| p.as_f64()).sum();
    assert!((total - 1.0).abs() < 1e-3, "probabilities sum to {total}");
    let label = record["label"].as_str().expect("label").to_string();
    assert!(probabilities.contains_key(&label), "{record}");
    let mut names: Vec<String> = probabilities.keys().cloned().collect();
    names.sort();
    names
}

#[test]
fn fer2013_csv_trains_once_on_its_own_split_and_reports_private_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("fer2013.csv");
    dexpression_dataset::synth::write_fer2013_csv(&csv, 140, 3).expect("csv written");
    let cache = dir.path().join("cache");
    let prepared = xtask_on("prepare", &csv, &cache, &[]);
    assert!(prepared.contains("fer2013-csv"), "{prepared}");
    assert!(
        prepared.contains("usage:     Training 112, PublicTest 14, PrivateTest 14"),
        "{prepared}"
    );
    for name in [
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Sadness",
        "Surprise",
        "Neutral",
    ] {
        assert!(prepared.contains(name), "{name} missing from\n{prepared}");
    }

    let out = dir.path().join("results");
    let trained = xtask_on(
        "train",
        &csv,
        &cache,
        &[
            "--split",
            "usage",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--out",
            text(&out),
            "--quiet",
        ],
    );
    assert!(trained.contains("mean final test accuracy"), "{trained}");
    // One model, not k folds.
    assert!(out.join("fold1").is_dir() && !out.join("fold2").exists());
    let config = json_file(&out.join("config.json"));
    assert_eq!(config["split"], "usage");
    assert_eq!(config["folds"], 1);
    assert_eq!(config["select_on"], "val");
    // The history's test predictions are PrivateTest's 14 rows; validation is PublicTest's.
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history");
    let record: serde_json::Value =
        serde_json::from_str(history.lines().last().expect("a record")).expect("JSON");
    assert_eq!(record["test"]["truths"].as_array().map(Vec::len), Some(14));
    assert!(record["validation"]["accuracy"].is_number(), "{record}");

    let report = dir.path().join("report");
    xtask(&["report", "--history", text(&out), "--out", text(&report)]);
    let summary = std::fs::read_to_string(report.join("summary.md")).expect("summary");
    assert!(summary.contains("PrivateTest Accuracy"), "{summary}");
    assert!(summary.contains("FER2013's `Usage`"), "{summary}");
    assert!(summary.contains("| Disgust |"), "{summary}");
    assert!(!summary.contains("Contempt"), "{summary}");

    let image = dir.path().join("face.png");
    image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x + y) * 2) as u8]))
        .save(&image)
        .expect("png");
    let mut expected: Vec<String> = dexpression_dataset::fer2013_class_names();
    expected.sort();
    assert_eq!(predicted_names(&best_weights(&out), &image), expected);
}

/// Two classes of 48 x 48 images told apart by where a bright bar is, 12 each.
fn write_two_classes(root: &Path) {
    for (class, left) in [("pain", true), ("no_pain", false)] {
        let folder = root.join(class);
        std::fs::create_dir_all(&folder).expect("class folder");
        for index in 0..12u32 {
            let image = image::GrayImage::from_fn(48, 48, |x, y| {
                let bar = if left { x < 16 } else { x >= 32 };
                let noise = (x * 7 + y * 13 + index * 31) % 40;
                image::Luma([if bar { 200 } else { 50 } + noise as u8])
            });
            image
                .save(folder.join(format!("face_{index:02}.png")))
                .expect("png");
        }
    }
    // An empty class folder is listed, not a class.
    std::fs::create_dir_all(root.join("unsure")).expect("empty folder");
}

#[test]
fn a_two_class_folder_dataset_with_its_own_names_runs_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faces = dir.path().join("faces");
    write_two_classes(&faces);
    let cache = dir.path().join("cache");
    let prepared = xtask_on("prepare", &faces, &cache, &[]);
    assert!(prepared.contains("folder-per-class"), "{prepared}");
    assert!(prepared.contains("empty-class 1"), "{prepared}");
    assert!(
        prepared.contains("samples:   24 from 24 subjects"),
        "{prepared}"
    );

    let out = dir.path().join("results");
    xtask_on(
        "train",
        &faces,
        &cache,
        &[
            "--folds",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--out",
            text(&out),
            "--quiet",
        ],
    );
    let config = json_file(&out.join("config.json"));
    assert_eq!(
        config["class_names"],
        serde_json::json!(["no_pain", "pain"])
    );

    let report = dir.path().join("report");
    xtask(&["report", "--history", text(&out), "--out", text(&report)]);
    let summary = std::fs::read_to_string(report.join("summary.md")).expect("summary");
    assert!(
        summary.contains("| pain |") && summary.contains("| no_pain |"),
        "{summary}"
    );
    assert!(!summary.contains("Anger"), "{summary}");
    let matrix = std::fs::read_to_string(report.join("confusion_matrix-all.csv"))
        .expect("the confusion matrix of both folds");
    assert!(
        matrix.contains("no_pain") && matrix.contains("pain"),
        "{matrix}"
    );

    let image = faces.join("pain/face_00.png");
    assert_eq!(
        predicted_names(&best_weights(&out), &image),
        vec!["no_pain".to_string(), "pain".to_string()]
    );
    // The run folder stands for its first fold's best weights, with the run's class names.
    let predict = |weights: &str| {
        xtask(&[
            "predict",
            "--weights",
            weights,
            "--no-crop",
            "--json",
            "--device",
            "cpu",
            text(&image),
        ])
    };
    assert_eq!(predict(text(&out)), predict(&best_weights(&out)));
}
