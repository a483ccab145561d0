//! Test helpers: a small HTTP server on 127.0.0.1 that speaks just enough of the Hub and Google
//! Drive, and a parquet writer for each accepted schema variant of the CK+ mirror.
//!
//! The server is a plain `std::net` loop rather than a crate so that a test can cut a transfer
//! in the middle (announce N bytes, send fewer, close) and see every request that arrived.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dexpression_download::{HubOptions, Progress, Unit};

#[path = "../../../dataset/tests/crafted_png/mod.rs"]
mod crafted_png;
#[allow(unused_imports)] // Used by some of the test files that include this module only.
pub use crafted_png::png_header;
use sha2::{Digest, Sha256};

/// A commit id as the Hub sends it in `X-Repo-Commit`.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

/// What the server does with a path.
#[derive(Debug, Clone)]
pub enum Route {
    /// A file, with `Range` support; `cut_first_get_after` sends only that many bytes on the first
    /// GET, then closes the connection.
    File {
        body: Vec<u8>,
        cut_first_get_after: Option<usize>,
        content_type: &'static str,
    },
    /// A file from a server that ignores `Range` and always answers 200 with all of it.
    NoRanges(Vec<u8>),
    /// A bare status code (401, 404, ...).
    Status(u16),
    /// A Drive-style confirmation page pointing at `target` (form action) for file id `id`.
    DriveConfirm { id: String },
    /// A file whose full (non-range) answer carries no `Content-Length`, its end marked only by
    /// the connection closing; `cut_first_get_after` closes the first one early, which looks the
    /// same to the client. With `ranges`, range requests are answered as for [`Route::File`];
    /// without, they get the same lengthless whole body.
    NoLength {
        body: Vec<u8>,
        cut_first_get_after: Option<usize>,
        ranges: bool,
    },
    /// Reads the request and never answers (until the test ends).
    Stall,
    /// Answers a GET with the headers of the whole file and its first `after` bytes, then
    /// stays silent (until the test ends); a HEAD is answered normally.
    StallAfter { body: Vec<u8>, after: usize },
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    seen: Vec<Seen>,
    gets_by_path: HashMap<String, usize>,
    etags: HashMap<String, String>,
}

