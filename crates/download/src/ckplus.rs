//! Import of the official CK+ release from disk (`--from PATH`): the zips a user obtained under
//! the CK+ licence, a folder holding them, or the folder they were extracted into.
//!
//! Only entries under the release's own top-level folders are kept (`cohn-kanade-images/`,
//! `Emotion/`, `Landmarks/`, `FACS/`), wherever they sit inside the archive, so a wrapper folder
//! or macOS metadata does not matter. Nothing goes online.

use std::fs;
use std::path::{Component, Path, PathBuf};

use dexpression_dataset::unzip::{ByteBudget, OpenZip};

use crate::error::{Error, Result};
use crate::mirror::sibling;
use crate::progress::{Progress, Unit};

/// The top-level folders of the official release, as the dataset crate expects them.
pub const CKPLUS_PARTS: [&str; 4] = dexpression_dataset::ckplus_release::PARTS;

/// The file in the import folder recording what it was imported from.
pub const IMPORT_MARKER: &str = ".dexpression-import";

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The CK+ folder, with `cohn-kanade-images/`, `Emotion/`, ... inside.
    pub dest: PathBuf,
    /// Files written per part, in [`CKPLUS_PARTS`] order.
    pub n_files_per_part: [usize; 4],
    /// Whether the folder already held this import and was left as it was.
    pub already_imported: bool,
}

/// Limits on what an import reads, against archives crafted (or damaged) to exhaust the disk or
/// never finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// The most entries one zip may list (the CK+ image archive has about 11,000).
    pub max_zip_entries: usize,
    /// The most bytes an import may unpack or copy in all (CK+ is about 2 GB).
    pub max_total_bytes: u64,
    /// The most folders deep a `--from` folder is walked.
    pub max_depth: usize,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_zip_entries: 200_000,
            max_total_bytes: 16 << 30,
            max_depth: 64,
        }
    }
}

/// Imports the CK+ release from `from` (a zip, or a folder of zips and/or extracted files) into
/// `dest`, within the default `ImportLimits`.
///
/// The files are unpacked beside `dest` and renamed into place only when the images and the
/// emotion labels are both there. A zip with nothing from CK+ is an error naming its entries.
///
/// The user's files are never deleted: a `from` inside `dest` is refused (replacing `dest` would
/// delete it), and an existing `dest` is replaced only when an earlier import made it (it holds
/// `IMPORT_MARKER`); otherwise the import stops and says so. Symbolic links in a `from` folder
/// are followed, but a link back into a folder being walked is an error, not an endless walk.
pub fn import_ckplus(from: &Path, dest: &Path, progress: &dyn Progress) -> Result<ImportSummary> {
    import_ckplus_with_limits(from, dest, &ImportLimits::default(), progress)
}

