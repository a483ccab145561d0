//! The prepared dataset: its samples, where each came from and how its face was cropped, and the
//! layout it was read as.

use crate::{Error, Summary};
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
}

display_by_name!(Usage, CropMethod, Layout);
