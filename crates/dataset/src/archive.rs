//! The official CK+ zip archives: recognised in the source folder and extracted once into the
//! cache folder, after which they are read like the extracted release.

use crate::layout::{file_name, sorted_entries};
use crate::{Error, Progress, Result, Stage};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The image archive of the official release.
const IMAGES_ZIP: &str = "extended-cohn-kanade-images.zip";
/// The emotion label archive.
const EMOTION_ZIP: &str = "Emotion_labels.zip";
/// The landmark archive (optional: without it faces fall back to the whole image).
const LANDMARKS_ZIP: &str = "Landmarks.zip";
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
    let extracted_present = entries
        .iter()
        .any(|entry| entry.is_dir() && file_name(entry).eq_ignore_ascii_case("cohn-kanade-images"));
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
    progress: &(dyn Fn(Progress) + Sync),
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
    let result = extract_all(archives, &temporary, progress).and_then(|()| {
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
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<()> {
    let mut opened = Vec::new();
    for path in &archives.paths {
        let file = fs::File::open(path).map_err(|error| Error::io(path, error))?;
        let archive =
            zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|error| Error::Zip {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        opened.push((path, archive));
    }
    let total: usize = opened.iter().map(|(_, archive)| archive.len()).sum();
    let mut done = 0;
    for (path, archive) in &mut opened {
        let zip_error = |error: &dyn std::fmt::Display| Error::Zip {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        for entry_idx in 0..archive.len() {
            let mut entry = archive.by_index(entry_idx).map_err(|e| zip_error(&e))?;
            // `enclosed_name` refuses absolute paths and `..`, so an archive cannot write
            // outside the destination.
            let Some(relative) = entry.enclosed_name() else {
                continue;
            };
            let output = destination.join(relative);
            if entry.is_dir() {
                fs::create_dir_all(&output).map_err(|error| Error::io(&output, error))?;
            } else {
                if let Some(parent) = output.parent() {
                    fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
                }
                let mut file =
                    fs::File::create(&output).map_err(|error| Error::io(&output, error))?;
                std::io::copy(&mut entry, &mut file).map_err(|e| zip_error(&e))?;
            }
            done += 1;
            if done % 64 == 0 || done == total {
                progress(Progress {
                    stage: Stage::Extracting,
                    done,
                    total,
                });
            }
        }
    }
    Ok(())
}
