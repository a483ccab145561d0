//! A synthetic CK+: procedurally drawn faces in the exact official layout, for tests and for
//! the no-download demo.
//!
//! Each subject has a face shape, position, skin and background tone, hair and lighting of its
//! own; each sequence moves from neutral (first frame) to one of the seven expressions at its
//! peak (last frame), drawn from the 68 landmarks that are also written to `Landmarks/`. The
//! classes differ in mouth shape and opening, brow height and angle, eye opening and wrinkles,
//! strongly enough to be learnt from 64 x 64 crops. Like the real release it has unlabeled
//! sequences, some colour frames, some 640 x 480 frames and stray `.DS_Store`/`Thumbs.db` files.
//!
//! It is a cartoon: accuracy on it says that the pipeline learns, not how well a model
//! recognises real faces.

mod face;
mod fer2013;
mod raster;

pub use fer2013::{write_fer2013_csv, FER2013_ROWS};

use crate::error::option_in_range;
use crate::layout::ckplus_release::{EMOTION, IMAGES, LANDMARKS};
use crate::parse::N_LANDMARKS;
use crate::{Error, Expression, Result};
use face::{Action, Subject};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use raster::Canvas;
use rayon::prelude::*;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Frame width of CK+ images.
const FRAME_WIDTH: usize = 640;
/// The usual CK+ frame height.
const FRAME_HEIGHT: usize = 490;
/// The height of some CK+ subjects' frames.
const SHORT_FRAME_HEIGHT: usize = 480;
/// Written into the output folder so a later run knows it may replace the folders it made.
const MARKER_FILE: &str = ".dexpression-synth";
/// CK+ subject ids run from S005 to S999; ours start at S010 (the id in the examples).
const FIRST_SUBJECT_ID: usize = 10;
const MAX_SUBJECTS: usize = 1000 - FIRST_SUBJECT_ID;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Number of people (default 12; at most 990).
    pub subjects: usize,
    /// Seed: the same options give byte-identical files.
    pub seed: u64,
    /// Fewest frames in a sequence (default 6).
    pub min_frames: usize,
    /// Most frames in a sequence (default 12).
    pub max_frames: usize,
    /// Sequences per subject without an `Emotion/` label file, as in the release (default 1).
    pub unlabeled_per_subject: usize,
    /// Fraction of sequences saved as colour PNGs (default 0.15).
    pub colour_fraction: f64,
    /// Fraction of subjects whose frames are 640 x 480 instead of 640 x 490 (default 0.2).
    pub short_frame_fraction: f64,
    /// Standard deviation of the per-pixel noise in gray levels (default 6).
    pub noise: f32,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            subjects: 12,
            seed: 0,
            min_frames: 6,
            max_frames: 12,
            unlabeled_per_subject: 1,
            colour_fraction: 0.15,
            short_frame_fraction: 0.2,
            noise: 6.0,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    /// The output folder (holds `cohn-kanade-images/`, `Emotion/`, `Landmarks/`).
    pub root: PathBuf,
    /// People.
    pub n_subjects: usize,
    /// Sequences, labeled or not.
    pub n_sequences: usize,
    /// Sequences with an `Emotion/` file.
    pub n_labeled_sequences: usize,
    /// Labeled sequences per emotion, in class index order (7 entries).
    pub per_class: Vec<usize>,
    /// Image files written.
    pub n_frames: usize,
    /// Of which colour.
    pub n_colour_frames: usize,
    /// Of which 640 x 480.
    pub n_short_frames: usize,
}

/// One sequence to draw.
struct SequencePlan {
    subject_id: String,
    subject: Subject,
    sequence_number: usize,
    expression: Expression,
    labeled: bool,
    n_frames: usize,
    colour: bool,
    height: usize,
    seed: u64,
}