/// [`import_ckplus`] with other limits.
pub fn import_ckplus_with_limits(
    from: &Path,
    dest: &Path,
    limits: &ImportLimits,
    progress: &dyn Progress,
) -> Result<ImportSummary> {
    let from_canonical = from
        .canonicalize()
        .map_err(|err| Error::io("reading", from, err))?;
    if let Ok(dest_canonical) = dest.canonicalize() {
        if from_canonical == dest_canonical {
            // Already in place: nothing to copy onto itself.
            return Ok(ImportSummary {
                dest: dest.to_path_buf(),
                n_files_per_part: count_part_files(dest),
                already_imported: true,
            });
        }
        if from_canonical.starts_with(&dest_canonical) {
            return Err(Error::SourceInsideDestination {
                from: from.to_path_buf(),
                dest: dest.to_path_buf(),
            });
        }
    }
    if dest.exists() && !dest.join(IMPORT_MARKER).is_file() && !is_empty_dir(dest) {
        return Err(Error::DestinationNotOurs {
            dest: dest.to_path_buf(),
        });
    }
    let sources = list_sources(from, dest, limits)?;
    let fingerprint = fingerprint(&sources)?;
    let marker = dest.join(IMPORT_MARKER);
    if fs::read_to_string(&marker).is_ok_and(|recorded| recorded == fingerprint) {
        return Ok(ImportSummary {
            dest: dest.to_path_buf(),
            n_files_per_part: count_part_files(dest),
            already_imported: true,
        });
    }

    let staging = sibling(dest, ".importing");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|err| Error::io("removing", &staging, err))?;
    }
    fs::create_dir_all(&staging).map_err(|err| Error::io("creating", &staging, err))?;
    let mut n_files_per_part = [0usize; 4];
    let mut budget = ByteBudget::new(limits.max_total_bytes);
    for source in &sources {
        match source {
            Source::Zip(zip) => {
                let unpacked = unpack_zip(
                    zip,
                    &staging,
                    &mut n_files_per_part,
                    limits,
                    &mut budget,
                    progress,
                );
                let n_kept = match unpacked {
                    Ok(n_kept) => n_kept,
                    Err(err) => {
                        let _ = fs::remove_dir_all(&staging);
                        return Err(err);
                    }
                };
                if n_kept == 0 {
                    // A lone zip must be CK+; in a folder, other archives are passed over.
                    if from.is_file() {
                        let _ = fs::remove_dir_all(&staging);
                        let found = OpenZip::open(zip, usize::MAX)
                            .map_err(|err| from_extraction(zip, err))?
                            .first_names(5);
                        return Err(Error::NotCkPlus {
                            path: zip.clone(),
                            found,
                        });
                    }
                    progress.note(&format!(
                        "{} holds nothing from CK+; skipped",
                        zip.display()
                    ));
                }
            }
            Source::File { path, relative } => {
                if let Some((part_idx, inside)) = ckplus_relative(relative) {
                    let target = staging.join(&inside);
                    create_parent(&target)?;
                    let n_bytes =
                        fs::copy(path, &target).map_err(|err| Error::io("copying", path, err))?;
                    if !budget.spend(n_bytes) {
                        let _ = fs::remove_dir_all(&staging);
                        return Err(Error::TooLarge {
                            path: from.to_path_buf(),
                            limit: format!("{} bytes in all", limits.max_total_bytes),
                        });
                    }
                    n_files_per_part[part_idx] += 1;
                }
            }
        }
    }

    let mut missing = Vec::new();
    if !has_file_with_suffix(&staging.join(CKPLUS_PARTS[0]), ".png") {
        missing.push(format!("{}/ (the PNG frames)", CKPLUS_PARTS[0]));
    }
    if !has_file_with_suffix(&staging.join(CKPLUS_PARTS[1]), "_emotion.txt") {
        missing.push(format!("{}/ (the *_emotion.txt labels)", CKPLUS_PARTS[1]));
    }
    if !missing.is_empty() {
        let _ = fs::remove_dir_all(&staging);
        if n_files_per_part.iter().all(|&n_files| n_files == 0) {
            return Err(Error::NotCkPlus {
                path: from.to_path_buf(),
                found: first_entries(&sources),
            });
        }
        return Err(Error::IncompleteCkPlus {
            from: from.to_path_buf(),
            missing,
        });
    }

    fs::write(staging.join(IMPORT_MARKER), &fingerprint)
        .map_err(|err| Error::io("writing", staging.join(IMPORT_MARKER), err))?;
    // Checked again just before: only an earlier import (or an empty folder) is replaced.
    if dest.exists() {
        if !dest.join(IMPORT_MARKER).is_file() && !is_empty_dir(dest) {
            let _ = fs::remove_dir_all(&staging);
            return Err(Error::DestinationNotOurs {
                dest: dest.to_path_buf(),
            });
        }
        fs::remove_dir_all(dest).map_err(|err| Error::io("replacing", dest, err))?;
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))?;
    }
    fs::rename(&staging, dest).map_err(|err| Error::io("renaming into place", dest, err))?;
    Ok(ImportSummary {
        dest: dest.to_path_buf(),
        n_files_per_part,
        already_imported: false,
    })
}

