//! `--from`: the official CK+ release as zips or folders, and inputs that are not CK+.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use dexpression_download::testing::{import_ckplus_with_limits, ImportLimits, IMPORT_MARKER};
use dexpression_download::{import_ckplus, Error, NoProgress};

/// Files of a tiny CK+ release: (path inside the release, contents).
fn tiny_release() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (subject, sequence, emotion) in [
        ("S005", "001", "3.0000000e+00"),
        ("S010", "004", "1.0000000e+00"),
    ] {
        for frame in 1..=4 {
            let stem = format!("{subject}_{sequence}_{frame:08}");
            files.push((
                format!("cohn-kanade-images/{subject}/{sequence}/{stem}.png"),
                common::png(frame as u8),
            ));
            files.push((
                format!("Landmarks/{subject}/{sequence}/{stem}_landmarks.txt"),
                b"   1.0e+02   2.0e+02\n".to_vec(),
            ));
        }
        let last = format!("{subject}_{sequence}_{:08}", 4);
        files.push((
            format!("Emotion/{subject}/{sequence}/{last}_emotion.txt"),
            format!("   {emotion}\n").into_bytes(),
        ));
    }
    files
}

fn write_zip(path: &Path, entries: &[(String, Vec<u8>)]) {
    let file = fs::File::create(path).expect("create zip");
    let mut writer = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        writer
            .start_file(name.as_str(), options)
            .expect("zip entry");
        writer.write_all(bytes).expect("zip bytes");
    }
    writer.finish().expect("finish zip");
}

/// The release split as the official archives are, with a wrapper folder and macOS metadata.
fn official_zips(dir: &Path) {
    let files = tiny_release();
    let part = |prefix: &str, wrapper: &str| -> Vec<(String, Vec<u8>)> {
        let mut entries: Vec<(String, Vec<u8>)> = files
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, bytes)| (format!("{wrapper}{name}"), bytes.clone()))
            .collect();
        entries.push((
            format!("__MACOSX/{wrapper}{prefix}/._junk"),
            b"mac".to_vec(),
        ));
        entries
    };
    write_zip(
        &dir.join("extended-cohn-kanade-images.zip"),
        &part("cohn-kanade-images", "CK+/"),
    );
    write_zip(&dir.join("Emotion_labels.zip"), &part("Emotion", ""));
    write_zip(&dir.join("Landmarks.zip"), &part("Landmarks", ""));
}

/// The tiny release extracted into `work/CK+`.
fn extracted_release(work: &Path) -> PathBuf {
    let extracted = work.join("CK+");
    for (name, bytes) in tiny_release() {
        let path = extracted.join(&name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, bytes).expect("write");
    }
    extracted
}

/// The tiny release's zips in `work/downloads`.
fn official_zips_in(work: &Path) -> PathBuf {
    let zips = work.join("downloads");
    fs::create_dir_all(&zips).expect("mkdir");
    official_zips(&zips);
    zips
}

fn check_release_in(dest: &Path) {
    for (name, bytes) in tiny_release() {
        assert_eq!(
            fs::read(dest.join(&name)).unwrap_or_default(),
            bytes,
            "{name}"
        );
    }
    assert!(!dest.join("__MACOSX").exists());
}

#[test]
fn official_zips_unpack_into_the_official_layout() {
    let work = tempfile::tempdir().expect("temp dir");
    let zips = official_zips_in(work.path());
    let dest = work.path().join("data").join("ckplus");
    let summary = import_ckplus(&zips, &dest, &NoProgress).expect("import");
    assert!(!summary.already_imported);
    assert_eq!(summary.n_files_per_part, [8, 2, 8, 0]);
    check_release_in(&dest);

    let again = import_ckplus(&zips, &dest, &NoProgress).expect("second import");
    assert!(again.already_imported);
    assert_eq!(again.n_files_per_part, [8, 2, 8, 0]);
}

#[test]
fn extracted_folder_imports_too() {
    let work = tempfile::tempdir().expect("temp dir");
    let extracted = extracted_release(work.path());
    let dest = work.path().join("ckplus");
    import_ckplus(&extracted, &dest, &NoProgress).expect("import");
    check_release_in(&dest);
}

