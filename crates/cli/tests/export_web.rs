//! `cargo xtask export --web DIR` when onnxruntime-web cannot be had: offline with an empty
//! cache, a download address that does not answer, one that serves other bytes, a cached file
//! that changed. Each error says which file or address, the expected and actual checksum where
//! one was computed, and how to get the file; none leaves a folder, a partial download or a
//! changed cached file behind. (The page written with the real runtime is tested in
//! tests/in_browser.rs; the download and the folder themselves in the `browser` module's unit
//! tests, against a local server.) No test here goes online: the address is a local one.

#![cfg(feature = "serve")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{closed_address, serve_bytes, text, xtask};
use sha2::{Digest, Sha512};

/// The pinned release, as its cached file is named.
const CACHED_FILE: &str = "npm/onnxruntime-web-1.31.1.tgz";
/// Its pinned checksum, as the errors quote it.
const INTEGRITY: &str =
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw==";

fn port_weights(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/torch");
    let checkpoint = std::fs::read_dir(&fixture)
        .expect("fixture folder")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .expect("the port's checkpoint");
    let weights = dir.join("port.safetensors");
    xtask(&["import-torch", text(&checkpoint), "--out", text(&weights)]);
    weights
}

/// `export --web` with `url` (when given) as the runtime's address; must fail; its stderr.
fn refused(args: &[&str], url: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dexpression"));
    command
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    match url {
        Some(url) => command.env("DEXPRESSION_ONNXRUNTIME_WEB_URL", url),
        None => command.env_remove("DEXPRESSION_ONNXRUNTIME_WEB_URL"),
    };
    let output: Output = command.output().expect("xtask runs");
    assert!(!output.status.success(), "xtask {args:?} must fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn integrity_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
    )
}

/// Only what was there before: the weights.
fn assert_nothing_written(dir: &Path, cache: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("folder")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["cache", "port.safetensors"],
        "no site, no temporary folder"
    );
    let cached: Vec<_> = std::fs::read_dir(cache.join("npm"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "nothing cached: {cached:?}");
}

#[test]
fn without_its_runtime_export_web_says_how_to_get_it_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let weights = port_weights(dir.path());
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("cache folder");
    let site = dir.path().join("site");
    let args = [
        "export",
        "--weights",
        text(&weights),
        "--web",
        text(&site),
        "--cache",
        text(&cache),
    ];
    let cached = cache.join(CACHED_FILE);

    // Offline, nothing cached: where the file goes, where it comes from, its checksum.
    let offline: Vec<&str> = args.iter().copied().chain(["--offline"]).collect();
    let stderr = refused(&offline, None);
    for expected in [
        "is not in the cache",
        &cached.display().to_string(),
        "https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-1.31.1.tgz",
        INTEGRITY,
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }
    assert_nothing_written(dir.path(), &cache);

    // An address where nothing answers: the same advice.
    let nowhere = closed_address();
    let stderr = refused(&args, Some(&nowhere));
    for expected in [
        format!("cannot download onnxruntime-web 1.31.1 from {nowhere}"),
        format!("save it as {}", cached.display()),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} in:\n{stderr}");
    }
    assert_nothing_written(dir.path(), &cache);

    // An address that serves other bytes: refused with both checksums, nothing kept.
    let other = b"not onnxruntime-web".to_vec();
    let (mirror, requests) = serve_bytes(200, other.clone());
    let stderr = refused(&args, Some(&mirror));
    for expected in [mirror.as_str(), INTEGRITY, &integrity_of(&other)] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_nothing_written(dir.path(), &cache);

    // A cached file that changed: refused by name, with both checksums, and removed.
    std::fs::create_dir_all(cached.parent().expect("folder")).expect("npm folder");
    std::fs::write(&cached, b"changed on disk").expect("cached file");
    let stderr = refused(&offline, None);
    for expected in [
        cached.display().to_string(),
        INTEGRITY.to_string(),
        integrity_of(b"changed on disk"),
        "the cached file was removed".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} in:\n{stderr}");
    }
    assert!(!cached.exists(), "the changed file is removed");
    assert_nothing_written(dir.path(), &cache);
}

#[test]
fn web_options_go_together() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let site = dir.path().join("site");
    let stderr = refused(
        &["export", "--web", text(&site), "--out", "elsewhere.onnx"],
        None,
    );
    assert!(stderr.contains("--out"), "{stderr}");
    let stderr = refused(&["export", "--offline"], None);
    assert!(stderr.contains("--web"), "{stderr}");
    assert!(!site.exists());
}
