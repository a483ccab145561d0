//! Reading per-epoch training histories, ours or the PyTorch port's, and merging partial ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dexpression_runfiles::{columns, HistoryRow, CONFIG_FILE, HISTORY_CSV, MAX_CLASSES};

use crate::config::RunConfig;
use crate::error::{Error, Result};

/// The rows of one or several history files, sorted by fold then epoch, with the run
/// configuration found beside them.
#[derive(Debug, Clone, Default)]
pub struct History {
    records: Vec<HistoryRow>,
    sources: Vec<PathBuf>,
    config: Option<RunConfig>,
    notes: Vec<String>,
}

impl History {
    /// Reads one history CSV (and nothing beside it).
    ///
    /// Accepts our columns and the port's: `fold,epoch,avg_train_accuracy,avg_test_accuracy,
    /// avg_train_loss,avg_test_loss,test_pred,test_truth`, in any order, with or without pandas'
    /// unnamed index column; `test_pred`/`test_truth` may be absent (no confusion matrices then).
    /// Folds numbered from 0 are renumbered from 1. A zero-byte file (a run that has not finished
    /// its first epoch) is an empty history. A malformed row is an error naming its line, and so
    /// is a label of [`dexpression_runfiles::MAX_CLASSES`] or more.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_csv(path.as_ref(), None)
    }

    /// [`History::from_csv`], refusing labels of `n_classes` or more when it is given.
    fn read_csv(path: &Path, n_classes: Option<usize>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let mut history = History {
            sources: vec![path.to_path_buf()],
            ..History::default()
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            history.notes.push(format!(
                "{} is empty (no epoch finished yet)",
                path.display()
            ));
            return Ok(history);
        }
        history.records = parse_records(path, &bytes, n_classes)?;
        if history.records.iter().any(|record| record.fold == 0) {
            for record in &mut history.records {
                record.fold += 1;
            }
            history.notes.push(format!(
                "{} numbers folds from 0 (as the PyTorch port does); they are shown from 1",
                path.display()
            ));
        }
        history
            .records
            .sort_by_key(|record| (record.fold, record.epoch));
        Ok(history)
    }

    /// Reads a run: a history CSV, or a directory holding `history.csv`, plus the `config.json`
    /// beside it when there is one.
    ///
    /// A directory without `history.csv` whose subdirectories hold one (one directory per fold
    /// trained on its own, see `RunOptions::only_fold` of the train crate) is read as all of those runs, merged with [`History::merge`].
    pub fn from_run(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::HistoryMissing {
                path: path.to_path_buf(),
            });
        }
        if !path.is_dir() {
            return Self::from_csv_with_config(path);
        }
        let csv_path = path.join(HISTORY_CSV);
        if csv_path.is_file() {
            return Self::from_csv_with_config(&csv_path);
        }
        let io_error = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        let mut run_dirs = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io_error)? {
            let entry_path = entry.map_err(io_error)?.path();
            if entry_path.join(HISTORY_CSV).is_file() {
                run_dirs.push(entry_path);
            }
        }
        if run_dirs.is_empty() {
            return Err(Error::NoHistoryInDirectory {
                dir: path.to_path_buf(),
            });
        }
        run_dirs.sort();
        let runs = run_dirs
            .iter()
            .map(|dir| Self::from_csv_with_config(&dir.join(HISTORY_CSV)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::merge(runs))
    }

    fn from_csv_with_config(csv_path: &Path) -> Result<Self> {
        let config_path = csv_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(CONFIG_FILE);
        let config = if config_path.is_file() {
            Some(RunConfig::from_json(&config_path)?)
        } else {
            None
        };
        let n_classes = config
            .as_ref()
            .and_then(|config| config.class_names.as_ref())
            .map(Vec::len)
            .filter(|&n_classes| n_classes > 0);
        let mut history = Self::read_csv(csv_path, n_classes)?;
        history.config = config;
        Ok(history)
    }

    /// Merges the histories of separate runs (for example one `--fold K` run per directory).
    ///
    /// When the same fold and epoch occur twice, the row read last wins and a note says so; the
    /// first configuration found is kept and a note is added when a later one disagrees on the
    /// split or the class names.
    pub fn merge(histories: impl IntoIterator<Item = History>) -> History {
        let mut merged = History::default();
        // (fold, epoch) -> (record, index into `source_names` of the input it came from)
        let mut by_key: BTreeMap<(u32, u32), (HistoryRow, usize)> = BTreeMap::new();
        let mut source_names: Vec<String> = Vec::new();
        for history in histories {
            let source_idx = source_names.len();
            source_names.push(describe_sources(&history.sources));
            merged.sources.extend(history.sources);
            merged.notes.extend(history.notes);
            for record in history.records {
                let key = (record.fold, record.epoch);
                if let Some((_, previous_idx)) = by_key.insert(key, (record, source_idx)) {
                    let name = &source_names[source_idx];
                    let previous_name = &source_names[previous_idx];
                    let place = if previous_idx == source_idx {
                        format!("twice in {name}")
                    } else {
                        format!("in {previous_name} and in {name}")
                    };
                    merged.notes.push(format!(
                        "fold {} epoch {} appears {place}; the row read last is used",
                        key.0, key.1
                    ));
                }
            }
            match (&merged.config, history.config) {
                (None, Some(config)) => merged.config = Some(config),
                (Some(kept), Some(other))
                    if kept.split_name() != other.split_name()
                        || kept.class_names != other.class_names =>
                {
                    merged.notes.push(format!(
                        "the runs disagree on their configuration (split {} vs {}); the first is used",
                        kept.split_name(),
                        other.split_name()
                    ));
                }
                _ => {}
            }
        }
        merged.records = by_key.into_values().map(|(record, _)| record).collect();
        merged
    }

    /// All rows, sorted by fold then epoch.
    pub fn records(&self) -> &[HistoryRow] {
        &self.records
    }

    /// The fold numbers present, ascending.
    pub fn folds(&self) -> Vec<u32> {
        let mut folds: Vec<u32> = self.records.iter().map(|record| record.fold).collect();
        folds.dedup();
        folds
    }

    /// The rows of one fold, sorted by epoch.
    pub fn fold_records(&self, fold: u32) -> Vec<&HistoryRow> {
        self.records
            .iter()
            .filter(|record| record.fold == fold)
            .collect()
    }

    /// The configuration read beside the history, if any.
    pub fn config(&self) -> Option<&RunConfig> {
        self.config.as_ref()
    }

    /// The files this history was read from.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Things a reader should know about how the files were read (renumbered folds, duplicate
    /// rows, empty files, disagreeing configurations).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

