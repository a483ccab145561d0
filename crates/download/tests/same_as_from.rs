//! Issue 4's "done when": the mirror downloaded from a (local) Hub and the official release
//! imported with `--from` give the same prepared dataset when they hold the same faces.
//!
//! A synthetic CK+ release is zipped as the official archives and imported; its prepared 48x48
//! crops are then written, with labels and frame stems, into a mirror-shaped parquet file that
//! the local server hands out. Both routes go through the dataset crate's `prepare`.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::{write_mirror_parquet, ImageColumn, Label, MirrorRow, Server};
use dexpression_dataset::{prepare, synth, Dataset, PrepareOptions};
use dexpression_download::{download_mirror, import_ckplus, DataDir, MirrorSource, NoProgress};

/// Zips every file under `root/<part>` into `zip_path`, as `<part>/...`.
fn zip_part(root: &Path, part: &str, zip_path: &Path) {
    let mut writer = zip::ZipWriter::new(fs::File::create(zip_path).expect("create zip"));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut pending = vec![root.join(part)];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .expect("read dir")
            .map(|entry| entry.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            writer.start_file(name, options).expect("zip entry");
            writer
                .write_all(&fs::read(&path).expect("read file"))
                .expect("zip bytes");
        }
    }
    writer.finish().expect("finish zip");
}

fn png_of(pixels: &[u8], size: usize) -> Vec<u8> {
    let image = image::GrayImage::from_raw(size as u32, size as u32, pixels.to_vec())
        .expect("pixels fit the size");
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode PNG");
    bytes
}

/// What must agree: everything but where a sample came from and how it was cropped.
fn comparable(dataset: &Dataset) -> Vec<(String, String, u32, usize, Vec<u8>)> {
    let mut samples: Vec<_> = dataset
        .samples
        .iter()
        .map(|sample| {
            (
                sample.subject.clone(),
                sample.sequence.clone(),
                sample.frame,
                sample.label,
                sample.pixels.clone(),
            )
        })
        .collect();
    samples.sort();
    samples
}

#[test]
fn mirror_download_prepares_the_same_dataset_as_from() {
    let work = tempfile::tempdir().expect("temp dir");
    let release = work.path().join("release");
    synth::generate(
        &release,
        &synth::SynthOptions {
            subjects: 3,
            ..Default::default()
        },
    )
    .expect("synthetic CK+");
    let zips = work.path().join("zips");
    fs::create_dir_all(&zips).expect("mkdir");
    zip_part(
        &release,
        "cohn-kanade-images",
        &zips.join("extended-cohn-kanade-images.zip"),
    );
    zip_part(&release, "Emotion", &zips.join("Emotion_labels.zip"));
    zip_part(&release, "Landmarks", &zips.join("Landmarks.zip"));

    let data = DataDir::new(work.path().join("data"));
    let options = PrepareOptions {
        image_size: 48,
        ..Default::default()
    };
    import_ckplus(&zips, &data.ckplus_dir(), &NoProgress).expect("--from import");
    let from_release = prepare(
        &data.ckplus_dir(),
        &work.path().join("cache-from"),
        &options,
        &|_| {},
    )
    .expect("prepare --from");
    assert!(!from_release.samples.is_empty());

    // The mirror holds the same 48x48 faces, lower-case class names and CK+ frame stems.
    let rows: Vec<MirrorRow> = from_release
        .samples
        .iter()
        .map(|sample| MirrorRow {
            image: png_of(&sample.pixels, from_release.image_size),
            label: Label::Name(
                from_release.class_names[sample.label]
                    .to_lowercase()
                    .replace("happiness", "happy"),
            ),
            file: format!("{}_{:08}", sample.sequence, sample.frame),
        })
        .collect();
    let parquet = work.path().join("mirror.parquet");
    write_mirror_parquet(&parquet, ImageColumn::Struct, &rows, None);
    let server = Server::start();
    server.hub_dataset_file(
        "AlirezaF138/ckplus-dataset",
        "main",
        "data/train-00000-of-00001.parquet",
        fs::read(&parquet).expect("parquet"),
    );
    let hub = server.hub_options(&work.path().join("hf-cache"));
    let (_, summary) = download_mirror(&data, &MirrorSource::default(), &hub, &NoProgress)
        .expect("mirror download");
    assert_eq!(summary.n_images(), from_release.samples.len());
    let from_mirror = prepare(
        &data.mirror_dir(),
        &work.path().join("cache-mirror"),
        &options,
        &|_| {},
    )
    .expect("prepare mirror");

    assert_eq!(from_mirror.class_names, from_release.class_names);
    assert_eq!(from_mirror.image_size, from_release.image_size);
    assert_eq!(comparable(&from_mirror), comparable(&from_release));
}
