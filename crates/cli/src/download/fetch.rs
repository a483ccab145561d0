//! The download command proper, built with xtask's `download` feature.
//!
//! Argument parsing and progress bars only; fetching, verifying, converting and importing live
//! in `dexpression-download`, converting the checkpoint in `dexpression-model`.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use dexpression_download::{
    download_hub_dataset, download_mirror, fetch_drive_file, fetch_hub_file, import_ckplus,
    DataDir, DriveFile, DriveOptions, FetchStatus, Fetched, HubDataset, HubFile, HubOptions,
    MirrorSource, Progress, RepoKind, Unit, DEFAULT_MIRROR_FILE, DRIVE_ENDPOINT,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `cargo xtask download`.
#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face dataset repository (OWNER/NAME) of images and labels in parquet files,
    /// written as folder per class to <DATA>/<NAME>/ with its own class names. Without it: the
    /// CK+ mirror, into <DATA>/ckplus48.
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    /// Branch, tag or commit (a commit pins the data; `refs/convert/parquet` is the Hub's own
    /// parquet conversion of a dataset stored otherwise).
    #[arg(long, default_value = "main")]
    revision: String,
    /// A parquet file inside the repository (repeatable); with --repo, every parquet file when
    /// not given, without it the mirror's one file.
    #[arg(long)]
    file: Vec<String>,
    /// Data folder: the mirror goes to <DATA>/ckplus48, `--from` to <DATA>/ckplus, weights to <DATA>/weights.
    #[arg(long, default_value = dexpression_dataset::DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Never go online: verify what is on disk and fail if something is missing.
    #[arg(long)]
    offline: bool,
    /// Import the official CK+ release from disk (its zips, a folder of them, or the extracted folder) instead of the mirror.
    #[arg(long, value_name = "PATH")]
    from: Option<PathBuf>,
    /// Also fetch the PyTorch port's pretrained checkpoint (Google Drive) and convert it to safetensors.
    #[arg(long)]
    weights: bool,
    /// Fetch safetensors weights from this Hugging Face model repository instead of Google Drive.
    #[arg(long, value_name = "REPO")]
    weights_repo: Option<String>,
    /// The weights file inside `--weights-repo`.
    #[arg(long, value_name = "F", default_value = "model.safetensors")]
    weights_file: String,
    /// Branch, tag or commit of `--weights-repo`.
    #[arg(long, default_value = "main")]
    weights_revision: String,
    /// Fetch only the weights, no dataset.
    #[arg(long)]
    weights_only: bool,
    /// Hugging Face Hub address (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Google Drive address (for tests against a local server).
    #[arg(long, value_name = "URL", default_value = DRIVE_ENDPOINT, hide = true)]
    drive_endpoint: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let data = DataDir::new(&args.data);
    let bar = Bar::default();
    let hub = HubOptions {
        endpoint: args.endpoint.clone(),
        offline: args.offline,
        ..HubOptions::default()
    };

    if !args.weights_only {
        match &args.from {
            Some(from) => {
                let summary =
                    import_ckplus(from, &data.ckplus_dir(), &bar).map_err(with_flag_hint)?;
                let [n_images, n_emotions, n_landmarks, n_facs] = summary.n_files_per_part;
                let verb = if summary.already_imported {
                    "already imported"
                } else {
                    "imported"
                };
                println!(
                    "CK+ {verb} into {}: {n_images} images, {n_emotions} emotion labels, {n_landmarks} landmark files, {n_facs} FACS files",
                    summary.dest.display()
                );
            }
            None => {
                let summary = match &args.repo {
                    Some(repo) => {
                        let dataset = HubDataset {
                            repo: repo.clone(),
                            revision: args.revision.clone(),
                            files: args.file.clone(),
                        };
                        let download = download_hub_dataset(&data, &dataset, &hub, &bar)
                            .map_err(with_flag_hint)?;
                        for fetched in &download.files {
                            report_fetched(repo, fetched);
                        }
                        download.summary
                    }
                    None => {
                        let source = MirrorSource {
                            revision: args.revision.clone(),
                            file: args
                                .file
                                .first()
                                .cloned()
                                .unwrap_or_else(|| DEFAULT_MIRROR_FILE.to_string()),
                            ..MirrorSource::default()
                        };
                        let (parquet, summary) =
                            download_mirror(&data, &source, &hub, &bar).map_err(with_flag_hint)?;
                        report_fetched("CK+ mirror", &parquet);
                        summary
                    }
                };
                let verb = if summary.already_converted {
                    "already converted"
                } else {
                    "converted"
                };
                let per_class: Vec<String> = summary
                    .n_images_per_class
                    .iter()
                    .map(|(class, n_images)| format!("{class} {n_images}"))
                    .collect();
                println!(
                    "{} images {verb} into {} ({})",
                    summary.n_images(),
                    summary.out_dir.display(),
                    per_class.join(", ")
                );
            }
        }
    }

    if let Some(repo) = &args.weights_repo {
        let file = HubFile {
            kind: RepoKind::Model,
            repo: repo.clone(),
            revision: args.weights_revision.clone(),
            file: args.weights_file.clone(),
        };
        let name = args
            .weights_file
            .rsplit('/')
            .next()
            .unwrap_or(&args.weights_file);
        let fetched = fetch_hub_file(&file, &data.weights_dir().join(name), &hub, &bar)
            .map_err(with_flag_hint)?;
        report_fetched("weights", &fetched);
    } else if args.weights {
        let checkpoint = DriveFile::port_checkpoint();
        let drive = DriveOptions {
            endpoint: args.drive_endpoint.clone(),
            offline: args.offline,
            ..DriveOptions::default()
        };
        let fetched = fetch_drive_file(
            &checkpoint,
            &data.weights_dir().join(&checkpoint.file_name),
            &drive,
            &bar,
        )
        .map_err(with_flag_hint)?;
        report_fetched("PyTorch port checkpoint", &fetched);
        let converted = data.port_weights();
        if fetched.status == FetchStatus::AlreadyPresent && converted.is_file() {
            println!("weights already converted: {}", converted.display());
        } else {
            let summary = dexpression_model::import_torch(&fetched.path, &converted)
                .with_context(|| format!("converting {} to safetensors", fetched.path.display()))?;
            println!(
                "converted {} tensors into {}",
                summary.n_tensors,
                summary.output.display()
            );
        }
    }
    Ok(())
}

