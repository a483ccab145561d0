//! [`prepare`]: source folder → cached face crops, in parallel.

use crate::crop::{crop_and_resize, landmark_box};
use crate::detect::detect_faces;
use crate::error::option_in_range;
use crate::layout::{self, FrameJob, Scan};
use crate::parse::parse_landmarks;
use crate::{
    cache, CropMethod, Dataset, Error, Layout, PrepareOptions, Progress, Result, Sample, Selection,
    SkipKind, Skipped, Stage, Step, Summary, Usage,
};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bumped whenever the crop pipeline changes what it produces, so old caches are rebuilt.
const PIPELINE_VERSION: &str =
    "dexpression-dataset crops v4 (landmarks, SeetaFace detector, sorted samples, class lists)";

/// The largest accepted `image_size`: far above any network input, small enough that a
/// typo cannot ask for terabytes.
const MAX_IMAGE_SIZE: usize = 2048;

/// Reads a dataset, crops every selected face and caches the result.
///
/// `source` is the official CK+ release (extracted, or the folder holding its zip archives), a
/// folder per class (any class names, see [`crate::CLASSES_FILE`]) or a FER2013 CSV file; the
/// layout is detected, and the class list comes with it. When `cache_dir` holds a cache built from the
/// same file listing with the same options it is loaded instead (well under a second for CK+);
/// otherwise frames are decoded, cropped and resized in parallel with rayon and the cache is
/// written atomically (a temporary folder renamed into place), so an interrupted run leaves no
/// half-written cache. `progress` is called from worker threads.
pub fn prepare(
    source: &Path,
    cache_dir: &Path,
    options: &PrepareOptions,
    progress: &dyn Progress,
) -> Result<Dataset> {
    validate(options)?;
    if !source.exists() {
        return Err(Error::SourceMissing {
            path: source.to_path_buf(),
        });
    }
    progress.step(Step {
        stage: Stage::Scanning,
        done: 0,
        total: 0,
    });
    if crate::fer2013::is_csv(source) {
        return prepare_csv(source, cache_dir, options, progress);
    }
    let scan = match crate::archive::official_zips(source)? {
        Some(archives) => {
            let extracted = crate::archive::extract(&archives, cache_dir, progress)?;
            let mut scan = layout::scan(&extracted, options)?;
            scan.layout = Layout::OfficialZips;
            scan
        }
        None => layout::scan(source, options)?,
    };
    let planned = Planned {
        key: cache_key(&scan, options),
        layout: scan.layout,
        root: scan.root.clone(),
        class_names: scan.class_names.clone(),
        n_ignored_files: scan.n_ignored_files,
        n_candidates: scan.jobs.len(),
    };
    load_or_build(source, cache_dir, options, planned, progress, || {
        crop_all(&scan, options, progress)
    })
}

/// FER2013's CSV: hashed whole for the key (its rows are its files), parsed only when the
/// cache does not hold it.
fn prepare_csv(
    source: &Path,
    cache_dir: &Path,
    options: &PrepareOptions,
    progress: &dyn Progress,
) -> Result<Dataset> {
    let bytes = std::fs::read(source).map_err(|error| Error::io(source, error))?;
    let mut hasher = Sha256::new();
    hasher.update(PIPELINE_VERSION.as_bytes());
    hasher.update(
        format!(
            "\nlayout={}\nsize={}\nclasses={:?}\ncsv={}\n",
            Layout::Fer2013Csv,
            options.image_size,
            crate::fer2013::fer2013_class_names(),
            hex::encode(Sha256::digest(&bytes)),
        )
        .as_bytes(),
    );
    let planned = Planned {
        key: hex::encode(hasher.finalize()),
        layout: Layout::Fer2013Csv,
        root: source.parent().unwrap_or(Path::new("")).to_path_buf(),
        class_names: crate::fer2013::fer2013_class_names(),
        n_ignored_files: 0,
        n_candidates: 0,
    };
    load_or_build(source, cache_dir, options, planned, progress, || {
        crate::fer2013::parse(source, &bytes, options, progress)
    })
}

