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
/// sha256 recorded beside it (see `verify_existing`).
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

/// How long a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may stay silent (no header, no byte of the body) before the transfer is
/// given up; the partial file is kept for the next run.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Refuses a URL that would travel in the clear: only `https` is accepted, except for loopback
/// addresses (the tests' local server, a local mirror), where `http` cannot be overheard.
pub(crate) fn require_https(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|err| Error::Insecure {
        url: url.to_string(),
        reason: format!("not a valid URL ({err})"),
    })?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        scheme => Err(Error::Insecure {
            url: url.to_string(),
            reason: format!("`{scheme}` is not encrypted; only https is used, except on localhost"),
        }),
    }
}

/// Follows up to 10 redirects, never to an unencrypted address, which would carry the request
/// (and a token) in the clear.
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else if require_https(attempt.url().as_str()).is_err() {
            attempt.error("a redirect to an unencrypted address")
        } else {
            attempt.follow()
        }
    })
}

/// The `User-Agent` of every request this crate sends.
pub(crate) const USER_AGENT: &str = concat!("dexpression-download/", env!("CARGO_PKG_VERSION"));

/// The blocking HTTP client of every transfer (Hub files and Google Drive), sending `token` as a
/// bearer token when given; reqwest drops it on a redirect to another host (the Hub's storage).
///
/// No overall timeout, since a large file on a slow line may take long: the blocking client's
/// timeout bounds the wait for the answer's headers and for each read of its body, so a stalled
/// connection fails after `read_timeout` without a byte, which leaves a partial file for the
/// next run.
pub(crate) fn http_client(
    read_timeout: Duration,
    token: Option<&str>,
) -> Result<reqwest::blocking::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::Insecure {
                url: "(the access token)".into(),
                reason: "the token holds characters that cannot be sent in a header".into(),
            })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::blocking::Client::builder()
        .user_agent(USER_AGENT)
        .default_headers(headers)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(read_timeout)
        .redirect(redirect_policy())
        .build()
        .map_err(|err| Error::Offline {
            url: "(HTTP client setup)".into(),
            reason: err.to_string(),
        })
}

/// What the next run needs to continue a partial file safely: the version of the file it holds
/// (an ETag or Last-Modified date, sent back as `If-Range`) and the file's full length when the
/// server said it. Kept in `<file>.part.resume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumeRecord {
    validator: String,
    total: Option<u64>,
}

fn resume_path(dest: &Path) -> PathBuf {
    append_to_file_name(dest, ".part.resume")
}

/// The offset and validator to continue `dest`'s partial file with, when there is one that was
/// recorded with a validator and is not longer than the file; otherwise the partial file is
/// dropped and the transfer starts over.
pub(crate) fn resume_point(dest: &Path) -> Result<Option<(u64, ResumeRecord)>> {
    let part = part_path(dest);
    let size = partial_size(dest);
    let record = fs::read_to_string(resume_path(dest)).ok().and_then(|text| {
        let (validator, total) = text.trim_end_matches('\n').split_once('\t')?;
        Some(ResumeRecord {
            validator: validator.to_string(),
            total: total.parse().ok(),
        })
    });
    match record {
        Some(record)
            if size > 0
                && !record.validator.is_empty()
                && record.total.is_none_or(|total| size <= total) =>
        {
            Ok(Some((size, record)))
        }
        _ => {
            // An empty one is simply overwritten.
            if size > 0 {
                fs::remove_file(&part).map_err(|err| Error::io("removing", &part, err))?;
            }
            let _ = fs::remove_file(resume_path(dest));
            Ok(None)
        }
    }
}

