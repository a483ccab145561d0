//! Downloads against a local server: the mirror in every accepted schema, Drive's confirmation
//! flow, cut and resumed transfers, checksums, and the errors a user can meet.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{
    fake_checkpoint, png, write_mirror_parquet, write_unusable_parquet, ImageColumn, Label,
    MirrorRow, Route, Server,
};
use dexpression_download::testing::{
    convert_mirror_with_limits, part_path, pin_path, sidecar_path, MirrorLimits,
};
use dexpression_download::{
    convert_mirror, download_mirror, fetch_drive_file, fetch_hub_file, DataDir, DriveFile,
    DriveOptions, Error, FetchStatus, HubFile, HubFileDir, HubOptions, MirrorSource, NoProgress,
    RepoKind,
};

const REPO: &str = "AlirezaF138/ckplus-dataset";
const FILE: &str = "data/train-00000-of-00001.parquet";

fn rows(labels: &[Label]) -> Vec<MirrorRow> {
    labels
        .iter()
        .enumerate()
        .map(|(row_idx, label)| MirrorRow {
            image: png(row_idx as u8),
            label: label.clone(),
            file: format!("S{:03}_004_{:08}", 10 + row_idx / 3, 15 + row_idx % 3),
        })
        .collect()
}

fn names(names: &[&str]) -> Vec<Label> {
    names
        .iter()
        .map(|name| Label::Name(name.to_string()))
        .collect()
}

/// A local Hub serving `parquet_bytes` as the mirror, a fresh work folder, the data folder in
/// it, and the options that reach that Hub (with their cache in the work folder).
fn serve_mirror(parquet_bytes: Vec<u8>) -> (Server, tempfile::TempDir, DataDir, HubOptions) {
    let server = Server::start();
    server.hub_dataset_file(REPO, "main", FILE, parquet_bytes);
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let options = server.hub_options(&work.path().join("hf-cache"));
    (server, work, data, options)
}

/// Serves `parquet_bytes` as the mirror, downloads it into a fresh data folder, and checks that
/// each row landed in `expected_classes[row]/<stem>.png` with its bytes unchanged.
fn check_mirror(parquet_rows: &[MirrorRow], parquet_bytes: Vec<u8>, expected_classes: &[&str]) {
    let (_server, _work, data, options) = serve_mirror(parquet_bytes);
    let (fetched, summary) =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
            .expect("mirror downloads");
    assert_eq!(fetched.status, FetchStatus::Downloaded);
    assert!(
        sidecar_path(&fetched.path).is_file(),
        "a sha256 is kept beside {}",
        fetched.path.display()
    );
    assert_eq!(summary.n_images(), parquet_rows.len());
    for (row, class) in parquet_rows.iter().zip(expected_classes) {
        let written = data
            .mirror_dir()
            .join(class)
            .join(format!("{}.png", row.file));
        assert_eq!(
            fs::read(&written).expect("converted image exists"),
            row.image,
            "{}",
            written.display()
        );
    }
}

fn parquet_bytes(
    image_column: ImageColumn,
    parquet_rows: &[MirrorRow],
    class_names: Option<&[&str]>,
) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mirror.parquet");
    write_mirror_parquet(&path, image_column, parquet_rows, class_names);
    fs::read(&path).expect("read parquet back")
}

#[test]
fn mirror_with_struct_images_and_label_names() {
    let parquet_rows = rows(&names(&[
        "anger", "HAPPY", "Sadness", "surprise", "contempt", "fear", "disgust",
    ]));
    let bytes = parquet_bytes(ImageColumn::Struct, &parquet_rows, None);
    check_mirror(
        &parquet_rows,
        bytes,
        &[
            "Anger",
            "Happiness",
            "Sadness",
            "Surprise",
            "Contempt",
            "Fear",
            "Disgust",
        ],
    );
}

#[test]
fn mirror_with_binary_images_and_integer_labels() {
    let labels: Vec<Label> = [0, 4, 6, 1].into_iter().map(Label::Index).collect();
    let parquet_rows = rows(&labels);
    let bytes = parquet_bytes(ImageColumn::Binary, &parquet_rows, None);
    check_mirror(
        &parquet_rows,
        bytes,
        &["Anger", "Happiness", "Surprise", "Contempt"],
    );
}

#[test]
fn mirror_compressed_with_zstd_and_lz4() {
    use parquet::basic::{Compression, ZstdLevel};
    let parquet_rows = rows(&names(&["fear", "Surprise"]));
    for compression in [
        Compression::ZSTD(ZstdLevel::default()),
        Compression::LZ4_RAW,
        Compression::UNCOMPRESSED,
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mirror.parquet");
        common::write_mirror_parquet_with(
            &path,
            ImageColumn::Binary,
            &parquet_rows,
            None,
            compression,
        );
        check_mirror(
            &parquet_rows,
            fs::read(&path).expect("read parquet back"),
            &["Fear", "Surprise"],
        );
    }
}

