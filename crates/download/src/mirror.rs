//! Conversion of Hub image-classification datasets (parquet files of images and labels) into
//! the dataset crate's folder-per-class layout, `<out>/<class>/<stem>.png`; the CK+ mirror is one
//! of them, with its labels read as CK+'s seven emotions (`ClassNaming::CkPlus`).
//!
//! Schemas vary between datasets, so they are read defensively: the image may be the Hub's usual
//! struct `{bytes, path}` or plain bytes, the label a class name or an integer index (named by
//! the `ClassLabel` names in the file's `huggingface` metadata or in the dataset card), and the
//! image's stem comes from a `file` column or the image's path when there is one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use dexpression_dataset::{decode_image, Expression, CLASSES_FILE};
use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// The file in the output folder that records which parquet files it was made from (their
/// sha256s), so that a second run with the same input does nothing, and that marks the folder as
/// one a conversion made, which a later conversion may replace.
pub const SOURCE_MARKER: &str = ".dexpression-source";

/// How labels become class folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassNaming {
    /// CK+'s seven emotions (the mirror): names in any of the usual spellings become the
    /// emotion's folder (`happy` -> `Happiness`); integer labels without names in the file are
    /// 0-6 in alphabetical order, or CK+'s own codes 1-7. Neutral and other names are refused.
    CkPlus,
    /// The dataset's own classes: a string label is the class name as it is; an integer label
    /// is named by the `ClassLabel` names in the file's `huggingface` metadata, else by
    /// `card_names` (the dataset card's `class_label` names, by column).
    Own {
        /// The names from the dataset card, index by index, for each column that has them
        /// (see `card_class_names`).
        card_names: BTreeMap<String, Vec<String>>,
    },
}

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// Each class folder's name with its number of images, in class order (CK+'s emotion order
    /// for `ClassNaming::CkPlus`, else the order of `classes.txt`).
    pub n_images_per_class: Vec<(String, usize)>,
    /// Whether the folder was already complete for this input and left as it was.
    pub already_converted: bool,
}

impl ConversionSummary {
    /// All images written.
    pub fn n_images(&self) -> usize {
        self.n_images_per_class.iter().map(|(_, n)| n).sum()
    }
}

/// Limits on what a conversion reads from parquet files, which are downloaded and so may be
/// damaged or crafted: rows and image bytes are counted as they are read, not as declared, over
/// all the files of one conversion together.
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

