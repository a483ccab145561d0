//! The page that classifies in the browser (`cargo xtask export --web`, `serve`'s `/local/`) in
//! headless Chromium, against the server's own pipeline.
//!
//! `export --web` writes the page for a small trained network; a counting HTTP server that this
//! test starts serves the folder. On several generated faces (PNG, so that both decoders agree:
//! a colour photo, a colour crop, a tiny crop that is upscaled, a grayscale PNG) the page's input
//! pixels equal the Rust pipeline's exactly, and its top class and every probability match
//! `POST /api/predict?whole_image=true` of a server on the same weights within 1e-3; so do they
//! for a square dragged on the photo. The fake webcam's frames are classified too. Every request
//! the page made was a GET without a body, for the page's own files: no image was sent. Last,
//! the server's `/local/` page, opened with the server's token, gives the server's probabilities
//! under the server's own Content-Security-Policy, with its runtime files served as `.wasm` and
//! JavaScript. On the way,
//! `export --web` refuses a folder it cannot make and a folder of someone else's files.
//!
//! onnxruntime-web comes from `target/tmp/onnxruntime-web` (the test's cache, read offline). When
//! it is not there, `DEXPRESSION_BROWSER_TEST=require` (CI) downloads it there once from the npm
//! registry, checksum checked; otherwise the test prints a notice and passes, as it does without
//! Chromium (see tests/serve_browser.rs).

#![cfg(feature = "serve")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::browser::{
    browser, click, open_chromium, required, save_screenshot, screenshot_folder,
    start_chromedriver, wait_for, webcam_frames, write_y4m,
};
use common::start_server;
use dexpression_dataset::crop::{crop_and_resize, CropBox};
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client, Locator};

/// The server's token: `/local/` must load its model and runtime with the cookie alone.
const TOKEN: &str = "in-browser-test-token-77c1";

/// How far an in-browser probability may be from the server's.
const TOLERANCE: f32 = 1e-3;

/// The side the test network is trained at; the page and the server read the side back from
/// the weights (model.json says which), and the test compares with that.
const TRAINED_SIDE: usize = 48;

/// The files the page may request from the folder `export --web` wrote.
const PAGE_PATHS: [&str; 8] = [
    "/",
    "/page.js",
    "/preprocess.js",
    "/style.css",
    "/model.json",
    "/model.onnx",
    "/ort/ort.wasm.bundle.min.mjs",
    "/ort/ort-wasm-simd-threaded.wasm",
];

#[test]
fn the_page_classifies_in_the_browser_as_the_server_does_and_uploads_nothing() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary folder");
    let trained = common::train_small_model(&dir.path().join("model"), TRAINED_SIDE, 10, 2, 6);
    let images = write_images(dir.path(), &trained);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnxruntime-web");
    let site = dir.path().join("site");
    let Some(notes) = export_web(&trained.weights, &site, &cache) else {
        return;
    };
    // The test network's weights record no side: the export says so and model.json has the one
    // it inferred, which the server infers too (checked below).
    assert!(notes.contains("records no input side"), "{notes}");
    refusals(&trained.weights, dir.path(), &cache);
    let (class_names, side) = site_model(&site);
    let folder = StaticServer::start(&site);
    let (_server, server_url) = start_server(&[
        "--weights".as_ref(),
        trained.weights.as_os_str(),
        "--cache".as_ref(),
        cache.as_os_str(),
        "--token".as_ref(),
        TOKEN.as_ref(),
    ]);
    let webcam = dir.path().join("webcam.y4m");
    let photo = image::open(&images[0]).expect("photo").to_rgb8();
    write_y4m(&webcam, &photo, 2);
    let screenshots = screenshot_folder(dir.path());
    std::fs::create_dir_all(&screenshots).expect("screenshot folder");

    let (_driver, driver_url) = start_chromedriver(&driver);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let profile = dir.path().join("chromium-profile");
        let browser = open_chromium(&chromium, &driver_url, &profile, &webcam).await;
        let server = Server {
            url: server_url.clone(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
            class_names: class_names.clone(),
            side,
        };
        let scratch = dir.path().join("crops");
        std::fs::create_dir_all(&scratch).expect("crop folder");
        let outcome = async {
            static_page(
                &browser,
                &folder.url,
                &images,
                &server,
                &scratch,
                &screenshots,
            )
            .await;
            served_page(&browser, &server, &images[0]).await;
        };
        outcome.await;
        let _ = browser.close().await;
    });

    // No image left the browser: every request to the folder was a GET without a body, for the
    // page's own files.
    let requests = folder.requests.lock().expect("requests").clone();
    for request in &requests {
        assert_eq!(request.method, "GET", "{request:?}");
        assert!(
            request.body_length.unwrap_or(0) == 0 && !request.chunked,
            "a request with a body: {request:?}"
        );
        assert!(
            PAGE_PATHS.contains(&request.path.as_str()),
            "a request for something else than the page's files: {request:?}"
        );
    }
    for needed in ["/model.onnx", "/ort/ort-wasm-simd-threaded.wasm"] {
        assert!(
            requests.iter().any(|request| request.path == needed),
            "the page never fetched {needed}: {requests:?}"
        );
    }
}