#[test]
fn mirror_integer_labels_follow_the_hub_class_names() {
    // An order other than alphabetical proves the names in the metadata are used.
    let class_names = [
        "surprise", "sadness", "happy", "fear", "disgust", "contempt", "anger",
    ];
    let labels: Vec<Label> = [0, 2, 6].into_iter().map(Label::Index).collect();
    let parquet_rows = rows(&labels);
    let bytes = parquet_bytes(ImageColumn::Struct, &parquet_rows, Some(&class_names));
    check_mirror(&parquet_rows, bytes, &["Surprise", "Happiness", "Anger"]);
}

#[test]
fn mirror_integer_labels_one_to_seven_are_ckplus_codes() {
    let labels: Vec<Label> = [1, 5, 7].into_iter().map(Label::Index).collect();
    let parquet_rows = rows(&labels);
    let bytes = parquet_bytes(ImageColumn::Binary, &parquet_rows, None);
    check_mirror(&parquet_rows, bytes, &["Anger", "Happiness", "Surprise"]);
}

#[test]
fn second_run_downloads_nothing_and_offline_run_works() {
    let parquet_rows = rows(&names(&["anger", "happy", "fear"]));
    let (server, _work, data, options) =
        serve_mirror(parquet_bytes(ImageColumn::Struct, &parquet_rows, None));
    download_mirror(&data, &MirrorSource::default(), &options, &NoProgress).expect("first run");
    assert!(server.n_gets() >= 1);

    server.clear_seen();
    let (fetched, summary) =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
            .expect("second run");
    assert_eq!(fetched.status, FetchStatus::AlreadyPresent);
    assert!(summary.already_converted);
    assert_eq!(summary.n_images(), 3);
    assert!(
        server.seen().is_empty(),
        "second run sent {:?}",
        server.seen()
    );

    // Offline, with the server gone: everything is on disk, so it still succeeds.
    drop(server);
    let mut offline = options.clone();
    offline.offline = true;
    offline.endpoint = Some("http://127.0.0.1:9".to_string());
    let (fetched, summary) =
        download_mirror(&data, &MirrorSource::default(), &offline, &NoProgress)
            .expect("offline run");
    assert_eq!(fetched.status, FetchStatus::AlreadyPresent);
    assert!(summary.already_converted);
}

#[test]
fn offline_without_the_file_says_what_to_do() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let mut options = Server::start().hub_options(&work.path().join("hf-cache"));
    options.offline = true;
    let err = download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
        .expect_err("nothing on disk");
    assert!(matches!(err, Error::MissingOffline { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("HubOptions::offline") && message.contains("import_ckplus"),
        "{message}"
    );
}

#[test]
fn checksum_mismatch_moves_the_file_aside() {
    let parquet_rows = rows(&names(&["anger", "happy"]));
    let (_server, _work, data, options) =
        serve_mirror(parquet_bytes(ImageColumn::Struct, &parquet_rows, None));
    let (fetched, _) =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress).expect("first run");

    let mut bytes = fs::read(&fetched.path).expect("raw file");
    bytes[100] ^= 0xff;
    fs::write(&fetched.path, &bytes).expect("corrupt it");
    let err = download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
        .expect_err("mismatch");
    let Error::ChecksumMismatch { path, moved_to, .. } = &err else {
        panic!("expected a checksum mismatch, got {err:?}")
    };
    assert_eq!(path, &fetched.path);
    assert!(
        !fetched.path.exists(),
        "the bad file is no longer where it would be used"
    );
    assert_eq!(fs::read(moved_to).expect("moved aside"), bytes);
    assert!(
        err.to_string()
            .contains("does not match its recorded sha256"),
        "{err}"
    );

    // The next run fetches a good copy again.
    let (again, _) = download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
        .expect("re-download");
    assert_eq!(again.status, FetchStatus::Downloaded);
    assert_eq!(again.sha256, fetched.sha256);
}

#[test]
fn missing_file_is_a_404_naming_repo_revision_and_file() {
    let server = Server::start();
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let source = MirrorSource {
        revision: "v9".to_string(),
        ..MirrorSource::default()
    };
    let err = download_mirror(
        &data,
        &source,
        &server.hub_options(&work.path().join("hf-cache")),
        &NoProgress,
    )
    .expect_err("404");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("HubFile::revision") && message.contains(FILE) && message.contains("/v9/"),
        "{message}"
    );
}

