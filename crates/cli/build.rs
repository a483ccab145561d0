//! Sets `DEXPRESSION_COMMIT`, the commit `--version` names: the `DEXPRESSION_COMMIT` environment
//! variable where the build sets it (a container build without `.git`), else `git describe` of the
//! checkout, else "commit unknown". The script also makes cargo resolve the `[build-dependencies]`,
//! which pin features of proc-macro dependencies (see Cargo.toml).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DEXPRESSION_COMMIT");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    // Rebuild when the checkout moves to another commit (HEAD, or the branch it points at).
    if let Some(git_dir) = git(&manifest_dir, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
        }
    }
    let commit = std::env::var("DEXPRESSION_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(|| {
            git(
                &manifest_dir,
                &["describe", "--always", "--dirty", "--abbrev=10"],
            )
        })
        .unwrap_or_else(|| "commit unknown".to_string());
    println!("cargo:rustc-env=DEXPRESSION_COMMIT={commit}");
}

/// `git ARGS` in `dir`, its trimmed output where it succeeds.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