/// What a source is known to hold before its samples are built or loaded.
struct Planned {
    key: String,
    layout: Layout,
    /// The folder sample sources are relative to in the cache.
    root: std::path::PathBuf,
    class_names: Vec<String>,
    n_ignored_files: usize,
    /// Samples expected before decoding (frames listed), for the error when none is usable.
    n_candidates: usize,
}

/// Loads the cache of `planned.key`, or builds the samples with `build` and stores them.
fn load_or_build(
    source: &Path,
    cache_dir: &Path,
    options: &PrepareOptions,
    planned: Planned,
    progress: &dyn Progress,
    build: impl FnOnce() -> Result<(Vec<Sample>, Vec<Skipped>)>,
) -> Result<Dataset> {
    let Planned {
        key,
        layout,
        root,
        class_names: classes,
        n_ignored_files,
        n_candidates,
    } = planned;
    let cache_path = cache_dir.join(&key[..16]);
    if let Ok(Some(cached)) = cache::load(&cache_path, &key, &root, progress) {
        if cached.image_size == options.image_size {
            if let (true, Some(first)) = (options.strict, cached.skipped.first()) {
                return Err(Error::Strict {
                    path: first.path.clone(),
                    reason: format!("{}: {}", first.kind, first.reason),
                });
            }
            let summary = summarize(
                source,
                layout,
                &classes,
                &cached.samples,
                cached.skipped,
                cached.n_ignored_files,
                true,
                &cache_path,
            );
            return Ok(Dataset {
                image_size: options.image_size,
                class_names: classes,
                samples: cached.samples,
                key,
                summary,
            });
        }
    }

    let (samples, skipped) = build()?;
    let summary = summarize(
        source,
        layout,
        &classes,
        &samples,
        skipped,
        n_ignored_files,
        false,
        &cache_path,
    );
    if samples.is_empty() {
        return Err(Error::NoSamples {
            root: source.to_path_buf(),
            detail: format!(
                "{} candidates found, {} skipped: {}",
                n_candidates.max(summary.skipped.len()),
                summary.skipped.len(),
                summary
                    .skipped
                    .first()
                    .map_or("none".to_string(), |skip| format!(
                        "first: {}: {}",
                        skip.path.display(),
                        skip.reason
                    ))
            ),
        });
    }
    progress.step(Step {
        stage: Stage::WritingCache,
        done: 0,
        total: 1,
    });
    cache::store(
        &cache_path,
        cache::Contents {
            key: &key,
            root: &root,
            image_size: options.image_size,
            samples: &samples,
            summary: &summary,
        },
    )?;
    progress.step(Step {
        stage: Stage::WritingCache,
        done: 1,
        total: 1,
    });
    Ok(Dataset {
        image_size: options.image_size,
        class_names: classes,
        samples,
        key,
        summary,
    })
}

fn validate(options: &PrepareOptions) -> Result<()> {
    option_in_range(
        "image_size",
        options.image_size,
        1..=MAX_IMAGE_SIZE,
        "a side between 1 and 2048 pixels",
    )?;
    if options.selection == Selection::Peak(0) {
        return Err(Error::InvalidOption {
            name: "selection",
            value: "0".to_string(),
            expected: "at least 1 frame",
        });
    }
    option_in_range(
        "crop_margin",
        options.crop_margin,
        0.0..=2.0,
        "a fraction between 0 and 2",
    )
}

