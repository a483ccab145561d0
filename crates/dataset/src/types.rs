//! The data types every source ends in: samples, options, the prepared dataset and its summary.

use crate::Error;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// One face crop with its label and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `image_size * image_size` grayscale pixels, row-major, 0..=255 (the train crate divides
    /// by 255).
    pub pixels: Vec<u8>,
    /// Class index into the dataset's class names.
    pub label: usize,
    /// Person id, e.g. `S010`; when the source does not name people, a name of the sample's own
    /// (`<class folder>/<stem>`, `row000001`), so that every sample is a group of one.
    pub subject: String,
    /// Sequence id, e.g. `S010_004`.
    pub sequence: String,
    /// Frame number within the sequence (1-based in CK+; 0 when unknown).
    pub frame: u32,
    /// The image file the crop was taken from.
    pub source: PathBuf,
    /// How the face was found.
    pub crop: CropMethod,
    /// The part of the dataset's own split the sample belongs to, where the source has one
    /// (FER2013's `Usage` column); `None` elsewhere.
    pub usage: Option<Usage>,
}

/// The parts of a dataset's own split, as FER2013 names them in its `Usage` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Usage {
    /// Trained on.
    Training,
    /// Used to choose the epoch (the literature's validation set).
    PublicTest,
    /// Only reported (the literature's test set).
    PrivateTest,
}

impl Usage {
    /// All three, in FER2013's order.
    pub const ALL: [Usage; 3] = [Usage::Training, Usage::PublicTest, Usage::PrivateTest];

    /// The name as written in FER2013's `Usage` column and in `manifest.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Usage::Training => "Training",
            Usage::PublicTest => "PublicTest",
            Usage::PrivateTest => "PrivateTest",
        }
    }

    /// Reads a `Usage` value, ignoring case and surrounding spaces.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        Usage::ALL
            .into_iter()
            .find(|usage| usage.name().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// How a sample's face region was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CropMethod {
    /// Box of the 68 CK+ landmarks, widened by the crop margin and made square.
    Landmarks,
    /// Box found by a face detector.
    Detector,
    /// No face box was available: the whole image was resized.
    Whole,
    /// The source image already is a face crop (folder-per-class copies such as CK+48).
    Precropped,
}

impl CropMethod {
    /// All methods, in summary order.
    pub const ALL: [CropMethod; 4] = [
        CropMethod::Landmarks,
        CropMethod::Detector,
        CropMethod::Whole,
        CropMethod::Precropped,
    ];

    /// Lower-case name, as written in `manifest.csv`.
    pub fn name(self) -> &'static str {
        match self {
            CropMethod::Landmarks => "landmarks",
            CropMethod::Detector => "detector",
            CropMethod::Whole => "whole",
            CropMethod::Precropped => "precropped",
        }
    }
}

impl fmt::Display for CropMethod {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for CropMethod {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        CropMethod::ALL
            .into_iter()
            .find(|method| method.name() == text)
            .ok_or_else(|| Error::InvalidOption {
                name: "crop",
                value: text.to_string(),
                expected: "landmarks, detector, whole or precropped",
            })
    }
}

/// Which frames of a labeled CK+ sequence become samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selection {
    /// The last N frames (the peak of the expression). `Peak(3)` is the default and the common
    /// protocol in the literature (and the "CK+48" copy).
    Peak(usize),
    /// Every frame of a labeled sequence gets the sequence's label, including the near-neutral
    /// onset frames: what the PyTorch port trained on.
    All,
}

impl Default for Selection {
    fn default() -> Self {
        Selection::Peak(3)
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::Peak(n_frames) => write!(formatter, "peak{n_frames}"),
            Selection::All => formatter.write_str("all"),
        }
    }
}

impl FromStr for Selection {
    type Err = Error;
    /// Reads `all`, `peak` (3 frames) or `peakN`.
    fn from_str(text: &str) -> Result<Self, Error> {
        let lower = text.trim().to_ascii_lowercase();
        let invalid = || Error::InvalidOption {
            name: "select",
            value: text.to_string(),
            expected: "`all`, `peak` or `peakN` with N >= 1",
        };
        if lower == "all" {
            return Ok(Selection::All);
        }
        let Some(count) = lower.strip_prefix("peak") else {
            return Err(invalid());
        };
        if count.is_empty() {
            return Ok(Selection::default());
        }
        match count.parse::<usize>() {
            Ok(n_frames) if n_frames >= 1 => Ok(Selection::Peak(n_frames)),
            _ => Err(invalid()),
        }
    }
}

