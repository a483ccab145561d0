//! The on-disk cache of prepared crops: one folder per dataset key holding
//!
//! - `pixels.safetensors`: one `u8` tensor `pixels` of shape `[n, size, size]` (u8, not f32:
//!   a full CK+ at 224 is 300 MB as u8 and 1.2 GB as f32), with the key in its metadata;
//! - `manifest.csv`: `index,subject,sequence,frame,label,label_name,source,crop`, one row per
//!   sample, `source` relative to the dataset root, and a last column `usage` for sources with
//!   their own split (FER2013);
//! - `skipped.csv`: `path,kind,reason` for the files left out.
//!
//! The folder is written under a temporary name and renamed into place, so readers only ever
//! see a complete cache; each file in it is written and fsynced through [`dexpression_fsio`],
//! and the rename is fsynced too.

use crate::layout::relative;
use crate::{
    CropMethod, Error, Progress, Result, Sample, SkipKind, Skipped, Stage, Step, Summary, Usage,
};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const PIXELS_FILE: &str = "pixels.safetensors";
const MANIFEST_FILE: &str = "manifest.csv";
const SKIPPED_FILE: &str = "skipped.csv";
const PIXELS_TENSOR: &str = "pixels";

/// What [`load`] reads back.
#[derive(Debug)]
pub(crate) struct Cached {
    /// Side of the crops.
    pub image_size: usize,
    /// The samples, in manifest order.
    pub samples: Vec<Sample>,
    /// Files skipped when the cache was built.
    pub skipped: Vec<Skipped>,
    /// Stray files passed over when the cache was built.
    pub n_ignored_files: usize,
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
    /// Only in the manifests of sources with their own split (FER2013), so that the manifests
    /// of every other source keep their columns: `None` in every row leaves the column out, and
    /// a row of such a source without a usage holds `Some("")`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<String>,
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
pub(crate) fn load(
    cache_path: &Path,
    key: &str,
    root: &Path,
    progress: &dyn Progress,
) -> Result<Option<Cached>> {
    let pixels_path = cache_path.join(PIXELS_FILE);
    if !pixels_path.is_file() {
        return Ok(None);
    }
    let damaged = |reason: String| Error::Cache {
        path: pixels_path.clone(),
        reason,
    };
    let mut file = std::io::BufReader::new(
        fs::File::open(&pixels_path).map_err(|error| Error::io(&pixels_path, error))?,
    );
    let header = read_header(&mut file).map_err(damaged)?;
    if header.key.as_deref() != Some(key) {
        return Ok(None);
    }
    let file_len = fs::metadata(&pixels_path)
        .map_err(|error| Error::io(&pixels_path, error))?
        .len();
    let shape = header.shape.clone();
    let data_len = shape.iter().product::<usize>() as u64;
    if shape.len() != 3 || shape[1] != shape[2] || file_len != header.data_start + data_len {
        return Err(damaged(format!(
            "tensor `pixels` of shape {shape:?} does not fill the {file_len}-byte file"
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
    progress.step(Step {
        stage: Stage::LoadingCache,
        done: 0,
        total: n_samples,
    });
    let sample_len = image_size * image_size;
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
        if row.label >= header.n_classes {
            return Err(damaged(format!(
                "manifest row {row_idx}: label {} out of range",
                row.label
            )));
        }
        let usage = match row.usage.as_deref().filter(|text| !text.is_empty()) {
            Some(text) => Some(Usage::parse(text).ok_or_else(|| {
                damaged(format!("manifest row {row_idx}: unknown usage `{text}`"))
            })?),
            None => None,
        };
        // Read straight into each sample's buffer: the crops are never in memory twice.
        let mut pixels = vec![0; sample_len];
        file.read_exact(&mut pixels)
            .map_err(|error| damaged(format!("crop {row_idx}: {error}")))?;
        samples.push(Sample {
            pixels,
            label: row.label,
            subject: row.subject,
            sequence: row.sequence,
            frame: row.frame,
            source: root.join(row.source),
            crop,
            usage,
        });
    }
    progress.step(Step {
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
        n_ignored_files: header.n_ignored_files,
    }))
}

/// What [`store`] writes: the crops, and the listing and options they came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Contents<'a> {
    /// Identifies the source listing and the options (see [`crate::Dataset::key`]).
    pub key: &'a str,
    /// The dataset root, which the manifest's paths are relative to.
    pub root: &'a Path,
    /// Side of the crops.
    pub image_size: usize,
    /// The crops.
    pub samples: &'a [Sample],
    /// The summary of the source, for the header and `skipped.csv`.
    pub summary: &'a Summary,
}

/// Writes the cache into `cache_path` atomically, replacing any older content.
pub(crate) fn store(cache_path: &Path, contents: Contents) -> Result<()> {
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
    let result = write_files(&temporary, contents).and_then(|()| {
        if cache_path.exists() {
            fs::remove_dir_all(cache_path).map_err(|error| Error::io(cache_path, error))?;
        }
        if let Err(error) = fs::rename(&temporary, cache_path) {
            // Another process (a fold job of the same run) put the same cache in place between
            // the check above and the rename: theirs is as good as ours.
            if !cache_path.join(PIXELS_FILE).is_file() {
                return Err(Error::io(cache_path, error));
            }
            let _ = fs::remove_dir_all(&temporary);
        }
        dexpression_fsio::sync_dir(parent)?;
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&temporary);
    }
    result
}

fn write_files(folder: &Path, contents: Contents) -> Result<()> {
    let Contents {
        key,
        root,
        image_size,
        samples,
        summary,
    } = contents;
    write_pixels(&folder.join(PIXELS_FILE), key, image_size, samples, summary)?;
    let has_usage = samples.iter().any(|sample| sample.usage.is_some());
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
            usage: has_usage.then(|| {
                sample
                    .usage
                    .map(Usage::name)
                    .unwrap_or_default()
                    .to_string()
            }),
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
    dexpression_fsio::write_with(path, |out| {
        let mut writer = csv::Writer::from_writer(out);
        for row in rows {
            writer.serialize(row).map_err(csv_error)?;
        }
        writer.flush().map_err(|error| Error::io(path, error))
    })
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

/// The parts of the safetensors header this cache uses.
struct Header {
    shape: Vec<usize>,
    /// Byte offset of the tensor data in the file.
    data_start: u64,
    key: Option<String>,
    n_ignored_files: usize,
    /// Labels in the manifest must be below this.
    n_classes: usize,
}

/// Writes the crops as a safetensors file with one `u8` tensor, streaming sample by sample so
/// the crops are never copied into one big buffer. The format: an 8-byte little-endian header
/// length, a JSON header padded with spaces to a multiple of 8, then the raw data.
fn write_pixels(
    path: &Path,
    key: &str,
    image_size: usize,
    samples: &[Sample],
    summary: &Summary,
) -> Result<()> {
    let sample_len = image_size * image_size;
    let data_len = samples.len() * sample_len;
    let header = serde_json::json!({
        "__metadata__": {
            "key": key,
            "layout": summary.layout.name(),
            "n_ignored_files": summary.n_ignored_files.to_string(),
            "class_names": serde_json::to_string(&summary.class_names).unwrap_or_default(),
        },
        PIXELS_TENSOR: {
            "dtype": "U8",
            "shape": [samples.len(), image_size, image_size],
            "data_offsets": [0, data_len],
        },
    });
    let mut header = header.to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    dexpression_fsio::write_with(path, |writer| {
        let mut write = |bytes: &[u8]| {
            writer
                .write_all(bytes)
                .map_err(|error| Error::io(path, error))
        };
        write(&(header.len() as u64).to_le_bytes())?;
        write(&header)?;
        for sample in samples {
            if sample.pixels.len() != sample_len {
                return Err(Error::Cache {
                    path: path.to_path_buf(),
                    reason: format!(
                        "crop of {} has {} pixels, expected {sample_len}",
                        sample.source.display(),
                        sample.pixels.len()
                    ),
                });
            }
            write(&sample.pixels)?;
        }
        Ok(())
    })
}

impl From<dexpression_fsio::Error> for Error {
    fn from(error: dexpression_fsio::Error) -> Self {
        let kind = error.error.kind();
        let message = format!("cannot {}: {}", error.step, error.error);
        Error::io(error.path, std::io::Error::new(kind, message))
    }
}

/// Reads the header of a cache file written by [`write_pixels`], leaving `file` at the data.
fn read_header(file: &mut impl Read) -> std::result::Result<Header, String> {
    // Headers of this cache are a few hundred bytes; refuse anything absurd before allocating.
    const MAX_HEADER_LEN: u64 = 1 << 20;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|error| format!("header length: {error}"))?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER_LEN {
        return Err(format!("header of {length} bytes"));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header)
        .map_err(|error| format!("header: {error}"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|error| format!("header: {error}"))?;
    let tensor = &header[PIXELS_TENSOR];
    if tensor["dtype"] != "U8" || tensor["data_offsets"][0] != 0 {
        return Err(format!(
            "tensor `{PIXELS_TENSOR}` missing or not u8 from offset 0"
        ));
    }
    let shape = tensor["shape"]
        .as_array()
        .map(|dims| {
            dims.iter()
                .filter_map(serde_json::Value::as_u64)
                .map(|dim| dim as usize)
                .collect()
        })
        .unwrap_or_default();
    let metadata = &header["__metadata__"];
    let text = |name: &str| metadata[name].as_str().map(str::to_string);
    Ok(Header {
        shape,
        data_start: 8 + length,
        key: text("key"),
        n_ignored_files: text("n_ignored_files")
            .and_then(|count| count.parse().ok())
            .unwrap_or(0),
        n_classes: text("class_names")
            .and_then(|names| serde_json::from_str::<Vec<String>>(&names).ok())
            .map_or(0, |names| names.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layout;

    /// The hand-written file must be valid safetensors for other readers (candle, Python).
    #[test]
    fn pixels_file_is_valid_safetensors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let samples: Vec<Sample> = (0..3u8)
            .map(|value| Sample {
                pixels: vec![value; 4],
                label: value as usize,
                subject: "S010".into(),
                sequence: "S010_001".into(),
                frame: value as u32,
                source: PathBuf::from("x.png"),
                crop: CropMethod::Landmarks,
                usage: None,
            })
            .collect();
        let summary = crate::prepare::summarize(
            Path::new("src"),
            Layout::Official,
            &crate::class_names(false),
            &samples,
            Vec::new(),
            2,
            false,
            dir.path(),
        );
        let path = dir.path().join(PIXELS_FILE);
        write_pixels(&path, "abc", 2, &samples, &summary).expect("written");
        let bytes = fs::read(&path).expect("read back");
        let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let pixels = tensors.tensor(PIXELS_TENSOR).expect("pixels tensor");
        assert_eq!(pixels.shape(), &[3, 2, 2]);
        assert_eq!(pixels.dtype(), safetensors::Dtype::U8);
        assert_eq!(pixels.data(), &[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        let header = read_header(&mut bytes.as_slice()).expect("header");
        assert_eq!(header.key.as_deref(), Some("abc"));
        assert_eq!(header.n_ignored_files, 2);
        assert_eq!(header.data_start as usize + 12, bytes.len());
    }
}
