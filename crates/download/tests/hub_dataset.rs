//! Any Hub image-classification dataset against a local server: string labels, integer labels
//! named by the card or by the parquet metadata, split files, and the errors of a wrong repo.

mod common;

use std::fs;
use std::path::Path;

use common::{png, write_mirror_parquet, ImageColumn, Label, MirrorRow, Server};
use dexpression_download::{
    download_hub_dataset, DataDir, Error, FetchStatus, HubDataset, HubDatasetDownload, HubOptions,
    NoProgress,
};

const REPO: &str = "someone/pain-faces";

fn rows(labels: Vec<Label>, prefix: &str) -> Vec<MirrorRow> {
    labels
        .into_iter()
        .enumerate()
        .map(|(row_idx, label)| MirrorRow {
            image: png(row_idx as u8),
            label,
            file: format!("{prefix}{row_idx:03}"),
        })
        .collect()
}

fn parquet(parquet_rows: &[MirrorRow], class_names: Option<&[&str]>) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("d.parquet");
    write_mirror_parquet(&path, ImageColumn::Struct, parquet_rows, class_names);
    fs::read(&path).expect("read parquet back")
}

/// A server holding `files` (path, bytes) of [`REPO`], listed in its tree.
fn serve(files: &[(&str, Vec<u8>)]) -> Server {
    let server = Server::start();
    let paths: Vec<&str> = files.iter().map(|(path, _)| *path).collect();
    server.hub_dataset_tree(REPO, "main", &paths);
    for (path, bytes) in files {
        server.hub_dataset_file(REPO, "main", path, bytes.clone());
    }
    server
}

struct Work {
    dir: tempfile::TempDir,
    data: DataDir,
    options: HubOptions,
}

impl Work {
    /// Every parquet file of `repo` at main, into this data folder.
    fn download(&self, repo: &str) -> dexpression_download::Result<HubDatasetDownload> {
        download_hub_dataset(
            &self.data,
            &HubDataset::new(repo),
            &self.options,
            &NoProgress,
        )
    }
}

fn work(server: &Server) -> Work {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(dir.path().join("data"));
    let options = server.hub_options(&dir.path().join("hf-cache"));
    Work { dir, data, options }
}

