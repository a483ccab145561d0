//! onnxruntime-web, the runtime of the in-browser page: one release from the npm registry,
//! pinned by its tarball's sha512 (npm's `dist.integrity`), downloaded once into a cache folder,
//! checked again on every use, and unpacked into memory, only the files the page loads.
//!
//! The tarball's entries are read by name into memory and never written out under the names they
//! carry, so that an archive cannot place a file anywhere. The download goes through a temporary
//! file beside the cached one that is renamed into place only once its checksum matches; an
//! interrupted or wrong download leaves nothing behind.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha512};

/// The onnxruntime-web release the page is written for.
pub const ONNXRUNTIME_WEB_VERSION: &str = "1.31.1";

/// npm's `dist.integrity` of that release's tarball
/// (`https://registry.npmjs.org/onnxruntime-web/1.31.1`): its sha512, base64.
pub const ONNXRUNTIME_WEB_INTEGRITY: &str =
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw==";

/// The environment variable naming another address of the same tarball (a mirror, an npm proxy);
/// its checksum stays the pinned one.
pub const URL_VARIABLE: &str = "DEXPRESSION_ONNXRUNTIME_WEB_URL";

/// The ES module the page imports: the WebAssembly-only build with its Emscripten loader inside,
/// so that no further script is fetched.
pub const MODULE_FILE: &str = "ort.wasm.bundle.min.mjs";

/// The WebAssembly binary that module loads from beside itself (single-threaded use needs no
/// other: no worker script, no SharedArrayBuffer).
pub const WASM_FILE: &str = "ort-wasm-simd-threaded.wasm";

/// Largest tarball accepted (the pinned one is 35 MB), so that a wrong address cannot fill the
/// disk.
const MAX_TARBALL_BYTES: u64 = 256 * 1024 * 1024;

/// Largest file taken out of the tarball (the WebAssembly binary is 15 MB).
const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// How long a connection may take to open, and the server may stay silent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An npm package release: where its tarball is and what its checksum must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package name, e.g. `onnxruntime-web`.
    pub name: String,
    /// The release, e.g. `1.31.1`.
    pub version: String,
    /// Where the tarball is downloaded from.
    pub url: String,
    /// Its npm integrity string, `sha512-<base64>`.
    pub integrity: String,
    /// The files the page needs, by their name under `package/dist/` in the tarball.
    pub files: Vec<String>,
}

impl Package {
    /// The pinned onnxruntime-web release, from the npm registry or from the address in
    /// [`URL_VARIABLE`].
    pub fn onnxruntime_web() -> Self {
        let registry = format!(
            "https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ONNXRUNTIME_WEB_VERSION}.tgz"
        );
        let url = std::env::var(URL_VARIABLE)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or(registry);
        Package {
            name: "onnxruntime-web".into(),
            version: ONNXRUNTIME_WEB_VERSION.into(),
            url,
            integrity: ONNXRUNTIME_WEB_INTEGRITY.into(),
            files: vec![MODULE_FILE.into(), WASM_FILE.into()],
        }
    }

    /// The cached tarball's path in `cache`: `<cache>/npm/<name>-<version>.tgz`.
    pub fn cached_path(&self, cache: &Path) -> PathBuf {
        cache
            .join("npm")
            .join(format!("{}-{}.tgz", self.name, self.version))
    }

    /// `name version`, for messages.
    fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// One file of the package, read into memory.
#[derive(Debug, Clone)]
pub struct RuntimeFile {
    /// Its name under `package/dist/`.
    pub name: String,
    /// Its content, as in the tarball.
    pub bytes: Vec<u8>,
}

/// The files the page needs, checked and unpacked.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The release they come from.
    pub package: Package,
    /// In the order of [`Package::files`].
    pub files: Vec<RuntimeFile>,
    /// The verified tarball they were read from.
    pub tarball: PathBuf,
    /// Whether this call downloaded it (else it was in the cache).
    pub downloaded: bool,
}

#[cfg(test)]
impl Runtime {
    /// The content of the file `name`, when the page needs it.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|file| file.name == name)
            .map(|file| file.bytes.as_slice())
    }
}

/// Whether the runtime may be downloaded when the cache lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the cache (`--offline`, or a server that has not been asked to download).
    CacheOnly,
    /// The cache, else a download into it.
    Download,
}