/// A local HTTP server, stopped when dropped.
pub struct Server {
    pub base: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        // The client must never route 127.0.0.1 through a proxy from the environment. Set once,
        // before any client exists, since changing the environment races with threads reading it.
        static NO_PROXY: std::sync::Once = std::sync::Once::new();
        NO_PROXY.call_once(|| {
            std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
            std::env::set_var("no_proxy", "127.0.0.1,localhost");
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free local port");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            let base = base.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = Arc::clone(&state);
                    let base = base.clone();
                    std::thread::spawn(move || {
                        let _ = handle(stream, &state, &base);
                    });
                }
            })
        };
        Server {
            base,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state
            .lock()
            .expect("server state")
            .routes
            .insert(path.to_string(), route);
    }

    /// Serves `body` as a Hub dataset file.
    pub fn hub_dataset_file(&self, repo: &str, revision: &str, file: &str, body: Vec<u8>) {
        self.route(
            &format!("/datasets/{repo}/resolve/{revision}/{file}"),
            file_route(body),
        );
    }

    /// Serves the Hub's recursive tree listing of a dataset repository: `files` as file entries.
    pub fn hub_dataset_tree(&self, repo: &str, revision: &str, files: &[&str]) {
        let entries: Vec<serde_json::Value> = files
            .iter()
            .map(|path| serde_json::json!({"type": "file", "oid": "0", "size": 1, "path": path}))
            .collect();
        self.route(
            &format!("/api/datasets/{repo}/tree/{revision}"),
            Route::File {
                body: serde_json::Value::Array(entries).to_string().into_bytes(),
                cut_first_get_after: None,
                content_type: "application/json",
            },
        );
    }

    /// Sends `etag` for `path` instead of the body's sha256 (what the Hub sends for LFS files).
    pub fn set_etag(&self, path: &str, etag: &str) {
        self.state
            .lock()
            .expect("server state")
            .etags
            .insert(path.to_string(), etag.to_string());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("server state").seen.clone()
    }

    /// The GET requests seen, in order.
    pub fn gets(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.method == "GET")
            .collect()
    }

    pub fn n_gets(&self) -> usize {
        self.gets().len()
    }

    pub fn clear_seen(&self) {
        self.state.lock().expect("server state").seen.clear();
    }

    /// Hub options reaching this server, with a private hf-hub cache.
    pub fn hub_options(&self, cache: &Path) -> HubOptions {
        HubOptions {
            endpoint: Some(self.base.clone()),
            token: None,
            cache_dir: Some(cache.to_path_buf()),
            offline: false,
            retry_max_attempts: Some(1),
            read_timeout: None,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn file_route(body: Vec<u8>) -> Route {
    Route::File {
        body,
        cut_first_get_after: None,
        content_type: "application/octet-stream",
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut range = None;
    let mut if_range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
            if name.trim().eq_ignore_ascii_case("if-range") {
                if_range = Some(value.trim().to_string());
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: HashMap<String, String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    let (route, n_previous_gets, etag) = {
        let mut state = state.lock().expect("server state");
        state.seen.push(Seen {
            method: method.clone(),
            target: target.clone(),
            range: range.clone(),
            if_range: if_range.clone(),
        });
        // Drive routes are keyed by path plus the file id, so one server can hold several files.
        let key = match query.get("id") {
            Some(id) => format!("{path}?id={id}"),
            None => path.to_string(),
        };
        let route = state.routes.get(&key).cloned();
        let etag = state.etags.get(&key).cloned();
        let n_previous_gets = if method == "GET" {
            let count = state.gets_by_path.entry(key).or_insert(0);
            *count += 1;
            *count - 1
        } else {
            0
        };
        (route, n_previous_gets, etag)
    };

    // A range request to a file without a length is answered like any file's.
    let route = match route {
        Some(Route::NoLength {
            body,
            cut_first_get_after,
            ranges: true,
        }) if range.is_some() => Some(Route::File {
            body,
            cut_first_get_after,
            content_type: "application/octet-stream",
        }),
        route => route,
    };
    let mut stream = stream;
    match route {
        None => reply(&mut stream, &method, 404, &[], b"not found", None),
        Some(Route::Stall) => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok(())
        }
        Some(Route::StallAfter { body, after }) => {
            let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
            let headers = [("ETag", etag.as_str()), ("Accept-Ranges", "bytes")];
            if method == "HEAD" {
                return reply(&mut stream, &method, 200, &headers, &body, None);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\nETag: {etag}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(&body[..after.min(body.len())])?;
            stream.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok(())
        }
        Some(Route::NoLength {
            body,
            cut_first_get_after,
            ..
        }) => {
            let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
            let head = format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n\r\n"
            );
            stream.write_all(head.as_bytes())?;
            let cut = if n_previous_gets == 0 {
                cut_first_get_after
            } else {
                None
            };
            let n_sent = cut.unwrap_or(body.len()).min(body.len());
            stream.write_all(&body[..n_sent])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        Some(Route::NoRanges(body)) => reply(&mut stream, &method, 200, &[], &body, None),
        Some(Route::Status(status)) => reply(&mut stream, &method, status, &[], b"refused", None),
        Some(Route::DriveConfirm { id }) => {
            let page = format!(
                "<html><body>Google Drive can't scan this file for viruses.\
                 <form id=\"download-form\" action=\"{base}/download\" method=\"get\">\
                 <input type=\"submit\" id=\"uc-download-link\" class=\"goog-inline-block jfk-button jfk-button-action\" value=\"Download anyway\"/>\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\"><input type=\"hidden\" name=\"export\" value=\"download\">\
                 <input type=\"hidden\" name=\"confirm\" value=\"t\"><input type=\"hidden\" name=\"uuid\" value=\"5f1e\"></form></body></html>"
            );
            reply(
                &mut stream,
                &method,
                200,
                &[("Content-Type", "text/html; charset=utf-8")],
                page.as_bytes(),
                None,
            )
        }
        Some(Route::File {
            body,
            cut_first_get_after,
            content_type,
        }) => {
            if path.starts_with("/download")
                && query.get("confirm").map(String::as_str) != Some("t")
            {
                return reply(
                    &mut stream,
                    &method,
                    403,
                    &[],
                    b"no confirmation token",
                    None,
                );
            }
            let etag = format!(
                "\"{}\"",
                etag.unwrap_or_else(|| hex::encode(Sha256::digest(&body)))
            );
            let total = body.len();
            // `If-Range` with another version than this one: the whole file, as HTTP says.
            let range = match &if_range {
                Some(validator) if *validator != etag => None,
                _ => range,
            };
            // `bytes=START-` or `bytes=START-END` (END inclusive).
            let (start, end) = match range
                .as_deref()
                .and_then(|range| range.strip_prefix("bytes="))
                .and_then(|range| range.split_once('-'))
            {
                Some((start, end)) => (start.parse::<usize>().ok(), end.parse::<usize>().ok()),
                None => (None, None),
            };
            let common = [
                ("ETag", etag.as_str()),
                ("X-Repo-Commit", COMMIT),
                ("Accept-Ranges", "bytes"),
                ("Content-Type", content_type),
            ];
            let cut = if n_previous_gets == 0 {
                cut_first_get_after
            } else {
                None
            };
            match start {
                Some(start) if start >= total => {
                    let content_range = format!("bytes */{total}");
                    reply(
                        &mut stream,
                        &method,
                        416,
                        &[("Content-Range", &content_range)],
                        b"",
                        None,
                    )
                }
                Some(start) => {
                    let end = end.unwrap_or(total - 1).min(total - 1);
                    let content_range = format!("bytes {start}-{end}/{total}");
                    let mut headers = common.to_vec();
                    headers.push(("Content-Range", &content_range));
                    reply(&mut stream, &method, 206, &headers, &body[start..=end], cut)
                }
                None => reply(&mut stream, &method, 200, &common, &body, cut),
            }
        }
    }
}

/// Writes a response and closes the connection. `cut_after` sends only that many body bytes
/// while announcing all of them, as a dropped connection would.
fn reply(
    stream: &mut TcpStream,
    method: &str,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    cut_after: Option<usize>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let n_sent = cut_after.unwrap_or(body.len()).min(body.len());
        stream.write_all(&body[..n_sent])?;
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

/// The sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes standing in for a checkpoint (`.tar`); the importer is not under test.
pub fn fake_checkpoint(n_bytes: usize) -> Vec<u8> {
    (0..n_bytes)
        .map(|byte_idx| (byte_idx * 31 % 251) as u8)
        .collect()
}

/// A tiny grayscale PNG whose pixels depend on `seed`.
pub fn png(seed: u8) -> Vec<u8> {
    let image = image::GrayImage::from_fn(48, 48, |x, y| {
        image::Luma([(x as u8)
            .wrapping_mul(3)
            .wrapping_add(y as u8)
            .wrapping_add(seed)])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode PNG in memory");
    bytes
}

/// How the mirror's parquet file stores images and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageColumn {
    /// The Hub's `Image` feature: struct `{bytes: binary, path: string}`.
    Struct,
    /// Plain bytes.
    Binary,
}

/// One row of the mirror.
#[derive(Debug, Clone)]
pub struct MirrorRow {
    pub image: Vec<u8>,
    pub label: Label,
    pub file: String,
}

#[derive(Debug, Clone)]
pub enum Label {
    Name(String),
    Index(i64),
}

/// Writes a mirror-shaped parquet file. `class_names` adds the `huggingface` metadata that
/// `datasets` writes for a `ClassLabel`.
pub fn write_mirror_parquet(
    path: &Path,
    image_column: ImageColumn,
    rows: &[MirrorRow],
    class_names: Option<&[&str]>,
) {
    write_mirror_parquet_with(
        path,
        image_column,
        rows,
        class_names,
        parquet::basic::Compression::SNAPPY,
    )
}

/// [`write_mirror_parquet`] with another compression codec.
pub fn write_mirror_parquet_with(
    path: &Path,
    image_column: ImageColumn,
    rows: &[MirrorRow],
    class_names: Option<&[&str]>,
    compression: parquet::basic::Compression,
) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    let image_schema = match image_column {
        ImageColumn::Struct => {
            "optional group image { optional binary bytes; optional binary path (STRING); }"
        }
        ImageColumn::Binary => "optional binary image;",
    };
    let integer_labels = matches!(rows.first().map(|row| &row.label), Some(Label::Index(_)));
    let label_schema = if integer_labels {
        "optional int64 label;"
    } else {
        "optional binary label (STRING);"
    };
    let message = format!(
        "message schema {{ {image_schema} {label_schema} optional binary file (STRING); }}"
    );
    let mut properties = WriterProperties::builder().set_compression(compression);
    if let Some(names) = class_names {
        let json = serde_json::json!({"info": {"features": {
            "image": {"_type": "Image"},
            "label": {"names": names, "_type": "ClassLabel"},
            "file": {"dtype": "string", "_type": "Value"}
        }}});
        properties = properties.set_key_value_metadata(Some(vec![KeyValue::new(
            "huggingface".to_string(),
            json.to_string(),
        )]));
    }
    let n_rows = rows.len();
    let images: Vec<ByteArray> = rows
        .iter()
        .map(|row| ByteArray::from(row.image.clone()))
        .collect();
    let files: Vec<ByteArray> = rows
        .iter()
        .map(|row| ByteArray::from(row.file.as_str()))
        .collect();
    write_parquet(path, &message, properties.build(), |column_idx, column| {
        let leaf = match (image_column, column_idx) {
            (ImageColumn::Struct, 0) => "image.bytes",
            (ImageColumn::Struct, 1) => "image.path",
            (ImageColumn::Struct, 2) | (ImageColumn::Binary, 1) => "label",
            (ImageColumn::Binary, 0) => "image",
            _ => "file",
        };
        match leaf {
            "image.bytes" => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&images, Some(&vec![2; n_rows]), None)
                    .expect("write bytes");
            }
            "image.path" => {
                // Null paths, as `datasets` writes for images given as bytes.
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&[], Some(&vec![1; n_rows]), None)
                    .expect("write paths");
            }
            "image" => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&images, Some(&vec![1; n_rows]), None)
                    .expect("write images");
            }
            "label" if integer_labels => {
                let labels: Vec<i64> = rows
                    .iter()
                    .map(|row| {
                        if let Label::Index(index) = row.label {
                            index
                        } else {
                            -1
                        }
                    })
                    .collect();
                column
                    .typed::<Int64Type>()
                    .write_batch(&labels, Some(&vec![1; n_rows]), None)
                    .expect("write labels");
            }
            "label" => {
                let labels: Vec<ByteArray> = rows
                    .iter()
                    .map(|row| match &row.label {
                        Label::Name(name) => ByteArray::from(name.as_str()),
                        Label::Index(index) => ByteArray::from(index.to_string().as_str()),
                    })
                    .collect();
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&labels, Some(&vec![1; n_rows]), None)
                    .expect("write labels");
            }
            _ => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&files, Some(&vec![1; n_rows]), None)
                    .expect("write files");
            }
        }
    });
}

