//! Files from Hugging Face Hub repositories.
//!
//! hf-hub lists repositories and finds files in its cache; the transfers themselves go through
//! this crate's HTTP client (see [`crate::transfer`]), which has connect and read timeouts and
//! guards a resumed transfer with `If-Range`, neither of which hf-hub's internal clients do. A
//! file streams into `<file>.part` in the data folder, so that an interrupted transfer continues
//! with a ranged request on the next run (or starts over if the file changed on the Hub). The
//! finished file is renamed into place with its sha256 beside it, so later runs, including
//! `--offline` ones, verify it without going online. Offline, a file missing from the data folder is taken from hf-hub's
//! cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) when it is there.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::{HFClient, HFError, HFRepository, HFResult, RepoType};

use crate::error::{Error, Result};
use crate::progress::Progress;
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
    /// `READ_TIMEOUT` when `None`.
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
/// The file streams into `<dest>.part` over this crate's own HTTP client, which has connect and
/// read timeouts (hf-hub's internal clients have none, and its ranged reads send no `If-Range`).
/// An interrupted transfer leaves the partial file with the version it holds (the ETag) in
/// `<dest>.part.resume`; the next call continues it with a `Range` request guarded by
/// `If-Range`, so a file that changed on the Hub in the meantime comes back whole instead of
/// being spliced onto the old bytes, and the continuation must start exactly where the partial
/// file ends and add up to the announced length. When the Hub's ETag is a sha256, as for LFS and
/// Xet files, the finished file must match it. With `options.offline`, the file comes from
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
    let (owner, name) = split_repo_id(&file.repo)?;
    let session = HubSession::new(options)?;
    let url = resolve_url(file, &session.endpoint);
    if options.offline {
        let cached = session.block_on(async {
            match file.kind {
                RepoKind::Dataset => cached_file(&session.client.dataset(owner, name), file).await,
                RepoKind::Model => cached_file(&session.client.model(owner, name), file).await,
            }
        })?;
        let cached = cached.map_err(|err| match err {
            HFError::LocalEntryNotFound { .. } => Error::MissingOffline {
                what: format!("{} from {}", file.file, file.repo),
                path: dest.to_path_buf(),
            },
            err => map_hub_error(file, &url, err),
        })?;
        return copy_verified(&cached, dest);
    }

    let expected_sha256 = session.announced_sha256(&url, file)?;
    let client = transfer::http_client(session.read_timeout, session.token.as_deref())?;
    let resume = transfer::resume_point(dest)?;
    let response = transfer::send_get(&client, &url, resume.as_ref())?;
    transfer::receive(
        &client,
        response,
        &url,
        &file.file,
        dest,
        resume,
        expected_sha256.as_deref(),
        progress,
    )
}

/// `owner` and `name` of an `owner/name` repository id.
pub(crate) fn split_repo_id(repo: &str) -> Result<(&str, &str)> {
    repo.split_once('/')
        .filter(|(owner, name)| {
            let plain = |part: &str| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            };
            plain(owner) && plain(name)
        })
        .ok_or_else(|| Error::BadRepoId {
            repo: repo.to_string(),
        })
}

/// What every Hub request of one call shares: the address, the token, hf-hub's client (for
/// listings and its cache) and the small runtime that hf-hub's async API needs.
pub(crate) struct HubSession {
    /// The Hub's base URL, without a trailing slash.
    pub(crate) endpoint: String,
    token: Option<String>,
    read_timeout: Duration,
    pub(crate) client: HFClient,
    runtime: tokio::runtime::Runtime,
}