fn describe_sources(sources: &[PathBuf]) -> String {
    sources
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Column positions in the header; the label lists are optional.
struct Columns {
    fold: usize,
    epoch: usize,
    train_accuracy: usize,
    test_accuracy: usize,
    train_loss: usize,
    test_loss: usize,
    test_pred: Option<usize>,
    test_truth: Option<usize>,
}

fn parse_records(path: &Path, bytes: &[u8], n_classes: Option<usize>) -> Result<Vec<HistoryRow>> {
    let (label_limit, limit) = match n_classes {
        Some(n_classes) => (
            n_classes,
            format!(
                "config.json names {n_classes} classes (labels 0 to {})",
                n_classes.saturating_sub(1)
            ),
        ),
        None => (
            MAX_CLASSES,
            format!("a history may hold labels 0 to {} only", MAX_CLASSES - 1),
        ),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|err| csv_error(path, &err))?
        .clone();
    let find = |column: &'static str| header.iter().position(|name| name.trim() == column);
    let require = |column: &'static str| {
        find(column).ok_or(Error::MissingColumn {
            path: path.to_path_buf(),
            column,
        })
    };
    let positions = Columns {
        fold: require(columns::FOLD)?,
        epoch: require(columns::EPOCH)?,
        train_accuracy: require(columns::TRAIN_ACCURACY)?,
        test_accuracy: require(columns::TEST_ACCURACY)?,
        train_loss: require(columns::TRAIN_LOSS)?,
        test_loss: require(columns::TEST_LOSS)?,
        test_pred: find(columns::TEST_PRED),
        test_truth: find(columns::TEST_TRUTH),
    };

    let mut records = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|err| csv_error(path, &err))?;
        let line = row.position().map(|position| position.line()).unwrap_or(0);
        let field = |idx: usize| row.get(idx).unwrap_or("");
        let malformed =
            |column: &'static str, idx: usize, expected: &'static str| Error::MalformedRow {
                path: path.to_path_buf(),
                line,
                column,
                value: field(idx).to_string(),
                expected,
            };
        let integer = |column: &'static str, idx: usize| {
            parse_integer(field(idx)).ok_or_else(|| malformed(column, idx, "a whole number"))
        };
        let number = |column: &'static str, idx: usize| {
            parse_number(field(idx)).ok_or_else(|| malformed(column, idx, "a number"))
        };
        let labels = |column: &'static str, idx: Option<usize>| match idx {
            None => Ok(Vec::new()),
            Some(idx) => parse_labels(field(idx))
                .ok_or_else(|| malformed(column, idx, "a list of labels such as \"[4, 0, 3]\"")),
        };
        let record = HistoryRow {
            fold: integer(columns::FOLD, positions.fold)?,
            epoch: integer(columns::EPOCH, positions.epoch)?,
            train_accuracy: number(columns::TRAIN_ACCURACY, positions.train_accuracy)?,
            test_accuracy: number(columns::TEST_ACCURACY, positions.test_accuracy)?,
            train_loss: number(columns::TRAIN_LOSS, positions.train_loss)?,
            test_loss: number(columns::TEST_LOSS, positions.test_loss)?,
            test_pred: labels(columns::TEST_PRED, positions.test_pred)?,
            test_truth: labels(columns::TEST_TRUTH, positions.test_truth)?,
        };
        for (column, labels) in [
            (columns::TEST_PRED, &record.test_pred),
            (columns::TEST_TRUTH, &record.test_truth),
        ] {
            if let Some(&label) = labels.iter().find(|&&label| label >= label_limit) {
                return Err(Error::LabelOutOfRange {
                    path: path.to_path_buf(),
                    line,
                    column,
                    label,
                    limit: limit.clone(),
                });
            }
        }
        if record.test_pred.len() != record.test_truth.len() {
            return Err(Error::PredictionLengthMismatch {
                path: path.to_path_buf(),
                line,
                n_pred: record.test_pred.len(),
                n_truth: record.test_truth.len(),
            });
        }
        records.push(record);
    }
    Ok(records)
}

