//! Conversion of the Hugging Face CK+ mirror (one parquet file of 48x48 face crops) into the
//! dataset crate's folder-per-class layout, `<out>/<Class>/<stem>.png`.
//!
//! The mirror's schema could not be pinned down in advance, so it is read defensively: the image
//! may be the Hub's usual struct `{bytes, path}` or plain bytes, the label a class name in any
//! case or an integer index, and the frame stem comes from a `file` column when there is one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use dexpression_dataset::Expression;
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// The largest width or height of a mirror image that is decoded (the mirror's are 48x48).
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// The file in the output folder that records which parquet file it was made from, so that a
/// second run with the same input does nothing.
pub const SOURCE_MARKER: &str = ".dexpression-source";

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// Images per class folder, in [`Expression::EMOTIONS`] order (the mirror's integer labels follow it too:
    /// alphabetical, as the Hub's `ClassLabel` sorts them).
    pub n_images_per_class: [usize; 7],
    /// Whether the folder was already complete for this input and left as it was.
    pub already_converted: bool,
}

impl MirrorSummary {
    /// All images written.
    pub fn n_images(&self) -> usize {
        self.n_images_per_class.iter().sum()
    }
}

/// Limits on what a conversion reads from a parquet file, which is downloaded and so may be
/// damaged or crafted: rows and image bytes are counted as they are read, not as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorLimits {
    /// The most rows (the CK+ mirror has 981).
    pub max_rows: u64,
    /// The most image bytes in all rows together (the CK+ mirror holds about 2 MB).
    pub max_image_bytes: u64,
}

impl Default for MirrorLimits {
    fn default() -> Self {
        MirrorLimits {
            max_rows: 1_000_000,
            max_image_bytes: 4 << 30,
        }
    }
}

/// Converts the mirror's parquet file into `<out_dir>/<Class>/<stem>.png`, within the default
/// [`MirrorLimits`]; images are limited to [`MAX_IMAGE_SIDE`] pixels a side.
///
/// The folder is built beside `out_dir` and renamed into place when complete, so a cut run
/// leaves no half-converted dataset. `source_sha256` (the parquet file's checksum) is recorded
/// in the folder; when it already matches, nothing is done.
pub fn convert_mirror(
    parquet: &Path,
    source_sha256: &str,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<MirrorSummary> {
    convert_mirror_with_limits(
        parquet,
        source_sha256,
        out_dir,
        &MirrorLimits::default(),
        progress,
    )
}

/// [`convert_mirror`] within other limits.
pub fn convert_mirror_with_limits(
    parquet: &Path,
    source_sha256: &str,
    out_dir: &Path,
    limits: &MirrorLimits,
    progress: &dyn Progress,
) -> Result<MirrorSummary> {
    let marker = out_dir.join(SOURCE_MARKER);
    if fs::read_to_string(&marker).is_ok_and(|recorded| recorded.trim() == source_sha256) {
        return Ok(MirrorSummary {
            out_dir: out_dir.to_path_buf(),
            n_images_per_class: count_existing(out_dir),
            already_converted: true,
        });
    }

    // Replace only a folder an earlier conversion made (it has the marker) or an empty one.
    if out_dir.exists()
        && !marker.is_file()
        && fs::read_dir(out_dir).is_ok_and(|mut entries| entries.next().is_some())
    {
        return Err(Error::ConversionDestinationNotOurs {
            dest: out_dir.to_path_buf(),
        });
    }
    let rows = read_rows(parquet, limits)?;
    let staging = sibling(out_dir, ".converting");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|err| Error::io("removing", &staging, err))?;
    }
    for class in Expression::EMOTIONS.map(Expression::name) {
        let folder = staging.join(class);
        fs::create_dir_all(&folder).map_err(|err| Error::io("creating", &folder, err))?;
    }

    progress.begin(
        "converting the mirror",
        Some(rows.len() as u64),
        Unit::Items,
    );
    let mut n_images_per_class = [0usize; 7];
    for (row_idx, row) in rows.iter().enumerate() {
        let png = as_png(&row.image).map_err(|reason| Error::BadImage {
            path: parquet.to_path_buf(),
            row: row_idx,
            reason,
        })?;
        let target = staging
            .join(Expression::EMOTIONS[row.class_idx].name())
            .join(format!("{}.png", row.stem));
        if !target.exists() {
            n_images_per_class[row.class_idx] += 1;
        }
        fs::write(&target, png).map_err(|err| Error::io("writing", &target, err))?;
        progress.set_position(row_idx as u64 + 1);
    }
    progress.end();

    fs::write(staging.join(SOURCE_MARKER), format!("{source_sha256}\n"))
        .map_err(|err| Error::io("writing", staging.join(SOURCE_MARKER), err))?;
    if out_dir.exists() {
        fs::remove_dir_all(out_dir).map_err(|err| Error::io("replacing", out_dir, err))?;
    }
    fs::rename(&staging, out_dir).map_err(|err| Error::io("renaming into place", out_dir, err))?;
    Ok(MirrorSummary {
        out_dir: out_dir.to_path_buf(),
        n_images_per_class,
        already_converted: false,
    })
}