/// Writes a synthetic CK+ into `out` in the official layout:
/// `cohn-kanade-images/S010/001/S010_001_00000001.png`, `Emotion/…_emotion.txt` on the last
/// frame of labeled sequences, `Landmarks/…_landmarks.txt` for every frame. Sequences are
/// drawn in parallel. Refuses to write over CK+ folders it did not create itself.
pub fn generate(out: &Path, options: &SynthOptions) -> Result<SynthSummary> {
    validate(options)?;
    prepare_output(out)?;
    let plans = plan(options);
    let images_dir = out.join(IMAGES);
    let results: Vec<Result<(usize, usize, usize)>> = plans
        .par_iter()
        .map(|plan| write_sequence(out, plan, options.noise))
        .collect();
    let mut summary = SynthSummary {
        root: out.to_path_buf(),
        n_subjects: options.subjects,
        n_sequences: plans.len(),
        n_labeled_sequences: plans.iter().filter(|plan| plan.labeled).count(),
        per_class: vec![0; 7],
        n_frames: 0,
        n_colour_frames: 0,
        n_short_frames: 0,
    };
    for plan in plans.iter().filter(|plan| plan.labeled) {
        summary.per_class[plan.expression.index()] += 1;
    }
    for result in results {
        let (n_frames, n_colour, n_short) = result?;
        summary.n_frames += n_frames;
        summary.n_colour_frames += n_colour;
        summary.n_short_frames += n_short;
    }
    // Stray files, as found in the release.
    write_file(&images_dir.join(".DS_Store"), b"\0\0\0\x01Bud1")?;
    if let Some(first) = plans.first() {
        let sequence_dir = images_dir
            .join(&first.subject_id)
            .join(format!("{:03}", first.sequence_number));
        write_file(&sequence_dir.join(".DS_Store"), b"\0\0\0\x01Bud1")?;
        write_file(&sequence_dir.join("Thumbs.db"), b"\xd0\xcf\x11\xe0")?;
    }
    Ok(summary)
}

fn validate(options: &SynthOptions) -> Result<()> {
    option_in_range(
        "subjects",
        options.subjects,
        1..=MAX_SUBJECTS,
        "between 1 and 990 subjects (CK+ ids S010..S999)",
    )?;
    if options.min_frames < 2 || options.max_frames < options.min_frames || options.max_frames > 99
    {
        return Err(Error::InvalidOption {
            name: "frames",
            value: format!("{}..={}", options.min_frames, options.max_frames),
            expected: "2 <= min_frames <= max_frames <= 99",
        });
    }
    let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
    if !fraction_ok(options.colour_fraction) || !fraction_ok(options.short_frame_fraction) {
        return Err(Error::InvalidOption {
            name: "fraction",
            value: format!(
                "{} / {}",
                options.colour_fraction, options.short_frame_fraction
            ),
            expected: "colour and short-frame fractions between 0 and 1",
        });
    }
    option_in_range(
        "noise",
        options.noise,
        0.0..=100.0,
        "a standard deviation between 0 and 100 gray levels",
    )
}

/// Creates `out`, or clears the CK+ folders a previous `generate` left there.
fn prepare_output(out: &Path) -> Result<()> {
    let folders = [IMAGES, EMOTION, LANDMARKS].map(|name| out.join(name));
    let marker = out.join(MARKER_FILE);
    if folders.iter().any(|folder| folder.exists()) {
        if !marker.is_file() {
            return Err(Error::InvalidOption {
                name: "out",
                value: out.display().to_string(),
                expected: "a new or empty folder, or one written by synth before (this one holds \
                           CK+ folders that synth did not create; they are left alone)",
            });
        }
        for folder in folders.iter().filter(|folder| folder.exists()) {
            fs::remove_dir_all(folder).map_err(|error| Error::io(folder, error))?;
        }
    }
    fs::create_dir_all(out).map_err(|error| Error::io(out, error))?;
    write_file(&marker, b"written by dexpression-dataset synth\n")
}

