//! Any image-classification dataset on the Hugging Face Hub whose parquet files hold an image
//! column and a label column, fetched and written as a folder-per-class dataset; the CK+ mirror
//! is one such dataset, read with CK+'s emotion names (`ClassNaming::CkPlus`).
//!
//! The repository's file list comes from the Hub (through hf-hub) and is kept in the data
//! folder beside the files, so that an `--offline` run knows which files it needs. The dataset
//! card (`README.md`), when the repository has one, names integer labels: its YAML front matter
//! lists `dataset_info` features, where a `class_label` gives a name to each index.

use std::collections::BTreeMap;
use std::fs;

use futures::StreamExt;
use hf_hub::repository::RepoTreeEntry;
use hf_hub::{HFRepository, HFResult, RepoType};

use crate::error::{Error, Result};
use crate::hub::{self, HubFile, HubOptions, HubSession, RepoKind};
use crate::mirror::{convert_parquet_files, ClassNaming, ConversionSummary, MirrorLimits};
use crate::progress::Progress;
use crate::transfer::Fetched;
use crate::{DataDir, HubFileDir};

/// The file in a revision's raw folder that lists the repository's files, for offline runs.
const FILE_LIST: &str = ".dexpression-files";

/// The dataset card's file name.
const CARD: &str = "README.md";

/// A dataset repository on the Hub, and which of its files to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDataset {
    /// The repository, `owner/name`.
    pub repo: String,
    /// A branch, tag or commit (`refs/convert/parquet` is where the Hub keeps its own parquet
    /// conversion of a dataset stored otherwise).
    pub revision: String,
    /// The parquet files to convert; empty: every parquet file in the repository, all splits
    /// together.
    pub files: Vec<String>,
}

impl HubDataset {
    /// Every parquet file of `repo` at its main branch.
    pub fn new(repo: impl Into<String>) -> Self {
        HubDataset {
            repo: repo.into(),
            revision: "main".to_string(),
            files: Vec::new(),
        }
    }

    /// The folder the dataset is written to: `<data>/<name>/`, `name` being the repository's
    /// name without its owner.
    pub fn out_dir(&self, data: &DataDir) -> Result<std::path::PathBuf> {
        let (_, name) = hub::split_repo_id(&self.repo)?;
        Ok(data.root().join(name))
    }

    fn hub_file(&self, file: &str) -> HubFile {
        HubFile {
            kind: RepoKind::Dataset,
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            file: file.to_string(),
        }
    }
}

/// What [`download_hub_dataset`] fetched and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDatasetDownload {
    /// The parquet files, verified on disk.
    pub files: Vec<Fetched>,
    /// The folder-per-class dataset made from them.
    pub summary: ConversionSummary,
}

/// Downloads (or verifies) a dataset's parquet files and writes them as folder per class into
/// [`HubDataset::out_dir`], the dataset's own class names as folder names, with `classes.txt`
/// giving their order (the order of the dataset's `ClassLabel` when it has one).
///
/// The files of every split go into the same class folders, since training makes its own
/// folds. Verification, resuming, `offline` and the output folder's marker work as for
/// [`fetch_hub_file`](crate::fetch_hub_file) and `convert_parquet_files`.
pub fn download_hub_dataset(
    data: &DataDir,
    dataset: &HubDataset,
    hub: &HubOptions,
    progress: &dyn Progress,
) -> Result<HubDatasetDownload> {
    let out_dir = dataset.out_dir(data)?;
    fetch_and_convert(data, dataset, None, &out_dir, hub, progress)
}

