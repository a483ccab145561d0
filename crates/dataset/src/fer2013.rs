//! FER2013 as distributed: one CSV file (`fer2013.csv`, 35,887 rows) with the columns
//! `emotion` (0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral), `pixels`
//! (48 x 48 grayscale values as space-separated integers) and `Usage` (Training, PublicTest or
//! PrivateTest).
//!
//! The file is read once into memory, hashed for the cache key, and its rows are parsed in
//! parallel chunks by a hand-written number reader: the whole file prepares in a few seconds.

use crate::crop::crop_and_resize;
use crate::{
    CropMethod, Error, Expression, PrepareOptions, Progress, Result, Sample, SkipKind, Skipped,
    Stage, Step, Usage,
};
use rayon::prelude::*;
use std::path::Path;

/// Side of FER2013's images.
pub const FER2013_SIDE: usize = 48;

/// FER2013's classes in label order (its emotion codes 0..=6), under the names CK+ uses.
pub const FER2013_CLASSES: [Expression; 7] = [
    Expression::Anger,
    Expression::Disgust,
    Expression::Fear,
    Expression::Happiness,
    Expression::Sadness,
    Expression::Surprise,
    Expression::Neutral,
];

/// Rows parsed per parallel chunk: large enough to keep both cores busy, small enough that
/// the unparsed records of one chunk stay a few tens of megabytes.
const CHUNK_ROWS: usize = 2048;

/// Whether a source is a CSV file (FER2013 is the one CSV layout).
pub(crate) fn is_csv(source: &Path) -> bool {
    source.is_file()
        && source
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"))
}

/// The class names of FER2013, in label order.
pub fn fer2013_class_names() -> Vec<String> {
    FER2013_CLASSES
        .iter()
        .map(|expression| expression.name().to_string())
        .collect()
}

/// Column positions of the header.
struct Columns {
    emotion: usize,
    pixels: usize,
    usage: Option<usize>,
}

fn columns(path: &Path, header: &csv::ByteRecord) -> Result<Columns> {
    let find = |name: &str| {
        header.iter().position(|field| {
            String::from_utf8_lossy(field)
                .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
                .eq_ignore_ascii_case(name)
        })
    };
    let missing = |name: &str| Error::Csv {
        path: path.to_path_buf(),
        reason: format!(
            "no `{name}` column in the header `{}`",
            String::from_utf8_lossy(header.as_slice())
                .chars()
                .take(80)
                .collect::<String>()
        ),
    };
    Ok(Columns {
        emotion: find("emotion").ok_or_else(|| missing("emotion"))?,
        pixels: find("pixels").ok_or_else(|| missing("pixels"))?,
        usage: find("usage"),
    })
}

/// Parses every row of a FER2013 CSV held in `bytes` into samples at `options.image_size`
/// (resized from 48 when it differs), in file order. Bad rows are skipped and listed (or, with
/// `strict`, stop the parse).
pub(crate) fn parse(
    path: &Path,
    bytes: &[u8],
    options: &PrepareOptions,
    progress: &dyn Progress,
) -> Result<(Vec<Sample>, Vec<Skipped>)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let csv_error = |error: csv::Error| Error::Csv {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let columns = columns(path, reader.byte_headers().map_err(csv_error)?)?;
    // Rows average ~8 kB; the estimate only sizes the progress bar.
    let estimated_rows = bytes.len() / 8000;
    let mut samples = Vec::with_capacity(estimated_rows + 1);
    let mut skipped = Vec::new();
    let mut chunk: Vec<(usize, csv::ByteRecord)> = Vec::with_capacity(CHUNK_ROWS);
    let mut records = reader.byte_records().enumerate();
    loop {
        chunk.clear();
        for (row_idx, record) in records.by_ref().take(CHUNK_ROWS) {
            chunk.push((row_idx + 1, record.map_err(csv_error)?));
        }
        if chunk.is_empty() {
            break;
        }
        let parsed: Vec<std::result::Result<Sample, Skipped>> = chunk
            .par_iter()
            .map(|(row, record)| parse_row(path, *row, record, &columns, options))
            .collect();
        crate::prepare::sort_out(parsed, options.strict, &mut samples, &mut skipped)?;
        progress.step(Step {
            stage: Stage::Cropping,
            done: samples.len() + skipped.len(),
            total: estimated_rows.max(samples.len() + skipped.len()),
        });
    }
    Ok((samples, skipped))
}

