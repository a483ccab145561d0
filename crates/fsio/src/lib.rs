//! One way to write a file, shared by every crate of the workspace that writes outputs.
//!
//! [`write_with`] (a closure writing into a buffered writer) and [`write_bytes`] write to a
//! temporary file with a unique name beside the target, flush and `fsync` it, rename it over the
//! target, then `fsync` the folder so that the rename itself survives a power cut. A reader (or
//! a run killed at any moment, SIGKILL included) therefore finds either the old file or the new
//! one, complete, never half of one; two processes writing the same target never share a
//! temporary file, so the last rename wins and nothing is mixed.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let folder = tempfile::tempdir()?;
//! let path = folder.path().join("history.csv");
//! dexpression_fsio::write_bytes(&path, b"fold,epoch\n")?;
//! dexpression_fsio::write_with(&path, |out| {
//!     use std::io::Write;
//!     writeln!(out, "fold,epoch")?;
//!     writeln!(out, "1,1")
//! })?;
//! assert_eq!(std::fs::read_to_string(&path)?, "fold,epoch\n1,1\n");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writing a file failed; the message names the file, the step and what the system said.
#[derive(Debug, thiserror::Error)]
// The cause is part of the message and deliberately not a `source()`, so that `anyhow`'s
// chained display does not print it twice.
#[error("{path}: cannot {step}: {error}")]
pub struct Error {
    /// The file or folder involved.
    pub path: PathBuf,
    /// The step that failed, e.g. `create the folder`, `write`, `rename into place`.
    pub step: &'static str,
    /// What the operating system said.
    pub error: std::io::Error,
}

impl Error {
    fn at<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |error| Error {
            path: path.to_path_buf(),
            step,
            error,
        }
    }
}

/// For closures of [`write_with`] that fail with `std::io::Error`: the path and step stay in
/// the message.
impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        std::io::Error::new(error.error.kind(), error.to_string())
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Writes `bytes` as the whole content of `path`, atomically and durably (see the crate docs).
/// Creates the parent folders when missing.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |out| {
        out.write_all(bytes).map_err(Error::at(path, "write"))
    })
}

/// Writes the content `write` produces as the whole content of `path`, atomically and durably
/// (see the crate docs). Creates the parent folders when missing.
///
/// `write` may fail with its own error type `E` (which must take this crate's errors); then
/// the temporary file is removed, `path` is left as it was and the error is returned.
pub fn write_with<T, E, F>(path: &Path, write: F) -> std::result::Result<T, E>
where
    F: FnOnce(&mut BufWriter<File>) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let folder = parent_of(path);
    std::fs::create_dir_all(folder).map_err(Error::at(folder, "create the folder"))?;
    let (temporary, file) = create_temporary(path)?;
    let outcome = write_and_commit(path, &temporary, file, write);
    if outcome.is_err() {
        // Only our own, uniquely named temporary file: nothing anyone else wrote.
        let _ = std::fs::remove_file(&temporary);
    }
    outcome
}

fn write_and_commit<T, E, F>(
    path: &Path,
    temporary: &Path,
    file: File,
    write: F,
) -> std::result::Result<T, E>
where
    F: FnOnce(&mut BufWriter<File>) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let mut writer = BufWriter::with_capacity(1 << 16, file);
    let value = write(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|error| Error::at(temporary, "write")(error.into_error()))?;
    file.sync_all().map_err(Error::at(temporary, "fsync"))?;
    drop(file);
    std::fs::rename(temporary, path).map_err(Error::at(path, "rename into place"))?;
    sync_dir(parent_of(path))?;
    Ok(value)
}

/// `fsync`s a folder, so that files created, renamed or removed in it stay so after a power cut.
/// A no-op where folders cannot be opened for that (Windows).
pub fn sync_dir(folder: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(folder)
            .and_then(|dir| dir.sync_all())
            .map_err(Error::at(folder, "fsync the folder"))?;
    }
    #[cfg(not(unix))]
    let _ = folder;
    Ok(())
}

/// Renames `from` to `to` (same file system) and `fsync`s both folders.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(Error::at(to, "rename into place"))?;
    sync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        sync_dir(parent_of(from))?;
    }
    Ok(())
}

/// Whether `name` is one of the temporary files [`write_with`] creates (left behind only when
/// a process was killed while writing): `.<target name>.<unique part>.tmp`.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMPORARY_SUFFIX) && name.contains(".fsio-")
}

const TEMPORARY_SUFFIX: &str = ".tmp";

/// The folder holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates a new file beside `path` with a name no other writer uses: the process id, a
/// counter of this process and the clock, retried on the rare clash (`create_new` makes the
/// clash visible instead of sharing the file).
fn create_temporary(path: &Path) -> Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let target_name = path.file_name().ok_or_else(|| Error {
        path: path.to_path_buf(),
        step: "write (the path names no file)",
        error: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let folder = parent_of(path);
    let mut attempts = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let mut name = OsString::from(".");
        name.push(target_name);
        name.push(format!(
            ".fsio-{}-{}-{nanos:08x}{TEMPORARY_SUFFIX}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let temporary = folder.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
        {
            Ok(file) => return Ok((temporary, file)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => {
                attempts += 1;
            }
            Err(error) => return Err(Error::at(&temporary, "create a temporary file")(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("sub/out.txt");
        write_bytes(&path, b"first").unwrap();
        write_bytes(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(names_in(&folder.path().join("sub")), vec!["out.txt"]);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temporary() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("out.txt");
        write_bytes(&path, b"kept").unwrap();
        let result: std::result::Result<(), Box<dyn std::error::Error>> =
            write_with(&path, |out| {
                out.write_all(b"half of a new")?;
                Err("the producer failed".into())
            });
        assert_eq!(result.unwrap_err().to_string(), "the producer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(names_in(folder.path()), vec!["out.txt"]);
    }

    #[test]
    fn temporary_names_are_unique_and_recognised() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("history.csv");
        let (first, _a) = create_temporary(&path).unwrap();
        let (second, _b) = create_temporary(&path).unwrap();
        assert_ne!(first, second);
        for temporary in [&first, &second] {
            let name = temporary.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with(".history.csv.fsio-"), "{name}");
            assert!(is_temporary_name(name), "{name}");
        }
        assert!(!is_temporary_name("history.csv"));
        assert!(!is_temporary_name("history.csv.tmp"));
    }

    #[test]
    fn a_missing_file_name_is_an_error_naming_the_path() {
        let error = write_bytes(Path::new("/"), b"x").unwrap_err();
        assert!(error.to_string().starts_with("/: cannot write"), "{error}");
    }

    #[test]
    fn concurrent_writers_never_mix_contents() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("shared.txt");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 100_000]).collect();
        std::thread::scope(|scope| {
            for content in &contents {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..5 {
                        write_bytes(path, content).unwrap();
                    }
                });
            }
        });
        let result = std::fs::read(&path).unwrap();
        assert!(contents.contains(&result), "a mix of writers' contents");
        assert_eq!(names_in(folder.path()), vec!["shared.txt"]);
    }
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
