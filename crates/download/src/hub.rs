//! Files from Hugging Face Hub repositories, through the `hf-hub` crate.
//!
//! A file streams from hf-hub straight into `<file>.part` in the data folder, with the Hub's ETag
//! of the file in `<file>.part.etag`, so that an interrupted transfer continues with a ranged
//! request on the next run (or starts over if the file changed on the Hub). The finished file is
//! renamed into place with its sha256 beside it, so later runs, including `--offline` ones, verify
//! it without going online. Offline, a file missing from the data folder is taken from hf-hub's
//! cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) when it is there.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use hf_hub::repository::download::HFByteStream;
use hf_hub::{HFClient, HFError, HFRepository, RepoType};

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};
use crate::transfer::{self, FetchStatus, Fetched};

/// The kind of Hub repository, which decides its URL prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A dataset repository (`/datasets/owner/name`).
    Dataset,
    /// A model repository (`/owner/name`).
    Model,
}

impl RepoKind {
    /// What comes before `owner/name` in the Hub's URLs: `datasets/` or nothing.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Dataset => "datasets/",
            RepoKind::Model => "",
        }
    }
}

/// One file of one revision of a Hub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// Dataset or model repository.
    pub kind: RepoKind,
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit.
    pub revision: String,
    /// The path of the file inside the repository.
    pub file: String,
}

/// How to reach the Hub. Fields left `None` fall back to hf-hub's own environment variables.
///
/// `Debug` prints `token: Some("<redacted>")`, never the token itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL; `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Access token; `HF_TOKEN`, else the token file of `huggingface-cli login`.
    pub token: Option<String>,
    /// hf-hub's cache; `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Never go online: use the data folder's copy or hf-hub's cache, or fail.
    pub offline: bool,
    /// How many times hf-hub tries a request; its default when `None`.
    pub retry_max_attempts: Option<usize>,
    /// How long the Hub may stay silent during a transfer;
    /// [`READ_TIMEOUT`](crate::READ_TIMEOUT) when `None`.
    pub read_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("retry_max_attempts", &self.retry_max_attempts)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// Fetches one Hub file to `dest`, or verifies the copy already there.
///
/// The file streams into `<dest>.part`; an interrupted transfer leaves it there with the file's
/// ETag in `<dest>.part.etag`, and the next call continues it with a ranged request when the Hub
/// still serves the same ETag (otherwise it starts over). When the ETag is a sha256, as for LFS
/// and Xet files, the finished file must match it. With `options.offline`, the file comes from
/// hf-hub's cache if it is not in the data folder.
pub fn fetch_hub_file(
    file: &HubFile,
    dest: &Path,
    options: &HubOptions,
    progress: &dyn Progress,
) -> Result<Fetched> {
    if let Some(found) = transfer::already_present(dest)? {
        return Ok(found);
    }
    let (owner, name) = file
        .repo
        .split_once('/')
        .filter(|(owner, name)| !owner.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| Error::BadRepoId {
            repo: file.repo.clone(),
        })?;

    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok())
        .unwrap_or_else(|| "https://huggingface.co".to_string());
    if !options.offline {
        // The token goes with every request: never in the clear.
        transfer::require_https(&endpoint)?;
    }
    let http = reqwest::Client::builder()
        .user_agent(concat!("dexpression-download/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(transfer::CONNECT_TIMEOUT)
        .read_timeout(options.read_timeout.unwrap_or(transfer::READ_TIMEOUT))
        .redirect(transfer::redirect_policy())
        .build()
        .map_err(|err| Error::Offline {
            url: endpoint.clone(),
            reason: err.to_string(),
        })?;
    let mut builder = HFClient::builder().client(http);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.endpoint(endpoint.clone());
    }
    if let Some(token) = &options.token {
        builder = builder.token(token.clone());
    }
    if let Some(cache_dir) = &options.cache_dir {
        builder = builder.cache_dir(cache_dir.clone());
    }
    if let Some(attempts) = options.retry_max_attempts {
        builder = builder.retry_max_attempts(attempts);
    }
    let client = builder.build().map_err(|err| hub_error(file, err))?;
    let transfer = HubTransfer {
        file,
        url: resolve_url(file, &endpoint),
        dest,
        offline: options.offline,
        progress,
    };

    // hf-hub is async; one small runtime per file keeps this function blocking for callers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|err| Error::io("starting the download runtime for", dest, err))?;
    runtime.block_on(async {
        match file.kind {
            RepoKind::Dataset => transfer.run(&client.dataset(owner, name)).await,
            RepoKind::Model => transfer.run(&client.model(owner, name)).await,
        }
    })
}