/// Decides every sequence up front, serially, so the output does not depend on thread timing.
fn plan(options: &SynthOptions) -> Vec<SequencePlan> {
    let mut plans = Vec::new();
    for subject_idx in 0..options.subjects {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(options.seed, subject_idx as u64, 0));
        let subject = Subject::random(&mut rng);
        let height = if rng.random_bool(options.short_frame_fraction) {
            SHORT_FRAME_HEIGHT
        } else {
            FRAME_HEIGHT
        };
        let mut expressions: Vec<(Expression, bool)> = Expression::EMOTIONS
            .iter()
            .map(|expression| (*expression, true))
            .collect();
        for _ in 0..options.unlabeled_per_subject {
            let expression = Expression::EMOTIONS[rng.random_range(0..7)];
            expressions.push((expression, false));
        }
        expressions.shuffle(&mut rng);
        for (sequence_idx, (expression, labeled)) in expressions.into_iter().enumerate() {
            plans.push(SequencePlan {
                subject_id: format!("S{:03}", FIRST_SUBJECT_ID + subject_idx),
                subject: subject.clone(),
                sequence_number: sequence_idx + 1,
                expression,
                labeled,
                n_frames: rng.random_range(options.min_frames..=options.max_frames),
                colour: rng.random_bool(options.colour_fraction),
                height,
                seed: mix(options.seed, subject_idx as u64, sequence_idx as u64 + 1),
            });
        }
    }
    plans
}

/// Draws and writes one sequence; returns (frames, colour frames, 640x480 frames).
fn write_sequence(out: &Path, plan: &SequencePlan, noise: f32) -> Result<(usize, usize, usize)> {
    let sequence = format!("{:03}", plan.sequence_number);
    let images_dir = out.join(IMAGES).join(&plan.subject_id).join(&sequence);
    let landmarks_dir = out.join(LANDMARKS).join(&plan.subject_id).join(&sequence);
    fs::create_dir_all(&images_dir).map_err(|error| Error::io(&images_dir, error))?;
    fs::create_dir_all(&landmarks_dir).map_err(|error| Error::io(&landmarks_dir, error))?;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let peak = Action::of(plan.expression);
    let mut offset = [rng.random_range(-6.0..6.0), rng.random_range(-6.0..6.0)];
    for frame_idx in 0..plan.n_frames {
        let progress = frame_idx as f32 / (plan.n_frames - 1) as f32;
        // Smoothstep: slow onset, fast apex, as in the real sequences.
        let intensity = progress * progress * (3.0 - 2.0 * progress);
        let action = peak.scaled(intensity);
        offset[0] += rng.random_range(-1.5..1.5);
        offset[1] += rng.random_range(-1.5..1.5);
        let points = face::landmarks(&plan.subject, &action, offset);
        let mut canvas = Canvas::new(FRAME_WIDTH, plan.height, plan.subject.background);
        face::draw(&mut canvas, &plan.subject, &action, &points, offset);
        let stem = format!("{}_{sequence}_{:08}", plan.subject_id, frame_idx + 1);
        let image_path = images_dir.join(format!("{stem}.png"));
        let noise_seed = rng.random::<u64>() | 1;
        save_png(&image_path, &canvas, plan, noise, noise_seed)?;
        write_file(
            &landmarks_dir.join(format!("{stem}_landmarks.txt")),
            landmarks_text(&points).as_bytes(),
        )?;
        if plan.labeled && frame_idx + 1 == plan.n_frames {
            let emotion_dir = out.join(EMOTION).join(&plan.subject_id).join(&sequence);
            fs::create_dir_all(&emotion_dir).map_err(|error| Error::io(&emotion_dir, error))?;
            let text = format!("   {}.0000000e+00\n", plan.expression.ck_code());
            write_file(
                &emotion_dir.join(format!("{stem}_emotion.txt")),
                text.as_bytes(),
            )?;
        }
    }
    let n_colour = if plan.colour { plan.n_frames } else { 0 };
    let n_short = if plan.height == SHORT_FRAME_HEIGHT {
        plan.n_frames
    } else {
        0
    };
    Ok((plan.n_frames, n_colour, n_short))
}

