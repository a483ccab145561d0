//! Verified files on disk and resumable HTTP transfers into them.
//!
//! A download goes to `<file>.part`, which survives an interruption and is continued with an HTTP
//! `Range` request when the server allows it; only a complete file is renamed into place, after
//! its sha256 has been written beside it as `<file>.sha256` (the `sha256sum` format). Later runs
//! hash the file again and refuse, and move aside, one that no longer matches.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// How a file came to be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStatus {
    /// Transferred from the start.
    Downloaded,
    /// Continued from a partial file left by an earlier, interrupted run.
    Resumed,
    /// Already on disk and matching its recorded sha256; nothing was transferred.
    AlreadyPresent,
}

/// A verified file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Where the file is.
    pub path: PathBuf,
    /// Its sha256, lowercase hex, as recorded in `<file>.sha256`.
    pub sha256: String,
    /// Bytes that went over the network in this call.
    pub bytes_transferred: u64,
    /// Whether it was downloaded, resumed or found.
    pub status: FetchStatus,
}

/// The file at `dest` as a [`Fetched`] that needed no transfer, when it is there and matches the
/// sha256 recorded beside it (see [`verify_existing`]).
pub(crate) fn already_present(dest: &Path) -> Result<Option<Fetched>> {
    Ok(verify_existing(dest)?.map(|sha256| Fetched {
        path: dest.to_path_buf(),
        sha256,
        bytes_transferred: 0,
        status: FetchStatus::AlreadyPresent,
    }))
}

/// The path of the checksum file kept beside `path`: `<file>.sha256`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    append_to_file_name(path, ".sha256")
}