/// Why the runtime is not available; each message names the file or address involved and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Not in the cache, and downloading is off.
    #[error(
        "{package} is not in the cache ({path}) and downloading is off: run without --offline to download it from {url}, or download that file on a machine that can reach it and save it as {path} (its sha512 is checked: {integrity})"
    )]
    NotCached {
        /// The package release.
        package: String,
        /// Where it would be cached.
        path: PathBuf,
        /// Where it is downloaded from.
        url: String,
        /// Its pinned checksum.
        integrity: String,
    },
    /// The download failed (no network, a refused connection, an error status).
    #[error(
        "cannot download {package} from {url}: {reason}. Download that file on a machine that can reach it and save it as {path} (its sha512 is checked: {integrity}), or set {URL_VARIABLE} to a mirror of it"
    )]
    Download {
        /// The package release.
        package: String,
        /// Where it was downloaded from.
        url: String,
        /// What went wrong.
        reason: String,
        /// Where it is cached once downloaded.
        path: PathBuf,
        /// Its pinned checksum.
        integrity: String,
    },
    /// A tarball (downloaded, or in the cache) is not the pinned one.
    #[error(
        "{file}: its sha512 is {actual}, not the pinned {expected} of {package}; {consequence}"
    )]
    ChecksumMismatch {
        /// The package release.
        package: String,
        /// The cached file, or the address it was downloaded from.
        file: String,
        /// The pinned integrity.
        expected: String,
        /// What the bytes hash to, in the same form.
        actual: String,
        /// What was done about it.
        consequence: String,
    },
    /// The verified tarball lacks a file the page needs, or cannot be read as a gzipped tar.
    #[error("{path}: {problem}")]
    Archive {
        /// The tarball.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The address is neither https nor a loopback address.
    #[error("{url}: only https addresses are downloaded from (http only on this machine's loopback address)")]
    Insecure {
        /// The refused address.
        url: String,
    },
    /// The pinned integrity string is not `sha512-<base64 of 64 bytes>`.
    #[error("{integrity}: not an npm sha512 integrity string (sha512-<base64>)")]
    Integrity {
        /// The string.
        integrity: String,
    },
    /// Reading or writing the cache failed.
    #[error(transparent)]
    Io(#[from] dexpression_fsio::Error),
}

/// The package's files from the cache, or (with [`Access::Download`]) downloaded into it first.
///
/// A cached tarball is hashed again on every call; one that no longer matches is removed and
/// reported (the next call downloads it afresh).
pub fn obtain(package: &Package, cache: &Path, access: Access) -> Result<Runtime, RuntimeError> {
    let expected = integrity_digest(&package.integrity)?;
    let path = package.cached_path(cache);
    let mut downloaded = false;
    if path.is_file() {
        let actual = sha512_file(&path)?;
        if actual != expected {
            let consequence = match std::fs::remove_file(&path) {
                Ok(()) => {
                    "the cached file was removed; run again to download it afresh".to_string()
                }
                Err(err) => format!("remove it ({err}) and run again to download it afresh"),
            };
            return Err(RuntimeError::ChecksumMismatch {
                package: package.label(),
                file: path.display().to_string(),
                expected: package.integrity.clone(),
                actual: integrity_string(&actual),
                consequence,
            });
        }
    } else {
        match access {
            Access::CacheOnly => {
                return Err(RuntimeError::NotCached {
                    package: package.label(),
                    path,
                    url: package.url.clone(),
                    integrity: package.integrity.clone(),
                })
            }
            Access::Download => {
                download(package, &expected, &path)?;
                downloaded = true;
            }
        }
    }
    let files = unpack(&path, &package.files)?;
    Ok(Runtime {
        package: package.clone(),
        files,
        tarball: path,
        downloaded,
    })
}

/// The folder the runtime is cached in when none is given: `dexpression` in the user's cache
/// folder (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%`
/// on Windows).
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|dir| dir.join("dexpression"))
}

/// The 64 bytes of a `sha512-<base64>` integrity string.
fn integrity_digest(integrity: &str) -> Result<Vec<u8>, RuntimeError> {
    integrity
        .strip_prefix("sha512-")
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .filter(|digest| digest.len() == 64)
        .ok_or_else(|| RuntimeError::Integrity {
            integrity: integrity.to_string(),
        })
}

/// A digest as npm writes it.
fn integrity_string(digest: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn io_error<'a>(
    path: &'a Path,
    step: &'static str,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |error| {
        RuntimeError::Io(dexpression_fsio::Error {
            path: path.to_path_buf(),
            step,
            error,
        })
    }
}

fn sha512_file(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    let mut file = File::open(path).map_err(io_error(path, "read"))?;
    let mut hasher = Sha512::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n_read = file.read(&mut buffer).map_err(io_error(path, "read"))?;
        if n_read == 0 {
            break;
        }
        hasher.update(&buffer[..n_read]);
    }
    Ok(hasher.finalize().to_vec())
}

