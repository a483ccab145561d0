//! What [`crate::prepare`] found: counts, and the files it left out and why.

use crate::{CropMethod, Layout, Usage};
use std::fmt;
use std::path::PathBuf;

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

display_by_name!(SkipKind);

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
