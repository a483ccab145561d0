//! The JSON API of `cargo xtask serve` and its limits: well-formed uploads (raw and multipart)
//! get predictions, malformed ones a 4xx with a JSON error, and the server stays up throughout.

#![cfg(feature = "serve")]

mod common;

use dexpression_model::candle_core::Device;
use dexpression_model::{Dexpression, DexpressionConfig};
use reqwest::blocking::Client;
use reqwest::StatusCode;

/// A PNG whose header claims 100000 x 100000 pixels (with a correct checksum).
fn huge_png() -> Vec<u8> {
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut png);
    image::ImageEncoder::write_image(encoder, &[0u8; 64], 8, 8, image::ExtendedColorType::L8)
        .expect("small PNG");
    // The IHDR chunk: length at 8..12, type and data at 12..29 (width, height first), CRC at
    // 29..33.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// The CRC-32 of PNG chunks (ISO 3309), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A `multipart/form-data` body with one field, and its content type.
fn form(name: &str, file_name: Option<&str>, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "dexpression-test-boundary";
    let file_name = file_name
        .map(|f| format!("; filename=\"{f}\""))
        .unwrap_or_default();
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file_name}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn uploads_get_predictions_and_bad_requests_json_errors() {
    let dir = tempfile::tempdir().expect("temporary folder");
    // An untrained network: this test is about the HTTP side. Its input side is recorded with
    // the weights: from the shapes alone, 45 is one of four sides that fit and 48 would be chosen.
    let weights = dir.path().join("untrained.safetensors");
    let class_names = dexpression_dataset::class_names(false);
    Dexpression::new(DexpressionConfig::with(7, 45), 0, &Device::Cpu)
        .and_then(|model| model.save_with_metadata(&weights, &class_names))
        .expect("weights written");
    dexpression_dataset::synth::generate(
        &dir.path().join("synth"),
        &dexpression_dataset::synth::SynthOptions {
            subjects: 1,
            ..Default::default()
        },
    )
    .expect("a synthetic face");
    let frames = common::sequence_frames(&dir.path().join("synth"), "S010_001");
    let photo_path = dir.path().join("face.jpg");
    common::photo_640x480(frames.last().expect("frames"))
        .save(&photo_path)
        .expect("photo written");
    let photo = std::fs::read(&photo_path).expect("photo");

    let (_server, url) = common::start_server(&["--weights".as_ref(), weights.as_os_str()]);
    let client = Client::builder().no_proxy().build().expect("client");
    let post = |query: &str, body: Vec<u8>| {
        let response = client
            .post(format!("{url}/api/predict{query}"))
            .body(body)
            .send()
            .expect("the server answers");
        let status = response.status();
        let json: serde_json::Value =
            serde_json::from_str(&response.text().expect("body")).expect("a JSON answer");
        (status, json)
    };

    let model: serde_json::Value = serde_json::from_str(
        &client
            .get(format!("{url}/api/model"))
            .send()
            .expect("GET")
            .text()
            .expect("body"),
    )
    .expect("JSON");
    assert_eq!(model["input_side"], 45);
    assert_eq!(model["classes"].as_array().map(Vec::len), Some(7));
    assert_eq!(model["classes"][4], "Happiness");
    assert!(
        model["protocol"].is_null(),
        "a bare weights file has no run"
    );

    // A photo, raw and as a form, with and without the heat map.
    let (status, answer) = post("", photo.clone());
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["width"].as_u64(), answer["height"].as_u64()),
        (Some(640), Some(480))
    );
    let face = &answer["faces"][0];
    assert_eq!(
        answer["faces"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let probabilities = face["probabilities"].as_object().expect("probabilities");
    let total: f64 = probabilities
        .values()
        .filter_map(serde_json::Value::as_f64)
        .sum();
    assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
    let best = probabilities
        .iter()
        .max_by(|a, b| {
            a.1.as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b.1.as_f64().unwrap_or(0.0))
        })
        .map(|(name, _)| name.clone());
    assert_eq!(face["top"].as_str(), best.as_deref());
    assert!(face.get("heatmap").is_none());
    let region = &face["box"];
    let (x, width) = (
        region["x"].as_u64().expect("x"),
        region["width"].as_u64().expect("width"),
    );
    assert!(x + width <= 640 && width > 100, "box {region}");

    // The file name is ignored, whatever it says.
    let (content_type, body) = form("image", Some("../../etc/passwd"), &photo);
    let response = client
        .post(format!("{url}/api/predict?heatmap=true"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .expect("multipart upload");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_str(&response.text().expect("body")).expect("JSON");
    let heatmap = answer["faces"][0]["heatmap"].as_str().expect("a heat map");
    assert!(heatmap.starts_with("data:image/png;base64,"));
    assert_eq!(
        answer["faces"][0]["top"], face["top"],
        "the same face, the same answer"
    );

    let (status, answer) = post("?whole_image=true", photo.clone());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["faces"][0]["box"]["width"], 640);

    // Malformed requests: a 4xx and a JSON error each.
    // JPEG decoders fill in a truncated scan; a PNG's checksums catch it.
    let frame_png = std::fs::read(frames.last().expect("frames")).expect("frame");
    let truncated = frame_png[..frame_png.len() / 3].to_vec();
    for (what, query, body, expected) in [
        ("empty", "", Vec::new(), StatusCode::BAD_REQUEST),
        (
            "text",
            "",
            b"not an image".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("truncated PNG", "", truncated, StatusCode::BAD_REQUEST),
        (
            "huge PNG header",
            "",
            huge_png(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "unknown model",
            "?model=99",
            photo.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "model not a number",
            "?model=../x",
            photo.clone(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, answer) = post(query, body);
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {answer}"
        );
    }
    // Over 10 MiB: refused on the declared length, before the body. The client waits for
    // `100 Continue` as curl does with large bodies; a client that sends the body regardless
    // may see the connection closed under its writes (the server does not read 10 MiB it
    // refuses), which is why the body is not sent here.
    let (status, answer) = declared_upload(&url, 10 * 1024 * 1024 + 1);
    assert_eq!(status, 413, "over 10 MiB: {answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("MiB")),
        "over 10 MiB: {answer}"
    );
    let (content_type, body) = form("note", None, b"no file here");
    let no_file = client
        .post(format!("{url}/api/predict"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .expect("answer");
    assert_eq!(no_file.status(), StatusCode::BAD_REQUEST);
    let missing = client
        .get(format!("{url}/no/such/page"))
        .send()
        .expect("answer");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Still up, still right.
    let (status, again) = post("", photo);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["faces"][0]["top"], face["top"]);
}

/// The status and JSON answer to a `POST /api/predict` that declares `length` bytes and asks
/// for `100 Continue` before sending them, over a plain socket.
fn declared_upload(url: &str, length: u64) -> (u16, serde_json::Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "POST /api/predict HTTP/1.1\r\nHost: {address}\r\nContent-Type: image/png\r\nContent-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .expect("request written");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line, got {status_line:?}"));
    let mut body_length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                body_length = value.trim().parse().expect("a length");
            }
        }
    }
    let mut body = vec![0; body_length];
    if body_length > 0 {
        reader.read_exact(&mut body).expect("the answer's body");
    } else {
        reader.read_to_end(&mut body).expect("the answer's body");
    }
    let json = serde_json::from_slice(&body).expect("a JSON answer");
    (status, json)
}