impl HubSession {
    /// Resolves the options and, when online, refuses an endpoint that would carry the token in
    /// the clear.
    pub(crate) fn new(options: &HubOptions) -> Result<HubSession> {
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".to_string())
            .trim_end_matches('/')
            .to_string();
        if !options.offline {
            transfer::require_https(&endpoint)?;
        }
        let read_timeout = options.read_timeout.unwrap_or(transfer::READ_TIMEOUT);
        // hf-hub uses this client for listings; its own second client (HEAD requests) is not
        // used here, since it has no timeouts.
        let http = reqwest::Client::builder()
            .user_agent(transfer::USER_AGENT)
            .connect_timeout(transfer::CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .redirect(transfer::redirect_policy())
            .build()
            .map_err(|err| Error::Offline {
                url: endpoint.clone(),
                reason: err.to_string(),
            })?;
        let mut builder = HFClient::builder().client(http).endpoint(endpoint.clone());
        let token = options.token.clone().or_else(stored_token);
        if let Some(token) = &token {
            builder = builder.token(token.clone());
        }
        if let Some(cache_dir) = &options.cache_dir {
            builder = builder.cache_dir(cache_dir.clone());
        }
        if let Some(attempts) = options.retry_max_attempts {
            builder = builder.retry_max_attempts(attempts);
        }
        let client = builder.build().map_err(|err| Error::Hub {
            repo: endpoint.clone(),
            file: String::new(),
            source: Box::new(err),
        })?;
        // hf-hub is async; one small runtime per call keeps this crate blocking for callers.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|err| Error::io("starting the download runtime for", &endpoint, err))?;
        Ok(HubSession {
            endpoint,
            token,
            read_timeout,
            client,
            runtime,
        })
    }

    /// Runs one of hf-hub's futures to its end.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output> {
        Ok(self.runtime.block_on(future))
    }

    /// The sha256 that the Hub announces for a file (the ETag of LFS and Xet files, which
    /// the resolve URL answers before redirecting to the storage), or `None` for a file whose
    /// ETag is a git blob id. Also turns a missing file or a refused token into their errors
    /// before any transfer starts.
    fn announced_sha256(&self, url: &str, file: &HubFile) -> Result<Option<String>> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(transfer::USER_AGENT)
            .connect_timeout(transfer::CONNECT_TIMEOUT)
            .timeout(self.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| Error::Offline {
                url: url.to_string(),
                reason: err.to_string(),
            })?;
        let mut request = client.head(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().map_err(|err| Error::Offline {
            url: url.to_string(),
            reason: transfer::describe_transport_error(&err),
        })?;
        let status = response.status().as_u16();
        if status >= 400 {
            return Err(transfer::status_error(url, status, &file.file));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.trim().trim_start_matches("W/").trim_matches('"'))
                .map(str::to_ascii_lowercase)
        };
        Ok(header("x-linked-etag")
            .or_else(|| header("etag"))
            .filter(|etag| is_sha256(etag)))
    }
}

/// hf-hub's cached copy of a file, without going online.
async fn cached_file<T: RepoType>(repo: &HFRepository<T>, file: &HubFile) -> HFResult<PathBuf> {
    repo.download_file()
        .filename(file.file.clone())
        .revision(file.revision.clone())
        .local_files_only(true)
        .send()
        .await
}

/// The token when the options give none, found where hf-hub looks: `HF_TOKEN`, else the file
/// saved by `huggingface-cli login` (`HF_TOKEN_PATH`, else `$HF_HOME/token`, else
/// `~/.cache/huggingface/token`).
fn stored_token() -> Option<String> {
    if let Ok(token) = std::env::var("HF_TOKEN") {
        return Some(token).filter(|token| !token.trim().is_empty());
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|home| PathBuf::from(home).join("token")))
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/huggingface/token"))
        })?;
    let token = fs::read_to_string(path).ok()?;
    Some(token.trim().to_string()).filter(|token| !token.is_empty())
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

/// LFS and Xet files carry their content's sha256 as ETag; other files a git blob id.
fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|byte| byte.is_ascii_hexdigit())
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

pub(crate) fn map_hub_error(file: &HubFile, url: &str, err: HFError) -> Error {
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
