//! `cargo xtask prepare`: crop, resize and cache a dataset, then print its summary.

use dexpression_dataset::{prepare, DataDir, PrepareOptions, Selection};
use std::path::PathBuf;

use crate::display::{prepare_bar, show_prepare};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The dataset: official CK+ (extracted, or the folder with its zips), one folder per class
    /// (any class names; a classes.txt beside them fixes the order), or FER2013's fer2013.csv.
    #[arg(long)]
    pub source: PathBuf,
    /// Where the cache of crops is kept.
    #[arg(long, default_value_os_t = DataDir::default().cache_dir())]
    pub cache: PathBuf,
    /// Side of the square crops in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    #[command(flatten)]
    pub frames: FrameArgs,
    /// Stop at the first bad file instead of skipping and listing it.
    #[arg(long)]
    pub strict: bool,
    /// Widen the landmark box by this fraction of its size on each side.
    #[arg(long, default_value_t = dexpression_dataset::DEFAULT_CROP_MARGIN)]
    pub crop_margin: f32,
    #[command(flatten)]
    pub subjects: SubjectArgs,
}

/// Where a folder-per-class dataset's file names carry the person; shared by `prepare` and
/// `train`.
#[derive(clap::Args)]
pub struct SubjectArgs {
    /// Regular expression over file stems whose first group is the person, for
    /// subject-independent folds: '^([A-Z]{2})\.' for JAFFE (KA.AN1.39), '^(\w{4})' for KDEF
    /// (AF01ANS). Without it, files not named like CK+ frames are each their own group.
    #[arg(long, value_name = "REGEX")]
    pub subject_pattern: Option<String>,
}

/// Which frames become samples; shared by `prepare` and `train`.
#[derive(clap::Args)]
pub struct FrameArgs {
    /// Which frames of each labeled sequence: `peak` (the last --peak-frames) or `all` (the port's).
    #[arg(long, default_value = "peak", value_parser = ["peak", "all"])]
    pub select: String,
    /// How many of the last frames `--select peak` keeps.
    #[arg(long, default_value_t = 3)]
    pub peak_frames: usize,
    /// Official CK+ only: add each labeled sequence's first frame as an 8th class, Neutral.
    #[arg(long)]
    pub neutral: bool,
}

impl FrameArgs {
    /// The frame selection these flags stand for.
    pub fn selection(&self) -> Selection {
        if self.select == "all" {
            Selection::All
        } else {
            Selection::Peak(self.peak_frames)
        }
    }
}

impl Args {
    /// The library options these flags stand for.
    pub fn options(&self) -> PrepareOptions {
        PrepareOptions {
            image_size: self.image_size,
            selection: self.frames.selection(),
            neutral: self.frames.neutral,
            strict: self.strict,
            crop_margin: self.crop_margin,
            subject_pattern: self.subjects.subject_pattern.clone(),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bar = prepare_bar();
    let started = std::time::Instant::now();
    let dataset = prepare(&args.source, &args.cache, &args.options(), &|p| {
        show_prepare(&bar, p)
    });
    bar.finish_and_clear();
    let dataset = dataset?;
    println!("{}", dataset.summary);
    println!("key:       {}", dataset.key);
    println!("time:      {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
