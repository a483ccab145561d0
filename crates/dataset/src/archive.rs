//! The official CK+ zip archives: recognised in the source folder and extracted once into the
//! cache folder, after which they are read like the extracted release.

use crate::layout::{file_name, sorted_entries};
use crate::unzip::{ByteBudget, OpenZip, ZipLimits};
use crate::{Error, Progress, Result, Stage, Step};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

use crate::layout::ckplus_release::{self, EMOTION_ZIP, IMAGES_ZIP, LANDMARKS_ZIP};
/// Written last into an extraction folder, so a half-extracted one is never used.
const COMPLETE_MARKER: &str = ".extracted";

/// The archives found in a source folder.
#[derive(Debug)]
pub(crate) struct Archives {
    paths: Vec<PathBuf>,
}

/// Finds the official archives directly inside `source`. `None` when they are absent or when
/// the folder also holds the extracted images (which are then read directly).
pub(crate) fn official_zips(source: &Path) -> Result<Option<Archives>> {
    if !source.is_dir() {
        return Ok(None);
    }
    let entries = sorted_entries(source)?;
    let find = |wanted: &str| {
        entries
            .iter()
            .find(|entry| entry.is_file() && file_name(entry).eq_ignore_ascii_case(wanted))
            .cloned()
    };
    let extracted_present = entries.iter().any(|entry| {
        entry.is_dir() && file_name(entry).eq_ignore_ascii_case(ckplus_release::IMAGES)
    });
    let (Some(images), Some(emotion)) = (find(IMAGES_ZIP), find(EMOTION_ZIP)) else {
        return Ok(None);
    };
    if extracted_present {
        return Ok(None);
    }
    let mut paths = vec![images, emotion];
    paths.extend(find(LANDMARKS_ZIP));
    Ok(Some(Archives { paths }))
}

/// Extracts the archives into `cache_dir/extracted-<hash>/` unless a complete extraction of
/// the same archives (same names and sizes) is already there; returns that folder.
pub(crate) fn extract(
    archives: &Archives,
    cache_dir: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    extract_with_limits(archives, cache_dir, &ZipLimits::default(), progress)
}

/// [`extract`] within other limits.
pub(crate) fn extract_with_limits(
    archives: &Archives,
    cache_dir: &Path,
    limits: &ZipLimits,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let mut hasher = Sha256::new();
    for path in &archives.paths {
        let size = fs::metadata(path)
            .map_err(|error| Error::io(path, error))?
            .len();
        hasher.update(format!("{}\t{size}\n", file_name(path)).as_bytes());
    }
    let id = hex::encode(hasher.finalize());
    let target = cache_dir.join(format!("extracted-{}", &id[..16]));
    if target.join(COMPLETE_MARKER).is_file() {
        return Ok(target);
    }
    fs::create_dir_all(cache_dir).map_err(|error| Error::io(cache_dir, error))?;
    let temporary = cache_dir.join(format!(".tmp-extract-{}-{}", &id[..16], std::process::id()));
    if temporary.exists() {
        fs::remove_dir_all(&temporary).map_err(|error| Error::io(&temporary, error))?;
    }
    fs::create_dir_all(&temporary).map_err(|error| Error::io(&temporary, error))?;
    let result = extract_all(archives, &temporary, limits, progress).and_then(|()| {
        let marker = temporary.join(COMPLETE_MARKER);
        fs::write(&marker, id.as_bytes()).map_err(|error| Error::io(&marker, error))?;
        if target.exists() {
            fs::remove_dir_all(&target).map_err(|error| Error::io(&target, error))?;
        }
        fs::rename(&temporary, &target).map_err(|error| Error::io(&target, error))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&temporary);
    }
    result.map(|()| target)
}

fn extract_all(
    archives: &Archives,
    destination: &Path,
    limits: &ZipLimits,
    progress: &dyn Progress,
) -> Result<()> {
    // Every archive is opened (and its entries counted) before anything is written.
    let mut opened = archives
        .paths
        .iter()
        .map(|path| OpenZip::open(path, limits.max_entries))
        .collect::<Result<Vec<_>>>()?;
    let mut budget = ByteBudget::new(limits.max_bytes);
    let total: usize = opened.iter().map(OpenZip::len).sum();
    let mut done = 0;
    let mut on_entry = |_: Option<&Path>| {
        done += 1;
        if done % 64 == 0 || done == total {
            progress.step(Step {
                stage: Stage::Extracting,
                done,
                total,
            });
        }
    };
    for archive in &mut opened {
        archive.extract(
            destination,
            &|path| Some(path.to_path_buf()),
            &mut budget,
            &mut on_entry,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unzip::tests::write_zip;

    fn archives(dir: &Path, images: &[(&str, Vec<u8>)]) -> Archives {
        write_zip(&dir.join(IMAGES_ZIP), images);
        write_zip(
            &dir.join(EMOTION_ZIP),
            &[(
                "Emotion/S005/001/S005_001_00000011_emotion.txt",
                b"3.0".to_vec(),
            )],
        );
        official_zips(dir)
            .unwrap()
            .expect("both archives are found")
    }

    #[test]
    fn extraction_stops_at_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        // Zeros deflate to almost nothing: a small archive that unpacks to 3 MB.
        let found = archives(
            dir.path(),
            &[("cohn-kanade-images/S005/001/a.png", vec![0u8; 3 << 20])],
        );
        let limits = ZipLimits {
            max_entries: 100,
            max_bytes: 1 << 20,
        };
        let err =
            extract_with_limits(&found, &dir.path().join("cache"), &limits, &|_| {}).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(IMAGES_ZIP)
                && message.contains("more than the limit of 1048576 bytes"),
            "{message}"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("cache")).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "the partial extraction is removed: {leftovers:?}"
        );
    }

    #[test]
    fn extraction_refuses_too_many_entries() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| (format!("cohn-kanade-images/S005/001/{i}.png"), vec![1u8]))
            .collect();
        let entries: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        let found = archives(dir.path(), &entries);
        let limits = ZipLimits {
            max_entries: 4,
            max_bytes: 1 << 20,
        };
        let err =
            extract_with_limits(&found, &dir.path().join("cache"), &limits, &|_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("lists 5 entries, more than the limit of 4"),
            "{err}"
        );
    }

    #[test]
    fn extraction_within_the_limits_writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let found = archives(
            dir.path(),
            &[("cohn-kanade-images/S005/001/a.png", vec![9u8; 1000])],
        );
        let limits = ZipLimits {
            max_entries: 2,
            max_bytes: 1003,
        };
        let target =
            extract_with_limits(&found, &dir.path().join("cache"), &limits, &|_| {}).unwrap();
        assert_eq!(
            fs::read(target.join("cohn-kanade-images/S005/001/a.png")).unwrap(),
            vec![9u8; 1000]
        );
    }
}