/// One usable row: image bytes, class, frame stem.
#[derive(Debug, Clone)]
struct MirrorRow {
    image: Vec<u8>,
    class_idx: usize,
    stem: String,
}

/// A label as stored, before integer labels are interpreted.
enum RawLabel {
    Name(String),
    Index(i64),
}

/// Reads every row, checking the schema first so an unusable file fails with its columns listed.
fn read_rows(parquet: &Path, limits: &MirrorLimits) -> Result<Vec<MirrorRow>> {
    let too_large = |limit: String| Error::TooLarge {
        path: parquet.to_path_buf(),
        limit,
    };
    let parquet_error = |err: parquet::errors::ParquetError| match err {
        // A codec left out of this build: fetching the file again would not help.
        parquet::errors::ParquetError::General(message) if message.contains("Disabled feature") => {
            Error::ParquetCodec {
                path: parquet.to_path_buf(),
                reason: message,
            }
        }
        err => Error::Parquet {
            path: parquet.to_path_buf(),
            reason: err.to_string(),
        },
    };
    let file = File::open(parquet).map_err(|err| Error::io("reading", parquet, err))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let metadata = reader.metadata().file_metadata();
    if u64::try_from(metadata.num_rows()).unwrap_or(u64::MAX) > limits.max_rows {
        return Err(too_large(format!(
            "{} rows (it declares {})",
            limits.max_rows,
            metadata.num_rows()
        )));
    }
    let schema = metadata.schema();
    let columns: Vec<&Type> = schema
        .get_fields()
        .iter()
        .map(|field| field.as_ref())
        .collect();
    let found = || {
        columns
            .iter()
            .map(|column| describe_column(column))
            .collect::<Vec<_>>()
    };

    let image_column = pick_column(&columns, &["image", "img", "pixels"], is_image_column)
        .ok_or_else(|| Error::ParquetColumns {
            path: parquet.to_path_buf(),
            missing: "image",
            found: found(),
        })?;
    let label_column = pick_column(
        &columns,
        &["label", "labels", "emotion", "expression"],
        is_label_column,
    )
    .ok_or_else(|| Error::ParquetColumns {
        path: parquet.to_path_buf(),
        missing: "label",
        found: found(),
    })?;
    let file_column = pick_column(
        &columns,
        &["file", "filename", "file_name", "stem", "name"],
        is_string_column,
    );
    let class_names = metadata
        .key_value_metadata()
        .and_then(|entries| entries.iter().find(|entry| entry.key == "huggingface"))
        .and_then(|entry| entry.value.as_deref())
        .and_then(|json| hub_class_names(json, &label_column));

    let mut raw_rows = Vec::new();
    let mut image_bytes_read = 0u64;
    for (row_idx, row) in reader
        .get_row_iter(None)
        .map_err(parquet_error)?
        .enumerate()
    {
        if row_idx as u64 >= limits.max_rows {
            return Err(too_large(format!("{} rows", limits.max_rows)));
        }
        let row = row.map_err(parquet_error)?;
        let fields: BTreeMap<&str, &Field> = row
            .get_column_iter()
            .map(|(name, field)| (name.as_str(), field))
            .collect();
        let (image, image_path) = match fields.get(image_column.as_str()) {
            Some(field) => image_bytes(field),
            None => (None, None),
        };
        let image = image.ok_or_else(|| Error::BadImage {
            path: parquet.to_path_buf(),
            row: row_idx,
            reason: format!("column `{image_column}` holds no bytes in this row"),
        })?;
        image_bytes_read += image.len() as u64;
        if image_bytes_read > limits.max_image_bytes {
            return Err(too_large(format!(
                "{} bytes of images (reached at row {row_idx})",
                limits.max_image_bytes
            )));
        }
        let label = match fields.get(label_column.as_str()) {
            Some(Field::Str(name)) => RawLabel::Name(name.clone()),
            Some(Field::Bytes(bytes)) => {
                RawLabel::Name(String::from_utf8_lossy(bytes.data()).into_owned())
            }
            Some(field) => match integer(field) {
                Some(index) => RawLabel::Index(index),
                None => {
                    return Err(Error::BadLabel {
                        path: parquet.to_path_buf(),
                        row: row_idx,
                        value: format!("{field}"),
                    })
                }
            },
            None => {
                return Err(Error::BadLabel {
                    path: parquet.to_path_buf(),
                    row: row_idx,
                    value: "(missing)".into(),
                })
            }
        };
        let file_name = file_column
            .as_ref()
            .and_then(|column| match fields.get(column.as_str()) {
                Some(Field::Str(name)) => Some(name.clone()),
                _ => None,
            });
        let stem = file_name
            .or(image_path)
            .map(|name| stem_of(&name))
            .filter(|stem| !stem.is_empty())
            .unwrap_or_else(|| format!("row{row_idx:05}"));
        raw_rows.push((image, label, stem));
    }

    let index_base = integer_label_base(&raw_rows, class_names.is_some());
    raw_rows
        .into_iter()
        .enumerate()
        .map(|(row_idx, (image, label, stem))| {
            let class_idx = match &label {
                RawLabel::Name(name) => class_from_name(name),
                RawLabel::Index(index) => match &class_names {
                    Some(names) => usize::try_from(*index)
                        .ok()
                        .and_then(|index| names.get(index))
                        .and_then(|name| class_from_name(name)),
                    None => usize::try_from(index - index_base)
                        .ok()
                        .filter(|&class_idx| class_idx < Expression::EMOTIONS.len()),
                },
            };
            let value = match label {
                RawLabel::Name(name) => name,
                RawLabel::Index(index) => index.to_string(),
            };
            let class_idx = class_idx.ok_or(Error::BadLabel {
                path: parquet.to_path_buf(),
                row: row_idx,
                value,
            })?;
            Ok(MirrorRow {
                image,
                class_idx,
                stem,
            })
        })
        .collect()
}