/// Whether `url` may be downloaded from: https, or http to a loopback address (a local mirror,
/// the tests' server), where nobody can change the bytes on the way.
fn is_loopback_http(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && loopback
}

/// Downloads the tarball into `path` through a temporary file that is renamed into place only
/// when complete and matching `expected`.
fn download(package: &Package, expected: &[u8], path: &Path) -> Result<(), RuntimeError> {
    let failed = |reason: String| RuntimeError::Download {
        package: package.label(),
        url: package.url.clone(),
        reason,
        path: path.to_path_buf(),
        integrity: package.integrity.clone(),
    };
    let url = reqwest::Url::parse(&package.url).map_err(|err| failed(err.to_string()))?;
    let loopback = is_loopback_http(&url);
    if url.scheme() != "https" && !loopback {
        return Err(RuntimeError::Insecure {
            url: package.url.clone(),
        });
    }
    let mut client = reqwest::blocking::Client::builder()
        .user_agent(concat!("dexpression/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(READ_TIMEOUT)
        // Never follow a redirect to an address in the clear.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() > 10 {
                attempt.error("more than 10 redirects")
            } else if attempt.url().scheme() != "https" && !is_loopback_http(attempt.url()) {
                attempt.error("a redirect to an unencrypted address")
            } else {
                attempt.follow()
            }
        }));
    if loopback {
        // A proxy from the environment cannot reach this machine's loopback address.
        client = client.no_proxy();
    }
    let client = client.build().map_err(|err| failed(err.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .map_err(|err| failed(describe(&err)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("the server answered {status}")));
    }
    let announced = response.content_length();
    if announced.is_some_and(|length| length > MAX_TARBALL_BYTES) {
        return Err(failed(format!(
            "it announces {} MB, more than the {} MB an onnxruntime-web tarball can be",
            announced.unwrap_or(0) / 1_000_000,
            MAX_TARBALL_BYTES / 1_000_000
        )));
    }
    eprintln!(
        "downloading {} ({}) from {} into {}",
        package.label(),
        announced.map_or("size unknown".to_string(), |length| format!(
            "{:.1} MB",
            length as f64 / 1e6
        )),
        package.url,
        path.display()
    );
    // The temporary file is removed when the closure fails: nothing partial stays.
    dexpression_fsio::write_with(path, |out| {
        let mut hasher = Sha512::new();
        let mut received: u64 = 0;
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n_read = match response.read(&mut buffer) {
                Ok(0) => break,
                Ok(n_read) => n_read,
                Err(err) => {
                    return Err(failed(format!(
                        "the transfer broke off after {received} bytes ({})",
                        describe(&err)
                    )))
                }
            };
            received += n_read as u64;
            if received > MAX_TARBALL_BYTES {
                return Err(failed(format!(
                    "more than {} MB arrived, more than an onnxruntime-web tarball can be",
                    MAX_TARBALL_BYTES / 1_000_000
                )));
            }
            hasher.update(&buffer[..n_read]);
            out.write_all(&buffer[..n_read])
                .map_err(io_error(path, "write"))?;
        }
        if let Some(length) = announced.filter(|&length| length != received) {
            return Err(failed(format!(
                "the transfer broke off: {received} of {length} bytes arrived"
            )));
        }
        let actual = hasher.finalize();
        if actual.as_slice() != expected {
            return Err(RuntimeError::ChecksumMismatch {
                package: package.label(),
                file: package.url.clone(),
                expected: package.integrity.clone(),
                actual: integrity_string(&actual),
                consequence: "nothing was kept; the address does not serve the pinned release"
                    .into(),
            });
        }
        Ok(())
    })
}

/// The innermost causes of a transport error, where "connection refused" is said.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.dedup();
    causes.join(": ")
}