/// The path of the partial file used while `path` downloads: `<file>.part`.
pub fn part_path(path: &Path) -> PathBuf {
    append_to_file_name(path, ".part")
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|err| Error::io("reading", path, err))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n_read = file
            .read(&mut buffer)
            .map_err(|err| Error::io("reading", path, err))?;
        if n_read == 0 {
            break;
        }
        hasher.update(&buffer[..n_read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a file against its recorded sha256.
///
/// Returns `Ok(Some(sha256))` when the file and its `<file>.sha256` are both there and agree,
/// `Ok(None)` when either is missing (the file must be fetched), and
/// [`Error::ChecksumMismatch`] when they disagree, after moving the file aside to
/// `<file>.bad-<unix seconds>` so that it is never used.
pub fn verify_existing(path: &Path) -> Result<Option<String>> {
    let sidecar = sidecar_path(path);
    if !path.is_file() || !sidecar.is_file() {
        return Ok(None);
    }
    let recorded =
        fs::read_to_string(&sidecar).map_err(|err| Error::io("reading", &sidecar, err))?;
    let expected = recorded
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let actual = sha256_file(path)?;
    if actual == expected {
        return Ok(Some(actual));
    }
    let moved_to = move_aside(path)?;
    Err(Error::ChecksumMismatch {
        path: path.to_path_buf(),
        expected,
        actual,
        moved_to,
    })
}

/// Renames a file that must not be used to `<file>.bad-<unix seconds>` and returns that path.
pub(crate) fn move_aside(path: &Path) -> Result<PathBuf> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let moved_to = append_to_file_name(path, &format!(".bad-{seconds}"));
    fs::rename(path, &moved_to).map_err(|err| Error::io("moving aside", path, err))?;
    Ok(moved_to)
}

/// Records the sha256 of a complete `part` file beside `dest` and renames it to `dest`.
///
/// The checksum is written first so that a file in place always has one; a crash between the
/// two steps leaves a checksum without its file, which the next run simply downloads again.
pub(crate) fn commit_part(part: &Path, dest: &Path) -> Result<String> {
    let sha256 = sha256_file(part)?;
    commit_hashed_part(part, dest, sha256)
}

/// [`commit_part`] for a partial file whose sha256 the caller has already computed.
pub(crate) fn commit_hashed_part(part: &Path, dest: &Path, sha256: String) -> Result<String> {
    let sidecar = sidecar_path(dest);
    let file_name = dest
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::write(&sidecar, format!("{sha256}  {file_name}\n"))
        .map_err(|err| Error::io("writing", &sidecar, err))?;
    fs::rename(part, dest).map_err(|err| Error::io("renaming into place", dest, err))?;
    Ok(sha256)
}

/// The blocking HTTP client used for transfers that hf-hub does not make (Google Drive).
///
/// No overall timeout, since a large file on a slow line may take long; a stalled connection
/// still fails after `read_timeout`, which leaves a partial file for the next run.
pub(crate) fn http_client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .user_agent(concat!("dexpression-download/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .timeout(None)
        .build()
        .map_err(|err| Error::Offline {
            url: "(HTTP client setup)".into(),
            reason: err.to_string(),
        })
}

/// Sends a GET, asking for the bytes from `offset` on when `offset > 0`.
pub(crate) fn send_get(
    client: &reqwest::blocking::Client,
    url: &str,
    offset: u64,
) -> Result<reqwest::blocking::Response> {
    let mut request = client.get(url);
    if offset > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    request.send().map_err(|err| Error::Offline {
        url: url.to_string(),
        reason: describe_transport_error(&err),
    })
}

/// Receives an answer to [`send_get`] into `dest`'s partial file and commits it.
///
/// `offset` is the size of the partial file that the request asked to continue. A server that
/// ignores the range (answers 200) gets the whole file written from the start.
pub(crate) fn receive(
    response: reqwest::blocking::Response,
    url: &str,
    file_label: &str,
    dest: &Path,
    offset: u64,
    progress: &dyn Progress,
) -> Result<Fetched> {
    let part = part_path(dest);
    let status = response.status().as_u16();
    let (start, total) = match status {
        200 => (0, response.content_length()),
        206 => {
            let (range_start, total) = parse_content_range(response.headers());
            if range_start != Some(offset) {
                // The server sent another range than asked for; start over rather than guess.
                let _ = fs::remove_file(&part);
                return Err(Error::Http {
                    url: url.to_string(),
                    status,
                });
            }
            (
                offset,
                total.or_else(|| response.content_length().map(|length| offset + length)),
            )
        }
        416 => {
            // The partial file already holds everything (or more than) the server has.
            let (_, total) = parse_content_range(response.headers());
            if total == Some(offset) {
                let sha256 = commit_part(&part, dest)?;
                return Ok(Fetched {
                    path: dest.to_path_buf(),
                    sha256,
                    bytes_transferred: 0,
                    status: FetchStatus::Resumed,
                });
            }
            let _ = fs::remove_file(&part);
            return Err(Error::Http {
                url: url.to_string(),
                status,
            });
        }
        401 | 403 => {
            return Err(Error::Unauthorized {
                url: url.to_string(),
                status,
            })
        }
        404 => {
            return Err(Error::NotFound {
                url: url.to_string(),
                file: file_label.to_string(),
            })
        }
        _ => {
            return Err(Error::Http {
                url: url.to_string(),
                status,
            })
        }
    };

    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))?;
    }
    let mut file = if start == 0 {
        File::create(&part).map_err(|err| Error::io("creating", &part, err))?
    } else {
        OpenOptions::new()
            .append(true)
            .open(&part)
            .map_err(|err| Error::io("opening", &part, err))?
    };
    let label = dest
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    progress.begin(&label, total, Unit::Bytes);
    progress.set_position(start);
    if start > 0 {
        progress.note(&format!("resuming {label} from byte {start}"));
    }

    let mut response = response;
    let mut position = start;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n_read = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n_read) => n_read,
            Err(err) => {
                let _ = file.flush();
                progress.end();
                return Err(Error::Interrupted {
                    url: url.to_string(),
                    part,
                    bytes_received: position,
                    reason: err.to_string(),
                });
            }
        };
        file.write_all(&buffer[..n_read])
            .map_err(|err| Error::io("writing", &part, err))?;
        position += n_read as u64;
        progress.set_position(position);
    }
    file.sync_all()
        .map_err(|err| Error::io("writing", &part, err))?;
    drop(file);
    progress.end();

    if let Some(expected) = total {
        if position != expected {
            return Err(Error::Truncated {
                url: url.to_string(),
                part,
                expected,
                received: position,
            });
        }
    }
    let sha256 = commit_part(&part, dest)?;
    let status = if start > 0 {
        FetchStatus::Resumed
    } else {
        FetchStatus::Downloaded
    };
    Ok(Fetched {
        path: dest.to_path_buf(),
        sha256,
        bytes_transferred: position - start,
        status,
    })
}

/// The size of a partial file left by an earlier run, or 0.
pub(crate) fn partial_size(dest: &Path) -> u64 {
    fs::metadata(part_path(dest))
        .map(|meta| meta.len())
        .unwrap_or(0)
}

/// Reads `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`).
fn parse_content_range(headers: &reqwest::header::HeaderMap) -> (Option<u64>, Option<u64>) {
    let Some(value) = headers
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
    else {
        return (None, None);
    };
    let value = value.trim().trim_start_matches("bytes").trim();
    let (range, total) = value.split_once('/').unwrap_or((value, "*"));
    let start = range
        .split_once('-')
        .and_then(|(start, _)| start.trim().parse().ok());
    (start, total.trim().parse().ok())
}

/// The innermost cause of a transport error, which is where "connection refused" or "dns error"
/// is said.
/// reqwest's own top-level text repeats the URL, which the caller already names, so it is only
/// used when there is no cause below it.
pub(crate) fn describe_transport_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() {
        err.to_string()
    } else {
        causes.join(": ")
    }
}

fn append_to_file_name(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}