/// The server that `/api/predict` is asked, and the model's class names in output order.
struct Server {
    url: String,
    http: reqwest::Client,
    class_names: Vec<String>,
    /// The input side of the page's model.
    side: u32,
}

impl Server {
    /// The server's probabilities for an image as one whole face, in output order, and its top
    /// class.
    async fn predict(&self, png: &[u8]) -> (Vec<f32>, String) {
        let text = self
            .http
            .post(format!("{}/api/predict?whole_image=true", self.url))
            .bearer_auth(TOKEN)
            .body(png.to_vec())
            .send()
            .await
            .expect("POST /api/predict")
            .text()
            .await
            .expect("an answer");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("a JSON answer");
        let face = &answer["faces"][0];
        let probabilities = self
            .class_names
            .iter()
            .map(|name| {
                face["probabilities"][name]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no probability for {name}: {answer}"))
                    as f32
            })
            .collect();
        let top = face["top"].as_str().expect("top class").to_string();
        (probabilities, top)
    }
}

/// What the page shows for one image: the input pixels, the probabilities, the top class and
/// the square it was classified on.
#[derive(Debug)]
struct Shown {
    face: Vec<u8>,
    probabilities: Vec<f32>,
    top: String,
    square: Option<CropBox>,
}

async fn shown(browser: &Client, selector: &str) -> Shown {
    let block = browser
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|err| panic!("{selector}: {err}"));
    let attribute = |name: &'static str| {
        let block = block.clone();
        async move {
            block
                .attr(name)
                .await
                .expect("an attribute")
                .unwrap_or_default()
        }
    };
    let face = base64::engine::general_purpose::STANDARD
        .decode(attribute("data-face").await)
        .expect("base64 pixels");
    let probabilities: Vec<f32> =
        serde_json::from_str(&attribute("data-probabilities").await).expect("probabilities");
    let square = attribute("data-box").await;
    let square = (!square.is_empty()).then(|| {
        let value: serde_json::Value = serde_json::from_str(&square).expect("a box");
        let field = |name: &str| value[name].as_u64().expect("a whole number") as u32;
        CropBox {
            x: field("x"),
            y: field("y"),
            width: field("width"),
            height: field("height"),
        }
    });
    Shown {
        face,
        probabilities,
        top: attribute("data-top").await,
        square,
    }
}

fn assert_close(what: &str, page: &[f32], server: &[f32]) {
    assert_eq!(page.len(), server.len(), "{what}: class counts");
    for (index, (a, b)) in page.iter().zip(server).enumerate() {
        assert!(
            (a - b).abs() <= TOLERANCE,
            "{what}: class {index}: the page says {a}, the server {b}\npage {page:?}\nserver {server:?}"
        );
    }
}

