//! The on-disk cache of prepared crops: one folder per dataset key holding
//!
//! - `pixels.safetensors`: one `u8` tensor `pixels` of shape `[n, size, size]` (u8, not f32:
//!   a full CK+ at 224 is 300 MB as u8 and 1.2 GB as f32), with the key in its metadata;
//! - `manifest.csv`: `index,subject,sequence,frame,label,label_name,source,crop`, one row per
//!   sample, `source` relative to the dataset root;
//! - `skipped.csv`: `path,kind,reason` for the files left out.
//!
//! The folder is written under a temporary name and renamed into place, so readers only ever
//! see a complete cache.

use crate::layout::relative;
use crate::{
    CropMethod, Error, Layout, Progress, Result, Sample, SkipKind, Skipped, Stage, Summary,
};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

const PIXELS_FILE: &str = "pixels.safetensors";
const MANIFEST_FILE: &str = "manifest.csv";
const SKIPPED_FILE: &str = "skipped.csv";
const PIXELS_TENSOR: &str = "pixels";

/// What [`load`] reads back.
#[derive(Debug)]
pub struct Cached {
    /// Side of the crops.
    pub image_size: usize,
    /// The samples, in manifest order.
    pub samples: Vec<Sample>,
    /// Files skipped when the cache was built.
    pub skipped: Vec<Skipped>,
    /// Stray files passed over when the cache was built.
    pub n_ignored_files: usize,
    /// The layout the source was read as.
    pub layout: Option<Layout>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ManifestRow {
    index: usize,
    subject: String,
    sequence: String,
    frame: u32,
    label: usize,
    label_name: String,
    source: String,
    crop: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SkippedRow {
    path: String,
    kind: String,
    reason: String,
}

/// Reads the cache in `cache_path` if it exists and was built for `key`; `Ok(None)` when it
/// is missing or belongs to other data, an error when it is present but damaged. Sample
/// sources are resolved against `root`.
pub fn load(
    cache_path: &Path,
    key: &str,
    root: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Option<Cached>> {
    let pixels_path = cache_path.join(PIXELS_FILE);
    if !pixels_path.is_file() {
        return Ok(None);
    }
    let damaged = |reason: String| Error::Cache {
        path: pixels_path.clone(),
        reason,
    };
    let bytes = fs::read(&pixels_path).map_err(|error| Error::io(&pixels_path, error))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|error| damaged(error.to_string()))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|error| damaged(error.to_string()))?;
    let info = metadata.metadata().clone().unwrap_or_default();
    if info.get("key").map(String::as_str) != Some(key) {
        return Ok(None);
    }
    let pixels = tensors
        .tensor(PIXELS_TENSOR)
        .map_err(|error| damaged(error.to_string()))?;
    let shape = pixels.shape().to_vec();
    if pixels.dtype() != Dtype::U8 || shape.len() != 3 || shape[1] != shape[2] {
        return Err(damaged(format!(
            "tensor `pixels` is {:?} {shape:?}, expected u8 [n, size, size]",
            pixels.dtype()
        )));
    }
    let (n_samples, image_size) = (shape[0], shape[1]);
    let rows: Vec<ManifestRow> = read_csv(&cache_path.join(MANIFEST_FILE))?;
    if rows.len() != n_samples {
        return Err(damaged(format!(
            "{n_samples} crops but {} manifest rows",
            rows.len()
        )));
    }
    progress(Progress {
        stage: Stage::LoadingCache,
        done: 0,
        total: n_samples,
    });
    let sample_len = image_size * image_size;
    let data = pixels.data();
    let mut samples = Vec::with_capacity(n_samples);
    for (row_idx, row) in rows.into_iter().enumerate() {
        let crop: CropMethod = row.crop.parse().map_err(|_| {
            damaged(format!(
                "manifest row {row_idx}: unknown crop `{}`",
                row.crop
            ))
        })?;
        if row.index != row_idx {
            return Err(damaged(format!(
                "manifest row {row_idx} has index {}",
                row.index
            )));
        }
        samples.push(Sample {
            pixels: data[row_idx * sample_len..(row_idx + 1) * sample_len].to_vec(),
            label: row.label,
            subject: row.subject,
            sequence: row.sequence,
            frame: row.frame,
            source: root.join(row.source),
            crop,
        });
    }
    progress(Progress {
        stage: Stage::LoadingCache,
        done: n_samples,
        total: n_samples,
    });
    let skipped_rows: Vec<SkippedRow> = read_csv(&cache_path.join(SKIPPED_FILE))?;
    let skipped = skipped_rows
        .into_iter()
        .map(|row| Skipped {
            path: PathBuf::from(row.path),
            kind: SkipKind::from_name(&row.kind).unwrap_or(SkipKind::CorruptImage),
            reason: row.reason,
        })
        .collect();
    Ok(Some(Cached {
        image_size,
        samples,
        skipped,
        n_ignored_files: info
            .get("n_ignored_files")
            .and_then(|count| count.parse().ok())
            .unwrap_or(0),
        layout: info.get("layout").and_then(|name| Layout::from_name(name)),
    }))
}

/// Writes the cache for `key` into `cache_path` atomically, replacing any older content.
pub fn store(
    cache_path: &Path,
    key: &str,
    root: &Path,
    image_size: usize,
    samples: &[Sample],
    summary: &Summary,
) -> Result<()> {
    let parent = cache_path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
    let temporary = parent.join(format!(
        ".tmp-{}-{}",
        crate::layout::file_name(cache_path),
        std::process::id()
    ));
    if temporary.exists() {
        fs::remove_dir_all(&temporary).map_err(|error| Error::io(&temporary, error))?;
    }
    fs::create_dir_all(&temporary).map_err(|error| Error::io(&temporary, error))?;
    let result = write_files(&temporary, key, root, image_size, samples, summary).and_then(|()| {
        if cache_path.exists() {
            fs::remove_dir_all(cache_path).map_err(|error| Error::io(cache_path, error))?;
        }
        fs::rename(&temporary, cache_path).map_err(|error| Error::io(cache_path, error))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&temporary);
    }
    result
}

fn write_files(
    folder: &Path,
    key: &str,
    root: &Path,
    image_size: usize,
    samples: &[Sample],
    summary: &Summary,
) -> Result<()> {
    let sample_len = image_size * image_size;
    let mut data = Vec::with_capacity(samples.len() * sample_len);
    for sample in samples {
        debug_assert_eq!(sample.pixels.len(), sample_len);
        data.extend_from_slice(&sample.pixels);
    }
    let pixels_path = folder.join(PIXELS_FILE);
    let shape = vec![samples.len(), image_size, image_size];
    let view = TensorView::new(Dtype::U8, shape, &data).map_err(|error| Error::Cache {
        path: pixels_path.clone(),
        reason: error.to_string(),
    })?;
    let metadata = HashMap::from([
        ("key".to_string(), key.to_string()),
        ("layout".to_string(), summary.layout.name().to_string()),
        (
            "n_ignored_files".to_string(),
            summary.n_ignored_files.to_string(),
        ),
        ("class_names".to_string(), summary.class_names.join(",")),
    ]);
    safetensors::serialize_to_file([(PIXELS_TENSOR, view)], Some(metadata), &pixels_path).map_err(
        |error| Error::Cache {
            path: pixels_path.clone(),
            reason: error.to_string(),
        },
    )?;

    let manifest = samples
        .iter()
        .enumerate()
        .map(|(index, sample)| ManifestRow {
            index,
            subject: sample.subject.clone(),
            sequence: sample.sequence.clone(),
            frame: sample.frame,
            label: sample.label,
            label_name: summary
                .class_names
                .get(sample.label)
                .cloned()
                .unwrap_or_default(),
            source: relative(root, &sample.source),
            crop: sample.crop.name().to_string(),
        });
    write_csv(&folder.join(MANIFEST_FILE), manifest)?;
    let skipped = summary.skipped.iter().map(|skip| SkippedRow {
        path: skip.path.to_string_lossy().into_owned(),
        kind: skip.kind.name().to_string(),
        reason: skip.reason.clone(),
    });
    write_csv(&folder.join(SKIPPED_FILE), skipped)
}

fn write_csv<T: serde::Serialize>(path: &Path, rows: impl Iterator<Item = T>) -> Result<()> {
    let csv_error = |error: csv::Error| Error::Cache {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    for row in rows {
        writer.serialize(row).map_err(csv_error)?;
    }
    writer.flush().map_err(|error| Error::io(path, error))
}

fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let csv_error = |error: csv::Error| Error::Cache {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_error)?;
    reader
        .deserialize()
        .collect::<std::result::Result<Vec<T>, _>>()
        .map_err(csv_error)
}
