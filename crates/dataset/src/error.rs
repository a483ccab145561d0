//! The crate's error type: every variant names the file or option involved and, where there is
//! one, the fix, so a message printed alone is enough to act on.

use std::path::PathBuf;

/// Everything that can stop [`crate::prepare`], [`crate::k_fold`], the cache or the synthetic
/// generator. Bad individual files are not errors unless `strict` is set: they are skipped and
/// listed in [`crate::Summary::skipped`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The source path does not exist.
    #[error("{path}: no such file or folder; pass the folder holding the dataset (CK+, FER2013's CSV or a folder per class), or write a synthetic CK+ there with `synth::generate`")]
    SourceMissing {
        /// The path that was given.
        path: PathBuf,
    },
    /// The source folder matches none of the layouts this crate reads.
    #[error("{root}: no known dataset layout found; looked for {looked_for}")]
    UnknownLayout {
        /// The folder that was searched.
        root: PathBuf,
        /// Every layout that was tried, in words.
        looked_for: String,
    },
    /// The layout was recognised but holds no usable sample.
    #[error("{root}: no usable sample found ({detail})")]
    NoSamples {
        /// The dataset folder.
        root: PathBuf,
        /// Why, e.g. how many files were skipped.
        detail: String,
    },
    /// A bad input file met in `strict` mode (without `strict` it would have been skipped).
    #[error("{path}: {reason} (`PrepareOptions::strict` stops at the first bad file; unset it to skip and list such files instead)")]
    Strict {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An option is out of its valid range.
    #[error("invalid option {name} = {value}: {expected}")]
    InvalidOption {
        /// The option, as its options struct names the field (`batch_size`, `image_size`).
        name: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// There are fewer groups (subjects, sequences or frames) than folds.
    #[error("cannot make {k} folds split by {split}: only {n_groups} distinct {split} group(s); lower k or split by a finer unit")]
    TooFewGroups {
        /// Folds asked for.
        k: usize,
        /// How many groups exist.
        n_groups: usize,
        /// The grouping unit.
        split: crate::SplitBy,
    },
    /// The cache exists but cannot be read back; [`crate::prepare`] rebuilds it instead of
    /// returning this.
    #[error("{path}: unreadable cache ({reason}); delete the folder to rebuild it")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing an image failed (synthetic generator).
    #[error("{path}: cannot write image: {source}")]
    ImageWrite {
        /// The image file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },
    /// A CK+ zip archive could not be read.
    #[error("{path}: cannot read zip archive ({reason}); re-download it or extract it by hand and pass the folder")]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A zip archive listing more entries than [`crate::unzip::ZipLimits::max_entries`].
    #[error("{path}: it lists {listed} entries, more than the limit of {limit} (`ZipLimits::max_entries`); is it the CK+ archive? A damaged or crafted zip can claim anything")]
    ZipEntries {
        /// The archive.
        path: PathBuf,
        /// How many entries it lists.
        listed: usize,
        /// The limit.
        limit: usize,
    },
    /// Zip archives that unpack to more than [`crate::unzip::ZipLimits::max_bytes`].
    #[error("{path}: it unpacks to more than the limit of {limit} bytes (`ZipLimits::max_bytes`; stopped at {stopped_at}); is it the CK+ archive? A damaged or crafted zip can claim anything")]
    ZipBytes {
        /// The archive being extracted when the limit was reached.
        path: PathBuf,
        /// The limit, in bytes, for all the archives of one extraction.
        limit: u64,
        /// The entry that went past it.
        stopped_at: PathBuf,
    },
    /// A class list with fewer than two classes.
    #[error("{root}: only {classes} found, and a classifier needs at least 2 classes; put each class's images in a folder of their own (`{root}/<class>/<image>`)")]
    TooFewClasses {
        /// The dataset.
        root: PathBuf,
        /// The classes found, shortened.
        classes: String,
    },
    /// A class list longer than [`crate::MAX_CLASSES`].
    #[error("{root}: {n_classes} classes ({classes}), at most {max} are taken; is this a folder per image rather than per class? Pass the folder whose subfolders are the classes as the source", max = crate::MAX_CLASSES)]
    TooManyClasses {
        /// The dataset.
        root: PathBuf,
        /// How many classes were found.
        n_classes: usize,
        /// The first few, shortened.
        classes: String,
    },
    /// `classes.txt` does not match the class folders.
    #[error("{path}: {reason}; list one class folder per line, or delete the file to take the folders in their default order")]
    Classes {
        /// The `classes.txt` file.
        path: PathBuf,
        /// What is wrong, with its line.
        reason: String,
    },
    /// A FER2013 CSV file that cannot be read as one (header, encoding).
    #[error("{path}: not a FER2013 CSV ({reason}); expected a header `emotion,pixels,Usage` and rows such as `0,70 80 82 ...,Training`")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image file that cannot be decoded or is too large to be.
    #[error("{path}: {reason}; pass a PNG, JPEG or TIFF image of at most {max} pixels a side", max = crate::MAX_IMAGE_SIDE)]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// `Ok` when the option `name` lies in `range` (NaN never does), else [`Error::InvalidOption`]
/// saying what would be accepted.
pub(crate) fn option_in_range<T: PartialOrd + ToString>(
    name: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    expected: &'static str,
) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            name,
            value: value.to_string(),
            expected,
        })
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program other than xtask has no `--strict` or `cargo xtask synth`: the messages name the
    /// library's own options and functions.
    #[test]
    fn messages_name_options_and_functions_not_command_line_flags() {
        let messages = [
            (
                Error::SourceMissing {
                    path: PathBuf::from("data/ckplus"),
                },
                "synth::generate",
            ),
            (
                Error::Strict {
                    path: PathBuf::from("a.png"),
                    reason: "not an image".into(),
                },
                "PrepareOptions::strict",
            ),
            (
                Error::TooManyClasses {
                    root: PathBuf::from("faces"),
                    n_classes: 1001,
                    classes: "a, b, ...".into(),
                },
                "as the source",
            ),
        ];
        for (error, names) in messages {
            let message = error.to_string();
            assert!(message.contains(names), "{message}");
            assert!(!message.contains("--"), "{message}");
            assert!(!message.contains("xtask"), "{message}");
        }
    }
}