/// The folder `export --web` wrote, served by the counting server: each image classified as
/// the server classifies it, a dragged square too, then the webcam.
async fn static_page(
    browser: &Client,
    url: &str,
    images: &[PathBuf],
    server: &Server,
    scratch: &Path,
    screenshots: &Path,
) {
    let wait = Duration::from_secs(120);
    let model: serde_json::Value = serde_json::from_str(
        &server
            .http
            .get(format!("{}/api/model", server.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /api/model")
            .text()
            .await
            .expect("its answer"),
    )
    .expect("JSON");
    assert_eq!(
        model["input_side"].as_u64(),
        Some(u64::from(server.side)),
        "the server reads the weights at the page's side"
    );
    browser
        .goto(&format!("{url}/"))
        .await
        .expect("the page loads");
    wait_for(
        browser,
        "body[data-ready='true']",
        wait,
        "the model and ONNX Runtime Web load",
    )
    .await;

    let paths: Vec<String> = images
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    browser
        .find(Locator::Css("#file"))
        .await
        .expect("file input")
        .send_keys(&paths.join("\n"))
        .await
        .expect("the photos are picked");
    for path in images {
        let name = path.file_name().expect("name").to_string_lossy();
        let selector = format!(".photo-result[data-name='{name}'][data-probabilities]");
        browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Css(&selector))
            .await
            .unwrap_or_else(|err| panic!("{name} is classified: {err}"));
        let page = shown(browser, &selector).await;
        let image = image::open(path).expect("image");
        let expected = dexpression_dataset::faces::whole_image_input(&image, server.side).pixels;
        assert!(
            page.face == expected,
            "{name}: the page's input pixels differ from the Rust pipeline's in {} of {}",
            page.face
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a != b)
                .count(),
            expected.len()
        );
        let png = std::fs::read(path).expect("png");
        let (probabilities, top) = server.predict(&png).await;
        assert_close(&name, &page.probabilities, &probabilities);
        assert_eq!(page.top, top, "{name}: the top class");
    }

    // A square dragged on the photo: the server, given that crop as a whole image, agrees.
    let name = images[0].file_name().expect("name").to_string_lossy();
    let block = format!(".photo-result[data-name='{name}']");
    let canvas = browser
        .find(Locator::Css(&format!("{block} canvas")))
        .await
        .expect("the photo's canvas");
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: canvas.clone(),
            duration: None,
            x: -90.0,
            y: -70.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveToElement {
            element: canvas.clone(),
            duration: Some(Duration::from_millis(100)),
            x: 40.0,
            y: 80.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.perform_actions(drag).await.expect("the drag");
    let selector = format!("{block}[data-box^='{{']");
    wait_for(browser, &selector, wait, "the square is classified").await;
    let page = shown(browser, &selector).await;
    let square = page.square.expect("a square");
    assert_eq!(square.width, square.height, "a square: {square:?}");
    let photo = image::open(&images[0]).expect("photo");
    assert_eq!(
        page.face,
        crop_and_resize(&photo, Some(square), server.side),
        "the square's input pixels"
    );
    let crop = photo.crop_imm(square.x, square.y, square.width, square.height);
    let crop_path = scratch.join("square.png");
    crop.save(&crop_path).expect("crop written");
    let (probabilities, top) = server
        .predict(&std::fs::read(&crop_path).expect("crop"))
        .await;
    assert_close("the dragged square", &page.probabilities, &probabilities);
    assert_eq!(page.top, top, "the dragged square's top class");
    save_screenshot(browser, &screenshots.join("in-browser.png")).await;

    // The fake webcam: frames are classified in the page.
    click(browser, "#webcam", "webcam button").await;
    wait_for(
        browser,
        ".webcam-result[data-probabilities]",
        wait,
        "a webcam frame is classified",
    )
    .await;
    let started = Instant::now();
    while webcam_frames(browser).await < 3 {
        assert!(
            started.elapsed() < wait,
            "the webcam view stopped after {} frames",
            webcam_frames(browser).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(browser, "#webcam", "webcam button").await;
    assert_no_violations(browser, "the folder's page").await;
}

/// `serve`'s `/local/`: the same page under the server's policy, with the server's model.
async fn served_page(browser: &Client, server: &Server, photo: &Path) {
    for (file, content_type) in [
        ("ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("ort.wasm.bundle.min.mjs", "text/javascript; charset=utf-8"),
    ] {
        let response = server
            .http
            .get(format!("{}/local/ort/{file}", server.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("a runtime file");
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(
            response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok()),
            Some(content_type),
            "{file}"
        );
    }
    let wait = Duration::from_secs(120);
    browser
        .goto(&format!("{}/local/?token={TOKEN}", server.url))
        .await
        .expect("the served page loads");
    wait_for(
        browser,
        "body[data-ready='true']",
        wait,
        "the served page loads its model and runtime",
    )
    .await;
    browser
        .find(Locator::Css("#file"))
        .await
        .expect("file input")
        .send_keys(&photo.display().to_string())
        .await
        .expect("the photo is picked");
    let selector = ".photo-result[data-probabilities]";
    wait_for(
        browser,
        selector,
        wait,
        "the photo is classified on the served page",
    )
    .await;
    let page = shown(browser, selector).await;
    let (probabilities, top) = server.predict(&std::fs::read(photo).expect("photo")).await;
    assert_close("the served page", &page.probabilities, &probabilities);
    assert_eq!(page.top, top, "the served page's top class");
    assert_no_violations(browser, "the served page").await;
}

async fn assert_no_violations(browser: &Client, what: &str) {
    let violations = browser
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .attr("data-csp-violations")
        .await
        .expect("an attribute");
    assert_eq!(
        violations, None,
        "{what}: Content-Security-Policy violations"
    );
}

fn run_export(weights: &Path, site: &Path, cache: &Path, offline: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dexpression"));
    command
        .arg("export")
        .arg("--weights")
        .arg(weights)
        .arg("--web")
        .arg(site)
        .arg("--cache")
        .arg(cache);
    if offline {
        command.arg("--offline");
    }
    command.output().expect("export runs")
}

/// `export --web` from the test cache, offline; when the cache lacks onnxruntime-web, online
/// with `DEXPRESSION_BROWSER_TEST=require`, else a notice and `None`. Its standard error.
fn export_web(weights: &Path, site: &Path, cache: &Path) -> Option<String> {
    let offline = run_export(weights, site, cache, true);
    if offline.status.success() {
        return Some(String::from_utf8_lossy(&offline.stderr).into_owned());
    }
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert!(
        stderr.contains("is not in the cache"),
        "export --web --offline failed:\n{stderr}"
    );
    if !required() {
        eprintln!(
            "notice: in-browser test skipped (onnxruntime-web is not in {}; DEXPRESSION_BROWSER_TEST=require downloads it there from the npm registry)",
            cache.display()
        );
        return None;
    }
    let online = run_export(weights, site, cache, false);
    let stderr = String::from_utf8_lossy(&online.stderr).into_owned();
    assert!(
        online.status.success(),
        "export --web could not download onnxruntime-web:\n{stderr}"
    );
    Some(stderr)
}

/// With the runtime at hand, `export --web` still refuses a folder it cannot make and someone's
/// folder, and leaves both as they were.
fn refusals(weights: &Path, dir: &Path, cache: &Path) {
    let file = dir.join("a-file");
    std::fs::write(&file, "not a folder").expect("a file");
    let output = run_export(weights, &file.join("site"), cache, true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a folder inside a file");
    assert!(
        stderr.contains("cannot create") && stderr.contains(&file.display().to_string()),
        "{stderr}"
    );
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).expect("a folder");
    std::fs::write(theirs.join("notes.txt"), "mine").expect("a file");
    let output = run_export(weights, &theirs, cache, true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "someone's folder");
    assert!(stderr.contains("other files"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&theirs).expect("their folder").count(),
        1,
        "their folder is left as it was"
    );
}

/// The class names and input side of the model in the folder's model.json.
fn site_model(site: &Path) -> (Vec<String>, u32) {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.join("model.json")).expect("model.json"))
            .expect("JSON");
    let model = &config["models"][0];
    let names = model["class_names"]
        .as_array()
        .expect("class names")
        .iter()
        .map(|name| name.as_str().expect("a name").to_string())
        .collect();
    let side = model["input_side"].as_u64().expect("an input side") as u32;
    (names, side)
}

/// A gray value tinted into colour, so that the page's RGB-to-gray conversion is exercised.
fn tint(value: u8, tone: usize) -> image::Rgb<u8> {
    let v = u32::from(value);
    let [r, g, b] = match tone {
        0 => [v, v * 3 / 4 + 40, 255 - v / 2],
        _ => [255 - v / 3, v, v * 2 / 3 + 60],
    };
    image::Rgb([r.min(255) as u8, g.min(255) as u8, b.min(255) as u8])
}

/// Held-out faces as PNGs: a 640x480 colour photo, a colour crop of it, a 30x30 crop (which
/// the page enlarges) and a grayscale PNG of another face.
fn write_images(dir: &Path, trained: &common::Trained) -> Vec<PathBuf> {
    let mut held_out = trained
        .dataset
        .samples
        .iter()
        .filter(|sample| trained.held_out.contains(&sample.subject));
    let first = held_out.next().expect("a held-out face");
    let second = held_out.last().expect("another held-out face");
    let gray = common::photo_640x480(&first.source);
    let colour = |picture: &image::RgbImage, tone: usize| {
        image::RgbImage::from_fn(picture.width(), picture.height(), |x, y| {
            tint(picture.get_pixel(x, y).0[0], tone)
        })
    };
    let photo = colour(&gray, 0);
    let crop = image::imageops::crop_imm(&colour(&gray, 1), 170, 90, 300, 260).to_image();
    let tiny = image::imageops::resize(&crop, 30, 30, image::imageops::FilterType::Triangle);
    let other =
        image::imageops::crop_imm(&common::photo_640x480(&second.source), 200, 120, 240, 220)
            .to_image();
    let other = image::DynamicImage::ImageRgb8(other).to_luma8();
    let paths: Vec<PathBuf> = ["photo.png", "crop.png", "tiny.png", "gray.png"]
        .iter()
        .map(|name| dir.join(name))
        .collect();
    photo.save(&paths[0]).expect("photo");
    crop.save(&paths[1]).expect("crop");
    tiny.save(&paths[2]).expect("tiny");
    other.save(&paths[3]).expect("gray");
    paths
}

/// One request the page made.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body_length: Option<u64>,
    chunked: bool,
}

/// A static HTTP server on 127.0.0.1 for one folder, recording every request.
struct StaticServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl StaticServer {
    fn start(root: &Path) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let recorded = Arc::clone(&recorded);
                let root = root.clone();
                std::thread::spawn(move || answer(stream, &root, &recorded));
            }
        });
        StaticServer { url, requests }
    }
}

/// Reads one request, records it and answers with the file (connection closed after).
fn answer(stream: TcpStream, root: &Path, recorded: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(stream) => stream,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    recorded.lock().expect("requests").push(Request {
        method,
        path: path.clone(),
        body_length: headers
            .get("content-length")
            .and_then(|value| value.parse().ok()),
        chunked: headers
            .get("transfer-encoding")
            .is_some_and(|value| value.contains("chunked")),
    });
    let relative = if path == "/" {
        "index.html"
    } else {
        path.trim_start_matches('/')
    };
    let file = (!relative.contains(".."))
        .then(|| std::fs::read(root.join(relative)).ok())
        .flatten();
    let mut stream = stream;
    let (status, body, content_type) = match file {
        Some(body) => ("200 OK", body, content_type(relative)),
        None => ("404 Not Found", b"not found".to_vec(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// The types a static server sends (what docs/deploy.md asks of one).
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript",
        Some("css") => "text/css",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}
