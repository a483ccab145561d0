//! What the browser tests share: Debian's Chromium and chromedriver (or why the test cannot run),
//! a Chromium session with a fake webcam playing a picture, and screenshots.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

use super::Running;

/// The environment variable that makes a browser test mandatory (`require`), as `.ci/run` sets it.
pub const REQUIRE_VARIABLE: &str = "DEXPRESSION_BROWSER_TEST";

/// Whether the browser tests must run (`DEXPRESSION_BROWSER_TEST=require`).
pub fn required() -> bool {
    std::env::var(REQUIRE_VARIABLE).is_ok_and(|value| value == "require")
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium and its driver; `None` (after a notice) when they are missing and the test may be
/// skipped, a panic when they are missing and [`required`].
pub fn browser() -> Option<(PathBuf, PathBuf)> {
    let found = on_path(&["chromium", "chromium-browser"])
        .ok_or("no chromium on PATH")
        .and_then(|chromium| {
            on_path(&["chromedriver"])
                .ok_or("no chromedriver on PATH")
                .map(|driver| (chromium, driver))
        });
    match found {
        Ok(found) => Some(found),
        Err(why) if required() => {
            panic!("{REQUIRE_VARIABLE}=require but {why}: apt-get install chromium chromium-driver")
        }
        Err(why) => {
            eprintln!("notice: browser test skipped ({why}; apt-get install chromium chromium-driver to run it)");
            None
        }
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts chromedriver on a free port; the process and its address.
pub fn start_chromedriver(driver: &Path) -> (Running, String) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let running = Running(child);
    let started = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (running, format!("http://127.0.0.1:{port}"))
}

/// Headless Chromium, with a fake webcam that plays `webcam` (a Y4M video) and a profile in
/// `profile`, driven through the chromedriver at `driver_url`.
pub async fn open_chromium(
    chromium: &Path,
    driver_url: &str,
    profile: &Path,
    webcam: &Path,
) -> Client {
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--window-size=1280,1000".into(),
        format!("--user-data-dir={}", profile.display()),
        "--use-fake-ui-for-media-stream".into(),
        "--use-fake-device-for-media-stream".into(),
        format!("--use-file-for-fake-video-capture={}", webcam.display()),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium, "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver_url)
        .await
        .expect("a Chromium session")
}

/// A Y4M video (what Chromium's fake webcam plays) of one RGB picture, 4:2:0.
pub fn write_y4m(path: &Path, picture: &image::RgbImage, frames: usize) {
    let (width, height) = picture.dimensions();
    let mut luma = Vec::with_capacity((width * height) as usize);
    let mut u = Vec::new();
    let mut v = Vec::new();
    for pixel in picture.pixels() {
        let [r, g, b] = pixel.0.map(f32::from);
        luma.push((0.299 * r + 0.587 * g + 0.114 * b).round() as u8);
    }
    for y in (0..height).step_by(2) {
        for x in (0..width).step_by(2) {
            let [r, g, b] = picture.get_pixel(x, y).0.map(f32::from);
            u.push(
                (128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b)
                    .round()
                    .clamp(0.0, 255.0) as u8,
            );
            v.push(
                (128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b)
                    .round()
                    .clamp(0.0, 255.0) as u8,
            );
        }
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("y4m file"));
    writeln!(file, "YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg").expect("write");
    for _ in 0..frames {
        file.write_all(b"FRAME\n").expect("write");
        file.write_all(&luma).expect("write");
        file.write_all(&u).expect("write");
        file.write_all(&v).expect("write");
    }
    file.flush().expect("write");
}

/// Where screenshots go: docs/ with `DEXPRESSION_SCREENSHOTS=docs` (the committed ones come from
/// there), another folder it names, else `fallback`.
pub fn screenshot_folder(fallback: &Path) -> PathBuf {
    match std::env::var("DEXPRESSION_SCREENSHOTS") {
        Ok(folder) if folder == "docs" => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs"),
        Ok(folder) if !folder.is_empty() => PathBuf::from(folder),
        _ => fallback.to_path_buf(),
    }
}

/// Saves a screenshot of the browser's window.
pub async fn save_screenshot(browser: &Client, path: &Path) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(path, png).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
}

/// Clicks the element `css` names; `what` says which in a failure.
pub async fn click(browser: &Client, css: &str, what: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{what} ({css}): {err}"))
        .click()
        .await
        .unwrap_or_else(|err| panic!("{what} ({css}) clicked: {err}"));
}

/// Waits up to `within` for an element matching `css`; `what` says what should have appeared.
pub async fn wait_for(browser: &Client, css: &str, within: Duration, what: &str) -> Element {
    browser
        .wait()
        .at_most(within)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{what} ({css}): {err}"))
}

/// Webcam frames the page has had classified so far (its `#fps` counter's `data-frames`).
pub async fn webcam_frames(browser: &Client) -> u64 {
    let fps = browser
        .find(Locator::Css("#fps"))
        .await
        .expect("the fps counter");
    fps.attr("data-frames")
        .await
        .expect("its data-frames")
        .and_then(|frames| frames.parse().ok())
        .unwrap_or(0)
}
