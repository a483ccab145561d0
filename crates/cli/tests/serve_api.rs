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
            "over 10 MiB",
            "",
            vec![0u8; 10 * 1024 * 1024 + 1],
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
