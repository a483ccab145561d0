//! Zip extraction within limits, for the CK+ archives that [`crate::prepare`] reads and that
//! the download crate imports: one routine, so both refuse the same crafted or damaged archives.
//!
//! Entries are written only inside the destination (absolute paths and `..` are refused), a
//! zip listing too many entries is refused before anything is written, and bytes are counted as
//! they are written, not as the archive declares them.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Limits on what an extraction writes, against archives crafted (or damaged) to fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipLimits {
    /// The most entries one archive may list (the CK+ image archive has about 11,000).
    pub max_entries: usize,
    /// The most bytes all archives of one extraction may unpack to together (CK+ is about
    /// 2 GB).
    pub max_bytes: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            max_entries: 200_000,
            max_bytes: 16 << 30,
        }
    }
}

/// The bytes an extraction may still write, shared by all the archives (and any other files)
/// of one extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteBudget {
    limit: u64,
    left: u64,
}

impl ByteBudget {
    /// A budget of `limit` bytes, none spent.
    pub fn new(limit: u64) -> Self {
        ByteBudget { limit, left: limit }
    }

    /// The bytes it started with.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `n_bytes` from what is left; `false` (and nothing taken) when fewer are left.
    pub fn spend(&mut self, n_bytes: u64) -> bool {
        match self.left.checked_sub(n_bytes) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

/// A zip archive opened for extraction, its number of entries within the limit.
pub struct OpenZip {
    path: PathBuf,
    archive: zip::ZipArchive<BufReader<File>>,
}

impl std::fmt::Debug for OpenZip {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OpenZip")
            .field("path", &self.path)
            .field("n_entries", &self.archive.len())
            .finish()
    }
}

impl OpenZip {
    /// Opens `path`, refusing a file that is not a zip archive ([`Error::Zip`]) or one that
    /// lists more than `max_entries` entries ([`Error::ZipEntries`]).
    pub fn open(path: &Path, max_entries: usize) -> Result<Self> {
        let file = File::open(path).map_err(|error| Error::io(path, error))?;
        let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|error| Error::Zip {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        if archive.len() > max_entries {
            return Err(Error::ZipEntries {
                path: path.to_path_buf(),
                listed: archive.len(),
                limit: max_entries,
            });
        }
        Ok(OpenZip {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// The archive's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many entries (files and folders) it lists.
    pub fn len(&self) -> usize {
        self.archive.len()
    }

    /// Whether it lists no entry.
    pub fn is_empty(&self) -> bool {
        self.archive.is_empty()
    }

    /// The names of its first `n` entries, to show what an unexpected archive holds.
    pub fn first_names(&self, n: usize) -> Vec<String> {
        self.archive
            .file_names()
            .take(n)
            .filter_map(|name| name.ok().map(|name| name.into_owned()))
            .collect()
    }

    /// Writes the entries that `rename` keeps into `destination`, each at the relative path
    /// `rename` gives it (`rename` sees the entry's own path, already checked to stay inside),
    /// taking what it writes from `budget`. `on_entry` is called after every entry with the
    /// path of the file written, if one was. Returns how many files were written.
    ///
    /// Stops at [`Error::ZipBytes`] when the budget runs out, and at [`Error::Zip`] for a
    /// damaged entry; what was written stays for the caller to remove.
    pub fn extract(
        &mut self,
        destination: &Path,
        rename: &dyn Fn(&Path) -> Option<PathBuf>,
        budget: &mut ByteBudget,
        on_entry: &mut dyn FnMut(Option<&Path>),
    ) -> Result<usize> {
        let zip_error = |reason: String| Error::Zip {
            path: self.path.clone(),
            reason,
        };
        let mut n_written = 0;
        for entry_idx in 0..self.archive.len() {
            let mut entry = self
                .archive
                .by_index(entry_idx)
                .map_err(|error| zip_error(error.to_string()))?;
            // `enclosed_name` refuses absolute paths and `..`, so an archive cannot write
            // outside the destination.
            let Some(relative) = entry.enclosed_name().and_then(|name| rename(&name)) else {
                on_entry(None);
                continue;
            };
            let output = destination.join(&relative);
            if entry.is_dir() {
                fs::create_dir_all(&output).map_err(|error| Error::io(&output, error))?;
                on_entry(None);
                continue;
            }
            if let Some(parent) = output.parent() {
                fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
            }
            let mut file = File::create(&output).map_err(|error| Error::io(&output, error))?;
            let allowed = budget.left.saturating_add(1);
            let written = io::copy(&mut (&mut entry).take(allowed), &mut file).map_err(
                |error| match error.kind() {
                    io::ErrorKind::StorageFull => Error::io(&output, error),
                    _ => zip_error(format!("entry {}: {error}", relative.display())),
                },
            )?;
            if !budget.spend(written) {
                return Err(Error::ZipBytes {
                    path: self.path.clone(),
                    limit: budget.limit,
                    stopped_at: relative,
                });
            }
            n_written += 1;
            on_entry(Some(&relative));
        }
        Ok(n_written)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a deflated zip of `entries` (name, contents) at `path`.
    pub(crate) fn write_zip(path: &Path, entries: &[(&str, impl AsRef<[u8]>)]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes.as_ref()).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn entries_are_renamed_filtered_and_counted_against_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.zip");
        let second = dir.path().join("second.zip");
        write_zip(&first, &[("wrap/keep/a.txt", "aaaa"), ("skip/b.txt", "b")]);
        write_zip(&second, &[("keep/c.txt", "cccccc")]);
        let out = dir.path().join("out");
        let rename = |path: &Path| {
            let kept = path.iter().skip_while(|part| *part != "keep");
            let kept: PathBuf = kept.collect();
            (!kept.as_os_str().is_empty()).then_some(kept)
        };
        let mut budget = ByteBudget::new(10);
        let mut seen = Vec::new();
        let mut on_entry = |written: Option<&Path>| seen.push(written.map(Path::to_path_buf));
        let mut zip = OpenZip::open(&first, 2).unwrap();
        assert_eq!(zip.first_names(1), ["wrap/keep/a.txt"]);
        assert_eq!(
            zip.extract(&out, &rename, &mut budget, &mut on_entry)
                .unwrap(),
            1
        );
        assert_eq!(fs::read(out.join("keep/a.txt")).unwrap(), b"aaaa");
        assert!(!out.join("skip").exists());

        // 4 of 10 bytes spent: the second archive's 6 bytes fit exactly.
        let mut zip = OpenZip::open(&second, 2).unwrap();
        assert_eq!(
            zip.extract(&out, &rename, &mut budget, &mut on_entry)
                .unwrap(),
            1
        );
        assert_eq!(
            seen,
            [
                Some(PathBuf::from("keep/a.txt")),
                None,
                Some(PathBuf::from("keep/c.txt"))
            ]
        );
        assert!(!budget.spend(1), "the budget is spent");
    }

    #[test]
    fn paths_climbing_out_of_the_destination_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("evil.zip");
        write_zip(&zip_path, &[("../escaped.txt", "x"), ("ok.txt", "z")]);
        let out = dir.path().join("out");
        let mut zip = OpenZip::open(&zip_path, 10).unwrap();
        let n_written = zip
            .extract(
                &out,
                &|path| Some(path.to_path_buf()),
                &mut ByteBudget::new(100),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(n_written, 1);
        assert!(!dir.path().join("escaped.txt").exists());
        assert_eq!(fs::read(out.join("ok.txt")).unwrap(), b"z");
    }

    #[test]
    fn a_file_that_is_not_a_zip_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake.zip");
        fs::write(&fake, b"not a zip").unwrap();
        let err = OpenZip::open(&fake, 10).unwrap_err();
        assert!(matches!(err, Error::Zip { .. }), "{err:?}");
        assert!(err.to_string().contains("fake.zip"), "{err}");
    }
}