/// SHA-256 over the pipeline version, the options that change the crops and the source
/// listing (relative paths, sizes, label contents). File times are left out on purpose: a
/// re-extracted or copied dataset keeps its cache and its checkpoints.
fn cache_key(scan: &Scan, options: &PrepareOptions) -> String {
    let mut hasher = Sha256::new();
    hasher.update(PIPELINE_VERSION.as_bytes());
    hasher.update(
        format!(
            "\nlayout={}\nsize={}\nselect={}\nneutral={}\nmargin={}\nclasses={:?}\nsubjects={:?}\n",
            match scan.layout {
                // Zips and their extraction hold the same files.
                Layout::OfficialZips => Layout::Official,
                other => other,
            },
            options.image_size,
            options.selection,
            options.neutral,
            options.crop_margin.to_bits(),
            scan.class_names,
            options.subject_pattern,
        )
        .as_bytes(),
    );
    for line in &scan.listing {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

fn crop_all(
    scan: &Scan,
    options: &PrepareOptions,
    progress: &dyn Progress,
) -> Result<(Vec<Sample>, Vec<Skipped>)> {
    let total = scan.jobs.len();
    let done = AtomicUsize::new(0);
    progress.step(Step {
        stage: Stage::Cropping,
        done: 0,
        total,
    });
    // Each worker holds one decoded frame at a time and keeps only the small crop, so memory
    // stays at (threads x one full frame) + the crops.
    let results: Vec<std::result::Result<Sample, Skipped>> = scan
        .jobs
        .par_iter()
        .map(|job| {
            let result = crop_one(job, options);
            let done_now = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress.step(Step {
                stage: Stage::Cropping,
                done: done_now,
                total,
            });
            result
        })
        .collect();
    let mut samples = Vec::with_capacity(results.len());
    let mut skipped = scan.skipped.clone();
    sort_out(results, options.strict, &mut samples, &mut skipped)?;
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    // A stable order whatever the layout's folder order (class folders come first there).
    samples.sort_by(|a, b| {
        (&a.subject, &a.sequence, a.frame, a.label).cmp(&(
            &b.subject,
            &b.sequence,
            b.frame,
            b.label,
        ))
    });
    Ok((samples, skipped))
}

/// The largest width or height of an image that is decoded: a header may declare any size and
/// decoding allocates what it declares (a CK+ frame is 640x490).
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Why [`decode_image`] refused an image; its message is the reason in words, for a caller to
/// put after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes could not be read as an image (not even its format).
    #[error("cannot read: {0}")]
    Unreadable(std::io::Error),
    /// The header or the pixels are not a PNG, JPEG or TIFF image this decoder can read.
    #[error("cannot decode: {0}")]
    Undecodable(image::ImageError),
    /// The header declares a side beyond [`MAX_IMAGE_SIDE`].
    #[error(
        "the image is {width}x{height} pixels, more than the limit of {MAX_IMAGE_SIDE} a side"
    )]
    TooLarge {
        /// Width the header declares.
        width: u32,
        /// Height the header declares.
        height: u32,
    },
}

/// Decodes an image, refusing from its header alone, before any pixel memory is allocated, one
/// wider or taller than [`MAX_IMAGE_SIDE`].
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::DynamicImage, DecodeError> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(DecodeError::Unreadable)
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(DecodeError::Undecodable)?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(DecodeError::TooLarge { width, height });
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(DecodeError::Undecodable)
}

/// Longest side up to which a folder-per-class image counts as a ready-made face crop even
/// when it is not square (CK+48 is 48x48; larger non-square images are whole photos).
const PRECROPPED_MAX_SIDE: u32 = 256;