fn pngs_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(folder)
        .expect("class folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

const CARD: &str = "---\nlicense: cc-by-4.0\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': no_pain\n          '1': pain\n          '2': unused\n---\n# Pain faces\n";

#[test]
fn string_labels_become_class_folders_with_their_own_names() {
    let parquet_rows = rows(
        ["pain", "no_pain", "pain", "no_pain", "pain"]
            .map(|name| Label::Name(name.into()))
            .to_vec(),
        "img",
    );
    let server = serve(&[(
        "data/train-00000-of-00001.parquet",
        parquet(&parquet_rows, None),
    )]);
    let work = work(&server);
    let dataset = HubDataset::new(REPO);
    let download =
        download_hub_dataset(&work.data, &dataset, &work.options, &NoProgress).expect("downloads");
    let out = work.data.root().join("pain-faces");
    assert_eq!(download.summary.out_dir, out);
    // First met first, with no ClassLabel to order them.
    assert_eq!(
        download.summary.n_images_per_class,
        vec![("pain".to_string(), 3), ("no_pain".to_string(), 2)]
    );
    assert_eq!(
        pngs_in(&out.join("pain")),
        ["img000.png", "img002.png", "img004.png"]
    );
    assert_eq!(
        fs::read(out.join("no_pain").join("img001.png")).expect("image"),
        parquet_rows[1].image
    );
    assert_eq!(
        fs::read_to_string(out.join("classes.txt")).expect("classes"),
        "pain\nno_pain\n"
    );

    // Again, then offline with the server gone: nothing is fetched or written again.
    server.clear_seen();
    let again =
        download_hub_dataset(&work.data, &dataset, &work.options, &NoProgress).expect("second run");
    assert!(again.summary.already_converted);
    assert_eq!(again.files[0].status, FetchStatus::AlreadyPresent);
    assert_eq!(
        again.summary.n_images_per_class,
        download.summary.n_images_per_class
    );
    assert_eq!(server.n_gets(), 1, "only the listing: {:?}", server.seen());
    drop(server);
    let offline = HubOptions {
        offline: true,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..work.options.clone()
    };
    let offline =
        download_hub_dataset(&work.data, &dataset, &offline, &NoProgress).expect("offline run");
    assert!(offline.summary.already_converted);
    drop(work.dir);
}

#[test]
fn integer_labels_are_named_by_the_dataset_card() {
    let parquet_rows = rows([1, 0, 1].map(Label::Index).to_vec(), "f");
    let server = serve(&[
        ("README.md", CARD.as_bytes().to_vec()),
        (
            "data/train-00000-of-00001.parquet",
            parquet(&parquet_rows, None),
        ),
    ]);
    let work = work(&server);
    let download = work.download(REPO).expect("downloads");
    // The card's order; `unused` has no image and gets no folder.
    assert_eq!(
        download.summary.n_images_per_class,
        vec![("no_pain".to_string(), 1), ("pain".to_string(), 2)]
    );
    let out = work.data.root().join("pain-faces");
    assert_eq!(pngs_in(&out.join("pain")), ["f000.png", "f002.png"]);
    assert!(!out.join("unused").exists());
    assert_eq!(
        fs::read_to_string(out.join("classes.txt")).expect("classes"),
        "no_pain\npain\n"
    );
}

#[test]
fn integer_labels_are_named_by_the_parquet_metadata() {
    let parquet_rows = rows([0, 2, 2].map(Label::Index).to_vec(), "m");
    let bytes = parquet(&parquet_rows, Some(&["alert", "dozing", "drowsy"]));
    let server = serve(&[("data/train-00000-of-00001.parquet", bytes)]);
    let work = work(&server);
    let download = work.download(REPO).expect("downloads");
    assert_eq!(
        download.summary.n_images_per_class,
        vec![("alert".to_string(), 1), ("drowsy".to_string(), 2)]
    );
    let out = work.data.root().join("pain-faces");
    assert_eq!(pngs_in(&out.join("drowsy")), ["m001.png", "m002.png"]);
}

#[test]
fn integer_labels_without_names_are_refused_with_the_reason() {
    let parquet_rows = rows([0, 1].map(Label::Index).to_vec(), "n");
    let server = serve(&[(
        "data/train-00000-of-00001.parquet",
        parquet(&parquet_rows, None),
    )]);
    let work = work(&server);
    let err = work.download(REPO).expect_err("no names");
    assert!(
        matches!(&err, Error::NoClassNames { column, .. } if column == "label"),
        "{err:?}"
    );
    assert!(err.to_string().contains("class_label"), "{err}");
}

#[test]
fn split_files_are_merged_into_one_set_of_class_folders() {
    // Both splits number their images alike: no image may overwrite another.
    let train = rows(
        ["a", "b", "a"]
            .map(|name| Label::Name(name.into()))
            .to_vec(),
        "img",
    );
    let test = rows(
        ["b", "a"].map(|name| Label::Name(name.into())).to_vec(),
        "img",
    );
    let server = serve(&[
        ("data/test-00000-of-00001.parquet", parquet(&test, None)),
        ("data/train-00000-of-00001.parquet", parquet(&train, None)),
        (".gitattributes", b"*.parquet filter=lfs\n".to_vec()),
    ]);
    let work = work(&server);
    let download = work.download(REPO).expect("downloads");
    assert_eq!(download.files.len(), 2);
    assert_eq!(download.summary.n_images(), 5);
    let out = work.data.root().join("pain-faces");
    assert_eq!(
        pngs_in(&out.join("a")),
        ["img000.png", "img001.png", "img002.png"]
    );
    assert_eq!(pngs_in(&out.join("b")), ["img000.png", "img001.png"]);
    // The test split comes first (files in name order), so its img001 (label a) is img001.png.
    assert_eq!(
        fs::read(out.join("a").join("img001.png")).expect("image"),
        test[1].image
    );
}

#[test]
fn a_bad_repo_id_is_refused_before_going_online() {
    let server = Server::start();
    let work = work(&server);
    for repo in ["no-owner", "a/b/c", "../x", "a/.."] {
        let err = work.download(repo).expect_err("bad id");
        assert!(matches!(err, Error::BadRepoId { .. }), "{repo}: {err:?}");
    }
    assert!(server.seen().is_empty());
}

#[test]
fn a_repo_without_parquet_files_says_what_it_holds() {
    let server = serve(&[
        ("README.md", b"# text only".to_vec()),
        ("train.csv", b"a,b\n".to_vec()),
    ]);
    let work = work(&server);
    let err = work.download(REPO).expect_err("no parquet");
    assert!(matches!(err, Error::NoParquet { .. }), "{err:?}");
    assert!(err.to_string().contains("train.csv"), "{err}");
}

#[test]
fn a_missing_repo_is_a_404() {
    let server = Server::start();
    let work = work(&server);
    let err = work.download("nobody/nothing").expect_err("missing");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[test]
fn a_parquet_without_a_label_column_lists_its_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("u.parquet");
    common::write_unlabelled_parquet(&path, &[png(1), png(2)]);
    let server = serve(&[(
        "data/train-00000-of-00001.parquet",
        fs::read(&path).expect("bytes"),
    )]);
    let work = work(&server);
    let err = work.download(REPO).expect_err("no columns");
    assert!(
        matches!(
            err,
            Error::ParquetColumns {
                missing: "label",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("caption: string"), "{err}");
}