/// How [`crate::prepare`] turns a source into samples.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// Side of the square output crops in pixels (224 by default: the network's input).
    pub image_size: usize,
    /// Which frames of each labeled sequence to keep (default: the last 3).
    pub selection: Selection,
    /// Add each labeled sequence's first frame as an 8th class, Neutral (default: off). Only
    /// the official CK+ layout has neutral frames to add; a folder-per-class dataset's `neutral`
    /// folder is a class like any other.
    pub neutral: bool,
    /// Stop at the first bad file instead of skipping and listing it (default: off).
    pub strict: bool,
    /// How much the landmark box is widened on each side, as a fraction of its larger side
    /// (default 0.1: the 68 points run from brow to chin, so this keeps the forehead's lower
    /// part and the jaw line in view).
    pub crop_margin: f32,
    /// A regular expression that finds the person in a file stem of a folder-per-class dataset,
    /// for subject-independent folds where the files name people: `^([A-Z]{2})\.` for JAFFE
    /// (`KA.AN1.39` -> `KA`), `^(\w{4})` for KDEF (`AF01ANS` -> `AF01`). The first capture group
    /// (else the whole match) is the subject; a file it does not match is skipped and listed.
    /// Default: none (CK+ file names give their subject, every other file is its own group).
    pub subject_pattern: Option<String>,
}

/// The default crop margin, see [`PrepareOptions::crop_margin`].
pub const DEFAULT_CROP_MARGIN: f32 = 0.1;

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            image_size: 224,
            selection: Selection::default(),
            neutral: false,
            strict: false,
            crop_margin: DEFAULT_CROP_MARGIN,
            subject_pattern: None,
        }
    }
}

/// A prepared dataset: face crops ready for training.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Side of every crop in pixels.
    pub image_size: usize,
    /// Class names in index order: CK+'s 7 emotions (8 with neutral), the class folders, or
    /// FER2013's 7 classes.
    pub class_names: Vec<String>,
    /// The samples, sorted by subject, sequence and frame.
    pub samples: Vec<Sample>,
    /// Hex SHA-256 of the source file listing (paths and sizes) and the options: identifies the
    /// data, so a checkpoint can refuse to resume on different data.
    pub key: String,
    /// Counts and skipped files, printable with `{}`.
    pub summary: Summary,
}

/// Which on-disk layout a source was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The official CK+ release (`cohn-kanade-images/`, `Emotion/`, `Landmarks/`).
    Official,
    /// The official CK+ release as its zip archives (extracted into the cache first).
    OfficialZips,
    /// One folder per class (`ROOT/<class>/<image>`): CK+48, the Hugging Face mirror, most
    /// other FER sets.
    FolderPerClass,
    /// FER2013 as distributed: one `fer2013.csv` of `emotion,pixels,Usage` rows.
    Fer2013Csv,
}

impl Layout {
    /// Lower-case name, as stored in the cache.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Official => "official",
            Layout::OfficialZips => "official-zips",
            Layout::FolderPerClass => "folder-per-class",
            Layout::Fer2013Csv => "fer2013-csv",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [
            Layout::Official,
            Layout::OfficialZips,
            Layout::FolderPerClass,
            Layout::Fer2013Csv,
        ]
        .into_iter()
        .find(|layout| layout.name() == name)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Why a file was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// An image that does not decode (corrupt, truncated, not an image).
    CorruptImage,
    /// A label file that cannot be read or is not a number.
    UnreadableLabel,
    /// A label that is a number but not a usable class.
    LabelOutOfRange,
    /// A landmarks file that cannot be read or does not hold 68 points.
    BadLandmarks,
    /// A label file whose sequence has no images.
    LabelWithoutImages,
    /// A class folder left out of the class list (not named in `classes.txt`).
    UnknownClass,
    /// A class folder that holds no image (folder-per-class layout).
    EmptyClass,
    /// A file whose name the subject pattern does not match.
    NoSubject,
    /// A FER2013 row whose `Usage` is none of Training, PublicTest and PrivateTest.
    UnknownUsage,
}

impl SkipKind {
    /// All kinds, in summary order.
    pub const ALL: [SkipKind; 9] = [
        SkipKind::CorruptImage,
        SkipKind::UnreadableLabel,
        SkipKind::LabelOutOfRange,
        SkipKind::BadLandmarks,
        SkipKind::LabelWithoutImages,
        SkipKind::UnknownClass,
        SkipKind::EmptyClass,
        SkipKind::NoSubject,
        SkipKind::UnknownUsage,
    ];