/// Converts the CK+ mirror's parquet file into `<out_dir>/<Emotion>/<stem>.png`
/// (`ClassNaming::CkPlus`), within the default `MirrorLimits`; see `convert_parquet_files`.
pub fn convert_mirror(
    parquet: &Path,
    source_sha256: &str,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<ConversionSummary> {
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
) -> Result<ConversionSummary> {
    convert_parquet_files(
        &[(parquet, source_sha256)],
        &ClassNaming::CkPlus,
        out_dir,
        limits,
        progress,
    )
}

/// Converts parquet files (each with its sha256) into one folder-per-class dataset,
/// `<out_dir>/<class>/<stem>.png`; the rows of all files (a dataset's splits) go into the same
/// class folders. Images are limited to [`dexpression_dataset::MAX_IMAGE_SIDE`] pixels a side.
///
/// The folder is built beside `out_dir` and renamed into place when complete, so a cut run
/// leaves no half-converted dataset. The files' checksums are recorded in the folder
/// (`SOURCE_MARKER`); when they already match, nothing is done. An `out_dir` that holds files
/// without that marker is not the conversion's to replace, and is refused.
pub fn convert_parquet_files(
    sources: &[(&Path, &str)],
    naming: &ClassNaming,
    out_dir: &Path,
    limits: &MirrorLimits,
    progress: &dyn Progress,
) -> Result<ConversionSummary> {
    let marker = out_dir.join(SOURCE_MARKER);
    let mut source_key: Vec<String> = sources.iter().map(|(_, sha)| sha.to_string()).collect();
    if let ClassNaming::Own { card_names } = naming {
        for (column, names) in card_names {
            source_key.push(format!("{column}: {}", names.join("\t")));
        }
    }
    let source_key = source_key.join("\n");
    if fs::read_to_string(&marker).is_ok_and(|recorded| recorded.trim() == source_key) {
        return Ok(ConversionSummary {
            out_dir: out_dir.to_path_buf(),
            n_images_per_class: count_existing(out_dir, naming),
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
    let mut counted = Counted::default();
    let mut files = Vec::new();
    for (parquet, _) in sources {
        // Row numbers restart in each file: its name keeps the stems of two splits apart.
        let row_prefix = if sources.len() > 1 {
            format!("{}-", stem_of(&parquet.to_string_lossy()))
        } else {
            String::new()
        };
        files.push((
            *parquet,
            read_rows(parquet, limits, &mut counted, &row_prefix)?,
        ));
    }
    let (classes, labelled) = name_classes(files, naming)?;

    let staging = sibling(out_dir, ".converting");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|err| Error::io("removing", &staging, err))?;
    }
    for class in &classes {
        let folder = staging.join(class);
        fs::create_dir_all(&folder).map_err(|err| Error::io("creating", &folder, err))?;
    }

    let n_rows: usize = labelled.iter().map(|(_, rows)| rows.len()).sum();
    progress.begin("converting to PNG", Some(n_rows as u64), Unit::Items);
    let mut n_images_per_class = vec![0usize; classes.len()];
    let mut n_done = 0u64;
    for (parquet, rows) in &labelled {
        for row in rows {
            let png = as_png(&row.image).map_err(|reason| Error::BadImage {
                path: parquet.to_path_buf(),
                row: row.row_idx,
                reason,
            })?;
            let folder = staging.join(&classes[row.class_idx]);
            let target = free_name(&folder, &row.stem);
            fs::write(&target, png).map_err(|err| Error::io("writing", &target, err))?;
            n_images_per_class[row.class_idx] += 1;
            n_done += 1;
            progress.set_position(n_done);
        }
    }
    progress.end();

    if matches!(naming, ClassNaming::Own { .. }) {
        // The class order travels with the data: the dataset crate reads it from here.
        let listed: Vec<&str> = classes
            .iter()
            .zip(&n_images_per_class)
            .filter(|(_, n)| **n > 0)
            .map(|(class, _)| class.as_str())
            .collect();
        let path = staging.join(CLASSES_FILE);
        fs::write(&path, format!("{}\n", listed.join("\n")))
            .map_err(|err| Error::io("writing", &path, err))?;
    }
    fs::write(staging.join(SOURCE_MARKER), format!("{source_key}\n"))
        .map_err(|err| Error::io("writing", staging.join(SOURCE_MARKER), err))?;
    if out_dir.exists() {
        fs::remove_dir_all(out_dir).map_err(|err| Error::io("replacing", out_dir, err))?;
    }
    fs::rename(&staging, out_dir).map_err(|err| Error::io("renaming into place", out_dir, err))?;
    Ok(ConversionSummary {
        out_dir: out_dir.to_path_buf(),
        n_images_per_class: classes.into_iter().zip(n_images_per_class).collect(),
        already_converted: false,
    })
}

/// `<folder>/<stem>.png`, or `<stem>_2.png`, ... when two rows share a stem (splits often
/// number their images alike).
fn free_name(folder: &Path, stem: &str) -> PathBuf {
    let mut target = folder.join(format!("{stem}.png"));
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = folder.join(format!("{stem}_{n}.png"));
    }
    target
}

/// One row as read: image bytes, label as stored, stem.
struct RawRow {
    row_idx: usize,
    image: Vec<u8>,
    label: RawLabel,
    stem: String,
}

/// The rows of one parquet file, and the `ClassLabel` names its metadata gives the label column.
struct ParquetRows {
    rows: Vec<RawRow>,
    label_names: Option<Vec<String>>,
    label_column: String,
}

/// One usable row: image bytes, class, stem.
struct LabelledRow {
    row_idx: usize,
    image: Vec<u8>,
    class_idx: usize,
    stem: String,
}

/// A label as stored, before integer labels are interpreted.
enum RawLabel {
    Name(String),
    Index(i64),
}

/// What has been read so far from the files of one conversion, against its `MirrorLimits`.
#[derive(Default)]
struct Counted {
    rows: u64,
    image_bytes: u64,
}

/// The class folders and every row's class in them. For `ClassNaming::Own`, only classes
/// with images get a folder, in the order of the label names when there are some, else in the
/// order first met.
#[allow(clippy::type_complexity)]
fn name_classes<'a>(
    files: Vec<(&'a Path, ParquetRows)>,
    naming: &ClassNaming,
) -> Result<(Vec<String>, Vec<(&'a Path, Vec<LabelledRow>)>)> {
    let bad_label = |parquet: &Path, row: &RawRow, expected: &str| Error::BadLabel {
        path: parquet.to_path_buf(),
        row: row.row_idx,
        value: match &row.label {
            RawLabel::Name(name) => name.clone(),
            RawLabel::Index(index) => index.to_string(),
        },
        expected: expected.to_string(),
    };
    match naming {
        ClassNaming::CkPlus => {
            const EXPECTED: &str = "a CK+ expression (anger, contempt, disgust, fear, happy, \
                                    sadness, surprise, or an index 0-6)";
            let indices: Vec<i64> = files
                .iter()
                .flat_map(|(_, file)| &file.rows)
                .filter_map(|row| match row.label {
                    RawLabel::Index(index) => Some(index),
                    RawLabel::Name(_) => None,
                })
                .collect();
            let has_names = files.iter().any(|(_, file)| file.label_names.is_some());
            let index_base = integer_label_base(&indices, has_names);
            let labelled = files
                .into_iter()
                .map(|(parquet, file)| {
                    let rows = file
                        .rows
                        .into_iter()
                        .map(|row| {
                            let class_idx = match &row.label {
                                RawLabel::Name(name) => class_from_name(name),
                                RawLabel::Index(index) => match &file.label_names {
                                    Some(names) => usize::try_from(*index)
                                        .ok()
                                        .and_then(|index| names.get(index))
                                        .and_then(|name| class_from_name(name)),
                                    None => usize::try_from(index - index_base)
                                        .ok()
                                        .filter(|&idx| idx < Expression::EMOTIONS.len()),
                                },
                            };
                            let class_idx =
                                class_idx.ok_or_else(|| bad_label(parquet, &row, EXPECTED))?;
                            Ok(row.labelled(class_idx))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok((parquet, rows))
                })
                .collect::<Result<Vec<_>>>()?;
            let classes = Expression::EMOTIONS.map(|e| e.name().to_string()).to_vec();
            Ok((classes, labelled))
        }
        ClassNaming::Own { card_names } => {
            let mut classes: Vec<String> = Vec::new();
            let seed = files.iter().find_map(|(_, file)| {
                file.label_names
                    .as_ref()
                    .or_else(|| card_names.get(&file.label_column))
            });
            for name in seed.into_iter().flatten() {
                if let Some(folder) = class_folder(name) {
                    if !classes.contains(&folder) {
                        classes.push(folder);
                    }
                }
            }
            let mut labelled = Vec::new();
            for (parquet, file) in files {
                let names = file
                    .label_names
                    .as_ref()
                    .or_else(|| card_names.get(&file.label_column));
                let mut rows = Vec::with_capacity(file.rows.len());
                for row in file.rows {
                    let name = match (&row.label, names) {
                        (RawLabel::Name(name), _) => Some(name.as_str()),
                        (RawLabel::Index(index), Some(names)) => usize::try_from(*index)
                            .ok()
                            .and_then(|index| names.get(index))
                            .map(String::as_str),
                        (RawLabel::Index(_), None) => {
                            return Err(Error::NoClassNames {
                                path: parquet.to_path_buf(),
                                column: file.label_column.clone(),
                            })
                        }
                    };
                    let expected = match names {
                        Some(names) => format!("an index below {}", names.len()),
                        None => "a class name usable as a folder name".to_string(),
                    };
                    let folder = name
                        .and_then(class_folder)
                        .ok_or_else(|| bad_label(parquet, &row, &expected))?;
                    let class_idx = match classes.iter().position(|class| *class == folder) {
                        Some(idx) => idx,
                        None => {
                            classes.push(folder);
                            classes.len() - 1
                        }
                    };
                    rows.push(row.labelled(class_idx));
                }
                labelled.push((parquet, rows));
            }
            // Names without images get no folder: the dataset crate refuses an empty class.
            let mut n_per_class = vec![0usize; classes.len()];
            for row in labelled.iter().flat_map(|(_, rows)| rows) {
                n_per_class[row.class_idx] += 1;
            }
            let mut new_idx = vec![0usize; classes.len()];
            let mut kept = Vec::new();
            for (idx, class) in classes.into_iter().enumerate() {
                if n_per_class[idx] > 0 {
                    new_idx[idx] = kept.len();
                    kept.push(class);
                }
            }
            for row in labelled.iter_mut().flat_map(|(_, rows)| rows) {
                row.class_idx = new_idx[row.class_idx];
            }
            Ok((kept, labelled))
        }
    }
}

impl RawRow {
    fn labelled(self, class_idx: usize) -> LabelledRow {
        LabelledRow {
            row_idx: self.row_idx,
            image: self.image,
            class_idx,
            stem: self.stem,
        }
    }
}

/// A class name as a folder name: trimmed, with characters that a file system gives a meaning
/// (`/`, `\`, `:`, ...) or cannot store replaced by `_`; `None` for a name left empty, `.` or `..`.
fn class_folder(name: &str) -> Option<String> {
    let folder: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    // A leading dot would hide the folder, and could meet this crate's own marker files.
    let folder = match folder.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => folder,
    };
    match folder.as_str() {
        "" | "_" | "_." => None,
        _ => Some(folder),
    }
}

/// Reads every row, checking the schema first so an unusable file fails with its columns listed.
/// Rows without a stem are named `<row_prefix>row<N>`.
fn read_rows(
    parquet: &Path,
    limits: &MirrorLimits,
    counted: &mut Counted,
    row_prefix: &str,
) -> Result<ParquetRows> {
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
    let declared_rows = u64::try_from(metadata.num_rows()).unwrap_or(u64::MAX);
    if declared_rows.saturating_add(counted.rows) > limits.max_rows {
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
    for (row_idx, row) in reader
        .get_row_iter(None)
        .map_err(parquet_error)?
        .enumerate()
    {
        counted.rows += 1;
        if counted.rows > limits.max_rows {
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
        counted.image_bytes += image.len() as u64;
        if counted.image_bytes > limits.max_image_bytes {
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
                        expected: "a class name or an integer".into(),
                    })
                }
            },
            None => {
                return Err(Error::BadLabel {
                    path: parquet.to_path_buf(),
                    row: row_idx,
                    value: "(missing)".into(),
                    expected: "a class name or an integer".into(),
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
            .unwrap_or_else(|| format!("{row_prefix}row{row_idx:05}"));
        raw_rows.push(RawRow {
            row_idx,
            image,
            label,
            stem,
        });
    }
    Ok(ParquetRows {
        rows: raw_rows,
        label_names: class_names,
        label_column,
    })
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
fn integer_label_base(indices: &[i64], has_names: bool) -> i64 {
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
    // The dataset crate's decoder checks the header's size before decoding allocates it.
    let decoded = decode_image(bytes).map_err(|error| error.to_string())?;
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

/// The images per class folder of a finished conversion, in class order: CK+'s emotions, or
/// the order of `classes.txt`.
fn count_existing(out_dir: &Path, naming: &ClassNaming) -> Vec<(String, usize)> {
    let classes: Vec<String> = match naming {
        ClassNaming::CkPlus => Expression::EMOTIONS.map(|e| e.name().to_string()).to_vec(),
        ClassNaming::Own { .. } => fs::read_to_string(out_dir.join(CLASSES_FILE))
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect(),
    };
    classes
        .into_iter()
        .map(|class| {
            let n_images = fs::read_dir(out_dir.join(&class))
                .map(|entries| {
                    entries
                        .filter_map(|entry| entry.ok())
                        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "png"))
                        .count()
                })
                .unwrap_or(0);
            (class, n_images)
        })
        .collect()
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