/// One file on its way from the Hub into the data folder.
struct HubTransfer<'a> {
    file: &'a HubFile,
    url: String,
    dest: &'a Path,
    offline: bool,
    progress: &'a dyn Progress,
}

impl HubTransfer<'_> {
    async fn run<T: RepoType>(&self, repo: &HFRepository<T>) -> Result<Fetched> {
        if self.offline {
            let cached = repo
                .download_file()
                .filename(self.file.file.clone())
                .revision(self.file.revision.clone())
                .local_files_only(true)
                .send()
                .await
                .map_err(|err| match err {
                    HFError::LocalEntryNotFound { .. } => Error::MissingOffline {
                        what: format!("{} from {}", self.file.file, self.file.repo),
                        path: self.dest.to_path_buf(),
                    },
                    err => self.hub_error(err),
                })?;
            return copy_verified(&cached, self.dest);
        }

        let metadata = repo
            .get_file_metadata()
            .filepath(self.file.file.clone())
            .revision(&self.file.revision)
            .send()
            .await
            .map_err(|err| self.hub_error(err))?;
        // hf-hub reports 0 when the Hub sent no size; the transfer is then not resumable.
        let total = (metadata.file_size > 0).then_some(metadata.file_size);
        let part = transfer::part_path(self.dest);
        let mut offset = self.resumable_offset(&part, &metadata.etag, total)?;

        if total != Some(offset) {
            let range = match total {
                Some(total) if offset > 0 => Some(offset..total),
                _ => None,
            };
            let (content_length, stream) = repo
                .download_file_stream()
                .filename(self.file.file.clone())
                .revision(self.file.revision.clone())
                .maybe_range(range)
                .send()
                .await
                .map_err(|err| self.hub_error(err))?;
            // A server that ignores the range sends the whole file: take it from the start.
            if offset > 0 && content_length == total {
                offset = 0;
            }
            self.receive(stream, offset, total, &part).await?;
        }

        let sha256 = transfer::sha256_file(&part)?;
        if is_sha256(&metadata.etag) && sha256 != metadata.etag {
            let moved_to = transfer::move_aside(&part)?;
            let _ = fs::remove_file(etag_path(self.dest));
            return Err(Error::ChecksumMismatch {
                path: self.dest.to_path_buf(),
                expected: metadata.etag,
                actual: sha256,
                moved_to,
            });
        }
        let sha256 = transfer::commit_hashed_part(&part, self.dest, sha256)?;
        let _ = fs::remove_file(etag_path(self.dest));
        let size = fs::metadata(self.dest)
            .map(|meta| meta.len())
            .map_err(|err| Error::io("reading", self.dest, err))?;
        Ok(Fetched {
            path: self.dest.to_path_buf(),
            sha256,
            bytes_transferred: size - offset,
            status: if offset > 0 {
                FetchStatus::Resumed
            } else {
                FetchStatus::Downloaded
            },
        })
    }

    /// How many bytes of a partial file from an earlier run can be kept: all of them when it was
    /// written for the same ETag and is not longer than the file, else none (and it is removed).
    /// Records `etag` for the next run.
    fn resumable_offset(&self, part: &Path, etag: &str, total: Option<u64>) -> Result<u64> {
        if let Some(parent) = self.dest.parent() {
            fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))?;
        }
        let etag_file = etag_path(self.dest);
        let recorded = fs::read_to_string(&etag_file).unwrap_or_default();
        let size = transfer::partial_size(self.dest);
        let same_version = !etag.is_empty() && recorded.trim() == etag;
        let fits = total.is_some_and(|total| size <= total);
        if size > 0 && same_version && fits {
            return Ok(size);
        }
        if part.exists() {
            fs::remove_file(part).map_err(|err| Error::io("removing", part, err))?;
        }
        fs::write(&etag_file, etag).map_err(|err| Error::io("writing", &etag_file, err))?;
        Ok(0)
    }

    /// Appends the stream to the partial file from `offset` on, with progress.
    async fn receive(
        &self,
        mut stream: HFByteStream,
        offset: u64,
        total: Option<u64>,
        part: &Path,
    ) -> Result<()> {
        let mut out = if offset == 0 {
            File::create(part).map_err(|err| Error::io("creating", part, err))?
        } else {
            OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(|err| Error::io("opening", part, err))?
        };
        let label = self.file.file.rsplit('/').next().unwrap_or(&self.file.file);
        self.progress.begin(label, total, Unit::Bytes);
        self.progress.set_position(offset);
        if offset > 0 {
            self.progress
                .note(&format!("resuming {label} from byte {offset}"));
        }
        let mut position = offset;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    let _ = out.sync_all();
                    self.progress.end();
                    return Err(Error::Interrupted {
                        url: self.url.clone(),
                        part: part.to_path_buf(),
                        bytes_received: position,
                        reason: describe_hub_error(&err),
                    });
                }
            };
            out.write_all(&chunk)
                .map_err(|err| Error::io("writing", part, err))?;
            position += chunk.len() as u64;
            self.progress.set_position(position);
        }
        out.sync_all()
            .map_err(|err| Error::io("writing", part, err))?;
        self.progress.end();
        match total {
            Some(expected) if position != expected => Err(Error::Truncated {
                url: self.url.clone(),
                part: part.to_path_buf(),
                expected,
                received: position,
            }),
            _ => Ok(()),
        }
    }

    fn hub_error(&self, err: HFError) -> Error {
        map_hub_error(self.file, &self.url, err)
    }
}