/// The one path of every Hub dataset: list the files (unless named), fetch them and the card,
/// convert. `naming` is `None` for the dataset's own classes, named by its card.
pub(crate) fn fetch_and_convert(
    data: &DataDir,
    dataset: &HubDataset,
    naming: Option<ClassNaming>,
    out_dir: &std::path::Path,
    hub: &HubOptions,
    progress: &dyn Progress,
) -> Result<HubDatasetDownload> {
    hub::split_repo_id(&dataset.repo)?;
    let (parquet_files, has_card) = if dataset.files.is_empty() {
        let listed = list_files(data, dataset, hub)?;
        let parquet: Vec<String> = listed
            .iter()
            .filter(|file| file.to_ascii_lowercase().ends_with(".parquet"))
            .cloned()
            .collect();
        if parquet.is_empty() {
            return Err(Error::NoParquet {
                repo: dataset.repo.clone(),
                revision: dataset.revision.clone(),
                found: listed.into_iter().take(10).collect(),
            });
        }
        (parquet, listed.iter().any(|file| file == CARD))
    } else {
        (dataset.files.clone(), false)
    };

    let naming = match naming {
        Some(naming) => naming,
        None => {
            let card = if has_card {
                let file = dataset.hub_file(CARD);
                let fetched = hub::fetch_hub_file(&file, &data.raw_hub_file(&file), hub, progress)?;
                let text = fs::read_to_string(&fetched.path)
                    .map_err(|err| Error::io("reading", &fetched.path, err))?;
                card_class_names(&text)
            } else {
                BTreeMap::new()
            };
            ClassNaming::Own { card_names: card }
        }
    };

    let mut fetched = Vec::with_capacity(parquet_files.len());
    for file in &parquet_files {
        let file = dataset.hub_file(file);
        fetched.push(hub::fetch_hub_file(
            &file,
            &data.raw_hub_file(&file),
            hub,
            progress,
        )?);
    }
    let sources: Vec<(&std::path::Path, &str)> = fetched
        .iter()
        .map(|file| (file.path.as_path(), file.sha256.as_str()))
        .collect();
    let summary = convert_parquet_files(
        &sources,
        &naming,
        out_dir,
        &MirrorLimits::default(),
        progress,
    )?;
    Ok(HubDatasetDownload {
        files: fetched,
        summary,
    })
}

/// Every file of the repository at the revision, from the Hub, or offline from the list kept by
/// an earlier run.
fn list_files(data: &DataDir, dataset: &HubDataset, options: &HubOptions) -> Result<Vec<String>> {
    let record = data.raw_hub_file(&dataset.hub_file(FILE_LIST));
    if options.offline {
        let text = fs::read_to_string(&record).map_err(|_| Error::MissingOffline {
            what: format!("the file list of {}", dataset.repo),
            path: record.clone(),
        })?;
        return Ok(text.lines().map(str::to_string).collect());
    }
    let (owner, name) = hub::split_repo_id(&dataset.repo)?;
    let session = HubSession::new(options)?;
    let url = format!(
        "{}/api/datasets/{}/tree/{}",
        session.endpoint, dataset.repo, dataset.revision
    );
    let listed = session
        .block_on(list_tree(
            &session.client.dataset(owner, name),
            &dataset.revision,
        ))?
        .map_err(|err| hub::map_hub_error(&dataset.hub_file(""), &url, err))?;
    if let Some(parent) = record.parent() {
        fs::create_dir_all(parent).map_err(|err| Error::io("creating", parent, err))?;
    }
    let mut text = listed.join("\n");
    text.push('\n');
    fs::write(&record, text).map_err(|err| Error::io("writing", &record, err))?;
    Ok(listed)
}