/// Adds lighting and noise, quantises and writes the frame as gray or tinted colour PNG.
fn save_png(
    path: &Path,
    canvas: &Canvas,
    plan: &SequencePlan,
    noise: f32,
    seed: u64,
) -> Result<()> {
    let mut state = seed;
    let mut uniform = move || {
        // xorshift64*: plenty for pixel noise and far cheaper than ChaCha per pixel.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    // Sum of two uniforms (triangular, std = 1/sqrt(6)) scaled to the asked std.
    let noise_scale = noise * 6.0_f32.sqrt();
    let width = canvas.width;
    let lighting = plan.subject.lighting;
    let luminance: Vec<f32> = canvas
        .pixels
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let x = (index % width) as f32 / width as f32 - 0.5;
            value * (1.0 + 2.0 * lighting * x) + (uniform() + uniform() - 1.0) * noise_scale
        })
        .collect();
    let quantise = |value: f32| value.round().clamp(0.0, 255.0) as u8;
    let (bytes, colour_type) = if plan.colour {
        let tint = plan.subject.tint;
        let rgb: Vec<u8> = luminance
            .iter()
            .flat_map(|value| tint.map(|channel| quantise(value * channel)))
            .collect();
        (rgb, image::ExtendedColorType::Rgb8)
    } else {
        let gray: Vec<u8> = luminance.into_iter().map(quantise).collect();
        (gray, image::ExtendedColorType::L8)
    };
    let file = fs::File::create(path).map_err(|error| Error::io(path, error))?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    );
    use image::ImageEncoder;
    encoder
        .write_image(&bytes, width as u32, canvas.height as u32, colour_type)
        .map_err(|source| Error::ImageWrite {
            path: path.to_path_buf(),
            source,
        })
}

/// The CK+ landmark format: one `x y` pair per line, each in `%.7e` with a signed two-digit
/// exponent and three leading spaces.
fn landmarks_text(points: &[[f32; 2]]) -> String {
    debug_assert_eq!(points.len(), N_LANDMARKS);
    points
        .iter()
        .map(|[x, y]| format!("   {}   {}\n", scientific(*x as f64), scientific(*y as f64)))
        .collect()
}

/// Formats like C's `%.7e`: `2.1384585e+02`.
fn scientific(value: f64) -> String {
    let text = format!("{value:.7e}"); // Rust writes `2.1384585e2`.
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let exponent: i32 = exponent.parse().unwrap_or(0);
            let sign = if exponent < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exponent.abs())
        }
        None => text,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
    }
    let mut file = fs::File::create(path).map_err(|error| Error::io(path, error))?;
    file.write_all(bytes)
        .map_err(|error| Error::io(path, error))
}

/// Derives independent seeds for subjects and sequences from the user's seed.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut value =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    value ^= value >> 31;
    value = value.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value ^ (value >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_emotion_label, parse_landmarks};

    #[test]
    fn scientific_matches_the_ck_format() {
        assert_eq!(scientific(213.84585), "2.1384585e+02");
        assert_eq!(scientific(3.0), "3.0000000e+00");
        assert_eq!(scientific(0.05), "5.0000000e-02");
    }

    #[test]
    fn landmarks_round_trip_through_the_parser() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let subject = Subject::random(&mut rng);
        for expression in Expression::EMOTIONS {
            let points = face::landmarks(&subject, &Action::of(expression), [0.0, 0.0]);
            let parsed = parse_landmarks(&landmarks_text(&points)).expect("own format parses");
            for (written, read) in points.iter().zip(&parsed) {
                assert!((written[0] - read[0]).abs() < 1e-3 && (written[1] - read[1]).abs() < 1e-3);
            }
            // The face lies inside the frame.
            assert!(points
                .iter()
                .all(|[x, y]| (0.0..640.0).contains(x) && (0.0..480.0).contains(y)));
        }
        let label = format!("   {}.0000000e+00\n", Expression::Fear.ck_code());
        assert_eq!(parse_emotion_label(&label), Ok(Expression::Fear));
    }
}
