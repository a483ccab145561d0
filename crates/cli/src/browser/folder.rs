//! `export --web DIR`: the page, the model and the runtime as a folder any static web server can
//! serve. The folder is built under a temporary name beside `DIR` and renamed into place when
//! complete, so that a failure leaves no partial folder and an earlier one as it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::model::{self, PageConfig, RuntimeInfo, RuntimeState};
use super::runtime::Runtime;
use super::{MODEL_JSON, PAGE_FILES, RUNTIME_FOLDER};

/// The model's file in the folder.
pub const MODEL_FILE: &str = "model.onnx";

/// What [`write_folder`] wrote.
#[derive(Debug, Clone)]
pub struct FolderSummary {
    /// Every file, relative to it, with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// Whether an earlier folder written by `export --web` was replaced.
    pub replaced: bool,
}

/// Writes the page into `dir`: its own files, `model.onnx` (which `write_model` writes at the
/// path it is given), `model.json` read from that model, and the runtime's files under `ort/`.
///
/// `dir` may be missing, empty, or a folder this function wrote before (it is then replaced
/// whole); any other existing path is refused, so that no one's files are deleted.
pub fn write_folder<T>(
    dir: &Path,
    model_name: &str,
    runtime: &Runtime,
    write_model: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<(T, FolderSummary)> {
    let replaced = check_target(dir)?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder_name = dir
        .file_name()
        .with_context(|| format!("{}: not a folder name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{folder_name}."))
        .suffix(".tmp")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot write the folder {}: no temporary folder can be made in {}",
                dir.display(),
                parent.display()
            )
        })?;
    let built = staging.path();

    let value = write_model(&built.join(MODEL_FILE))?;
    let onnx = std::fs::read(built.join(MODEL_FILE)).context("reading the exported model back")?;
    let page_model = model::describe(&onnx, model_name, MODEL_FILE)
        .context("the exported model cannot be described for the page")?;
    let config = PageConfig {
        generator: model::generator(),
        runtime: RuntimeInfo::new(&runtime.package, RuntimeState::Ready, None),
        models: vec![page_model],
        served: false,
    };
    let write = |relative: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let path = built.join(relative);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write(MODEL_JSON, &serde_json::to_vec_pretty(&config)?)?;
    for (name, content) in PAGE_FILES {
        write(name, content.as_bytes())?;
    }
    for file in &runtime.files {
        write(&format!("{RUNTIME_FOLDER}/{}", file.name), &file.bytes)?;
    }
    write(
        &format!("{RUNTIME_FOLDER}/SOURCE.txt"),
        source_note(runtime).as_bytes(),
    )?;
    let files = list_files(built)?;

    // Into place: the earlier folder aside, the new one in, the earlier one removed.
    let aside = if replaced || dir.exists() {
        let aside = parent.join(format!(".{folder_name}.old-{}", std::process::id()));
        std::fs::rename(dir, &aside)
            .with_context(|| format!("cannot move the earlier {} aside", dir.display()))?;
        Some(aside)
    } else {
        None
    };
    let built = staging.keep();
    if let Err(err) = std::fs::rename(&built, dir) {
        if let Some(aside) = &aside {
            let _ = std::fs::rename(aside, dir);
        }
        let _ = std::fs::remove_dir_all(&built);
        return Err(err)
            .with_context(|| format!("cannot rename the folder into {}", dir.display()));
    }
    if let Some(aside) = aside {
        // The new folder is in place; a leftover of the old one only wastes space.
        let _ = std::fs::remove_dir_all(aside);
    }
    dexpression_fsio::sync_dir(&parent)?;
    Ok((value, FolderSummary { files, replaced }))
}

/// Whether `dir` is a folder this module wrote (to be replaced); an error when it is something
/// else that must not be deleted.
fn check_target(dir: &Path) -> anyhow::Result<bool> {
    let Ok(metadata) = std::fs::symlink_metadata(dir) else {
        return Ok(false);
    };
    if !metadata.is_dir() {
        bail!(
            "{} exists and is not a folder; choose another path for --web",
            dir.display()
        );
    }
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    if entries.next().is_none() {
        return Ok(false);
    }
    let ours = std::fs::read(dir.join(MODEL_JSON))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|config| config["generator"].as_str().map(str::to_string))
        .is_some_and(|generator| generator.starts_with("dexpression"));
    if !ours {
        bail!(
            "{} is a folder with other files in it (no model.json written by `export --web`); choose a new or empty folder for --web, so that nothing of yours is replaced",
            dir.display()
        );
    }
    Ok(true)
}

/// Where the runtime's files came from, for whoever audits the folder.
fn source_note(runtime: &Runtime) -> String {
    let package = &runtime.package;
    let names: Vec<&str> = runtime
        .files
        .iter()
        .map(|file| file.name.as_str())
        .collect();
    format!(
        "{} {} (MIT licence, Copyright (c) Microsoft Corporation; the notice heads {}).\n\
         These files are package/dist/{{{}}} of its npm tarball, unchanged:\n{}\n\
         whose sha512 (npm integrity) is {}.\n",
        package.name,
        package.version,
        names.first().copied().unwrap_or(""),
        names.join(","),
        package.url,
        package.integrity
    )
}

