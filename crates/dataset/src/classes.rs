//! Class lists as data: the names a folder-per-class dataset's folders give, merged where they
//! spell one expression, in the order `classes.txt` fixes or else a stable default.

use crate::{Error, Expression, Result};
use std::path::Path;

/// The file beside the class folders that fixes the class order: one class per line (a folder
/// name or another spelling of it); blank lines and lines starting with `#` are ignored.
pub const CLASSES_FILE: &str = "classes.txt";

/// The most classes a dataset may have: far above the few hundred of the largest face sets,
/// low enough that a source with a folder per image (a layout mistake) is refused, not trained.
/// The report takes the same limit from the same place.
pub use dexpression_runfiles::MAX_CLASSES;

/// The name a class folder stands for: the expression's name for a known spelling of one
/// (`angry` and `anger` are both `Anger`, `happy` is `Happiness`), else the name itself, trimmed.
pub fn canonical_class_name(name: &str) -> String {
    match Expression::parse_name(name) {
        Some(expression) => expression.name().to_string(),
        None => name.trim().to_string(),
    }
}

/// Two names are one class when their canonical names differ only in case.
fn merge_key(name: &str) -> String {
    canonical_class_name(name).to_lowercase()
}

/// The ordered class list of a folder-per-class dataset from its folder names (`found`, with
/// images, any order): the order of `classes.txt` in `root` when there is one, else CK+'s
/// expression order when every name is an expression, else alphabetical (ignoring case).
///
/// Returns the class names and, for each name in `found`, its class index (`None`: a folder
/// `classes.txt` leaves out).
pub(crate) fn order_classes(
    root: &Path,
    found: &[String],
) -> Result<(Vec<String>, Vec<Option<usize>>)> {
    let mut classes: Vec<String> = Vec::new();
    for name in found {
        let canonical = canonical_class_name(name);
        if !classes
            .iter()
            .any(|c| c.to_lowercase() == canonical.to_lowercase())
        {
            classes.push(canonical);
        }
    }
    let listed = root.join(CLASSES_FILE);
    if listed.is_file() {
        classes = read_classes_file(&listed, &classes)?;
    } else if classes
        .iter()
        .all(|name| Expression::parse_name(name).is_some())
    {
        classes.sort_by_key(|name| Expression::parse_name(name).map(Expression::index));
    } else {
        classes.sort_by_key(|name| (name.to_lowercase(), name.clone()));
    }
    check_class_count(root, &classes)?;
    let keys: Vec<String> = classes.iter().map(|name| merge_key(name)).collect();
    let index_of = found
        .iter()
        .map(|name| keys.iter().position(|key| *key == merge_key(name)))
        .collect();
    Ok((classes, index_of))
}

/// Reads `classes.txt`: every line must name a class folder that holds images, once.
fn read_classes_file(path: &Path, found: &[String]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::io(path, error))?;
    let mut classes: Vec<String> = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| Error::Classes {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", line_idx + 1),
        };
        let key = merge_key(line);
        let Some(folder) = found.iter().find(|name| merge_key(name) == key) else {
            return Err(bad(format!(
                "`{line}` is not a class folder holding images (found: {})",
                found.join(", ")
            )));
        };
        if classes.iter().any(|class| merge_key(class) == key) {
            return Err(bad(format!("`{line}` is listed twice")));
        }
        classes.push(canonical_class_name(folder));
    }
    Ok(classes)
}

/// Refuses fewer than two or more than [`MAX_CLASSES`] classes.
pub(crate) fn check_class_count(root: &Path, classes: &[String]) -> Result<()> {
    if classes.len() < 2 {
        return Err(Error::TooFewClasses {
            root: root.to_path_buf(),
            classes: shortened_list(classes),
        });
    }
    if classes.len() > MAX_CLASSES {
        return Err(Error::TooManyClasses {
            root: root.to_path_buf(),
            n_classes: classes.len(),
            classes: shortened_list(classes),
        });
    }
    Ok(())
}

fn shortened_list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", names.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn spellings_merge_and_the_order_is_stable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (classes, index) =
            order_classes(dir.path(), &names(&["sad", "angry", "Happy", "anger"])).expect("ok");
        assert_eq!(classes, names(&["Anger", "Happiness", "Sadness"]));
        assert_eq!(index, vec![Some(2), Some(0), Some(1), Some(0)]);
        let (classes, index) =
            order_classes(dir.path(), &names(&["pain", "No_Pain", "happy"])).expect("ok");
        assert_eq!(classes, names(&["Happiness", "No_Pain", "pain"]));
        assert_eq!(index, vec![Some(2), Some(1), Some(0)]);
    }

    #[test]
    fn classes_file_fixes_the_order_and_may_leave_folders_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(CLASSES_FILE), "# order\nno_pain\n\npain\n").expect("w");
        let (classes, index) =
            order_classes(dir.path(), &names(&["pain", "no_pain", "other"])).expect("ok");
        assert_eq!(classes, names(&["no_pain", "pain"]));
        assert_eq!(index, vec![Some(1), Some(0), None]);
        std::fs::write(dir.path().join(CLASSES_FILE), "pain\nmissing\n").expect("w");
        let error = order_classes(dir.path(), &names(&["pain", "no_pain"])).expect_err("bad");
        assert!(error.to_string().contains("line 2"), "{error}");
        std::fs::write(dir.path().join(CLASSES_FILE), "pain\nPAIN\nno_pain\n").expect("w");
        assert!(order_classes(dir.path(), &names(&["pain", "no_pain"])).is_err());
    }

    #[test]
    fn one_class_or_thousands_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = order_classes(dir.path(), &names(&["faces"])).expect_err("one class");
        assert!(error.to_string().contains("at least 2"), "{error}");
        let many: Vec<String> = (0..MAX_CLASSES + 1).map(|i| format!("c{i}")).collect();
        let error = order_classes(dir.path(), &many).expect_err("too many");
        assert!(error.to_string().contains("at most 1000"), "{error}");
        let hundreds: Vec<String> = (0..300).map(|i| format!("c{i:03}")).collect();
        let (classes, _) = order_classes(dir.path(), &hundreds).expect("300 classes");
        assert_eq!(classes.len(), 300);
    }
}