/// Sends a GET, asking for the bytes from `offset` on, only if the file is still the version
/// that the partial file holds (`If-Range`), when resuming.
pub(crate) fn send_get(
    client: &reqwest::blocking::Client,
    url: &str,
    resume: Option<&(u64, ResumeRecord)>,
) -> Result<reqwest::blocking::Response> {
    require_https(url)?;
    let mut request = client.get(url);
    if let Some((offset, record)) = resume {
        request = request
            .header(reqwest::header::RANGE, format!("bytes={offset}-"))
            .header(reqwest::header::IF_RANGE, record.validator.as_str());
    }
    request.send().map_err(|err| Error::Offline {
        url: url.to_string(),
        reason: describe_transport_error(&err),
    })
}

/// A validator usable in `If-Range`: a strong ETag, else a Last-Modified date.
fn validator(headers: &reqwest::header::HeaderMap) -> String {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty() && !value.contains(['\t', '\n']))
    };
    match header(reqwest::header::ETAG) {
        Some(etag) if !etag.starts_with("W/") => etag.to_string(),
        _ => header(reqwest::header::LAST_MODIFIED)
            .unwrap_or_default()
            .to_string(),
    }
}

/// Receives an answer to [`send_get`] into `dest`'s partial file and commits it.
///
/// `resume` is what the request asked to continue. A server that ignores the range, or whose
/// file changed (`If-Range` failed), answers 200 and the whole file is written from the start;
/// a 206 must continue exactly where the partial file ends, for the same total length. When the
/// server sends no length at all, the end of its body proves nothing (a dropped connection looks
/// the same), so the file is committed only once the server confirms, by answering a range
/// request for the bytes after it with 416, that there are none. With `expected_sha256`, a
/// complete file that does not match it is moved aside instead of committed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive(
    client: &reqwest::blocking::Client,
    response: reqwest::blocking::Response,
    url: &str,
    file_label: &str,
    dest: &Path,
    resume: Option<(u64, ResumeRecord)>,
    expected_sha256: Option<&str>,
    progress: &dyn Progress,
) -> Result<Fetched> {
    let part = part_path(dest);
    // Where this call's bytes start in the file: 0 once the server sends the whole file.
    let mut first_offset = resume.as_ref().map_or(0, |(offset, _)| *offset);
    let mut response = response;
    let mut resume = resume;
    loop {
        let status = response.status().as_u16();
        let (start, total, record) = match status {
            200 => {
                first_offset = 0;
                let total = response.content_length();
                let record = ResumeRecord {
                    validator: validator(response.headers()),
                    total,
                };
                (0, total, record)
            }
            206 => {
                let (range_start, total) = parse_content_range(response.headers());
                let (offset, record) = match &resume {
                    Some((offset, record)) => (*offset, record.clone()),
                    None => (
                        0,
                        ResumeRecord {
                            validator: String::new(),
                            total: None,
                        },
                    ),
                };
                let same_total = match (record.total, total) {
                    (Some(recorded), Some(total)) => recorded == total,
                    _ => true,
                };
                if resume.is_none() || range_start != Some(offset) || !same_total {
                    // Another range or another length than the partial file was made for: start
                    // over rather than splice two versions.
                    let _ = fs::remove_file(&part);
                    let _ = fs::remove_file(resume_path(dest));
                    return Err(Error::Http {
                        url: url.to_string(),
                        status,
                    });
                }
                let total = total
                    .or(record.total)
                    .or_else(|| response.content_length().map(|length| offset + length));
                (offset, total, ResumeRecord { total, ..record })
            }
            416 => {
                // The partial file already holds everything the server has, if the server says
                // so with the partial file's exact length.
                let (_, total) = parse_content_range(response.headers());
                if let Some((offset, record)) = &resume {
                    if total == Some(*offset) && record.total.is_none_or(|t| t == *offset) {
                        return commit(&part, dest, first_offset, *offset, expected_sha256);
                    }
                }
                let _ = fs::remove_file(&part);
                let _ = fs::remove_file(resume_path(dest));
                return Err(Error::Http {
                    url: url.to_string(),
                    status,
                });
            }
            _ => return Err(status_error(url, status, file_label)),
        };

        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))?;
        }
        let record_path = resume_path(dest);
        fs::write(
            &record_path,
            format!(
                "{}\t{}\n",
                record.validator,
                record.total.map(|t| t.to_string()).unwrap_or_default()
            ),
        )
        .map_err(|err| Error::io("writing", &record_path, err))?;
        let position = write_body(&mut response, &part, start, total, url, dest, progress)?;

        if let Some(expected) = total {
            if position != expected {
                return Err(Error::Truncated {
                    url: url.to_string(),
                    part,
                    expected,
                    received: position,
                });
            }
            return commit(&part, dest, first_offset, position, expected_sha256);
        }
        // No length was announced: ask for what follows; only "nothing" (416 with this exact
        // length) proves the file complete, more bytes are appended and checked the same way.
        if record.validator.is_empty() {
            return Err(Error::LengthUnconfirmed {
                url: url.to_string(),
                part,
                received: position,
            });
        }
        let next = (position, record);
        response = send_get(client, url, Some(&next))?;
        let status = response.status().as_u16();
        if status != 206 && status != 416 {
            return Err(Error::LengthUnconfirmed {
                url: url.to_string(),
                part,
                received: position,
            });
        }
        resume = Some(next);
    }
}