enum Source {
    Zip(PathBuf),
    File { path: PathBuf, relative: PathBuf },
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Lists the files under `from`, following symbolic links but never into a folder that is
/// already being walked (a loop), nor into `dest` or its staging folder.
fn list_sources(from: &Path, dest: &Path, limits: &ImportLimits) -> Result<Vec<Source>> {
    let meta = fs::metadata(from).map_err(|err| Error::io("reading", from, err))?;
    if meta.is_file() {
        return Ok(vec![Source::Zip(from.to_path_buf())]);
    }
    let skipped: Vec<PathBuf> = [dest.to_path_buf(), sibling(dest, ".importing")]
        .iter()
        .filter_map(|path| path.canonicalize().ok())
        .collect();
    let mut sources = Vec::new();
    // Each pending folder carries the canonical paths of the folders above it, so that a link
    // pointing back up is recognised as a loop.
    let root = from
        .canonicalize()
        .map_err(|err| Error::io("reading", from, err))?;
    let mut pending = vec![(from.to_path_buf(), vec![root])];
    while let Some((dir, ancestors)) = pending.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|err| Error::io("reading", &dir, err))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                let canonical = path
                    .canonicalize()
                    .map_err(|err| Error::io("reading", &path, err))?;
                if ancestors.contains(&canonical) {
                    return Err(Error::SymlinkLoop {
                        link: path,
                        target: canonical,
                    });
                }
                if skipped.contains(&canonical) {
                    continue;
                }
                if ancestors.len() >= limits.max_depth {
                    return Err(Error::TooLarge {
                        path,
                        limit: format!("{} folders deep", limits.max_depth),
                    });
                }
                let mut below = ancestors.clone();
                below.push(canonical);
                pending.push((path, below));
            } else if path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("zip"))
            {
                sources.push(Source::Zip(path));
            } else {
                // Relative to the folder's parent, so that giving `.../Emotion` itself keeps
                // the `Emotion/` that marks its files.
                let base = from.parent().unwrap_or(from);
                let relative = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
                sources.push(Source::File { path, relative });
            }
        }
    }
    Ok(sources)
}

/// Names, sizes and modification times of the inputs: a cheap stand-in for their content that
/// tells a repeated import of the same files from a new one.
fn fingerprint(sources: &[Source]) -> Result<String> {
    let mut lines = Vec::new();
    for source in sources {
        let path = match source {
            Source::Zip(path) | Source::File { path, .. } => path,
        };
        let meta = fs::metadata(path).map_err(|err| Error::io("reading", path, err))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |elapsed| elapsed.as_secs());
        lines.push(format!("{}\t{}\t{modified}", path.display(), meta.len()));
    }
    Ok(lines.join("\n") + "\n")
}

/// Unpacks the CK+ entries of `zip_path` into `staging` (see [`ckplus_relative`]), counting
/// them per part; returns how many it kept.
fn unpack_zip(
    zip_path: &Path,
    staging: &Path,
    n_files_per_part: &mut [usize; 4],
    limits: &ImportLimits,
    budget: &mut ByteBudget,
    progress: &dyn Progress,
) -> Result<usize> {
    let mut archive = OpenZip::open(zip_path, limits.max_zip_entries)
        .map_err(|err| from_extraction(zip_path, err))?;
    let label = zip_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress.begin(
        &format!("unpacking {label}"),
        Some(archive.len() as u64),
        Unit::Items,
    );
    let mut n_entries_read = 0u64;
    let mut on_entry = |written: Option<&Path>| {
        n_entries_read += 1;
        progress.set_position(n_entries_read);
        if let Some(part_idx) = written.and_then(part_of) {
            n_files_per_part[part_idx] += 1;
        }
    };
    let rename = |path: &Path| ckplus_relative(path).map(|(_, inside)| inside);
    let unpacked = archive.extract(staging, &rename, budget, &mut on_entry);
    progress.end();
    unpacked.map_err(|err| from_extraction(zip_path, err))
}