fn list_files(root: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                found.push((relative, entry.metadata()?.len()));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::runtime::{Package, RuntimeFile};
    use std::collections::BTreeMap;

    use dexpression_model::candle_core::Device;
    use dexpression_model::onnx;
    use dexpression_model::{Dexpression, DexpressionConfig};

    fn runtime() -> Runtime {
        Runtime {
            package: Package {
                name: "onnxruntime-web".into(),
                version: "0.0.0".into(),
                url: "https://registry.example/ort.tgz".into(),
                integrity: "sha512-test".into(),
                files: vec!["ort.wasm.bundle.min.mjs".into(), "ort.wasm".into()],
            },
            files: vec![
                RuntimeFile {
                    name: "ort.wasm.bundle.min.mjs".into(),
                    bytes: b"export {}".to_vec(),
                },
                RuntimeFile {
                    name: "ort.wasm".into(),
                    bytes: b"\0asm".to_vec(),
                },
            ],
            tarball: PathBuf::from("ort.tgz"),
            downloaded: false,
        }
    }

    fn write_onnx(path: &Path) -> anyhow::Result<usize> {
        let network = Dexpression::new(DexpressionConfig::with(2, 40), 1, &Device::Cpu)?;
        let bytes = network.to_onnx(&onnx::ExportOptions {
            opset: onnx::DEFAULT_OPSET,
            class_names: vec!["a".into(), "b".into()],
            class_names_source: "test".into(),
            input_side_source: "test".into(),
            metadata: BTreeMap::new(),
        })?;
        std::fs::write(path, &bytes)?;
        Ok(bytes.len())
    }

    fn names(summary: &FolderSummary) -> Vec<&str> {
        summary
            .files
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    #[test]
    fn the_folder_holds_the_page_the_model_and_the_runtime_and_is_replaced_whole() {
        let root = tempfile::tempdir().expect("temporary folder");
        let dir = root.path().join("site");
        let (_, summary) = write_folder(&dir, "tiny", &runtime(), write_onnx).expect("written");
        assert_eq!(
            names(&summary),
            [
                "index.html",
                "model.json",
                "model.onnx",
                "ort/SOURCE.txt",
                "ort/ort.wasm",
                "ort/ort.wasm.bundle.min.mjs",
                "page.js",
                "preprocess.js",
                "style.css"
            ]
        );
        assert!(!summary.replaced);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("model.json")).expect("model.json"))
                .expect("json");
        assert_eq!(config["models"][0]["input_side"], 40);
        assert_eq!(config["models"][0]["onnx"], "model.onnx");
        assert_eq!(config["runtime"]["module"], "ort/ort.wasm.bundle.min.mjs");
        assert_eq!(config["runtime"]["state"], "ready");

        // Written again: replaced, with nothing left beside it.
        std::fs::write(dir.join("stale.txt"), "from before").expect("stale file");
        let (_, again) = write_folder(&dir, "tiny", &runtime(), write_onnx).expect("rewritten");
        assert!(again.replaced);
        assert!(!dir.join("stale.txt").exists());
        let beside: Vec<_> = std::fs::read_dir(root.path())
            .expect("root")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(beside, ["site"]);
    }

    #[test]
    fn a_failure_leaves_no_folder_and_someone_elses_folder_is_not_replaced() {
        let root = tempfile::tempdir().expect("temporary folder");
        let dir = root.path().join("site");
        let error = write_folder(&dir, "tiny", &runtime(), |_| -> anyhow::Result<()> {
            bail!("the export failed")
        })
        .expect_err("failed");
        assert!(error.to_string().contains("the export failed"));
        assert_eq!(std::fs::read_dir(root.path()).expect("root").count(), 0);

        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs).expect("folder");
        std::fs::write(theirs.join("notes.txt"), "mine").expect("file");
        let error = write_folder(&theirs, "tiny", &runtime(), write_onnx).expect_err("refused");
        assert!(error.to_string().contains("other files"), "{error}");
        assert_eq!(
            std::fs::read_to_string(theirs.join("notes.txt")).expect("kept"),
            "mine"
        );
        let file = root.path().join("file");
        std::fs::write(&file, "x").expect("file");
        assert!(write_folder(&file, "tiny", &runtime(), write_onnx).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_place_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("temporary folder");
        let locked = root.path().join("locked");
        std::fs::create_dir(&locked).expect("folder");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555))
            .expect("read-only");
        // Root may write anywhere: then there is nothing to test.
        if std::fs::write(locked.join("probe"), "x").is_ok() {
            return;
        }
        let error = write_folder(&locked.join("site"), "tiny", &runtime(), write_onnx)
            .expect_err("unwritable");
        let message = format!("{error:#}");
        assert!(message.contains("cannot write the folder"), "{message}");
        assert!(message.contains(&locked.display().to_string()), "{message}");
        assert_eq!(std::fs::read_dir(&locked).expect("locked").count(), 0);
    }
}