/// The library's error with the command-line flags for the options it names (the library
/// speaks of its own option fields, `HubOptions::offline`, `HubFile::repo`, ...).
fn with_flag_hint(err: dexpression_download::Error) -> anyhow::Error {
    use dexpression_download::Error;
    let hint = match &err {
        Error::Offline { .. } => {
            "without a network, import CK+ from disk with --from PATH, or use what is on disk \
             with --offline"
        }
        Error::MissingOffline { .. } => {
            "run once without --offline (or import CK+ with --from PATH)"
        }
        Error::NotFound { .. } | Error::BadRepoId { .. } | Error::NoParquet { .. } => {
            "the dataset is --repo OWNER/NAME, its revision --revision, a file in it --file; \
             weights come from --weights-repo"
        }
        Error::DriveNotFound { .. } => {
            "fetch weights from a Hub model repository with --weights-repo"
        }
        Error::ParquetCodec { .. } | Error::ParquetColumns { .. } => {
            "pick another repository, file or revision with --repo, --file, --revision, or \
             import the official CK+ release with --from"
        }
        Error::SourceInsideDestination { .. }
        | Error::DestinationNotOurs { .. }
        | Error::SymlinkLoop { .. } => "--from is the folder or zips to import",
        Error::ConversionDestinationNotOurs { .. } => "give another data folder with --data",
        _ => return anyhow::Error::new(err),
    };
    anyhow::anyhow!("{err}\n  hint: {hint}")
}

fn report_fetched(what: &str, fetched: &Fetched) {
    let how = match fetched.status {
        FetchStatus::Downloaded => format!("downloaded ({} bytes)", fetched.bytes_transferred),
        FetchStatus::Resumed => format!("resumed ({} more bytes)", fetched.bytes_transferred),
        FetchStatus::AlreadyPresent => "present and verified".to_string(),
    };
    println!(
        "{what}: {} {how}, sha256 {}",
        fetched.path.display(),
        fetched.sha256
    );
}

/// Draws the library's progress with indicatif, one bar per step.
#[derive(Default)]
struct Bar {
    current: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: Option<u64>, unit: Unit) {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        let template = match unit {
            Unit::Bytes => "{msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            Unit::Items => "{msg:32!} [{bar:30}] {pos}/{len}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        if let Ok(mut current) = self.current.lock() {
            *current = Some(bar);
        }
    }

    fn set_position(&self, done: u64) {
        if let Ok(current) = self.current.lock() {
            if let Some(bar) = current.as_ref() {
                bar.set_position(done);
            }
        }
    }

    fn end(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some(bar) = current.take() {
                bar.finish_and_clear();
            }
        }
    }

    fn note(&self, message: &str) {
        match self.current.lock().ok().and_then(|current| current.clone()) {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}
