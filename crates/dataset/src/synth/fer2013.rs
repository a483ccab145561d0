//! A synthetic `fer2013.csv`: FER2013's exact format (`emotion,pixels,Usage`, 48 x 48 values
//! per row, FER2013's Training / PublicTest / PrivateTest proportions) with classes that a
//! network can tell apart, for tests and for timing the CSV reader on the real file's size.

use crate::{Error, Result, FER2013_SIDE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::io::Write;
use std::path::Path;

/// Rows of the real FER2013 file.
pub const FER2013_ROWS: usize = 35_887;
/// Training rows of the real file (the rest is split evenly into PublicTest and PrivateTest).
const FER2013_TRAINING_ROWS: usize = 28_709;

/// Writes `rows` FER2013 rows to `path`. Row `i` has class `i % 7`; each class is a bright
/// square at its own place on a noisy background, shifted a little from row to row. The same
/// `rows` and `seed` give the same bytes.
pub fn write_fer2013_csv(path: &Path, rows: usize, seed: u64) -> Result<()> {
    let n_training = (rows * FER2013_TRAINING_ROWS).div_ceil(FER2013_ROWS);
    let n_public = (rows - n_training).div_ceil(2);
    let lines: Vec<String> = (0..rows)
        .into_par_iter()
        .map(|row| {
            let usage = if row < n_training {
                "Training"
            } else if row < n_training + n_public {
                "PublicTest"
            } else {
                "PrivateTest"
            };
            let class = row % 7;
            format!("{class},{},{usage}\n", pixels(class, seed, row as u64))
        })
        .collect();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
    }
    let file = std::fs::File::create(path).map_err(|error| Error::io(path, error))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut write = |text: &str| {
        writer
            .write_all(text.as_bytes())
            .map_err(|error| Error::io(path, error))
    };
    write("emotion,pixels,Usage\n")?;
    for line in &lines {
        write(line)?;
    }
    writer.flush().map_err(|error| Error::io(path, error))
}

/// One row's 48 x 48 values as FER2013 writes them: space-separated integers.
fn pixels(class: usize, seed: u64, row: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let side = FER2013_SIDE;
    // Seven places on a 3 x 3 grid of 16-pixel cells, moved by up to 3 pixels.
    let (cell_x, cell_y) = (class % 3, class / 3);
    let x0 = (cell_x * 16 + 3) as i64 + rng.random_range(-3..=3);
    let y0 = (cell_y * 16 + 3) as i64 + rng.random_range(-3..=3);
    let mut text = String::with_capacity(side * side * 4);
    for y in 0..side as i64 {
        for x in 0..side as i64 {
            let inside = (x0..x0 + 10).contains(&x) && (y0..y0 + 10).contains(&y);
            let base: i32 = if inside { 200 } else { 60 };
            let value = (base + rng.random_range(-40..=40)).clamp(0, 255);
            if x > 0 || y > 0 {
                text.push(' ');
            }
            text.push_str(&value.to_string());
        }
    }
    text
}
