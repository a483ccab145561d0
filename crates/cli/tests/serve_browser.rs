//! `cargo xtask serve` in a real browser: headless Chromium driven over WebDriver opens the
//! page's address with a token (which becomes a cookie and leaves the address bar) and, under the
//! server's Content-Security-Policy, uploads a generated face, checks the boxes, bars and top
//! class against `POST /api/predict`, switches the heat map on, and turns on a fake webcam that
//! shows a generated face, reading the frame rate the page measures.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`).
//! Without them the test prints a notice and passes, unless `DEXPRESSION_BROWSER_TEST=require`
//! (as `.ci/run` sets), which makes their absence a failure. With
//! `DEXPRESSION_SCREENSHOTS=docs` it writes its screenshots into docs/ (the committed ones come
//! from there); otherwise into a temporary folder.

#![cfg(feature = "serve")]

mod common;

use common::browser::{
    browser, click, open_chromium, save_screenshot, screenshot_folder, start_chromedriver,
    wait_for, webcam_frames, write_y4m,
};
use common::start_server;

use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};

/// Frames a second the webcam view must hold.
const MIN_WEBCAM_FPS: f64 = 10.0;

/// The server's token: the page must work with one, as it does off loopback.
const TOKEN: &str = "browser-test-token-5e0f";

#[test]
fn the_page_shows_predictions_heat_maps_and_webcam_frames() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary folder");
    // 45 pixels: the smallest input side of its tensor shapes, so the bare weights file is read
    // back at the side it was trained at.
    let trained = common::train_small_model(&dir.path().join("model"), 45, 10, 2, 6);

    // A held-out person's happiest face as the photo, and as the webcam's picture.
    let peak = trained
        .dataset
        .samples
        .iter()
        .filter(|sample| trained.held_out.contains(&sample.subject))
        .max_by_key(|sample| (sample.label == 4, sample.frame))
        .expect("held-out samples");
    let photo = common::photo_640x480(&peak.source);
    let photo_path = dir.path().join("face.png");
    photo.save(&photo_path).expect("photo written");
    let video_path = dir.path().join("webcam.y4m");
    write_y4m(&video_path, &photo, 2);
    let screenshots = screenshot_folder(dir.path());
    std::fs::create_dir_all(&screenshots).expect("screenshot folder");

    let (_server, url) = start_server(&[
        "--weights".as_ref(),
        trained.weights.as_os_str(),
        "--token".as_ref(),
        TOKEN.as_ref(),
    ]);
    let (_driver, driver_url) = start_chromedriver(&driver);
    let profile = dir.path().join("chromium-profile");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let browser = open_chromium(&chromium, &driver_url, &profile, &video_path).await;
        let outcome = drive(&browser, &url, &photo_path, &screenshots).await;
        let _ = browser.close().await;
        outcome
    });
}

async fn drive(browser: &Client, url: &str, photo: &Path, screenshots: &Path) {
    let wait = Duration::from_secs(30);
    browser
        .goto(&format!("{url}/?token={TOKEN}"))
        .await
        .expect("the page loads");
    let address = browser.current_url().await.expect("the page's address");
    assert_eq!(
        (address.path(), address.query()),
        ("/", None),
        "the token leaves the address bar"
    );
    wait_for(browser, "#model option", wait, "the model list arrives").await;

    // 1. A photo: boxes, bars and the top class, the same as the API's.
    let input = browser
        .find(Locator::Css("#file"))
        .await
        .expect("file input");
    input
        .send_keys(&photo.display().to_string())
        .await
        .expect("the photo is picked");
    wait_for(
        browser,
        ".photo-result .face-box",
        wait,
        "a face box appears",
    )
    .await;
    let boxes = browser
        .find_all(Locator::Css(".photo-result .face-box"))
        .await
        .expect("boxes");
    let bars = browser
        .find_all(Locator::Css(".photo-result .class-bar"))
        .await
        .expect("bars");
    let shown_top = browser
        .find(Locator::Css(".photo-result .top-class"))
        .await
        .expect("top class")
        .text()
        .await
        .expect("its text");

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    let answer: serde_json::Value = serde_json::from_str(
        &http
            .post(format!("{url}/api/predict"))
            .bearer_auth(TOKEN)
            .body(std::fs::read(photo).expect("photo"))
            .send()
            .await
            .expect("POST /api/predict")
            .text()
            .await
            .expect("its answer"),
    )
    .expect("JSON");
    let faces = answer["faces"].as_array().expect("faces");
    assert_eq!(faces.len(), 1, "one face in the photo: {answer}");
    assert_eq!(boxes.len(), faces.len());
    let classes = faces[0]["probabilities"]
        .as_object()
        .expect("probabilities")
        .len();
    assert_eq!(bars.len(), classes, "a bar per class");
    assert_eq!(
        shown_top,
        faces[0]["top"].as_str().expect("top"),
        "the page shows the API's top class"
    );
    save_screenshot(browser, &screenshots.join("serve-photo.png")).await;

    // 2. The heat map toggle.
    click(browser, "#heatmap", "toggle").await;
    let heat = wait_for(
        browser,
        ".photo-result .heatmap",
        wait,
        "a heat map appears",
    )
    .await;
    let source = heat.attr("src").await.expect("src").unwrap_or_default();
    assert!(
        source.starts_with("data:image/png;base64,"),
        "heat map source {source:.40}"
    );
    save_screenshot(browser, &screenshots.join("serve-heatmap.png")).await;

    // 3. The fake webcam, showing the same face: predictions arrive, fast enough.
    click(browser, "#webcam", "button").await;
    wait_for(
        browser,
        ".webcam-result .face-box",
        wait,
        "the webcam frames show a boxed face",
    )
    .await;
    let (start, started) = (webcam_frames(browser).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fps = (webcam_frames(browser).await - start) as f64 / started.elapsed().as_secs_f64();
    let shown = browser
        .find(Locator::Css("#fps"))
        .await
        .expect("fps")
        .text()
        .await
        .expect("text");
    eprintln!("webcam: {fps:.1} frames a second answered (the page shows \"{shown}\")");
    save_screenshot(browser, &screenshots.join("serve-webcam.png")).await;
    assert!(
        fps >= MIN_WEBCAM_FPS,
        "the webcam view ran at {fps:.1} frames a second"
    );
}