/// The class index of one of the seven CK+ emotions, from its name in any of the usual spellings
/// and in any case (the dataset crate's [`Expression::parse_name`]); `None` for neutral.
pub fn class_from_name(name: &str) -> Option<usize> {
    Expression::parse_name(name)
        .filter(|expression| *expression != Expression::Neutral)
        .map(Expression::index)
}

/// Integer labels without class names in the metadata are 0-6 in alphabetical order, unless
/// they run 1-7, which is CK+'s own emotion code with neutral (0) left out.
fn integer_label_base(rows: &[(Vec<u8>, RawLabel, String)], has_names: bool) -> i64 {
    let indices: Vec<i64> = rows
        .iter()
        .filter_map(|(_, label, _)| {
            if let RawLabel::Index(index) = label {
                Some(*index)
            } else {
                None
            }
        })
        .collect();
    let uses_ckplus_codes = !has_names
        && !indices.is_empty()
        && !indices.contains(&0)
        && indices.iter().all(|index| (1..=7).contains(index));
    i64::from(uses_ckplus_codes)
}

/// The `ClassLabel` names that `datasets` stores in the file's `huggingface` metadata.
fn hub_class_names(json: &str, label_column: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let names = value
        .get("info")?
        .get("features")?
        .get(label_column)?
        .get("names")?
        .as_array()?;
    names
        .iter()
        .map(|name| name.as_str().map(str::to_string))
        .collect()
}

fn pick_column(
    columns: &[&Type],
    preferred_names: &[&str],
    usable: fn(&Type) -> bool,
) -> Option<String> {
    preferred_names
        .iter()
        .find_map(|preferred| {
            columns
                .iter()
                .find(|column| column.name().eq_ignore_ascii_case(preferred) && usable(column))
        })
        .map(|column| column.name().to_string())
}

fn is_string(column: &Type) -> bool {
    column.is_primitive()
        && column.get_physical_type() == PhysicalType::BYTE_ARRAY
        && (matches!(
            column.get_basic_info().logical_type_ref(),
            Some(LogicalType::String)
        ) || column.get_basic_info().converted_type() == ConvertedType::UTF8)
}

fn is_string_column(column: &Type) -> bool {
    is_string(column)
}

