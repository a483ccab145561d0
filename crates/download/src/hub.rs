//! Files from Hugging Face Hub repositories, through the `hf-hub` crate.
//!
//! hf-hub fetches into its own cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`); the file is then copied into the data folder with its sha256
//! beside it, so later runs, including `--offline` ones, verify it without going online.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::{HFClient, HFError, HFRepositorySync, RepoType};

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

/// Fetches one Hub file to `dest`, or verifies the copy already there.
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

    let mut builder = HFClient::builder();
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
    let client = builder.build_sync().map_err(|err| hub_error(file, err))?;
    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok())
        .unwrap_or_else(|| "https://huggingface.co".to_string());

    let cached = match file.kind {
        RepoKind::Dataset => download(
            &client.dataset(owner, name),
            file,
            options.offline,
            progress,
        ),
        RepoKind::Model => download(&client.model(owner, name), file, options.offline, progress),
    };
    let cached = cached.map_err(|err| match err {
        HFError::LocalEntryNotFound { .. } if options.offline => Error::MissingOffline {
            what: format!("{} from {}", file.file, file.repo),
            path: dest.to_path_buf(),
        },
        err => map_hub_error(file, &endpoint, err),
    })?;
    copy_verified(&cached, dest)
}

fn download<T: RepoType>(
    repo: &HFRepositorySync<T>,
    file: &HubFile,
    offline: bool,
    progress: &dyn Progress,
) -> std::result::Result<PathBuf, HFError> {
    // hf-hub wants a `'static` handler, which `progress` is not; the handler stores the latest
    // position and a scoped thread relays it to `progress` while the transfer runs.
    let position = Arc::new(RelayedPosition::default());
    let handler = PositionHandler(Arc::clone(&position));
    let label = file
        .file
        .rsplit('/')
        .next()
        .unwrap_or(&file.file)
        .to_string();
    std::thread::scope(|scope| {
        let relay = scope.spawn(|| position.relay(&label, progress));
        let result = repo
            .download_file()
            .filename(file.file.clone())
            .revision(file.revision.clone())
            .local_files_only(offline)
            .progress(handler)
            .send();
        position.finish();
        let _ = relay.join();
        result
    })
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

fn map_hub_error(file: &HubFile, endpoint: &str, err: HFError) -> Error {
    let prefix = match file.kind {
        RepoKind::Dataset => "datasets/",
        RepoKind::Model => "",
    };
    let url = format!(
        "{endpoint}/{prefix}{}/resolve/{}/{}",
        file.repo, file.revision, file.file
    );
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
        HFError::Request { source, .. } if source.is_connect() || source.is_timeout() => {
            Error::Offline {
                url,
                reason: transfer::describe_transport_error(&source),
            }
        }
        HFError::Request { source, .. } => Error::HubInterrupted {
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
    let prefix = match file.kind {
        RepoKind::Dataset => "datasets/",
        RepoKind::Model => "",
    };
    Error::Hub {
        repo: format!("{prefix}{}@{}", file.repo, file.revision),
        file: file.file.clone(),
        source: Box::new(err),
    }
}

/// The latest byte position reported by hf-hub, shared with the relaying thread.
#[derive(Default)]
struct RelayedPosition {
    state: std::sync::Mutex<RelayState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct RelayState {
    total: Option<u64>,
    done: u64,
    finished: bool,
}

impl RelayedPosition {
    fn update(&self, total: Option<u64>, done: Option<u64>) {
        if let Ok(mut state) = self.state.lock() {
            if total.is_some() {
                state.total = total;
            }
            if let Some(done) = done {
                state.done = done;
            }
            self.changed.notify_all();
        }
    }

    fn finish(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.finished = true;
            self.changed.notify_all();
        }
    }

    /// Forwards positions to `progress` until [`Self::finish`] is called.
    fn relay(&self, label: &str, progress: &dyn Progress) {
        let mut started = false;
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        loop {
            if !started && (state.total.is_some() || state.done > 0) {
                progress.begin(label, state.total, Unit::Bytes);
                started = true;
            }
            if started {
                progress.set_position(state.done);
            }
            if state.finished {
                break;
            }
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(_) => return,
            };
        }
        if started {
            progress.end();
        }
    }
}

struct PositionHandler(Arc<RelayedPosition>);

impl ProgressHandler for PositionHandler {
    fn on_progress(&self, event: &ProgressEvent) {
        match event {
            ProgressEvent::Download(DownloadEvent::Start { total_bytes, .. }) => {
                self.0.update(Some(*total_bytes), None)
            }
            ProgressEvent::Download(DownloadEvent::Progress { files }) => {
                if let Some(latest) = files.last() {
                    self.0.update(None, Some(latest.bytes_completed));
                }
            }
            ProgressEvent::Download(DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            }) => self.0.update(Some(*total_bytes), Some(*bytes_completed)),
            _ => {}
        }
    }
}
