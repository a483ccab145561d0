//! The cluster recipes of deploy/ (issue 26): docs/reproducing.md quotes each file exactly, so
//! that what users copy is what CI runs (deploy/test/slurm-ci.sh); and the installed binary, which
//! has no source tree to rebuild from, says how to reinstall for a command whose feature it lacks.
//!
//! `DEXPRESSION_UPDATE_DOCS=1 cargo test --release -p dexpression-cli --test deploy` copies the
//! files into the docs instead of failing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (crates/cli/../..).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The marker before a fenced block that quotes a file: `<!-- deploy-file: PATH -->`.
const MARKER: &str = "<!-- deploy-file: ";

/// The docs' quoted files: (path, byte range of the block's content in `docs`).
fn quoted_blocks(docs: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut blocks = Vec::new();
    let mut rest = 0;
    while let Some(found) = docs[rest..].find(MARKER) {
        let marker = rest + found;
        let line_end = marker + docs[marker..].find('\n').expect("the marker ends its line");
        let path = docs[marker + MARKER.len()..line_end]
            .trim_end()
            .strip_suffix("-->")
            .expect("the marker ends with -->")
            .trim()
            .to_string();
        let fence_end = line_end + 1 + docs[line_end + 1..].find('\n').expect("a fence line");
        assert!(
            docs[line_end + 1..fence_end].starts_with("```"),
            "docs/reproducing.md: the marker for {path} is not followed by a ``` block"
        );
        let start = fence_end + 1;
        let end = start
            + docs[start..]
                .find("\n```\n")
                .map(|at| at + 1)
                .unwrap_or_else(|| panic!("docs/reproducing.md: the block of {path} never ends"));
        blocks.push((path, start..end));
        rest = end;
    }
    blocks
}

#[test]
fn the_docs_quote_every_deploy_file_as_it_is() {
    let docs_path = repo().join("docs/reproducing.md");
    let mut docs = std::fs::read_to_string(&docs_path).expect("docs/reproducing.md is readable");
    let update = std::env::var_os("DEXPRESSION_UPDATE_DOCS").is_some();
    let blocks = quoted_blocks(&docs);
    let mut stale = Vec::new();
    // From the last block back, so that the earlier ranges stay valid when updating.
    for (path, range) in blocks.iter().rev() {
        let file = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|err| {
            panic!("docs/reproducing.md quotes {path}, which is unreadable: {err}")
        });
        if docs[range.clone()] != file {
            stale.push(path.clone());
            if update {
                docs.replace_range(range.clone(), &file);
            }
        }
    }
    if update && !stale.is_empty() {
        std::fs::write(&docs_path, &docs).expect("docs/reproducing.md is writable");
    } else {
        assert!(
            stale.is_empty(),
            "docs/reproducing.md's copies of {stale:?} differ from the files: copy them over, or run \
             DEXPRESSION_UPDATE_DOCS=1 cargo test --release -p dexpression-cli --test deploy"
        );
    }

    // Every recipe is quoted: a new file in deploy/ cannot be left out of the docs.
    let mut recipes = vec!["deploy/Containerfile".to_string()];
    for folder in ["deploy/slurm", "deploy/kubernetes"] {
        for entry in std::fs::read_dir(repo().join(folder)).expect("deploy/ is readable") {
            let name = entry.expect("a folder entry").file_name();
            recipes.push(format!("{folder}/{}", name.to_string_lossy()));
        }
    }
    for recipe in recipes {
        assert!(
            blocks.iter().any(|(path, _)| *path == recipe),
            "docs/reproducing.md does not quote {recipe}: add `{MARKER}{recipe} -->` and a ``` block"
        );
    }
}

#[test]
fn a_quoted_block_that_differs_from_its_file_is_found() {
    let docs = "text\n<!-- deploy-file: a/b.sh -->\n```bash\necho 1\n```\nmore\n";
    let blocks = quoted_blocks(docs);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].0, "a/b.sh");
    assert_eq!(&docs[blocks[0].1.clone()], "echo 1\n");
    assert_ne!(&docs[blocks[0].1.clone()], "echo 2\n");
}

/// `dexpression COMMAND --help` as an installed binary runs: not started by cargo.
#[cfg(not(all(feature = "download", feature = "serve")))]
fn installed(command: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .args([command, "--help"])
        .env_remove("CARGO")
        .output()
        .expect("dexpression runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
#[cfg(not(feature = "serve"))]
fn an_installed_binary_without_serve_says_how_to_reinstall() {
    let (ok, stderr) = installed("serve");
    assert!(!ok, "serve without its feature succeeded: {stderr}");
    assert!(
        stderr.contains("cargo install --path crates/cli --features serve")
            && stderr.contains("cargo xtask serve")
            && !stderr.contains("running xtask"),
        "{stderr}"
    );
}

#[test]
#[cfg(not(feature = "download"))]
fn an_installed_binary_without_download_says_how_to_reinstall() {
    let (ok, stderr) = installed("download");
    assert!(!ok, "download without its feature succeeded: {stderr}");
    assert!(
        stderr.contains("cargo install --path crates/cli --features download")
            && !stderr.contains("running xtask"),
        "{stderr}"
    );
}

#[test]
fn version_names_the_commit() {
    let output = Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .arg("--version")
        .output()
        .expect("dexpression runs");
    let version = String::from_utf8_lossy(&output.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(repo())
        .output();
    match head {
        // A checkout: the commit's hash (git describe's, possibly after a tag).
        Ok(head) if head.status.success() => {
            let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
            assert!(
                version.contains(&commit),
                "{version} does not name {commit}"
            );
        }
        // No git (a source archive): nothing to compare with.
        _ => eprintln!("no git checkout: {version} not compared with a commit"),
    }
}