/// Writes a parquet file of one row group with the schema `message`, `fill` writing each
/// column (given its index) in turn.
fn write_parquet(
    path: &Path,
    message: &str,
    properties: parquet::file::properties::WriterProperties,
    mut fill: impl FnMut(usize, &mut parquet::file::writer::SerializedColumnWriter<'_>),
) {
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(parse_message_type(message).expect("test schema parses"));
    let file = File::create(path).expect("create parquet file");
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(properties)).expect("parquet writer");
    let mut row_group = writer.next_row_group().expect("row group");
    let mut column_idx = 0;
    while let Some(mut column) = row_group.next_column().expect("next column") {
        fill(column_idx, &mut column);
        column.close().expect("close column");
        column_idx += 1;
    }
    row_group.close().expect("close row group");
    writer.close().expect("close parquet file");
}

/// A parquet file with no image or label column at all.
pub fn write_unusable_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};

    let message = "message schema { optional binary text (STRING); optional double score; }";
    write_parquet(path, message, Default::default(), |column_idx, column| {
        if column_idx == 0 {
            column
                .typed::<ByteArrayType>()
                .write_batch(&[ByteArray::from("hello")], Some(&[1]), None)
                .expect("text");
        } else {
            column
                .typed::<DoubleType>()
                .write_batch(&[0.5], Some(&[1]), None)
                .expect("score");
        }
    });
}