/// An untrained network's weights and a 640 x 480 JPEG of a generated face, in `dir`.
fn weights_and_photo(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let weights = dir.join("untrained.safetensors");
    Dexpression::new(DexpressionConfig::with(7, 45), 0, &Device::Cpu)
        .and_then(|model| {
            model.save_with_metadata(&weights, &dexpression_dataset::class_names(false))
        })
        .expect("weights written");
    dexpression_dataset::synth::generate(
        &dir.join("synth"),
        &dexpression_dataset::synth::SynthOptions {
            subjects: 1,
            ..Default::default()
        },
    )
    .expect("a synthetic face");
    let frames = common::sequence_frames(&dir.join("synth"), "S010_001");
    let photo_path = dir.join("face.jpg");
    common::photo_640x480(frames.last().expect("frames"))
        .save(&photo_path)
        .expect("photo written");
    (weights, std::fs::read(&photo_path).expect("photo"))
}

/// The address `host:port` of a server URL `http://host:port`.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// The slow-upload attack: 40 connections from another loopback address each send the header
/// of a large upload and then trickle a byte at a time. Before, each took a place in the
/// inference queue before its body was read, so that a small queue was full and every other
/// request got 503. Now they hold only upload places (at most 32 from one address), are cut
/// off with 408 once under the minimum rate, and a normal client is answered within a second
/// throughout.
#[test]
fn slow_uploads_cannot_starve_a_normal_client() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ATTACKERS: usize = 40;
    let dir = tempfile::tempdir().expect("temporary folder");
    let (weights, photo) = weights_and_photo(dir.path());
    // Five inference places: the old server gave them all to the first five slow uploads.
    let (_server, url) = common::start_server(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--queue".as_ref(),
        "4".as_ref(),
    ]);
    let server: std::net::SocketAddr = authority(&url).parse().expect("server address");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let header = format!(
        "POST /api/predict HTTP/1.1\r\nHost: {server}\r\nContent-Type: image/jpeg\r\nContent-Length: 5000000\r\n\r\n"
    );
    // Each attacker sends its header and then a byte every 100 ms for at most 6 s, until the
    // server answers (or closes the connection: an empty answer).
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let header = header.clone();
            runtime.spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket
                    .bind("127.0.0.2:0".parse().expect("address"))
                    .expect("127.0.0.2 is a loopback address on Linux");
                let stream = socket.connect(server).await.expect("connects");
                let (mut reader, mut writer) = stream.into_split();
                if writer.write_all(header.as_bytes()).await.is_err() {
                    return String::new();
                }
                // Read while trickling: a server that answers and closes may reset the
                // connection, and a reset drops what was not read yet.
                let mut answer = vec![0u8; 1024];
                let mut read = 0;
                let started = Instant::now();
                let mut writing = true;
                while started.elapsed() < Duration::from_secs(6) {
                    tokio::select! {
                        got = reader.read(&mut answer) => {
                            read = got.unwrap_or(0);
                            break;
                        }
                        () = tokio::time::sleep(Duration::from_millis(100)) => {
                            if writing && writer.write_all(b"x").await.is_err() {
                                writing = false;
                            }
                        }
                    }
                }
                String::from_utf8_lossy(&answer[..read]).into_owned()
            })
        })
        .collect();
    // Let every attacker connect and start its upload.
    std::thread::sleep(Duration::from_millis(500));

    let client = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // During the attack (and through the moment the slow uploads are cut off, 2 s in).
    for request in 0..10 {
        let started = Instant::now();
        let response = client
            .post(format!("{url}/api/predict"))
            .body(photo.clone())
            .send()
            .expect("the server answers");
        let status = response.status();
        let elapsed = started.elapsed();
        assert_eq!(
            status,
            StatusCode::OK,
            "request {request} during the attack: {}",
            response.text().unwrap_or_default()
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "request {request} during the attack took {elapsed:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let answers: Vec<String> = runtime.block_on(async {
        let mut answers = Vec::new();
        for attacker in attackers {
            answers.push(attacker.await.expect("attacker task"));
        }
        answers
    });
    let cut_off = answers
        .iter()
        .filter(|answer| answer.starts_with("HTTP/1.1 408"))
        .count();
    assert!(
        (1..=32).contains(&cut_off),
        "{cut_off} slow uploads were cut off with 408 (at most 32 connections from one address \
         are served): {:?}",
        answers.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        answers
            .iter()
            .all(|answer| answer.is_empty() || answer.starts_with("HTTP/1.1 408")),
        "a slow upload got another answer: {answers:?}"
    );
}