#[test]
fn unauthorised_is_a_401_pointing_at_hf_token() {
    let server = Server::start();
    server.route(
        &format!("/datasets/{REPO}/resolve/main/{FILE}"),
        Route::Status(401),
    );
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let err = download_mirror(
        &data,
        &MirrorSource::default(),
        &server.hub_options(&work.path().join("hf-cache")),
        &NoProgress,
    )
    .expect_err("401");
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
}

/// The error of fetching the port's checkpoint from the Drive at `endpoint`.
fn port_checkpoint_refused(endpoint: &str) -> Error {
    let work = tempfile::tempdir().expect("temp dir");
    let drive = DriveOptions {
        endpoint: endpoint.to_string(),
        offline: false,
        ..DriveOptions::default()
    };
    fetch_drive_file(
        &DriveFile::port_checkpoint(),
        &work.path().join("w.tar"),
        &drive,
        &NoProgress,
    )
    .expect_err("the fetch is refused")
}

#[test]
fn no_network_mentions_that_from_works_offline() {
    // A port that was free a moment ago: the connection is refused, as with no network.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _server = Server::start(); // sets NO_PROXY
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let mut options = dexpression_download::HubOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..Default::default()
    };
    options.cache_dir = Some(work.path().join("hf-cache"));
    options.retry_max_attempts = Some(1);
    let err = download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
        .expect_err("refused");
    assert!(matches!(err, Error::Offline { .. }), "{err:?}");
    assert!(err.to_string().contains("import_ckplus"), "{err}");

    let err = port_checkpoint_refused(&format!("http://127.0.0.1:{port}"));
    assert!(matches!(err, Error::Offline { .. }), "{err:?}");
}

#[test]
fn conversion_leaves_an_output_folder_it_did_not_make_alone() {
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).expect("out");
    std::fs::write(out.join("mine.txt"), "the user's").expect("user file");
    let parquet = work.path().join("mirror.parquet");
    write_unusable_parquet(&parquet);
    let err = convert_mirror(&parquet, "sha", &out, &NoProgress).expect_err("refused");
    assert!(
        matches!(err, Error::ConversionDestinationNotOurs { .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("mine.txt")).expect("still there"),
        "the user's"
    );
}