/// A parquet file of images with no label column (a `caption` instead).
pub fn write_unlabelled_parquet(path: &Path, images: &[Vec<u8>]) {
    use parquet::data_type::{ByteArray, ByteArrayType};

    let message = "message schema { optional binary image; optional binary caption (STRING); }";
    let levels = vec![1; images.len()];
    write_parquet(path, message, Default::default(), |column_idx, column| {
        let values: Vec<ByteArray> = if column_idx == 0 {
            images
                .iter()
                .map(|image| ByteArray::from(image.clone()))
                .collect()
        } else {
            images.iter().map(|_| ByteArray::from("a face")).collect()
        };
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&levels), None)
            .expect("column");
    });
}

/// A [`Progress`] that remembers notes, for tests that check what the user is told.
#[derive(Default)]
pub struct Recorder {
    pub notes: Mutex<Vec<String>>,
    pub max_position: Mutex<u64>,
}

impl Progress for Recorder {
    fn begin(&self, _label: &str, _total: Option<u64>, _unit: Unit) {}
    fn set_position(&self, done: u64) {
        let mut max_position = self.max_position.lock().expect("recorder");
        *max_position = (*max_position).max(done);
    }
    fn end(&self) {}
    fn note(&self, message: &str) {
        self.notes
            .lock()
            .expect("recorder")
            .push(message.to_string());
    }
}