/// The error for an answer that is not the file: not authorised, not found, or another status.
pub(crate) fn status_error(url: &str, status: u16, file_label: &str) -> Error {
    match status {
        401 | 403 => Error::Unauthorized {
            url: url.to_string(),
            status,
        },
        404 => Error::NotFound {
            url: url.to_string(),
            file: file_label.to_string(),
        },
        _ => Error::Http {
            url: url.to_string(),
            status,
        },
    }
}

/// Streams a response body into the partial file from `start` on; returns the file's length.
fn write_body(
    response: &mut reqwest::blocking::Response,
    part: &Path,
    start: u64,
    total: Option<u64>,
    url: &str,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let mut file = if start == 0 {
        File::create(part).map_err(|err| Error::io("creating", part, err))?
    } else {
        OpenOptions::new()
            .append(true)
            .open(part)
            .map_err(|err| Error::io("opening", part, err))?
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
    let mut position = start;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n_read = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n_read) => n_read,
            Err(err) => {
                let _ = file.sync_all();
                progress.end();
                return Err(Error::Interrupted {
                    url: url.to_string(),
                    part: part.to_path_buf(),
                    bytes_received: position,
                    reason: describe_transport_error(&err),
                });
            }
        };
        file.write_all(&buffer[..n_read])
            .map_err(|err| Error::io("writing", part, err))?;
        position += n_read as u64;
        if total.is_some_and(|total| position > total) {
            // More than announced: the partial file is not this version of the file.
            drop(file);
            let _ = fs::remove_file(part);
            let _ = fs::remove_file(resume_path(dest));
            progress.end();
            return Err(Error::Truncated {
                url: url.to_string(),
                part: part.to_path_buf(),
                expected: total.unwrap_or(0),
                received: position,
            });
        }
        progress.set_position(position);
    }
    file.sync_all()
        .map_err(|err| Error::io("writing", part, err))?;
    progress.end();
    Ok(position)
}

fn commit(
    part: &Path,
    dest: &Path,
    first_offset: u64,
    position: u64,
    expected_sha256: Option<&str>,
) -> Result<Fetched> {
    let sha256 = sha256_file(part)?;
    let _ = fs::remove_file(resume_path(dest));
    if let Some(expected) = expected_sha256.filter(|expected| *expected != sha256) {
        let moved_to = move_aside(part)?;
        return Err(Error::ChecksumMismatch {
            path: dest.to_path_buf(),
            expected: expected.to_string(),
            actual: sha256,
            moved_to,
        });
    }
    let sha256 = commit_hashed_part(part, dest, sha256)?;
    Ok(Fetched {
        path: dest.to_path_buf(),
        sha256,
        bytes_transferred: position.saturating_sub(first_offset),
        status: if first_offset > 0 {
            FetchStatus::Resumed
        } else {
            FetchStatus::Downloaded
        },
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