fn csv_error(path: &Path, err: &csv::Error) -> Error {
    Error::Csv {
        path: path.to_path_buf(),
        line: err.position().map(|position| position.line()).unwrap_or(1),
        message: err.to_string(),
    }
}

/// Strips a PyTorch `tensor(...)` wrapper (with its `device=` argument), which the port's
/// history can contain when a tensor was stored instead of a float.
fn strip_tensor_wrapper(text: &str) -> &str {
    let text = text.trim();
    match text.strip_prefix("tensor(") {
        Some(inner) => {
            let inner = inner.strip_suffix(')').unwrap_or(inner);
            // A list argument contains commas itself, so cut at `, device=` / `, dtype=` only.
            let end = [", device=", ", dtype=", ", grad_fn="]
                .iter()
                .filter_map(|keyword| inner.find(keyword))
                .min()
                .unwrap_or(inner.len());
            inner[..end].trim()
        }
        None => text,
    }
}

fn parse_number(text: &str) -> Option<f64> {
    strip_tensor_wrapper(text).parse::<f64>().ok()
}

/// Whole numbers, also written as floats (`3.0`) when pandas stored the column as float.
fn parse_integer(text: &str) -> Option<u32> {
    let text = strip_tensor_wrapper(text);
    if let Ok(value) = text.parse::<u32>() {
        return Some(value);
    }
    let value = text.parse::<f64>().ok()?;
    (value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value)).then_some(value as u32)
}

