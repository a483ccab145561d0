//! How [`crate::prepare`] is asked to turn a source into samples.

use crate::Error;
use std::fmt;
use std::str::FromStr;

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