    /// Short kebab-case name, as written in `skipped.csv`.
    pub fn name(self) -> &'static str {
        match self {
            SkipKind::CorruptImage => "corrupt-image",
            SkipKind::UnreadableLabel => "unreadable-label",
            SkipKind::LabelOutOfRange => "label-out-of-range",
            SkipKind::BadLandmarks => "bad-landmarks",
            SkipKind::LabelWithoutImages => "label-without-images",
            SkipKind::UnknownClass => "unknown-class",
            SkipKind::EmptyClass => "empty-class",
            SkipKind::NoSubject => "no-subject",
            SkipKind::UnknownUsage => "unknown-usage",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        SkipKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for SkipKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A file left out of the dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The offending file.
    pub path: PathBuf,
    /// The category, for counting.
    pub kind: SkipKind,
    /// What exactly is wrong, in words.
    pub reason: String,
}

/// What [`crate::prepare`] found: printed by `cargo xtask prepare` through `Display`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The dataset folder (or archive folder) that was read.
    pub source: PathBuf,
    /// Which layout it was read as.
    pub layout: Layout,
    /// Class names in index order.
    pub class_names: Vec<String>,
    /// Samples per class, in index order.
    pub per_class: Vec<usize>,
    /// Number of distinct subjects among the samples.
    pub n_subjects: usize,
    /// Number of distinct sequences among the samples.
    pub n_sequences: usize,
    /// Samples per crop method, in [`CropMethod::ALL`] order.
    pub crops: Vec<(CropMethod, usize)>,
    /// Samples per part of the dataset's own split, in [`Usage::ALL`] order; empty when the
    /// source has no split.
    pub per_usage: Vec<(Usage, usize)>,
    /// Stray non-data files passed over silently (`.DS_Store`, `Thumbs.db`, text files beside
    /// images, ...).
    pub n_ignored_files: usize,
    /// Files left out, with the reason, in path order.
    pub skipped: Vec<Skipped>,
    /// Whether the samples were loaded from the cache rather than built.
    pub from_cache: bool,
    /// The cache folder holding this dataset.
    pub cache_path: PathBuf,
}

impl Summary {
    /// Total number of samples.
    pub fn n_samples(&self) -> usize {
        self.per_class.iter().sum()
    }

    /// How many samples used a crop method.
    pub fn crops_by(&self, method: CropMethod) -> usize {
        self.crops
            .iter()
            .find(|(candidate, _)| *candidate == method)
            .map_or(0, |(_, count)| *count)
    }

    /// How many files were skipped for a reason.
    pub fn skipped_by(&self, kind: SkipKind) -> usize {
        self.skipped.iter().filter(|skip| skip.kind == kind).count()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "source:    {} ({})",
            self.source.display(),
            self.layout
        )?;
        writeln!(
            formatter,
            "cache:     {} ({})",
            self.cache_path.display(),
            if self.from_cache { "loaded" } else { "built" }
        )?;
        writeln!(
            formatter,
            "samples:   {} from {} subjects, {} sequences",
            self.n_samples(),
            self.n_subjects,
            self.n_sequences
        )?;
        writeln!(formatter, "per class:")?;
        let width = self.class_names.iter().map(String::len).max().unwrap_or(0);
        for (name, count) in self.class_names.iter().zip(&self.per_class) {
            writeln!(formatter, "  {name:<width$}  {count:>6}")?;
        }
        let crops: Vec<String> = self
            .crops
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(method, count)| format!("{method} {count}"))
            .collect();
        writeln!(formatter, "crops:     {}", crops.join(", "))?;
        if !self.per_usage.is_empty() {
            let parts: Vec<String> = self
                .per_usage
                .iter()
                .map(|(usage, count)| format!("{usage} {count}"))
                .collect();
            writeln!(formatter, "usage:     {}", parts.join(", "))?;
        }
        if self.crops_by(CropMethod::Whole) > 0 {
            writeln!(
                formatter,
                "           ({} without landmarks or a detected face: whole image used)",
                self.crops_by(CropMethod::Whole)
            )?;
        }
        writeln!(formatter, "ignored:   {} stray files", self.n_ignored_files)?;
        if self.skipped.is_empty() {
            write!(formatter, "skipped:   none")?;
        } else {
            let by_kind: Vec<String> = SkipKind::ALL
                .into_iter()
                .filter(|kind| self.skipped_by(*kind) > 0)
                .map(|kind| format!("{kind} {}", self.skipped_by(kind)))
                .collect();
            write!(
                formatter,
                "skipped:   {} ({})",
                self.skipped.len(),
                by_kind.join(", ")
            )?;
            for skip in &self.skipped {
                write!(
                    formatter,
                    "\n  {}: {}: {}",
                    skip.path.display(),
                    skip.kind,
                    skip.reason
                )?;
            }
        }
        Ok(())
    }
}

/// The step [`crate::prepare`] is at, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Listing files and reading labels (`total` is 0: unknown).
    Scanning,
    /// Extracting zip archives (`done`/`total` in entries).
    Extracting,
    /// Decoding, cropping and resizing images (`done`/`total` in frames).
    Cropping,
    /// Reading the cache (`done`/`total` in samples).
    LoadingCache,
    /// Writing the cache.
    WritingCache,
}

impl fmt::Display for Stage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Stage::Scanning => "scanning",
            Stage::Extracting => "extracting",
            Stage::Cropping => "cropping",
            Stage::LoadingCache => "loading cache",
            Stage::WritingCache => "writing cache",
        })
    }
}

/// A progress report from [`crate::prepare`]: enough to drive a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The current step.
    pub stage: Stage,
    /// Units done in this step.
    pub done: usize,
    /// Units in this step (0 when unknown).
    pub total: usize,
}
