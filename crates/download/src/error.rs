//! The one error type of the crate: every variant names what was tried (a URL, a file, a
//! repository) and says what to do next, so a message printed alone is enough to act on.

use std::path::PathBuf;

/// Everything that can go wrong while downloading, verifying, converting or importing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached at all (no network, DNS failure, refused connection).
    #[error(
        "could not reach {url}: {reason}. Check the network connection (and HTTPS_PROXY/NO_PROXY). \
         Without a network, CK+ can be imported from disk (`import_ckplus`), and files \
         downloaded before are used as they are offline (`HubOptions::offline`)"
    )]
    Offline {
        /// What was being fetched.
        url: String,
        /// The transport's own description of the failure.
        reason: String,
    },

    /// `--offline` was given but a file that needs downloading is not on disk yet.
    #[error(
        "offline: {what} is not on disk yet (looked for {}); run once online (without \
         `HubOptions::offline`) to download it (CK+ can also be imported from disk with \
         `import_ckplus`)",
        path.display()
    )]
    MissingOffline {
        /// What was needed, in words.
        what: String,
        /// Where it was expected.
        path: PathBuf,
    },

    /// 401 or 403: the server wants credentials, or the ones sent are not enough.
    #[error(
        "{url} answered {status} (not authorised): the repository is gated, private, or the token \
         is wrong. Accept the dataset's terms on its Hugging Face page, then set HF_TOKEN to an \
         access token (https://huggingface.co/settings/tokens) and run again"
    )]
    Unauthorized {
        /// The URL or repository that refused.
        url: String,
        /// The HTTP status code (401 or 403).
        status: u16,
    },

    /// 404: the repository, the revision or the file does not exist.
    #[error(
        "{url} was not found (404): check the repository name (`HubFile::repo`), the revision \
         (`HubFile::revision`) and the file name ({file})"
    )]
    NotFound {
        /// The URL or repository that was asked for.
        url: String,
        /// The file name inside the repository, or the Drive file id.
        file: String,
    },

    /// 404 from Google Drive: the file id is no longer shared.
    #[error(
        "Google Drive has no file {id} ({url} answered 404): the file is no longer shared there. \
         Fetch weights from a Hub model repository (`fetch_hub_file`), or place the file at {} \
         yourself",
        dest.display()
    )]
    DriveNotFound {
        /// The URL asked.
        url: String,
        /// The Drive file id.
        id: String,
        /// Where the file should have gone.
        dest: PathBuf,
    },

    /// Any other unexpected HTTP status.
    #[error("{url} answered HTTP {status}; try again later, or check the address")]
    Http {
        /// The URL that answered.
        url: String,
        /// The HTTP status code.
        status: u16,
    },

    /// The connection broke in the middle of a transfer; the bytes received so far are kept.
    #[error(
        "the transfer of {url} stopped after {bytes_received} bytes ({reason}); the partial file \
         is kept at {} and the next run resumes from there",
        part.display()
    )]
    Interrupted {
        /// The URL being fetched.
        url: String,
        /// The partial file kept for resuming.
        part: PathBuf,
        /// How many bytes the partial file now holds.
        bytes_received: u64,
        /// The transport's own description of the failure.
        reason: String,
    },

    /// The server closed the transfer before sending as many bytes as it announced.
    #[error(
        "{url} ended after {received} of {expected} bytes (truncated); the partial file is kept \
         at {} and the next run resumes from there",
        part.display()
    )]
    Truncated {
        /// The URL being fetched.
        url: String,
        /// The partial file kept for resuming.
        part: PathBuf,
        /// Bytes announced by the server.
        expected: u64,
        /// Bytes actually on disk.
        received: u64,
    },

    /// The server sent a body without announcing its length and would not confirm, when asked
    /// for the bytes after it, that there are none: a dropped connection looks the same.
    #[error(
        "{url} sent {received} bytes without saying how many to expect, and did not confirm that \
         this is the whole file; the partial file is kept at {} but not used. Run again to \
         continue it, or download the file in a browser and place it at the destination",
        part.display()
    )]
    LengthUnconfirmed {
        /// The URL being fetched.
        url: String,
        /// The partial file.
        part: PathBuf,
        /// Bytes on disk.
        received: u64,
    },

    /// A URL that would send requests (and a token) unencrypted.
    #[error("refusing to fetch {url}: {reason}")]
    Insecure {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },

    /// A file downloaded again no longer has the sha256 recorded the first time it was fetched
    /// (trust on first use).
    #[error(
        "{} has sha256 {actual}, but the first download of this file (recorded in {}) had \
         {expected}: the file on the server changed, or something between it and this machine \
         altered it. It was moved aside to {} and not used. If you trust the new file, delete {} \
         and run again",
        path.display(),
        pin.display(),
        moved_to.display(),
        pin.display()
    )]
    PinMismatch {
        /// The file downloaded.
        path: PathBuf,
        /// The file that records the first download's sha256.
        pin: PathBuf,
        /// The recorded sha256.
        expected: String,
        /// The sha256 of the new download.
        actual: String,
        /// Where the new download now lies.
        moved_to: PathBuf,
    },

    /// A file on disk no longer matches the sha256 recorded when it was downloaded.
    #[error(
        "{} does not match its recorded sha256 (expected {expected}, found {actual}); it was moved \
         aside to {} and will not be used. Run the command again to download a fresh copy",
        path.display(),
        moved_to.display()
    )]
    ChecksumMismatch {
        /// The file that failed verification.
        path: PathBuf,
        /// The recorded checksum.
        expected: String,
        /// The checksum of the file as found.
        actual: String,
        /// Where the bad file now lies.
        moved_to: PathBuf,
    },

    /// The disk filled up while writing.
    #[error(
        "the disk is full while writing {}; free some space (CK+ needs about 2 GB, the mirror \
         a few MB) and run again, finished files are kept",
        path.display()
    )]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },

    /// Any other failure to read or write a local file.
    #[error("{} while {action} {}", source, path.display())]
    Io {
        /// What was being done ("writing", "reading", ...).
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A Hugging Face Hub request failed for a reason not covered above.
    #[error("Hugging Face Hub request for {file} in {repo} failed: {source}")]
    Hub {
        /// The repository, such as `datasets/AlirezaF138/ckplus-dataset`.
        repo: String,
        /// The file inside it.
        file: String,
        /// hf-hub's error.
        source: Box<hf_hub::HFError>,
    },

    /// A repository id that is not `owner/name`.
    #[error("repository id {repo:?} is not of the form owner/name (for example AlirezaF138/ckplus-dataset)")]
    BadRepoId {
        /// The id as given.
        repo: String,
    },

    /// Google Drive answered with a page that holds no download link or confirmation token.
    #[error(
        "Google Drive answered {url} with an HTML page that holds no download link or confirmation \
         token (the file may have hit its download quota, or been removed); try again later or \
         download it in a browser and place it at {}",
        dest.display()
    )]
    DriveNoConfirmation {
        /// The Drive URL asked.
        url: String,
        /// Where the file should have gone.
        dest: PathBuf,
    },

    /// The parquet file could not be read at all.
    #[error("{} is not a readable parquet file ({reason}); delete it and run again to fetch a fresh copy", path.display())]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// The parquet reader's message.
        reason: String,
    },

    /// The parquet file uses a compression codec that this build does not read.
    #[error(
        "{} uses a compression codec this build does not read ({reason}); it reads snappy, gzip, \
         lz4 and zstd. Pick another file or revision (`HubFile::file`, \
         `HubFile::revision`), or import the official release (`import_ckplus`)",
        path.display()
    )]
    ParquetCodec {
        /// The parquet file.
        path: PathBuf,
        /// The parquet reader's message.
        reason: String,
    },

    /// The parquet file has no column usable as image or label.
    #[error(
        "{} has no usable {missing} column: expected `image` (struct {{bytes, path}} or binary) \
         and `label` (class name or integer), found columns [{}]. Pick another file or revision \
         (`HubFile::repo`, `HubFile::revision`)",
        path.display(),
        found.join(", ")
    )]
    ParquetColumns {
        /// The parquet file.
        path: PathBuf,
        /// Which column is missing or unusable ("image" or "label").
        missing: &'static str,
        /// The top-level columns found, with their types.
        found: Vec<String>,
    },

    /// A row whose label names no class.
    #[error("{} row {row}: label {value:?} is not {expected}", path.display())]
    BadLabel {
        /// The parquet file.
        path: PathBuf,
        /// The row index, from 0.
        row: usize,
        /// The label as found.
        value: String,
        /// What a label must be, in words.
        expected: String,
    },

    /// Integer labels with no class names for them, neither in the parquet file's metadata nor
    /// in the dataset card.
    #[error(
        "{} labels its images with integers in column `{column}`, but neither the file's \
         `huggingface` metadata nor the dataset card (README.md, `dataset_info` features) names \
         the classes, so there is nothing to call the class folders. Add a `class_label` with \
         `names` to the card, or store the labels as strings",
        path.display()
    )]
    NoClassNames {
        /// The parquet file.
        path: PathBuf,
        /// The label column.
        column: String,
    },

    /// A dataset repository without parquet files.
    #[error(
        "{repo} at revision {revision} holds no parquet file (files found: [{}]); only datasets \
         stored as parquet (as the Hub converts image datasets) can be downloaded. Pick another \
         repository or revision",
        found.join(", ")
    )]
    NoParquet {
        /// The repository, `owner/name`.
        repo: String,
        /// The revision listed.
        revision: String,
        /// A few of the files found.
        found: Vec<String>,
    },

    /// A row whose image bytes do not decode.
    #[error("{} row {row}: the image does not decode ({reason})", path.display())]
    BadImage {
        /// The parquet file.
        path: PathBuf,
        /// The row index, from 0.
        row: usize,
        /// The decoder's message.
        reason: String,
    },

    /// `--from` points inside the folder the import replaces.
    #[error(
        "{} lies inside {}, the folder that the import replaces: importing would delete it. Move \
         the CK+ files elsewhere (for example ~/Downloads/ckplus) and import from that folder",
        from.display(),
        dest.display()
    )]
    SourceInsideDestination {
        /// What was given to `--from`.
        from: PathBuf,
        /// The import folder.
        dest: PathBuf,
    },

    /// The import folder holds files that no import wrote.
    #[error(
        "{} already holds files that no import wrote (it has no {} marker); they are left as they \
         are. Move them away, or import them from where they are",
        dest.display(),
        crate::ckplus::IMPORT_MARKER
    )]
    DestinationNotOurs {
        /// The import folder.
        dest: PathBuf,
    },

    /// The mirror's output folder holds files that no conversion wrote.
    #[error(
        "{} already holds files that no mirror conversion wrote (it has no {} marker); they are \
         left as they are. Move them away, or convert into another folder",
        dest.display(),
        crate::mirror::SOURCE_MARKER
    )]
    ConversionDestinationNotOurs {
        /// The output folder.
        dest: PathBuf,
    },

    /// A symbolic link that leads back into a folder being walked.
    #[error(
        "{} is a symbolic link back to {}, a folder it lies in: following it would never end. \
         Remove the link or import from a folder without it",
        link.display(),
        target.display()
    )]
    SymlinkLoop {
        /// The link found.
        link: PathBuf,
        /// The folder it leads to.
        target: PathBuf,
    },

    /// An input beyond one of the limits that protect the disk and memory.
    #[error("{} exceeds the limit of {limit}; is it the file you meant? (a damaged or crafted file can claim anything)", path.display())]
    TooLarge {
        /// The file or folder.
        path: PathBuf,
        /// The limit, in words.
        limit: String,
    },

    /// A zip archive that cannot be read.
    #[error("{} is not a readable zip archive ({reason})", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The zip reader's message.
        reason: String,
    },

    /// An input given to `--from` that holds nothing from the CK+ release.
    #[error(
        "{} does not look like the CK+ release: none of its entries lies under \
         cohn-kanade-images/, Emotion/, Landmarks/ or FACS/ (first entries: [{}]). Give the \
         official zips (extended-cohn-kanade-images.zip, Emotion_labels.zip, ...) or the folder \
         they were extracted into",
        path.display(),
        found.join(", ")
    )]
    NotCkPlus {
        /// The zip or folder given.
        path: PathBuf,
        /// A few of the entries found, to show what it is instead.
        found: Vec<String>,
    },

    /// The import found some of CK+ but not the parts training needs.
    #[error(
        "the CK+ import from {} lacks {}: give all the official archives (the images are in \
         extended-cohn-kanade-images.zip, the labels in Emotion_labels.zip)",
        from.display(),
        missing.join(" and ")
    )]
    IncompleteCkPlus {
        /// What was given to `--from`.
        from: PathBuf,
        /// The missing parts, such as `cohn-kanade-images/ (PNG frames)`.
        missing: Vec<String>,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error, turning "no space left" into [`Error::DiskFull`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::StorageFull {
            Error::DiskFull { path }
        } else {
            Error::Io {
                action,
                path,
                source,
            }
        }
    }
}