fn crop_one(job: &FrameJob, options: &PrepareOptions) -> std::result::Result<Sample, Skipped> {
    let skipped = |path: &Path, kind: SkipKind, reason: String| Skipped {
        path: path.to_path_buf(),
        kind,
        reason,
    };
    let bytes = std::fs::read(&job.image).map_err(|error| {
        skipped(
            &job.image,
            SkipKind::CorruptImage,
            format!("cannot read: {error}"),
        )
    })?;
    let image = decode_image(&bytes)
        .map_err(|error| skipped(&job.image, SkipKind::CorruptImage, error.to_string()))?;
    let (face, crop) = if let Some(landmarks_path) = &job.landmarks {
        let text = std::fs::read(landmarks_path).map_err(|error| {
            skipped(
                landmarks_path,
                SkipKind::BadLandmarks,
                format!("cannot read: {error}"),
            )
        })?;
        let points = parse_landmarks(&String::from_utf8_lossy(&text))
            .map_err(|error| skipped(landmarks_path, SkipKind::BadLandmarks, error.to_string()))?;
        let face = landmark_box(&points, options.crop_margin, image.width(), image.height());
        (face, CropMethod::Landmarks)
    } else if job.precropped
        && (image.width() == image.height()
            || image.width().max(image.height()) <= PRECROPPED_MAX_SIDE)
    {
        (None, CropMethod::Precropped)
    } else {
        // No landmarks: the detector's best face, else the whole frame (counted in the summary).
        match detect_faces(&image.to_luma8()).first() {
            Some(detected) => (Some(detected.face), CropMethod::Detector),
            None => (None, CropMethod::Whole),
        }
    };
    let crop = if face.is_none() && crop == CropMethod::Landmarks {
        CropMethod::Whole
    } else {
        crop
    };
    let pixels = crop_and_resize(&image, face, options.image_size as u32);
    Ok(Sample {
        pixels,
        label: job.label,
        subject: job.subject.clone(),
        sequence: job.sequence.clone(),
        frame: job.frame,
        source: job.image.clone(),
        crop,
        usage: None,
    })
}

/// Builds the printable summary from the samples and skipped files.
#[allow(clippy::too_many_arguments)]
pub(crate) fn summarize(
    source: &Path,
    layout: Layout,
    class_names: &[String],
    samples: &[Sample],
    skipped: Vec<Skipped>,
    n_ignored_files: usize,
    from_cache: bool,
    cache_path: &Path,
) -> Summary {
    let mut per_class = vec![0; class_names.len()];
    for sample in samples {
        if let Some(count) = per_class.get_mut(sample.label) {
            *count += 1;
        }
    }
    let subjects: BTreeSet<&str> = samples.iter().map(|s| s.subject.as_str()).collect();
    let sequences: BTreeSet<(&str, &str)> = samples
        .iter()
        .map(|s| (s.subject.as_str(), s.sequence.as_str()))
        .collect();
    let crops = CropMethod::ALL
        .into_iter()
        .map(|method| (method, samples.iter().filter(|s| s.crop == method).count()))
        .collect();
    let per_usage = if samples.iter().any(|s| s.usage.is_some()) {
        Usage::ALL
            .into_iter()
            .map(|usage| {
                (
                    usage,
                    samples.iter().filter(|s| s.usage == Some(usage)).count(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    Summary {
        source: source.to_path_buf(),
        layout,
        class_names: class_names.to_vec(),
        per_class,
        n_subjects: subjects.len(),
        n_sequences: sequences.len(),
        crops,
        per_usage,
        n_ignored_files,
        skipped,
        from_cache,
        cache_path: cache_path.to_path_buf(),
    }
}

/// Moves each sample into `samples` and each file left out into `skipped`; in `strict` mode the
/// first file left out is an error instead.
pub(crate) fn sort_out(
    results: impl IntoIterator<Item = std::result::Result<Sample, Skipped>>,
    strict: bool,
    samples: &mut Vec<Sample>,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    for result in results {
        match result {
            Ok(sample) => samples.push(sample),
            Err(skip) if strict => {
                return Err(Error::Strict {
                    path: skip.path,
                    reason: format!("{}: {}", skip.kind, skip.reason),
                })
            }
            Err(skip) => skipped.push(skip),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_within_the_limit_decodes() {
        let mut png = Vec::new();
        image::GrayImage::from_pixel(3, 2, image::Luma([7u8]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let image = decode_image(&png).unwrap();
        assert_eq!((image.width(), image.height()), (3, 2));
        assert_eq!(image.to_luma8().into_raw(), vec![7u8; 6]);
    }
}