#[test]
fn a_zip_that_is_not_ckplus_is_refused_with_its_entries() {
    let work = tempfile::tempdir().expect("temp dir");
    let zip = work.path().join("holiday.zip");
    write_zip(
        &zip,
        &[
            ("photos/beach.jpg".to_string(), b"jpg".to_vec()),
            ("notes.txt".to_string(), b"hi".to_vec()),
        ],
    );
    let dest = work.path().join("ckplus");
    let err = import_ckplus(&zip, &dest, &NoProgress).expect_err("not CK+");
    assert!(matches!(err, Error::NotCkPlus { .. }), "{err:?}");
    assert!(err.to_string().contains("photos/beach.jpg"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn a_file_that_is_not_a_zip_is_refused() {
    let work = tempfile::tempdir().expect("temp dir");
    let fake = work.path().join("images.zip");
    fs::write(&fake, b"this is not a zip archive").expect("write");
    let err =
        import_ckplus(&fake, &work.path().join("ckplus"), &NoProgress).expect_err("not a zip");
    assert!(matches!(err, Error::Zip { .. }), "{err:?}");
}

#[test]
fn images_without_labels_are_incomplete() {
    let work = tempfile::tempdir().expect("temp dir");
    let zips = work.path().join("downloads");
    fs::create_dir_all(&zips).expect("mkdir");
    let images: Vec<(String, Vec<u8>)> = tiny_release()
        .into_iter()
        .filter(|(name, _)| name.starts_with("cohn"))
        .collect();
    write_zip(&zips.join("extended-cohn-kanade-images.zip"), &images);
    let dest = work.path().join("ckplus");
    let err = import_ckplus(&zips, &dest, &NoProgress).expect_err("no labels");
    assert!(matches!(err, Error::IncompleteCkPlus { .. }), "{err:?}");
    assert!(err.to_string().contains("Emotion_labels.zip"), "{err}");
    assert!(!dest.exists(), "nothing half-imported is left");
}

#[test]
fn giving_the_part_folders_themselves_works() {
    let work = tempfile::tempdir().expect("temp dir");
    let extracted = extracted_release(work.path());
    let dest = work.path().join("ckplus");
    // Only the labels: recognised as CK+, but the images are missing.
    let err = import_ckplus(&extracted.join("Emotion"), &dest, &NoProgress).expect_err("no images");
    assert!(matches!(err, Error::IncompleteCkPlus { .. }), "{err:?}");
    assert!(err.to_string().contains("cohn-kanade-images/"), "{err}");

    import_ckplus(&extracted, &dest, &NoProgress).expect("import");
    let again =
        import_ckplus(&dest, &dest, &NoProgress).expect("importing the destination onto itself");
    assert!(again.already_imported);
    check_release_in(&dest);
}

#[test]
fn a_source_inside_the_destination_is_refused_and_left_intact() {
    // The user keeps the official zips in data/ckplus/ and gives one of them to --from: the
    // import would replace data/ckplus/ and delete them.
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join("data").join("ckplus");
    fs::create_dir_all(&dest).expect("mkdir");
    official_zips(&dest);
    let source = dest.join("extended-cohn-kanade-images.zip");
    let before = fs::read(&source).expect("zip");
    let err = import_ckplus(&source, &dest, &NoProgress).expect_err("refused");
    assert!(
        matches!(err, Error::SourceInsideDestination { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("would delete it"), "{err}");
    assert_eq!(fs::read(&source).expect("still there"), before);
    assert!(dest.join("Emotion_labels.zip").is_file());
}

#[test]
fn a_destination_holding_the_users_files_is_not_replaced() {
    let work = tempfile::tempdir().expect("temp dir");
    let zips = official_zips_in(work.path());
    let dest = work.path().join("ckplus");
    fs::create_dir_all(&dest).expect("mkdir");
    fs::write(dest.join("notes.txt"), b"mine").expect("user file");
    let err = import_ckplus(&zips, &dest, &NoProgress).expect_err("refused");
    assert!(matches!(err, Error::DestinationNotOurs { .. }), "{err:?}");
    assert!(err.to_string().contains(IMPORT_MARKER), "{err}");
    assert_eq!(fs::read(dest.join("notes.txt")).expect("kept"), b"mine");

    // An earlier import (it carries the marker) is replaced as before.
    fs::remove_file(dest.join("notes.txt")).expect("rm");
    import_ckplus(&zips, &dest, &NoProgress).expect("first import");
    fs::remove_file(zips.join("Landmarks.zip")).expect("another input");
    let again = import_ckplus(&zips, &dest, &NoProgress).expect("re-import over our own");
    assert!(!again.already_imported);
    check_release_in_without_landmarks(&dest);
}

fn check_release_in_without_landmarks(dest: &Path) {
    for (name, bytes) in tiny_release() {
        if name.starts_with("Landmarks") {
            assert!(
                !dest.join(&name).exists(),
                "{name} came from the replaced import"
            );
        } else {
            assert_eq!(
                fs::read(dest.join(&name)).unwrap_or_default(),
                bytes,
                "{name}"
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_in_the_source_folder_is_an_error_not_an_endless_walk() {
    let work = tempfile::tempdir().expect("temp dir");
    let extracted = extracted_release(work.path());
    let link = extracted.join("Emotion").join("S005").join("back-to-top");
    std::os::unix::fs::symlink(&extracted, &link).expect("symlink");
    let dest = work.path().join("ckplus");
    let err = import_ckplus(&extracted, &dest, &NoProgress).expect_err("loop");
    assert!(matches!(err, Error::SymlinkLoop { .. }), "{err:?}");
    assert!(err.to_string().contains("back-to-top"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn an_archive_that_unpacks_beyond_the_limit_is_refused() {
    let work = tempfile::tempdir().expect("temp dir");
    let zips = official_zips_in(work.path());
    // Zeros deflate to almost nothing: a small archive that unpacks to 4 MB.
    write_zip(
        &zips.join("extended-cohn-kanade-images.zip"),
        &[(
            "cohn-kanade-images/S005/001/S005_001_00000001.png".to_string(),
            vec![0u8; 4 << 20],
        )],
    );
    let dest = work.path().join("ckplus");
    let limits = ImportLimits {
        max_total_bytes: 1 << 20,
        ..ImportLimits::default()
    };
    let err = import_ckplus_with_limits(&zips, &dest, &limits, &NoProgress).expect_err("bomb");
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("1048576 bytes"), "{err}");
    assert!(!dest.exists());

    let limits = ImportLimits {
        max_zip_entries: 2,
        ..ImportLimits::default()
    };
    let err = import_ckplus_with_limits(&zips, &dest, &limits, &NoProgress).expect_err("entries");
    assert!(err.to_string().contains("2 zip entries"), "{err}");
}