/// The paths of every file in the repository, sorted.
async fn list_tree<T: RepoType>(repo: &HFRepository<T>, revision: &str) -> HFResult<Vec<String>> {
    let stream = repo
        .list_tree()
        .revision(revision.to_string())
        .recursive(true)
        .send()?;
    futures::pin_mut!(stream);
    let mut files = Vec::new();
    while let Some(entry) = stream.next().await {
        if let RepoTreeEntry::File { path, .. } = entry? {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The `class_label` names of each feature in a dataset card's YAML front matter, by feature
/// (column) name:
///
/// ```yaml
/// dataset_info:
///   features:
///   - name: label
///     dtype:
///       class_label:
///         names:
///           '0': angry
///           '1': happy
/// ```
///
/// Only this shape is read (names as an index map or as a list); anything else gives no names.
pub fn card_class_names(card: &str) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    let mut lines = card.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return found;
    }
    let front_matter: Vec<&str> = lines.take_while(|line| line.trim_end() != "---").collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut feature: Option<String> = None;
    let mut line_idx = 0;
    while line_idx < front_matter.len() {
        let line = front_matter[line_idx];
        let item = line.trim_start().trim_start_matches("- ").trim_start();
        line_idx += 1;
        if let Some(name) = item.strip_prefix("name:") {
            feature = Some(yaml_scalar(name));
            continue;
        }
        if item.trim_end() != "names:" {
            continue;
        }
        let names_indent = indent(line);
        let mut by_index: BTreeMap<usize, String> = BTreeMap::new();
        let mut listed: Vec<String> = Vec::new();
        while line_idx < front_matter.len() {
            let entry = front_matter[line_idx];
            // YAML lets a list sit at its key's own indent.
            let same_level_item =
                indent(entry) == names_indent && entry.trim_start().starts_with("- ");
            if !entry.trim().is_empty() && indent(entry) <= names_indent && !same_level_item {
                break;
            }
            line_idx += 1;
            let entry = entry.trim();
            if let Some(name) = entry.strip_prefix("- ") {
                listed.push(yaml_scalar(name));
            } else if let Some((key, name)) = entry.split_once(": ") {
                if let Ok(index) = yaml_scalar(key).parse::<usize>() {
                    by_index.insert(index, yaml_scalar(name));
                }
            }
        }
        // An index map must number its names 0, 1, 2, ... without a gap.
        let names = if listed.is_empty() {
            let contiguous = by_index.keys().enumerate().all(|(n, index)| n == *index);
            contiguous.then(|| by_index.into_values().collect::<Vec<_>>())
        } else {
            Some(listed)
        };
        if let (Some(feature), Some(names)) = (&feature, names) {
            if !names.is_empty() {
                found.insert(feature.clone(), names);
            }
        }
    }
    found
}

/// A YAML scalar without its quotes (`'it''s'` -> `it's`, `"a"` -> `a`).
fn yaml_scalar(text: &str) -> String {
    let text = text.trim();
    if text.len() >= 2 && text.starts_with('\'') && text.ends_with('\'') {
        text[1..text.len() - 1].replace("''", "'")
    } else if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        text[1..text.len() - 1].replace("\\\"", "\"")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_names_as_an_index_map_and_as_a_list() {
        let card = "---\nlicense: mit\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': angry\n          '1': \"no pain\"\n          '2': 'it''s'\n  - name: mood\n    dtype:\n      class_label:\n        names:\n        - calm\n        - tense\n  splits:\n  - name: train\n    num_examples: 3\n---\n# Card\n";
        let names = card_class_names(card);
        assert_eq!(
            names.get("label"),
            Some(&vec!["angry".to_string(), "no pain".into(), "it's".into()])
        );
        assert_eq!(
            names.get("mood"),
            Some(&vec!["calm".to_string(), "tense".into()])
        );
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn card_without_front_matter_or_with_gaps_names_nothing() {
        assert!(card_class_names("# Just a title\nnames:\n  '0': a\n").is_empty());
        let gap = "---\ndataset_info:\n  features:\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': a\n          '2': c\n---\n";
        assert!(card_class_names(gap).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_card_gives_names_or_none_never_a_panic(card in "(---\n)?([ -]{0,6}(name|names|'[0-9]'|[a-z]{1,4})(: ?[a-z0-9' \"]{0,6})?\n){0,12}(---\n)?") {
            for names in card_class_names(&card).values() {
                proptest::prop_assert!(!names.is_empty());
            }
        }
    }
}
