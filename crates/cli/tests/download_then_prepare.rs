//! `cargo xtask download --repo` end to end (issue 14 item 3): a two-class Hub dataset with
//! integer labels named by its card, in two split files, fetched from a local server and then
//! prepared as a folder-per-class dataset with its own class names.
//!
//! Built only with xtask's `download` feature (`cargo test -p xtask --features download`);
//! without it, `download` would build xtask once more with the feature, which takes minutes.

#![cfg(feature = "download")]

mod common;
#[path = "../../download/tests/common/mod.rs"]
mod hub;

use std::path::Path;

use common::{text, xtask};
use hub::{png, write_mirror_parquet, ImageColumn, Label, MirrorRow, Server};

const REPO: &str = "someone/pain-faces";

const CARD: &str = "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': no_pain\n          '1': pain\n---\n";

/// `n` rows alternating between the card's two classes, each image its own.
fn split(dir: &Path, name: &str, first_seed: u8, n: u8) -> Vec<u8> {
    let rows: Vec<MirrorRow> = (0..n)
        .map(|idx| MirrorRow {
            image: png(first_seed + idx * 9),
            label: Label::Index(i64::from(idx % 2)),
            file: format!("{name}_{idx:02}"),
        })
        .collect();
    let path = dir.join(format!("{name}.parquet"));
    write_mirror_parquet(&path, ImageColumn::Struct, &rows, None);
    std::fs::read(&path).expect("parquet bytes")
}

#[test]
fn a_hub_dataset_downloads_and_prepares_with_its_own_classes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = [
        ("README.md", CARD.as_bytes().to_vec()),
        (
            "data/train-00000-of-00001.parquet",
            split(dir.path(), "train", 0, 8),
        ),
        (
            "data/test-00000-of-00001.parquet",
            split(dir.path(), "test", 100, 4),
        ),
    ];
    let server = Server::start();
    let paths: Vec<&str> = files.iter().map(|(path, _)| *path).collect();
    server.hub_dataset_tree(REPO, "main", &paths);
    for (path, bytes) in &files {
        server.hub_dataset_file(REPO, "main", path, bytes.clone());
    }

    let data = dir.path().join("data");
    let downloaded = xtask(&[
        "download",
        "--repo",
        REPO,
        "--endpoint",
        &server.base,
        "--data",
        text(&data),
    ]);
    assert!(
        downloaded.contains("12 images converted into") && downloaded.contains("no_pain 6, pain 6"),
        "{downloaded}"
    );
    let dataset = data.join("pain-faces");
    assert_eq!(
        std::fs::read_to_string(dataset.join("classes.txt")).expect("classes.txt"),
        "no_pain\npain\n"
    );

    let prepared = xtask(&[
        "prepare",
        "--source",
        text(&dataset),
        "--cache",
        text(&dir.path().join("cache")),
        "--image-size",
        "48",
    ]);
    assert!(prepared.contains("folder-per-class"), "{prepared}");
    assert!(prepared.contains("samples:   12"), "{prepared}");
    for name in ["no_pain", "pain"] {
        assert!(prepared.contains(name), "{name} missing from\n{prepared}");
    }
}