/// The resolve URL of a file, as the Hub serves it; used in messages.
fn resolve_url(file: &HubFile, endpoint: &str) -> String {
    format!(
        "{}/{}{}/resolve/{}/{}",
        endpoint.trim_end_matches('/'),
        file.kind.url_prefix(),
        file.repo,
        file.revision,
        file.file
    )
}

/// Where the ETag of a partial file is kept: `<file>.part.etag`.
fn etag_path(dest: &Path) -> PathBuf {
    let mut name = transfer::part_path(dest).into_os_string();
    name.push(".etag");
    PathBuf::from(name)
}

/// LFS and Xet files carry their content's sha256 as ETag; other files a git blob id.
fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The cause of a failed chunk, without hf-hub's wrapper text.
fn describe_hub_error(err: &HFError) -> String {
    match err {
        HFError::Request { source, .. } => transfer::describe_transport_error(source),
        err => err.to_string(),
    }
}

/// Copies hf-hub's cached file into `dest` through a partial file, recording its sha256.
fn copy_verified(cached: &Path, dest: &Path) -> Result<Fetched> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))?;
    }
    let part = transfer::part_path(dest);
    let mut source = File::open(cached).map_err(|err| Error::io("reading", cached, err))?;
    let mut target = File::create(&part).map_err(|err| Error::io("creating", &part, err))?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut n_bytes = 0u64;
    loop {
        let n_read = source
            .read(&mut buffer)
            .map_err(|err| Error::io("reading", cached, err))?;
        if n_read == 0 {
            break;
        }
        target
            .write_all(&buffer[..n_read])
            .map_err(|err| Error::io("writing", &part, err))?;
        n_bytes += n_read as u64;
    }
    target
        .sync_all()
        .map_err(|err| Error::io("writing", &part, err))?;
    drop(target);
    let sha256 = transfer::commit_part(&part, dest)?;
    Ok(Fetched {
        path: dest.to_path_buf(),
        sha256,
        bytes_transferred: n_bytes,
        status: FetchStatus::Downloaded,
    })
}

fn map_hub_error(file: &HubFile, url: &str, err: HFError) -> Error {
    let url = url.to_string();
    match err {
        HFError::AuthRequired { context } | HFError::Forbidden { context } => Error::Unauthorized {
            url,
            status: context.status.as_u16(),
        },
        HFError::RepoNotFound { .. }
        | HFError::RevisionNotFound { .. }
        | HFError::EntryNotFound { .. } => Error::NotFound {
            url,
            file: file.file.clone(),
        },
        HFError::Http { context } if context.status.as_u16() == 404 => Error::NotFound {
            url,
            file: file.file.clone(),
        },
        HFError::Request { source, .. } => Error::Offline {
            url,
            reason: transfer::describe_transport_error(&source),
        },
        HFError::Io(source) if source.kind() == std::io::ErrorKind::StorageFull => {
            Error::DiskFull {
                path: PathBuf::from("the Hugging Face cache (HF_HUB_CACHE)"),
            }
        }
        err => hub_error(file, err),
    }
}

fn hub_error(file: &HubFile, err: HFError) -> Error {
    Error::Hub {
        repo: format!("{}{}@{}", file.kind.url_prefix(), file.repo, file.revision),
        file: file.file.clone(),
        source: Box::new(err),
    }
}