fn is_image_column(column: &Type) -> bool {
    if column.is_group() {
        return column.get_fields().iter().any(|field| {
            field.name() == "bytes"
                && field.is_primitive()
                && field.get_physical_type() == PhysicalType::BYTE_ARRAY
        });
    }
    column.is_primitive()
        && column.get_physical_type() == PhysicalType::BYTE_ARRAY
        && !is_string(column)
}

fn is_label_column(column: &Type) -> bool {
    column.is_primitive()
        && matches!(
            column.get_physical_type(),
            PhysicalType::BYTE_ARRAY | PhysicalType::INT32 | PhysicalType::INT64
        )
}

fn describe_column(column: &Type) -> String {
    if column.is_group() {
        let children: Vec<String> = column
            .get_fields()
            .iter()
            .map(|field| describe_column(field))
            .collect();
        return format!("{}: struct {{{}}}", column.name(), children.join(", "));
    }
    let kind = if is_string(column) {
        "string".to_string()
    } else {
        format!("{:?}", column.get_physical_type()).to_lowercase()
    };
    format!("{}: {kind}", column.name())
}

/// The image bytes of a row, and the original file path when the struct carries one.
fn image_bytes(field: &Field) -> (Option<Vec<u8>>, Option<String>) {
    match field {
        Field::Bytes(bytes) => (Some(bytes.data().to_vec()), None),
        Field::Group(group) => group_image(group),
        _ => (None, None),
    }
}

fn group_image(group: &Row) -> (Option<Vec<u8>>, Option<String>) {
    let mut bytes = None;
    let mut path = None;
    for (name, field) in group.get_column_iter() {
        match (name.as_str(), field) {
            ("bytes", Field::Bytes(data)) => bytes = Some(data.data().to_vec()),
            ("path", Field::Str(text)) => path = Some(text.clone()),
            _ => {}
        }
    }
    (bytes, path)
}

fn integer(field: &Field) -> Option<i64> {
    match *field {
        Field::Byte(value) => Some(i64::from(value)),
        Field::Short(value) => Some(i64::from(value)),
        Field::Int(value) => Some(i64::from(value)),
        Field::Long(value) => Some(value),
        Field::UByte(value) => Some(i64::from(value)),
        Field::UShort(value) => Some(i64::from(value)),
        Field::UInt(value) => Some(i64::from(value)),
        Field::ULong(value) => i64::try_from(value).ok(),
        _ => None,
    }
}

/// `S010_004_00000017` from `S010_004_00000017`, `S010_004_00000017.png` or `a/b/S010_....png`.
fn stem_of(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = match base.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() && extension.len() <= 4 => stem,
        _ => base,
    };
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// PNG bytes for an image: PNG input is kept byte for byte, anything else is decoded and
/// re-encoded as 8-bit grayscale PNG.
fn as_png(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|err| err.to_string())
    };
    // The header's size is checked before decoding allocates it.
    let (width, height) = reader()?.into_dimensions().map_err(|err| err.to_string())?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(format!(
            "the image is {width}x{height} pixels, more than the limit of {MAX_IMAGE_SIDE} a side"
        ));
    }
    let mut reader = reader()?;
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(MAX_IMAGE_SIDE);
    image_limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(image_limits);
    let decoded = reader.decode().map_err(|err| err.to_string())?;
    if bytes.starts_with(PNG_SIGNATURE) {
        return Ok(bytes.to_vec());
    }
    let mut png = Vec::new();
    decoded
        .to_luma8()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|err| err.to_string())?;
    Ok(png)
}

fn count_existing(out_dir: &Path) -> [usize; 7] {
    let mut counts = [0usize; 7];
    for (class_idx, class) in Expression::EMOTIONS.iter().enumerate() {
        counts[class_idx] = fs::read_dir(out_dir.join(class.name()))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "png"))
                    .count()
            })
            .unwrap_or(0);
    }
    counts
}

/// `<dir><suffix>` beside `dir`.
pub(crate) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_come_from_file_names_and_paths() {
        assert_eq!(stem_of("S010_004_00000017"), "S010_004_00000017");
        assert_eq!(stem_of("S010_004_00000017.png"), "S010_004_00000017");
        assert_eq!(stem_of("anger/S010_004_00000017.png"), "S010_004_00000017");
    }

    #[test]
    fn class_names_in_any_case() {
        assert_eq!(class_from_name("HAPPY"), Some(4));
        assert_eq!(class_from_name("Sadness"), Some(5));
        assert_eq!(class_from_name("neutral"), None);
    }
}