fn parse_row(
    path: &Path,
    row: usize,
    record: &csv::ByteRecord,
    columns: &Columns,
    options: &PrepareOptions,
) -> std::result::Result<Sample, Skipped> {
    let skip = |kind: SkipKind, reason: String| Skipped {
        path: path.to_path_buf(),
        kind,
        reason: format!("row {row}: {reason}"),
    };
    let field = |index: usize| field_of(record, index);
    let emotion_text = String::from_utf8_lossy(field(columns.emotion));
    let emotion_text = emotion_text.trim();
    let label = match emotion_text.parse::<i64>() {
        Ok(code) if (0..FER2013_CLASSES.len() as i64).contains(&code) => code as usize,
        Ok(code) => {
            return Err(skip(
                SkipKind::LabelOutOfRange,
                format!("emotion {code} is not a FER2013 class (0..=6)"),
            ))
        }
        Err(_) => {
            return Err(skip(
                SkipKind::UnreadableLabel,
                format!("emotion `{}` is not a number", shorten(emotion_text)),
            ))
        }
    };
    let usage = match columns.usage {
        Some(index) => {
            let text = String::from_utf8_lossy(field(index));
            match Usage::parse(&text) {
                Some(usage) => Some(usage),
                None => {
                    return Err(skip(
                        SkipKind::UnknownUsage,
                        format!(
                            "Usage `{}` is none of Training, PublicTest and PrivateTest",
                            shorten(text.trim())
                        ),
                    ))
                }
            }
        }
        None => None,
    };
    let pixels = parse_pixels(field(columns.pixels), FER2013_SIDE * FER2013_SIDE)
        .map_err(|reason| skip(SkipKind::CorruptImage, reason))?;
    let pixels = if options.image_size == FER2013_SIDE {
        pixels
    } else {
        let side = FER2013_SIDE as u32;
        let image = image::GrayImage::from_raw(side, side, pixels)
            .map(image::DynamicImage::ImageLuma8)
            .ok_or_else(|| skip(SkipKind::CorruptImage, "wrong pixel count".into()))?;
        crop_and_resize(&image, None, options.image_size as u32)
    };
    let id = format!("row{row}");
    Ok(Sample {
        pixels,
        label,
        subject: id.clone(),
        sequence: id,
        frame: 0,
        source: path.to_path_buf(),
        crop: CropMethod::Precropped,
        usage,
    })
}

/// A field of a record, empty when the row is short.
fn field_of(record: &csv::ByteRecord, index: usize) -> &[u8] {
    record.get(index).unwrap_or(b"")
}

/// Reads `expected` space-separated integers 0..=255.
fn parse_pixels(field: &[u8], expected: usize) -> std::result::Result<Vec<u8>, String> {
    let mut pixels = Vec::with_capacity(expected);
    let mut value: u32 = 0;
    let mut n_digits = 0;
    let push = |value: u32, pixels: &mut Vec<u8>| -> std::result::Result<(), String> {
        if value > 255 {
            return Err(format!(
                "pixel {} is {value}, outside 0..=255",
                pixels.len() + 1
            ));
        }
        pixels.push(value as u8);
        Ok(())
    };
    for &byte in field {
        match byte {
            b'0'..=b'9' => {
                // Four digits already exceed 255; stop before the value can overflow.
                if n_digits == 4 {
                    return Err(format!("pixel {} is too large", pixels.len() + 1));
                }
                value = value * 10 + u32::from(byte - b'0');
                n_digits += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                if n_digits > 0 {
                    push(value, &mut pixels)?;
                    (value, n_digits) = (0, 0);
                }
            }
            other => {
                return Err(format!(
                    "pixel {} is not a whole number (found `{}`)",
                    pixels.len() + 1,
                    char::from(other).escape_default()
                ))
            }
        }
    }
    if n_digits > 0 {
        push(value, &mut pixels)?;
    }
    if pixels.len() != expected {
        return Err(format!(
            "{} pixel values, 48 x 48 = {expected} expected",
            pixels.len()
        ));
    }
    Ok(pixels)
}

fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 24;
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().count() > MAX_CHARS {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_are_read_and_bad_fields_named() {
        assert_eq!(parse_pixels(b"0 255 7 12", 4), Ok(vec![0, 255, 7, 12]));
        assert_eq!(parse_pixels(b" 1  2\t3 4\r\n", 4), Ok(vec![1, 2, 3, 4]));
        let wrong_count = parse_pixels(b"1 2 3", 4).expect_err("3 of 4");
        assert!(wrong_count.contains("3 pixel values"), "{wrong_count}");
        let too_large = parse_pixels(b"1 256 3 4", 4).expect_err("256");
        assert!(too_large.contains("pixel 2 is 256"), "{too_large}");
        assert!(parse_pixels(b"1 99999999999 3 4", 4).is_err());
        let not_a_number = parse_pixels(b"1 2 x 4", 4).expect_err("x");
        assert!(not_a_number.contains("pixel 3"), "{not_a_number}");
        assert!(parse_pixels(b"1 -2 3 4", 4).is_err());
        assert!(parse_pixels(b"1.5 2 3 4", 4).is_err());
    }
}