/// Parses `"[4, 0, 3]"`, numpy's `"[4 0 3]"`, `"tensor([4, 0, 3])"` or a list of scalar
/// tensors `"[tensor(4, device='cuda:0'), ...]"` (what a Python list of `argmax` results prints);
/// an empty field is an empty list.
fn parse_labels(text: &str) -> Option<Vec<usize>> {
    let text = strip_tensor_wrapper(text);
    if text.is_empty() {
        return Some(Vec::new());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    if inner.contains("tensor(") {
        return inner
            .split("tensor(")
            .skip(1)
            .map(|piece| {
                let end = piece.find([',', ')']).unwrap_or(piece.len());
                parse_integer(&piece[..end]).map(|label| label as usize)
            })
            .collect();
    }
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(|item| parse_integer(item).map(|label| label as usize))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_lists_in_the_forms_the_port_writes() {
        assert_eq!(parse_labels("[4, 0, 3]"), Some(vec![4, 0, 3]));
        assert_eq!(parse_labels("[4 0 3]"), Some(vec![4, 0, 3]));
        assert_eq!(
            parse_labels("tensor([1, 2], device='cuda:0')"),
            Some(vec![1, 2])
        );
        assert_eq!(
            parse_labels("[tensor(4, device='cuda:0'), tensor(0, device='cuda:0')]"),
            Some(vec![4, 0])
        );
        assert_eq!(parse_labels("[tensor(4), tensor(1)]"), Some(vec![4, 1]));
        assert_eq!(parse_labels("[]"), Some(vec![]));
        assert_eq!(parse_labels(""), Some(vec![]));
        assert_eq!(parse_labels("[4, x]"), None);
        assert_eq!(parse_labels("4, 0"), None);
    }

    #[test]
    fn numbers_plain_and_wrapped_in_tensors() {
        assert_eq!(parse_number("95.5"), Some(95.5));
        assert_eq!(parse_number("tensor(0.25, device='cuda:0')"), Some(0.25));
        assert_eq!(parse_number("abc"), None);
        assert_eq!(parse_integer("3.0"), Some(3));
        assert_eq!(parse_integer("3.5"), None);
        assert_eq!(parse_integer("-1"), None);
    }
}

#[cfg(test)]
mod property_tests {
    //! Any history text is read into records or refused with an error naming the file: never a
    //! panic, and what is read holds paired label lists within the class limit.

    use super::*;
    use proptest::prelude::*;

    const COLUMNS: &[&str] = &[
        "fold",
        "epoch",
        "avg_train_accuracy",
        "avg_test_accuracy",
        "avg_train_loss",
        "avg_test_loss",
        "test_pred",
        "test_truth",
        "",
        "Unnamed: 0",
    ];

    /// Field texts as the port, pandas, numpy and torch write them, and broken ones.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u32>().prop_map(|value| value.to_string()),
            any::<f64>().prop_map(|value| value.to_string()),
            Just("3.0".to_string()),
            Just("-1".to_string()),
            Just("4294967296".to_string()),
            Just("1e400".to_string()),
            Just("tensor(0.25, device='cuda:0')".to_string()),
            Just("tensor(".to_string()),
            Just("\"[tensor(4, device='cuda:0'), tensor(0".to_string()),
            Just("[tensor(".to_string()),
            prop::collection::vec(0usize..300, 0..5).prop_map(|labels| format!("\"{labels:?}\"")),
            prop::collection::vec(any::<u32>(), 0..3).prop_map(|labels| format!("\"{labels:?}\"")),
            "\\PC{0,12}",
        ]
    }

    fn history_text() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(COLUMNS), 0..10),
            prop::collection::vec(prop::collection::vec(field(), 0..10), 0..5),
        )
            .prop_map(|(header, rows)| {
                let mut text = header.join(",");
                for row in rows {
                    text.push('\n');
                    text.push_str(&row.join(","));
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn any_history_is_an_error_or_valid_records(
            text in prop_oneof![history_text(), "\\PC{0,80}"],
            n_classes in prop::option::of(1usize..10),
        ) {
            let path = Path::new("history.csv");
            match parse_records(path, text.as_bytes(), n_classes) {
                Ok(records) => {
                    let limit = n_classes.unwrap_or(MAX_CLASSES);
                    for record in records {
                        prop_assert_eq!(record.test_pred.len(), record.test_truth.len());
                        prop_assert!(record
                            .test_pred
                            .iter()
                            .chain(&record.test_truth)
                            .all(|&label| label < limit));
                    }
                }
                Err(error) => prop_assert!(error.to_string().starts_with("history.csv"), "{error}"),
            }
        }

        #[test]
        fn any_label_list_is_none_or_labels(text in prop_oneof![field(), "\\PC{0,40}"]) {
            let _ = parse_labels(&text);
        }
    }

    #[test]
    fn labels_beyond_the_classes_are_refused_with_the_line() {
        let text = "fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth\n\
                    1,1,50,50,0.5,0.5,\"[0, 1]\",\"[1, 0]\"\n\
                    1,2,50,50,0.5,0.5,\"[0, 7]\",\"[1, 0]\"\n";
        let path = Path::new("run/history.csv");
        assert_eq!(
            parse_records(path, text.as_bytes(), Some(8)).unwrap().len(),
            2
        );
        let error = parse_records(path, text.as_bytes(), Some(7)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "run/history.csv:3: column `test_pred` holds label 7, but config.json names 7 classes \
             (labels 0 to 6); fix or delete this row"
        );
        // Without a configuration, a label that would make a confusion matrix of billions of
        // cells is refused before any is drawn.
        let huge = text.replace("[0, 7]", "[0, 4000000000]");
        let error = parse_records(path, huge.as_bytes(), None).unwrap_err();
        assert!(
            error.to_string().contains("label 4000000000")
                && error.to_string().contains("labels 0 to 999"),
            "{error}"
        );
    }
}