/// A full queue answers 503 with `Retry-After`, never anything else, and the server stays up.
#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (weights, photo) = weights_and_photo(dir.path());
    let (_server, url) = common::start_server(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--queue".as_ref(),
        "1".as_ref(),
    ]);
    let client = Client::builder().no_proxy().build().expect("client");
    let barrier = std::sync::Barrier::new(24);
    let statuses: Vec<(StatusCode, Option<String>)> = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..24)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let response = client
                        .post(format!("{url}/api/predict?heatmap=true"))
                        .body(photo.clone())
                        .send()
                        .expect("the server answers");
                    let retry = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_string);
                    (response.status(), retry)
                })
            })
            .collect();
        requests
            .into_iter()
            .map(|request| request.join().expect("request thread"))
            .collect()
    });
    assert!(
        statuses
            .iter()
            .all(|(status, _)| *status == StatusCode::OK
                || *status == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|(status, retry)| *status == StatusCode::SERVICE_UNAVAILABLE
                && retry.as_deref() == Some("1")),
        "24 requests at once for two places: some 503 with Retry-After: {statuses:?}"
    );
    assert!(statuses.iter().any(|(status, _)| *status == StatusCode::OK));
}

/// Host, Origin, CORS and the token: a rebound host name, a cross-site form POST, missing and
/// wrong tokens are refused with the right status and a JSON error; the right token (as a
/// bearer header, or the cookie the page's address sets), the server's own origin and an
/// allowed one pass; every answer carries the security headers.
#[test]
fn foreign_hosts_origins_and_tokens_are_refused() {
    use reqwest::header::{
        ACCESS_CONTROL_ALLOW_ORIGIN, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY,
        CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, REFERRER_POLICY, SET_COOKIE,
        X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };

    let dir = tempfile::tempdir().expect("temporary folder");
    let (weights, photo) = weights_and_photo(dir.path());
    let token = "test-token-0123456789abcdef";
    let (_server, url) = common::start_server(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--token".as_ref(),
        token.as_ref(),
        "--allow-origin".as_ref(),
        "https://allowed.example".as_ref(),
    ]);
    let port = url.rsplit(':').next().expect("port");
    let client = Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let bearer = format!("Bearer {token}");
    let json_error = |what: &str, response: reqwest::blocking::Response, expected: StatusCode| {
        assert_eq!(response.status(), expected, "{what}");
        let headers = response.headers().clone();
        let answer: serde_json::Value =
            serde_json::from_str(&response.text().expect("body")).expect("a JSON error");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {answer}"
        );
        headers
    };

    // The security headers, on answers and refusals alike.
    let check_headers = |what: &str, headers: &reqwest::header::HeaderMap| {
        let policy = headers
            .get(CONTENT_SECURITY_POLICY)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{what}: {policy}");
        }
        for (name, value) in [
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-store"),
        ] {
            assert_eq!(
                headers.get(&name).and_then(|v| v.to_str().ok()),
                Some(value),
                "{what}: {name}"
            );
        }
    };

    // No token, a wrong one: 401 for the API and the page.
    let headers = json_error(
        "no token",
        client
            .get(format!("{url}/api/model"))
            .send()
            .expect("answer"),
        StatusCode::UNAUTHORIZED,
    );
    check_headers("401", &headers);
    json_error(
        "wrong token",
        client
            .get(format!("{url}/api/model"))
            .header(AUTHORIZATION, "Bearer test-token-0123456789abcdeX")
            .send()
            .expect("answer"),
        StatusCode::UNAUTHORIZED,
    );
    json_error(
        "the page without a token",
        client.get(format!("{url}/")).send().expect("answer"),
        StatusCode::UNAUTHORIZED,
    );
    json_error(
        "the page with a wrong token",
        client
            .get(format!("{url}/?token=nope"))
            .send()
            .expect("answer"),
        StatusCode::UNAUTHORIZED,
    );
    let refused_upload = json_error(
        "a prediction without a token",
        client
            .post(format!("{url}/api/predict"))
            .body(photo.clone())
            .send()
            .expect("answer"),
        StatusCode::UNAUTHORIZED,
    );
    // Its body was never read: the client must not send another request on that connection.
    assert_eq!(
        refused_upload
            .get(reqwest::header::CONNECTION)
            .and_then(|v| v.to_str().ok()),
        Some("close"),
        "a refused upload closes its connection"
    );

    // The right token as a bearer header.
    let model = client
        .get(format!("{url}/api/model"))
        .header(AUTHORIZATION, &bearer)
        .send()
        .expect("answer");
    assert_eq!(model.status(), StatusCode::OK);
    check_headers("GET /api/model", model.headers());

    // The page's address with the token: a cookie, and the page without the token.
    let landing = client
        .get(format!("{url}/?token={token}"))
        .send()
        .expect("answer");
    assert_eq!(landing.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        landing
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/")
    );
    let cookie = landing
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_string();
    assert!(
        cookie.starts_with(&format!("dexpression-token-{port}={token};")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value");
    let page = client
        .get(format!("{url}/"))
        .header(COOKIE, format!("other=1; {pair}"))
        .send()
        .expect("answer");
    assert_eq!(page.status(), StatusCode::OK);
    check_headers("the page", page.headers());
    let html = page.text().expect("html");
    // Nothing inline for the policy to block: scripts from files, no style attributes or
    // handlers.
    assert!(html.contains("<script src=\"/app.js\"></script>"));
    for inline in [
        "<script>",
        "<style",
        " style=",
        " onclick=",
        " onload=",
        "javascript:",
    ] {
        assert!(!html.contains(inline), "the page has inline code: {inline}");
    }
    let predicted = client
        .post(format!("{url}/api/predict"))
        .header(COOKIE, pair)
        .header(ORIGIN, format!("http://{}", authority(&url)))
        .body(photo.clone())
        .send()
        .expect("answer");
    assert_eq!(predicted.status(), StatusCode::OK, "same-origin POST");
    assert!(predicted
        .headers()
        .get(ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    check_headers("POST /api/predict", predicted.headers());

    // A name rebound to 127.0.0.1: refused even with the token.
    let headers = json_error(
        "rebound host",
        client
            .get(format!("{url}/api/model"))
            .header(HOST, format!("rebound.example:{port}"))
            .header(AUTHORIZATION, &bearer)
            .send()
            .expect("answer"),
        StatusCode::FORBIDDEN,
    );
    check_headers("403", &headers);
    let localhost = client
        .get(format!("{url}/api/model"))
        .header(HOST, format!("localhost:{port}"))
        .header(AUTHORIZATION, &bearer)
        .send()
        .expect("answer");
    assert_eq!(
        localhost.status(),
        StatusCode::OK,
        "localhost names loopback"
    );

    // A cross-site form POST (a "simple" request the browser sends without asking), even
    // with the cookie the browser would attach.
    let (content_type, body) = form("image", Some("face.jpg"), &photo);
    json_error(
        "cross-site form POST",
        client
            .post(format!("{url}/api/predict"))
            .header(ORIGIN, "https://evil.example")
            .header(CONTENT_TYPE, content_type.clone())
            .header(COOKIE, pair)
            .body(body.clone())
            .send()
            .expect("answer"),
        StatusCode::FORBIDDEN,
    );
    json_error(
        "an opaque origin",
        client
            .post(format!("{url}/api/predict"))
            .header(ORIGIN, "null")
            .header(AUTHORIZATION, &bearer)
            .body(photo.clone())
            .send()
            .expect("answer"),
        StatusCode::FORBIDDEN,
    );
    json_error(
        "a preflight from a foreign origin",
        client
            .request(reqwest::Method::OPTIONS, format!("{url}/api/predict"))
            .header(ORIGIN, "https://evil.example")
            .header("Access-Control-Request-Method", "POST")
            .send()
            .expect("answer"),
        StatusCode::FORBIDDEN,
    );
    // A foreign page may send a GET but gets no CORS header, so its script cannot read it.
    let read = client
        .get(format!("{url}/api/model"))
        .header(ORIGIN, "https://evil.example")
        .header(AUTHORIZATION, &bearer)
        .send()
        .expect("answer");
    assert!(read.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // An origin allowed with --allow-origin: preflight and call.
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{url}/api/predict"))
        .header(ORIGIN, "https://allowed.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .expect("answer");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight
            .headers()
            .get(ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://allowed.example")
    );
    let allowed = client
        .post(format!("{url}/api/predict"))
        .header(ORIGIN, "https://allowed.example")
        .header(AUTHORIZATION, &bearer)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .expect("answer");
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        allowed
            .headers()
            .get(ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://allowed.example")
    );
}

/// `--tls-cert`/`--tls-key`: HTTPS with a self-signed certificate made here, which a client
/// that trusts it verifies; plain HTTP on the same port gets no answer.
#[test]
fn tls_serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (weights, photo) = weights_and_photo(dir.path());
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("certificate written");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key written");
    let (_server, url) = common::start_server(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let trusted = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes())
        .expect("the certificate as a root");
    let client = Client::builder()
        .no_proxy()
        .tls_certs_only([trusted])
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client");
    let response = client
        .post(format!("{url}/api/predict"))
        .body(photo)
        .send()
        .expect("an HTTPS answer");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_str(&response.text().expect("body")).expect("JSON");
    assert_eq!(answer["width"], 640);
    let plain = Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
        .get(format!("http://{}/api/model", authority(&url)))
        .send();
    assert!(
        plain.map_or(true, |response| !response.status().is_success()),
        "plain HTTP on the TLS port"
    );
}

/// `/local/`, the page that classifies in the browser: its files with the types browsers require,
/// the model as ONNX with a model.json read from it, and, until the page asks, no runtime and
/// no download. Asked (only by a same-origin POST), the server downloads it; from an address that
/// serves other bytes it refuses them, says why on the page and keeps nothing.
#[test]
fn the_in_browser_page_is_served_and_its_runtime_downloaded_only_when_asked() {
    use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, ORIGIN};

    let dir = tempfile::tempdir().expect("temporary folder");
    let (weights, _) = weights_and_photo(dir.path());
    let cache = dir.path().join("cache");
    let other = b"not onnxruntime-web".to_vec();
    let (mirror, requests) = common::serve_bytes(200, other);
    let (_server, url) = common::start_server_with_env(
        &[
            "--weights".as_ref(),
            weights.as_os_str(),
            "--cache".as_ref(),
            cache.as_os_str(),
        ],
        &[("DEXPRESSION_ONNXRUNTIME_WEB_URL", mirror.as_ref())],
    );
    let client = Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let get = |path: &str| {
        client
            .get(format!("{url}{path}"))
            .send()
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    };
    let content_type = |response: &reqwest::blocking::Response| {
        response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };

    let redirect = get("/local");
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        redirect
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok()),
        Some("/local/")
    );
    let page = get("/local/");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(content_type(&page).starts_with("text/html"));
    // WebAssembly may be compiled, JavaScript's eval stays refused, and no worker is allowed.
    let policy = page
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        policy.contains("script-src 'self' 'wasm-unsafe-eval';"),
        "{policy}"
    );
    assert!(
        !policy.contains(" 'unsafe-eval'") && !policy.contains("worker-src"),
        "{policy}"
    );
    assert!(page
        .text()
        .expect("html")
        .contains("No face detector runs in this page"));
    for (path, expected) in [
        ("/local/page.js", "text/javascript"),
        ("/local/preprocess.js", "text/javascript"),
        ("/local/style.css", "text/css"),
    ] {
        let response = get(path);
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(content_type(&response).starts_with(expected), "{path}");
    }
    for missing in [
        "/local/nothing.js",
        "/local/models/1.onnx",
        "/local/models/x",
        "/local/ort/ort.min.js",
    ] {
        assert_eq!(get(missing).status().as_u16() / 100, 4, "{missing}");
    }

    // The model, as ONNX, described from its own metadata; the runtime not there yet.
    let config: serde_json::Value =
        serde_json::from_str(&get("/local/model.json").text().expect("json")).expect("JSON");
    let model = &config["models"][0];
    assert_eq!(model["onnx"], "models/0.onnx", "{config}");
    assert_eq!(model["input_side"], 45, "{config}");
    assert_eq!(
        model["class_names"].as_array().map(Vec::len),
        Some(7),
        "{config}"
    );
    assert_eq!(config["runtime"]["state"], "missing", "{config}");
    assert_eq!(config["served"], true);
    let onnx = get("/local/models/0.onnx");
    assert_eq!(onnx.status(), StatusCode::OK);
    assert_eq!(content_type(&onnx), "application/octet-stream");
    assert!(onnx.bytes().expect("model").len() > 10_000);
    let runtime = get("/local/ort/ort-wasm-simd-threaded.wasm");
    assert_eq!(runtime.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing downloaded unasked"
    );

    // Another site's page cannot make the server download.
    let foreign = client
        .post(format!("{url}/local/runtime"))
        .header(ORIGIN, "https://evil.example")
        .send()
        .expect("answer");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Asked: the download runs, the other bytes are refused, the page is told why.
    let asked = client
        .post(format!("{url}/local/runtime"))
        .send()
        .expect("answer");
    assert_eq!(asked.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let runtime = loop {
        let config: serde_json::Value =
            serde_json::from_str(&get("/local/model.json").text().expect("json")).expect("JSON");
        if config["runtime"]["state"] != "fetching" {
            break config["runtime"].clone();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the download never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(runtime["state"], "failed", "{runtime}");
    let message = runtime["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sha512") && message.contains(&mirror),
        "{message}"
    );
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let cached: Vec<_> = std::fs::read_dir(cache.join("npm"))
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "nothing kept: {cached:?}");
}