/// The dataset crate's extraction errors as this crate's, with the limit named as
/// `ImportLimits` names it.
fn from_extraction(zip_path: &Path, err: dexpression_dataset::Error) -> Error {
    use dexpression_dataset::Error as Extraction;
    match err {
        Extraction::ZipEntries {
            path,
            listed,
            limit,
        } => Error::TooLarge {
            path,
            limit: format!("{limit} zip entries (it lists {listed})"),
        },
        Extraction::ZipBytes { path, limit, .. } => Error::TooLarge {
            path,
            limit: format!("{limit} bytes unpacked in all"),
        },
        Extraction::Zip { path, reason } => Error::Zip { path, reason },
        Extraction::Io { path, source } => {
            let action = if path == zip_path {
                "reading"
            } else {
                "unpacking"
            };
            Error::io(action, path, source)
        }
        other => Error::Zip {
            path: zip_path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// The part a path from [`ckplus_relative`] lies in.
fn part_of(inside: &Path) -> Option<usize> {
    let first = inside.iter().next()?;
    CKPLUS_PARTS.iter().position(|part| first == *part)
}

/// The part index and the path from the part folder on (`Emotion/S005/001/x.txt`), when the
/// path lies under one of the CK+ folders; macOS metadata is skipped.
fn ckplus_relative(path: &Path) -> Option<(usize, PathBuf)> {
    let components: Vec<&str> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect();
    if components
        .iter()
        .any(|name| *name == "__MACOSX" || name.starts_with("._") || *name == ".DS_Store")
    {
        return None;
    }
    let (start, part_idx) = components
        .iter()
        .enumerate()
        .find_map(|(component_idx, name)| {
            CKPLUS_PARTS
                .iter()
                .position(|part| part.eq_ignore_ascii_case(name))
                .map(|part_idx| (component_idx, part_idx))
        })?;
    if start + 1 >= components.len() {
        return None;
    }
    let mut inside = PathBuf::from(CKPLUS_PARTS[part_idx]);
    inside.extend(&components[start + 1..]);
    Some((part_idx, inside))
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => {
            fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))
        }
        None => Ok(()),
    }
}

fn has_file_with_suffix(dir: &Path, suffix: &str) -> bool {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(|entry| entry.ok()) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().ends_with(suffix))
            {
                return true;
            }
        }
    }
    false
}

fn count_part_files(dest: &Path) -> [usize; 4] {
    let mut counts = [0usize; 4];
    for (part_idx, part) in CKPLUS_PARTS.iter().enumerate() {
        let mut pending = vec![dest.join(part)];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(|entry| entry.ok()) {
                if entry.path().is_dir() {
                    pending.push(entry.path());
                } else {
                    counts[part_idx] += 1;
                }
            }
        }
    }
    counts
}

fn first_entries(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .take(5)
        .map(|source| match source {
            Source::Zip(path) => path.display().to_string(),
            Source::File { relative, .. } => relative.display().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckplus_paths_are_found_under_wrappers() {
        let (part_idx, inside) = ckplus_relative(Path::new(
            "CK+/Emotion/S005/001/S005_001_00000011_emotion.txt",
        ))
        .expect("CK+ path");
        assert_eq!(part_idx, 1);
        assert_eq!(
            inside,
            PathBuf::from("Emotion/S005/001/S005_001_00000011_emotion.txt")
        );
        assert!(ckplus_relative(Path::new("__MACOSX/Emotion/S005/001/._x.txt")).is_none());
        assert!(ckplus_relative(Path::new("photos/cat.png")).is_none());
    }
}