/// Reads the files `wanted` (names under `package/dist/`) out of a gzipped tar into memory.
fn unpack(tarball: &Path, wanted: &[String]) -> Result<Vec<RuntimeFile>, RuntimeError> {
    let archive_error = |problem: String| RuntimeError::Archive {
        path: tarball.to_path_buf(),
        problem,
    };
    let file = File::open(tarball).map_err(io_error(tarball, "read"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
    let entries = archive
        .entries()
        .map_err(|err| archive_error(format!("not a gzipped tar archive ({err})")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|err| archive_error(format!("cannot read an entry ({err})")))?;
        let name = match entry.path() {
            Ok(path) => path.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        let Some(index) = name
            .strip_prefix("package/dist/")
            .and_then(|name| wanted.iter().position(|wanted| wanted == name))
        else {
            continue;
        };
        if found[index].is_some() || !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.size();
        if size > MAX_FILE_BYTES {
            return Err(archive_error(format!(
                "{name} is {size} bytes, more than the {MAX_FILE_BYTES} accepted"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|err| archive_error(format!("cannot read {name} ({err})")))?;
        found[index] = Some(bytes);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    wanted
        .iter()
        .zip(found)
        .map(|(name, bytes)| {
            bytes
                .map(|bytes| RuntimeFile {
                    name: name.clone(),
                    bytes,
                })
                .ok_or_else(|| {
                    archive_error(format!(
                        "package/dist/{name} is missing: not the release the page is written for"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::BufRead;
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A gzipped tar holding `files` (path, content), as npm packs a package.
    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, *content)
                .expect("tar entry");
        }
        builder
            .into_inner()
            .and_then(|gz| gz.finish())
            .expect("gzip")
    }

    fn sha512_integrity(bytes: &[u8]) -> String {
        integrity_string(&Sha512::digest(bytes))
    }

    /// What the test server answers: the status line's code, the bytes, and the length it
    /// announces (more than it sends for a broken-off transfer).
    #[derive(Clone)]
    struct Answer {
        status: u16,
        body: Vec<u8>,
        announced: usize,
    }

    /// A one-file HTTP server on 127.0.0.1 answering every request with `answer`; its address
    /// and the number of requests it has had.
    fn serve(answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().expect("stream"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.status, answer.announced
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&answer.body);
            }
        });
        (format!("http://{address}/pkg.tgz"), requests)
    }

    fn package(url: &str, integrity: &str) -> Package {
        Package {
            name: "fake-runtime".into(),
            version: "1.0.0".into(),
            url: url.into(),
            integrity: integrity.into(),
            files: vec!["a.mjs".into(), "b.wasm".into()],
        }
    }

    fn good_tarball() -> Vec<u8> {
        tarball(&[
            ("package/package.json", b"{}"),
            ("package/dist/a.mjs", b"export default 1;"),
            ("package/dist/other.js", b"not wanted"),
            ("package/dist/b.wasm", b"\0asm\x01\0\0\0"),
        ])
    }

    /// The files in a folder, recursively, by path relative to it.
    fn files_in(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(relative) = path.strip_prefix(dir) {
                    found.push(relative.display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn a_download_is_checked_cached_and_then_read_from_the_cache() {
        let bytes = good_tarball();
        let (url, requests) = serve(Answer {
            status: 200,
            announced: bytes.len(),
            body: bytes.clone(),
        });
        let cache = tempfile::tempdir().expect("cache");
        let package = package(&url, &sha512_integrity(&bytes));
        let runtime = obtain(&package, cache.path(), Access::Download).expect("downloaded");
        assert!(runtime.downloaded);
        assert_eq!(runtime.file("a.mjs"), Some(&b"export default 1;"[..]));
        assert_eq!(runtime.file("b.wasm"), Some(&b"\0asm\x01\0\0\0"[..]));
        assert_eq!(runtime.file("other.js"), None);
        assert_eq!(files_in(cache.path()), ["npm/fake-runtime-1.0.0.tgz"]);
        assert_eq!(
            std::fs::read(package.cached_path(cache.path())).expect("cached"),
            bytes
        );

        // Again, and offline: from the cache, without a request.
        let again = obtain(&package, cache.path(), Access::CacheOnly).expect("cached");
        assert!(!again.downloaded);
        assert_eq!(again.file("a.mjs"), runtime.file("a.mjs"));
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_download_with_the_wrong_checksum_is_refused_and_nothing_is_kept() {
        let bytes = good_tarball();
        let (url, _) = serve(Answer {
            status: 200,
            announced: bytes.len(),
            body: bytes.clone(),
        });
        let cache = tempfile::tempdir().expect("cache");
        let pinned = sha512_integrity(b"another release");
        let error =
            obtain(&package(&url, &pinned), cache.path(), Access::Download).expect_err("refused");
        let message = error.to_string();
        assert!(
            matches!(error, RuntimeError::ChecksumMismatch { .. }),
            "{message}"
        );
        assert!(message.contains(&url), "names the address: {message}");
        assert!(message.contains(&pinned), "the expected hash: {message}");
        assert!(
            message.contains(&sha512_integrity(&bytes)),
            "the actual hash: {message}"
        );
        assert_eq!(files_in(cache.path()), Vec::<String>::new());
    }

    #[test]
    fn a_broken_off_download_leaves_no_file() {
        let bytes = good_tarball();
        let (url, _) = serve(Answer {
            status: 200,
            // Announces the whole tarball, sends half of it and closes the connection.
            announced: bytes.len(),
            body: bytes[..bytes.len() / 2].to_vec(),
        });
        let cache = tempfile::tempdir().expect("cache");
        let error = obtain(
            &package(&url, &sha512_integrity(&bytes)),
            cache.path(),
            Access::Download,
        )
        .expect_err("incomplete");
        assert!(matches!(error, RuntimeError::Download { .. }), "{error}");
        assert_eq!(files_in(cache.path()), Vec::<String>::new());
    }

    #[test]
    fn an_error_status_or_no_server_says_where_to_put_the_file() {
        let cache = tempfile::tempdir().expect("cache");
        let (url, _) = serve(Answer {
            status: 404,
            announced: 9,
            body: b"not found".to_vec(),
        });
        let integrity = sha512_integrity(b"x");
        let error = obtain(&package(&url, &integrity), cache.path(), Access::Download)
            .expect_err("not found");
        let message = error.to_string();
        assert!(message.contains("404"), "{message}");
        assert!(
            message.contains(
                &package(&url, &integrity)
                    .cached_path(cache.path())
                    .display()
                    .to_string()
            ),
            "says where the file goes: {message}"
        );

        // A port nobody listens on.
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a port");
        let url = format!("http://{closed}/pkg.tgz");
        let error = obtain(&package(&url, &integrity), cache.path(), Access::Download)
            .expect_err("offline");
        assert!(matches!(error, RuntimeError::Download { .. }), "{error}");
        assert!(error.to_string().contains(&integrity), "{error}");
        assert_eq!(files_in(cache.path()), Vec::<String>::new());
    }

    #[test]
    fn offline_without_a_cache_says_how_to_get_the_file() {
        let cache = tempfile::tempdir().expect("cache");
        let package = package("https://registry.example/pkg.tgz", &sha512_integrity(b"x"));
        let error = obtain(&package, cache.path(), Access::CacheOnly).expect_err("not cached");
        let message = error.to_string();
        assert!(matches!(error, RuntimeError::NotCached { .. }), "{message}");
        assert!(
            message.contains("https://registry.example/pkg.tgz"),
            "{message}"
        );
        assert!(
            message.contains(&package.cached_path(cache.path()).display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn a_changed_cached_file_is_reported_and_removed() {
        let cache = tempfile::tempdir().expect("cache");
        let bytes = good_tarball();
        let package = package(
            "https://registry.example/pkg.tgz",
            &sha512_integrity(&bytes),
        );
        let path = package.cached_path(cache.path());
        std::fs::create_dir_all(path.parent().expect("folder")).expect("folder");
        let mut changed = bytes.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        std::fs::write(&path, &changed).expect("cached file");
        let error = obtain(&package, cache.path(), Access::CacheOnly).expect_err("changed");
        let message = error.to_string();
        assert!(
            matches!(error, RuntimeError::ChecksumMismatch { .. }),
            "{message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&package.integrity), "{message}");
        assert!(message.contains(&sha512_integrity(&changed)), "{message}");
        assert!(!path.exists(), "the changed file is removed");
    }

    #[test]
    fn a_tarball_without_a_needed_file_is_refused() {
        let cache = tempfile::tempdir().expect("cache");
        let bytes = tarball(&[("package/dist/a.mjs", b"export default 1;")]);
        let package = package(
            "https://registry.example/pkg.tgz",
            &sha512_integrity(&bytes),
        );
        let path = package.cached_path(cache.path());
        std::fs::create_dir_all(path.parent().expect("folder")).expect("folder");
        std::fs::write(&path, &bytes).expect("cached file");
        let error = obtain(&package, cache.path(), Access::CacheOnly).expect_err("incomplete");
        assert!(error.to_string().contains("b.wasm is missing"), "{error}");
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let cache = tempfile::tempdir().expect("cache");
        let package = package("http://registry.example/pkg.tgz", &sha512_integrity(b"x"));
        let error = obtain(&package, cache.path(), Access::Download).expect_err("insecure");
        assert!(matches!(error, RuntimeError::Insecure { .. }), "{error}");
    }

    #[test]
    fn the_pinned_integrity_is_a_sha512() {
        assert_eq!(
            integrity_digest(ONNXRUNTIME_WEB_INTEGRITY)
                .expect("pinned")
                .len(),
            64
        );
        assert!(integrity_digest("sha1-AAAA").is_err());
        assert!(integrity_digest("sha512-AAAA").is_err());
    }
}
