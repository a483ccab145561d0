//! Face datasets for expression (or any face-class) recognition: reads CK+ (Extended
//! Cohn-Kanade) in its official layout (extracted or as zips), any folder-per-class dataset
//! whose folder names are its classes (CK+48, the Hub mirror, RAF-DB, JAFFE, KDEF, your own
//! labels), or FER2013's CSV; crops the faces in parallel (from the CK+ landmarks, else with a
//! bundled SeetaFace detector), caches the crops, and deals subject-independent or
//! class-stratified folds.
//!
//! The class list is data: it comes with the source ([`Dataset::class_names`]), known
//! spellings of one expression merge to one name ([`canonical_class_name`]), and
//! [`CLASSES_FILE`] fixes the order of a folder-per-class dataset.
//!
//! It yields `u8` grayscale pixels and class indices; it does not depend on candle or make
//! tensors (the train crate does), and knows nothing of the network. [`synth`] writes a
//! procedurally drawn CK+ look-alike in the official layout: the test fixture of every crate
//! and the data of the no-download demo.
//!
//! ```
//! use dexpression_dataset::{k_fold, prepare, synth, PrepareOptions, SplitBy};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let folder = std::env::temp_dir().join(format!("dexpression-doc-{}", std::process::id()));
//! let ck = folder.join("ck");
//! synth::generate(&ck, &synth::SynthOptions { subjects: 3, ..Default::default() })?;
//! let options = PrepareOptions { image_size: 48, ..Default::default() };
//! let dataset = prepare(&ck, &folder.join("cache"), &options, &|_progress| {})?;
//! println!("{}", dataset.summary);
//! let folds = k_fold(&dataset.samples, 3, SplitBy::Subject, 0)?;
//! assert_eq!(folds.len(), 3);
//! # std::fs::remove_dir_all(&folder)?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

/// `Display` through the type's own `name()`, for the enums whose name is also their file format.
macro_rules! display_by_name {
    ($($type:ty),+) => {$(
        impl std::fmt::Display for $type {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.name())
            }
        }
    )+};
}

mod archive;
mod cache;
mod classes;
pub mod crop;
mod data_dir;
mod dataset;
mod detect;
mod error;
mod expression;
pub mod faces;
mod fer2013;
mod folds;
mod layout;
mod options;
mod parse;
mod prepare;
mod progress;
mod summary;
pub mod synth;
pub mod unzip;

pub use classes::{canonical_class_name, CLASSES_FILE, MAX_CLASSES};
pub use data_dir::{
    default_source, DataDir, DEFAULT_DATA_DIR, MIRROR_FOLDER, OFFICIAL_RELEASE_FOLDER,
    PORT_WEIGHTS_FILE,
};
pub use dataset::{CropMethod, Dataset, Layout, Sample, Usage};
pub use error::{Error, Result};
pub use expression::{class_names, n_classes, Expression};
pub use fer2013::{fer2013_class_names, FER2013_CLASSES, FER2013_SIDE};
pub use folds::{k_fold, usage_split, Fold, SplitBy, UsageSplit};
pub use layout::ckplus_release;
pub use options::{PrepareOptions, Selection, DEFAULT_CROP_MARGIN};
pub use prepare::{decode_image, prepare, DecodeError, MAX_IMAGE_SIDE};
pub use progress::{Progress, Silent, Stage, Step};
pub use summary::{SkipKind, Skipped, Summary};

/// The parsers of CK+'s text files and the face detector, for tests that check them on their
/// own; not a stable API (the `testing` feature turns it on).
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::detect::{detect_faces, DetectedFace};
    pub use crate::parse::{
        parse_ck_stem, parse_emotion_label, parse_landmarks, CkStem, ParseError, N_LANDMARKS,
    };
}

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