#[test]
fn parquet_without_usable_columns_lists_the_columns_found() {
    let work = tempfile::tempdir().expect("temp dir");
    let parquet = work.path().join("odd.parquet");
    write_unusable_parquet(&parquet);
    let err = convert_mirror(&parquet, "sha", &work.path().join("out"), &NoProgress)
        .expect_err("no image column");
    assert!(
        matches!(
            err,
            Error::ParquetColumns {
                missing: "image",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("text: string") && message.contains("score: double"),
        "{message}"
    );
    assert!(
        !work.path().join("out").exists(),
        "nothing half-converted is left"
    );
}

#[test]
fn truncated_parquet_is_a_clear_error() {
    let parquet_rows = rows(&names(&["anger"]));
    let bytes = parquet_bytes(ImageColumn::Struct, &parquet_rows, None);
    let work = tempfile::tempdir().expect("temp dir");
    let parquet = work.path().join("cut.parquet");
    fs::write(&parquet, &bytes[..bytes.len() / 2]).expect("write half");
    let err = convert_mirror(&parquet, "sha", &work.path().join("out"), &NoProgress)
        .expect_err("truncated");
    assert!(matches!(err, Error::Parquet { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not a readable parquet file"),
        "{err}"
    );
}

fn serve_drive_file(server: &Server, id: &str, body: Vec<u8>, cut_after: Option<usize>) {
    server.route(
        &format!("/uc?id={id}"),
        Route::DriveConfirm { id: id.to_string() },
    );
    server.route(
        &format!("/download?id={id}"),
        Route::File {
            body,
            cut_first_get_after: cut_after,
            content_type: "application/x-tar",
        },
    );
}

#[test]
fn drive_confirmation_flow_fetches_the_checkpoint() {
    let server = Server::start();
    let checkpoint = DriveFile::port_checkpoint();
    let body = fake_checkpoint(200_000);
    serve_drive_file(&server, &checkpoint.id, body.clone(), None);
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join("weights").join(&checkpoint.file_name);
    let options = DriveOptions {
        endpoint: server.base.clone(),
        offline: false,
        ..DriveOptions::default()
    };
    let fetched =
        fetch_drive_file(&checkpoint, &dest, &options, &NoProgress).expect("drive download");
    assert_eq!(fetched.status, FetchStatus::Downloaded);
    assert_eq!(fs::read(&dest).expect("file"), body);
    let targets: Vec<String> = server.seen().into_iter().map(|seen| seen.target).collect();
    assert!(
        targets
            .iter()
            .any(|target| target.starts_with("/download?") && target.contains("confirm=t")),
        "{targets:?}"
    );

    server.clear_seen();
    let again = fetch_drive_file(&checkpoint, &dest, &options, &NoProgress).expect("second run");
    assert_eq!(again.status, FetchStatus::AlreadyPresent);
    assert!(server.seen().is_empty());
    let offline = DriveOptions {
        offline: true,
        ..options
    };
    assert_eq!(
        fetch_drive_file(&checkpoint, &dest, &offline, &NoProgress)
            .expect("offline")
            .sha256,
        fetched.sha256
    );
}

#[test]
fn cut_transfer_resumes_with_a_range_request() {
    let server = Server::start();
    let checkpoint = DriveFile::port_checkpoint();
    let body = fake_checkpoint(300_000);
    let cut_at = 120_000;
    serve_drive_file(&server, &checkpoint.id, body.clone(), Some(cut_at));
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join(&checkpoint.file_name);
    let options = DriveOptions {
        endpoint: server.base.clone(),
        offline: false,
        ..DriveOptions::default()
    };

    let err = fetch_drive_file(&checkpoint, &dest, &options, &NoProgress).expect_err("cut");
    assert!(
        matches!(err, Error::Interrupted { .. } | Error::Truncated { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("resumes"), "{err}");
    assert!(!dest.exists(), "an incomplete file is never put in place");
    let part = part_path(&dest);
    assert_eq!(
        fs::metadata(&part).expect("partial file kept").len(),
        cut_at as u64
    );

    let fetched = fetch_drive_file(&checkpoint, &dest, &options, &NoProgress).expect("resume");
    assert_eq!(fetched.status, FetchStatus::Resumed);
    assert_eq!(fetched.bytes_transferred, (body.len() - cut_at) as u64);
    assert_eq!(fs::read(&dest).expect("file"), body);
    assert!(!part.exists());
    let expected_range = format!("bytes={cut_at}-");
    let etag = format!("\"{}\"", common::sha256_hex(&body));
    assert!(
        server.seen().iter().any(
            |seen| seen.range.as_deref() == Some(expected_range.as_str())
                && seen.if_range.as_deref() == Some(etag.as_str())
        ),
        "the resume is guarded by If-Range: {:?}",
        server.seen()
    );
}

#[test]
fn drive_page_without_token_is_a_clear_error() {
    let server = Server::start();
    server.route(
        "/uc?id=nope",
        Route::File {
            body: b"<html>Quota exceeded</html>".to_vec(),
            cut_first_get_after: None,
            content_type: "text/html",
        },
    );
    let work = tempfile::tempdir().expect("temp dir");
    let file = DriveFile {
        id: "nope".to_string(),
        file_name: "x.tar".to_string(),
    };
    let options = DriveOptions {
        endpoint: server.base.clone(),
        offline: false,
        ..DriveOptions::default()
    };
    let err = fetch_drive_file(&file, &work.path().join("x.tar"), &options, &NoProgress)
        .expect_err("no token");
    assert!(matches!(err, Error::DriveNoConfirmation { .. }), "{err:?}");
}

#[test]
fn weights_from_a_hub_model_repo() {
    let server = Server::start();
    let body = fake_checkpoint(5_000);
    server.route(
        "/someone/dexpression/resolve/main/model.safetensors",
        common::file_route(body.clone()),
    );
    let work = tempfile::tempdir().expect("temp dir");
    let file = HubFile {
        kind: RepoKind::Model,
        repo: "someone/dexpression".to_string(),
        revision: "main".to_string(),
        file: "model.safetensors".to_string(),
    };
    let dest = work.path().join("weights").join("model.safetensors");
    let fetched = fetch_hub_file(
        &file,
        &dest,
        &server.hub_options(&work.path().join("hf-cache")),
        &NoProgress,
    )
    .expect("weights");
    assert_eq!(fs::read(&fetched.path).expect("weights file"), body);
    let recorded = fs::read_to_string(sidecar_path(&dest)).expect("sidecar");
    assert!(
        recorded.starts_with(&fetched.sha256) && recorded.trim_end().ends_with("model.safetensors"),
        "{recorded}"
    );
}

#[test]
fn bad_repo_id_is_refused() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = MirrorSource {
        repo: "no-slash".to_string(),
        ..MirrorSource::default()
    };
    let err = download_mirror(
        &DataDir::new(work.path()),
        &source,
        &Default::default(),
        &NoProgress,
    )
    .expect_err("bad id");
    assert!(matches!(err, Error::BadRepoId { .. }), "{err:?}");
}

/// `/dev/full` answers every write with "no space left", like a full disk; the partial file is
/// made a link to it.
#[cfg(target_os = "linux")]
#[test]
fn disk_full_is_reported_as_such() {
    let server = Server::start();
    let checkpoint = DriveFile::port_checkpoint();
    serve_drive_file(&server, &checkpoint.id, fake_checkpoint(100_000), None);
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join(&checkpoint.file_name);
    std::os::unix::fs::symlink("/dev/full", part_path(&dest)).expect("link to /dev/full");
    let options = DriveOptions {
        endpoint: server.base.clone(),
        offline: false,
        ..DriveOptions::default()
    };
    let err = fetch_drive_file(&checkpoint, &dest, &options, &NoProgress).expect_err("disk full");
    assert!(matches!(err, Error::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    assert!(!dest.exists());
}

/// Serves the mirror's parquet file, cut after `cut_at` bytes on the first GET.
fn serve_cut_mirror(server: &Server, bytes: &[u8], cut_at: usize) -> String {
    let path = format!("/datasets/{REPO}/resolve/main/{FILE}");
    server.route(
        &path,
        Route::File {
            body: bytes.to_vec(),
            cut_first_get_after: Some(cut_at),
            content_type: "application/octet-stream",
        },
    );
    path
}

#[test]
fn cut_hub_transfer_resumes_with_a_range_request() {
    let parquet_rows = rows(&names(&["anger", "happy", "fear"]));
    let bytes = parquet_bytes(ImageColumn::Struct, &parquet_rows, None);
    let cut_at = bytes.len() / 2;
    let server = Server::start();
    serve_cut_mirror(&server, &bytes, cut_at);
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let options = server.hub_options(&work.path().join("hf-cache"));
    let raw = data.raw_hub_file(&MirrorSource::default().hub_file());

    let err =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress).expect_err("cut");
    assert!(
        matches!(err, Error::Interrupted { .. } | Error::Truncated { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("next run resumes"), "{err}");
    assert!(!raw.exists(), "nothing is put in place");
    assert!(!data.mirror_dir().exists());
    let part = part_path(&raw);
    assert_eq!(
        fs::read(&part).expect("partial file kept"),
        bytes[..cut_at],
        "the partial file holds exactly the bytes received"
    );

    server.clear_seen();
    let (fetched, summary) =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
            .expect("second run");
    assert_eq!(fetched.status, FetchStatus::Resumed);
    assert_eq!(fetched.bytes_transferred, (bytes.len() - cut_at) as u64);
    assert_eq!(fs::read(&fetched.path).expect("raw file"), bytes);
    assert!(!part.exists());
    assert_eq!(summary.n_images(), 3);
    let expected_range = format!("bytes={cut_at}-");
    let gets = server.gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some(expected_range.as_str()));
    let etag = format!("\"{}\"", common::sha256_hex(&bytes));
    assert_eq!(
        gets[0].if_range.as_deref(),
        Some(etag.as_str()),
        "the resume is guarded by the ETag of the version the partial file holds"
    );
}

#[test]
fn cut_hub_transfer_of_a_file_that_changed_starts_over() {
    let old_bytes = parquet_bytes(
        ImageColumn::Struct,
        &rows(&names(&["anger", "happy"])),
        None,
    );
    let new_bytes = parquet_bytes(
        ImageColumn::Binary,
        &rows(&names(&["fear", "sadness", "surprise"])),
        None,
    );
    let server = Server::start();
    serve_cut_mirror(&server, &old_bytes, old_bytes.len() / 2);
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let options = server.hub_options(&work.path().join("hf-cache"));
    download_mirror(&data, &MirrorSource::default(), &options, &NoProgress).expect_err("cut");

    // A new commit on the Hub: another ETag, so the partial file is of no use.
    server.hub_dataset_file(REPO, "main", FILE, new_bytes.clone());
    server.clear_seen();
    let (fetched, summary) =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
            .expect("second run");
    assert_eq!(fetched.status, FetchStatus::Downloaded);
    assert_eq!(fetched.bytes_transferred, new_bytes.len() as u64);
    assert_eq!(fs::read(&fetched.path).expect("raw file"), new_bytes);
    assert_eq!(summary.n_images(), 3);
    // The resume asked for the old version's remaining bytes only if the file was unchanged;
    // the server, holding a new version, answered with all of it.
    let old_etag = format!("\"{}\"", common::sha256_hex(&old_bytes));
    let gets = server.gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(gets[0].range.is_some(), "{gets:?}");
    assert_eq!(gets[0].if_range.as_deref(), Some(old_etag.as_str()));
}

/// Downloads the mirror from a server that answers its file with `route`, giving up after
/// 300 ms of silence; the server stays silent for 30 s, so an error at all (rather than a hang)
/// is the timeout working. Returns the error and the data folder.
fn download_from_a_silent_hub(route: Route) -> (Error, DataDir, tempfile::TempDir) {
    let server = Server::start();
    server.route(&format!("/datasets/{REPO}/resolve/main/{FILE}"), route);
    let work = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(work.path().join("data"));
    let options = HubOptions {
        read_timeout: Some(std::time::Duration::from_millis(300)),
        ..server.hub_options(&work.path().join("hf-cache"))
    };
    let err = download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
        .expect_err("the silent transfer is given up");
    assert!(
        err.to_string().to_lowercase().contains("timed out"),
        "{err}"
    );
    (err, data, work)
}

#[test]
fn a_silent_hub_times_out_before_the_transfer() {
    // hf-hub's own HEAD request has no timeout: this one is the crate's.
    let (err, _, _work) = download_from_a_silent_hub(Route::Stall);
    assert!(matches!(err, Error::Offline { .. }), "{err:?}");
}

#[test]
fn a_hub_transfer_that_stalls_mid_body_fails_within_the_read_timeout() {
    let bytes = parquet_bytes(
        ImageColumn::Struct,
        &rows(&names(&["anger", "happy"])),
        None,
    );
    let (err, data, _work) = download_from_a_silent_hub(Route::StallAfter {
        body: bytes.clone(),
        after: 100,
    });
    assert!(matches!(err, Error::Interrupted { .. }), "{err:?}");
    let raw = data.raw_hub_file(&MirrorSource::default().hub_file());
    assert_eq!(
        fs::read(part_path(&raw)).expect("partial file kept"),
        bytes[..100],
        "the bytes before the stall are kept for the next run"
    );
}

#[test]
fn hub_file_that_does_not_match_its_sha256_etag_is_refused() {
    let bytes = parquet_bytes(
        ImageColumn::Struct,
        &rows(&names(&["anger", "happy"])),
        None,
    );
    let (server, _work, data, options) = serve_mirror(bytes.clone());
    let announced = "ab".repeat(32);
    server.set_etag(&format!("/datasets/{REPO}/resolve/main/{FILE}"), &announced);
    let err = download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
        .expect_err("corrupt transfer");
    let Error::ChecksumMismatch {
        expected, moved_to, ..
    } = &err
    else {
        panic!("expected a checksum mismatch, got {err:?}")
    };
    assert_eq!(expected, &announced);
    assert_eq!(fs::read(moved_to).expect("moved aside"), bytes);
    let raw = data.raw_hub_file(&MirrorSource::default().hub_file());
    assert!(!raw.exists() && !part_path(&raw).exists());
}

#[test]
fn offline_takes_a_file_from_the_hugging_face_cache() {
    let bytes = parquet_bytes(
        ImageColumn::Struct,
        &rows(&names(&["anger", "happy", "fear"])),
        None,
    );
    let work = tempfile::tempdir().expect("temp dir");
    // The cache layout that hf-hub and Python's huggingface_hub share.
    let cache = work.path().join("hf-cache");
    let repo_dir = cache.join(format!("datasets--{}", REPO.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(common::COMMIT).join(FILE);
    fs::create_dir_all(snapshot.parent().expect("parent")).expect("snapshot dir");
    fs::write(&snapshot, &bytes).expect("cached file");
    fs::create_dir_all(repo_dir.join("refs")).expect("refs");
    fs::write(repo_dir.join("refs").join("main"), common::COMMIT).expect("ref");

    let data = DataDir::new(work.path().join("data"));
    let mut options = Server::start().hub_options(&cache);
    options.offline = true;
    let (fetched, summary) =
        download_mirror(&data, &MirrorSource::default(), &options, &NoProgress)
            .expect("offline from the cache");
    assert_eq!(fs::read(&fetched.path).expect("raw file"), bytes);
    assert_eq!(summary.n_images(), 3);
}

#[test]
fn drive_file_gone_is_a_404_naming_the_id() {
    let server = Server::start();
    let work = tempfile::tempdir().expect("temp dir");
    let checkpoint = DriveFile::port_checkpoint();
    let options = DriveOptions {
        endpoint: server.base.clone(),
        offline: false,
        ..DriveOptions::default()
    };
    let err = fetch_drive_file(
        &checkpoint,
        &work.path().join("w.tar"),
        &options,
        &NoProgress,
    )
    .expect_err("404");
    assert!(matches!(err, Error::DriveNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&checkpoint.id) && err.to_string().contains("fetch_hub_file"),
        "{err}"
    );
}

#[test]
fn server_without_ranges_gets_the_whole_file_again() {
    let server = Server::start();
    let body = fake_checkpoint(50_000);
    server.route("/uc?id=plain", Route::NoRanges(body.clone()));
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join("plain.tar");
    // A partial file from an earlier run that the server cannot continue.
    fs::write(part_path(&dest), vec![0xAAu8; 20_000]).expect("stale part");
    let file = DriveFile {
        id: "plain".to_string(),
        file_name: "plain.tar".to_string(),
    };
    let options = DriveOptions {
        endpoint: server.base.clone(),
        offline: false,
        ..DriveOptions::default()
    };
    let fetched = fetch_drive_file(&file, &dest, &options, &NoProgress).expect("download");
    assert_eq!(fetched.status, FetchStatus::Downloaded);
    assert_eq!(fs::read(&dest).expect("file"), body);
    // A partial file without a recorded version (ETag) is never continued: nothing says that
    // its bytes belong to the file the server has now.
    assert!(
        server.seen().iter().all(|seen| seen.range.is_none()),
        "{:?}",
        server.seen()
    );
}

fn drive_options(server: &Server) -> DriveOptions {
    DriveOptions {
        endpoint: server.base.clone(),
        ..DriveOptions::default()
    }
}

/// Serves `body` as Drive file `id` without a Content-Length, the first GET cut after
/// `cut_after` bytes (answering range requests when `ranges`); the file, a work folder and
/// where in it to fetch the file.
fn serve_without_length(
    server: &Server,
    id: &str,
    body: &[u8],
    cut_after: usize,
    ranges: bool,
) -> (DriveFile, tempfile::TempDir, PathBuf) {
    server.route(
        &format!("/uc?id={id}"),
        Route::NoLength {
            body: body.to_vec(),
            cut_first_get_after: Some(cut_after),
            ranges,
        },
    );
    let file = DriveFile {
        id: id.into(),
        file_name: format!("{id}.tar"),
    };
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join(&file.file_name);
    (file, work, dest)
}

#[test]
fn a_cut_drive_body_without_a_length_is_never_committed() {
    let server = Server::start();
    let body = fake_checkpoint(300_000);
    let (file, _work, dest) = serve_without_length(&server, "nolength", &body, 120_000, true);
    // The cut looks like a clean end; the server's answer to "what comes after byte 120000?"
    // shows the rest, which is fetched before anything is put in place.
    let fetched = fetch_drive_file(&file, &dest, &drive_options(&server), &NoProgress)
        .expect("completed after asking for the rest");
    assert_eq!(
        fs::read(&dest).expect("file"),
        body,
        "the whole body, not the cut one"
    );
    assert_eq!(fetched.sha256, common::sha256_hex(&body));
    assert!(server
        .seen()
        .iter()
        .any(|seen| seen.range.as_deref() == Some("bytes=120000-")));
    // A later run verifies the complete file.
    let again =
        fetch_drive_file(&file, &dest, &drive_options(&server), &NoProgress).expect("again");
    assert_eq!(again.status, FetchStatus::AlreadyPresent);
}

#[test]
fn a_cut_body_without_a_length_from_a_server_without_ranges_is_not_put_in_place() {
    let server = Server::start();
    // No Content-Length and no ranges: the end of the body proves nothing, and the server
    // cannot be asked whether more follows.
    let (file, _work, dest) =
        serve_without_length(&server, "bare", &fake_checkpoint(10_000), 4_000, false);
    let err = fetch_drive_file(&file, &dest, &drive_options(&server), &NoProgress)
        .expect_err("cannot be confirmed");
    assert!(
        matches!(
            err,
            Error::LengthUnconfirmed {
                received: 4_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!dest.exists(), "the cut body is never put in place");
    assert!(!sidecar_path(&dest).exists(), "nor recorded as verified");
}

#[test]
fn a_resume_of_a_file_that_changed_starts_over() {
    let server = Server::start();
    let checkpoint = DriveFile::port_checkpoint();
    let old = fake_checkpoint(200_000);
    serve_drive_file(&server, &checkpoint.id, old.clone(), Some(50_000));
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join(&checkpoint.file_name);
    fetch_drive_file(&checkpoint, &dest, &drive_options(&server), &NoProgress).expect_err("cut");
    // The file on Drive is replaced: its ETag no longer matches the partial file's If-Range.
    let new: Vec<u8> = old.iter().map(|byte| byte.wrapping_add(1)).collect();
    serve_drive_file(&server, &checkpoint.id, new.clone(), None);
    let fetched =
        fetch_drive_file(&checkpoint, &dest, &drive_options(&server), &NoProgress).expect("new");
    assert_eq!(fetched.status, FetchStatus::Downloaded);
    assert_eq!(
        fs::read(&dest).expect("file"),
        new,
        "never old bytes spliced with new"
    );
}

#[test]
fn a_drive_file_that_changes_after_the_first_download_is_refused() {
    let server = Server::start();
    let checkpoint = DriveFile::port_checkpoint();
    let first = fake_checkpoint(40_000);
    serve_drive_file(&server, &checkpoint.id, first.clone(), None);
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join(&checkpoint.file_name);
    let fetched =
        fetch_drive_file(&checkpoint, &dest, &drive_options(&server), &NoProgress).expect("first");
    let pin = pin_path(&dest);
    assert!(fs::read_to_string(&pin)
        .unwrap()
        .starts_with(&fetched.sha256));

    // The user deletes the file; the server now has other bytes under the same id.
    fs::remove_file(&dest).unwrap();
    fs::remove_file(sidecar_path(&dest)).unwrap();
    let other: Vec<u8> = first.iter().rev().copied().collect();
    serve_drive_file(&server, &checkpoint.id, other, None);
    let err = fetch_drive_file(&checkpoint, &dest, &drive_options(&server), &NoProgress)
        .expect_err("trust on first use");
    assert!(matches!(err, Error::PinMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&fetched.sha256), "{err}");
    assert!(!dest.exists(), "the changed file is moved aside, not used");
}

#[test]
fn a_silent_server_times_out() {
    let server = Server::start();
    server.route("/uc?id=silent", Route::Stall);
    let file = DriveFile {
        id: "silent".into(),
        file_name: "s.tar".into(),
    };
    let work = tempfile::tempdir().expect("temp dir");
    let options = DriveOptions {
        read_timeout: std::time::Duration::from_millis(300),
        ..drive_options(&server)
    };
    let err = fetch_drive_file(&file, &work.path().join("s.tar"), &options, &NoProgress)
        .expect_err("times out");
    assert!(matches!(err, Error::Offline { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("timed out"),
        "{err}"
    );
}

#[test]
fn plain_http_is_refused_except_on_loopback() {
    let work = tempfile::tempdir().expect("temp dir");
    let err = port_checkpoint_refused("http://drive.example.com");
    assert!(matches!(err, Error::Insecure { .. }), "{err:?}");

    let hub = HubOptions {
        endpoint: Some("http://hub.example.com".into()),
        token: Some("hf_secret".into()),
        cache_dir: Some(work.path().join("cache")),
        ..HubOptions::default()
    };
    let err = download_mirror(
        &DataDir::new(work.path().join("data")),
        &MirrorSource::default(),
        &hub,
        &NoProgress,
    )
    .expect_err("http");
    assert!(matches!(err, Error::Insecure { .. }), "{err:?}");
    assert!(err.to_string().contains("https"), "{err}");
}

#[test]
fn hub_options_debug_never_shows_the_token() {
    let options = HubOptions {
        token: Some("hf_VerySecretToken".into()),
        ..HubOptions::default()
    };
    let shown = format!("{options:?}");
    assert!(!shown.contains("hf_VerySecretToken"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn parquet_rows_beyond_the_limit_are_refused() {
    let work = tempfile::tempdir().expect("temp dir");
    let parquet = work.path().join("m.parquet");
    let labels = names(&["happy", "sadness", "fear", "anger", "surprise"]);
    fs::write(
        &parquet,
        parquet_bytes(ImageColumn::Struct, &rows(&labels), None),
    )
    .unwrap();
    let convert = |limits: MirrorLimits| {
        convert_mirror_with_limits(
            &parquet,
            "x",
            &work.path().join("out"),
            &limits,
            &NoProgress,
        )
        .expect_err("beyond the limit")
    };
    let err = convert(MirrorLimits {
        max_rows: 4,
        ..MirrorLimits::default()
    });
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(
        err.to_string().contains("m.parquet") && err.to_string().contains("4 rows"),
        "{err}"
    );

    let err = convert(MirrorLimits {
        max_image_bytes: 3 * png(0).len() as u64,
        ..MirrorLimits::default()
    });
    assert!(err.to_string().contains("bytes of images"), "{err}");
    assert!(!work.path().join("out").exists());
}

#[test]
fn a_mirror_image_beyond_the_side_limit_is_refused_from_its_header() {
    let work = tempfile::tempdir().expect("temp dir");
    let parquet = work.path().join("m.parquet");
    let mut mirror_rows = rows(&names(&["happy", "sadness"]));
    mirror_rows[1].image = common::png_header(9_000, 9_000);
    fs::write(
        &parquet,
        parquet_bytes(ImageColumn::Binary, &mirror_rows, None),
    )
    .unwrap();
    let err = convert_mirror(&parquet, "x", &work.path().join("out"), &NoProgress)
        .expect_err("too large");
    assert!(matches!(err, Error::BadImage { row: 1, .. }), "{err:?}");
    assert!(
        err.to_string().contains("9000x9000") && err.to_string().contains("8192"),
        "{err}"
    );
}
