//! Verified, resumable downloads of CK+ and of pretrained DeXpression weights, and the import of
//! the official CK+ release from disk.
//!
//! These sources, one data folder ([`DataDir`], `data/` by default):
//! - any Hugging Face image-classification dataset stored as parquet, converted into the dataset
//!   crate's folder-per-class layout with its own class names ([`download_hub_dataset`]), and the
//!   CK+ mirror (one parquet file of 48x48 face crops) as one of them, its labels read as CK+'s
//!   emotions ([`download_mirror`]);
//! - the official release that a user obtained under the CK+ licence, zipped or extracted,
//!   unpacked without going online ([`import_ckplus`]);
//! - the PyTorch port's checkpoint on Google Drive ([`fetch_drive_file`]) or weights in a Hub model
//!   repository ([`fetch_hub_file`]).
//!
//! Every downloaded file goes through a `<file>.part` that is renamed only when complete, keeps its
//! sha256 beside it in `<file>.sha256`, and is verified, not downloaded, on later runs; a file
//! that no longer matches is moved aside and reported ([`Error::ChecksumMismatch`]).
//!
//! This crate does not read CK+ for training (the dataset crate does), does not convert PyTorch
//! checkpoints (the model crate's importer does; `cargo xtask download --weights` calls it), and
//! draws no progress bars: callers pass a [`Progress`].
//!
//! ```no_run
//! use dexpression_download::{download_mirror, DataDir, HubOptions, MirrorSource, NoProgress};
//!
//! let data = DataDir::new("data");
//! let (parquet, summary) = download_mirror(&data, &MirrorSource::default(), &HubOptions::default(), &NoProgress)?;
//! println!("{} images from {}", summary.n_images(), parquet.path.display());
//! # Ok::<(), dexpression_download::Error>(())
//! ```

#![warn(missing_docs)]

mod ckplus;
mod drive;
mod error;
mod hub;
mod hub_dataset;
mod mirror;
mod progress;
mod transfer;

use std::path::PathBuf;

pub use ckplus::{import_ckplus, ImportSummary, CKPLUS_PARTS};
pub use drive::{fetch_drive_file, DriveFile, DriveOptions, DRIVE_ENDPOINT};
pub use error::{Error, Result};
pub use hub::{fetch_hub_file, HubFile, HubOptions, RepoKind};
pub use hub_dataset::{download_hub_dataset, HubDataset, HubDatasetDownload};
pub use mirror::{convert_mirror, ConversionSummary};
pub use progress::{NoProgress, Progress, Silent, Unit};
pub use transfer::{FetchStatus, Fetched};

/// The limits, file names and helpers behind the downloads, for tests that exercise them with
/// small limits or look at partial files; not a stable API (the `testing` feature turns it on).
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::ckplus::{import_ckplus_with_limits, ImportLimits, IMPORT_MARKER};
    pub use crate::drive::pin_path;
    pub use crate::hub_dataset::card_class_names;
    pub use crate::mirror::{
        class_from_name, convert_mirror_with_limits, convert_parquet_files, ClassNaming,
        MirrorLimits, SOURCE_MARKER,
    };
    pub use crate::transfer::{
        part_path, sha256_file, sidecar_path, verify_existing, CONNECT_TIMEOUT, READ_TIMEOUT,
    };
}

/// The default Hugging Face dataset repository of the CK+ mirror.
pub const DEFAULT_MIRROR_REPO: &str = "AlirezaF138/ckplus-dataset";
/// The mirror's one data file.
pub const DEFAULT_MIRROR_FILE: &str = "data/train-00000-of-00001.parquet";
/// The data folder's layout lives in the dataset crate, so that programs built without this
/// crate find the same paths; [`HubFileDir`] adds where downloaded Hub files are kept.
pub use dexpression_dataset::{DataDir, PORT_WEIGHTS_FILE};

/// Where a [`DataDir`] keeps the files downloaded from the Hugging Face Hub.
pub trait HubFileDir {
    /// Where a downloaded Hub file is kept with its checksum:
    /// `<root>/raw/<datasets|models>/<owner>/<name>/<revision>/<file>`.
    fn raw_hub_file(&self, file: &HubFile) -> PathBuf;
}

impl HubFileDir for DataDir {
    fn raw_hub_file(&self, file: &HubFile) -> PathBuf {
        let kind = match file.kind {
            RepoKind::Dataset => "datasets",
            RepoKind::Model => "models",
        };
        let mut path = self.root().join("raw").join(kind);
        path.extend(file.repo.split('/').map(safe_component));
        path.push(safe_component(&file.revision.replace('/', "--")));
        path.extend(file.file.split('/').map(safe_component));
        path
    }
}

/// Where the mirror comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSource {
    /// The dataset repository, `owner/name`.
    pub repo: String,
    /// A branch, tag or commit.
    pub revision: String,
    /// The parquet file inside the repository.
    pub file: String,
}

impl Default for MirrorSource {
    fn default() -> Self {
        MirrorSource {
            repo: DEFAULT_MIRROR_REPO.to_string(),
            revision: "main".to_string(),
            file: DEFAULT_MIRROR_FILE.to_string(),
        }
    }
}

impl MirrorSource {
    /// The parquet file as a Hub file.
    pub fn hub_file(&self) -> HubFile {
        HubFile {
            kind: RepoKind::Dataset,
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            file: self.file.clone(),
        }
    }
}

/// Downloads (or verifies) the mirror's parquet file and converts it into
/// [`DataDir::mirror_dir`], with CK+'s emotion names: [`download_hub_dataset`]'s path, for one
/// named file and `ClassNaming::CkPlus`.
///
/// A second run finds the file verified and the folder marked as converted from it, and does
/// neither again; with `hub.offline` it never goes online.
pub fn download_mirror(
    data: &DataDir,
    source: &MirrorSource,
    hub: &HubOptions,
    progress: &dyn Progress,
) -> Result<(Fetched, ConversionSummary)> {
    let dataset = HubDataset {
        repo: source.repo.clone(),
        revision: source.revision.clone(),
        files: vec![source.file.clone()],
    };
    let download = hub_dataset::fetch_and_convert(
        data,
        &dataset,
        Some(mirror::ClassNaming::CkPlus),
        &data.mirror_dir(),
        hub,
        progress,
    )?;
    let fetched = download
        .files
        .into_iter()
        .next()
        .ok_or_else(|| Error::NoParquet {
            repo: source.repo.clone(),
            revision: source.revision.clone(),
            found: Vec::new(),
        })?;
    Ok((fetched, download.summary))
}

/// A path component that cannot climb out of its folder (`refs/pr/1` stays one folder).
fn safe_component(text: &str) -> String {
    match text {
        "" | "." | ".." => "_".to_string(),
        text => text.replace(['\\', ':'], "_"),
    }
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
