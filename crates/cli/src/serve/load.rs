//! `cargo xtask serve --load-test`: the server on a free loopback port in this process, one
//! client measuring the latency of a photo (upload to JSON), then many clients at once for a
//! fixed time, counting errors and watching memory. Nothing leaves the machine: the clients only
//! ever talk to 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::api::{router, Limits};
use super::guard::Access;
use super::models::ModelSet;

/// Sequential requests of the latency measurement (after a few warm-up requests).
const LATENCY_REQUESTS: usize = 60;
const WARM_UP_REQUESTS: usize = 5;

/// What to send, how hard and how long.
pub struct LoadOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// Length of the concurrent phase.
    pub seconds: u64,
    /// The photo to send; default a generated 640x480 photo with one face.
    pub image: Option<PathBuf>,
}

pub async fn run(models: ModelSet, limits: Limits, options: LoadOptions) -> anyhow::Result<()> {
    let photo = match &options.image {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => tokio::task::spawn_blocking(generated_photo).await??,
    };
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}/api/predict");
    let rss_before = resident_mib();
    // Every client of the test comes from 127.0.0.1: one address may hold all of them.
    let limits = Limits {
        per_client: limits.per_client.max(options.clients + 1),
        max_connections: limits.max_connections.max(options.clients + 1),
        ..limits
    };
    // The load test never opens the in-browser page: no cache is looked at.
    let runtime = super::local::RuntimeSource {
        package: crate::browser::runtime::Package::onnxruntime_web(),
        cache: None,
    };
    let app = router(models, limits.clone(), Access::local(address), runtime)?;
    let server = tokio::spawn(async move {
        super::net::serve(listener, app, &limits, None, std::future::pending()).await
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;

    // 1. Latency: one client, one request at a time.
    let first = send(&client, &url, &photo).await?;
    let faces = first
        .get("faces")
        .and_then(|faces| faces.as_array())
        .map_or(0, Vec::len);
    println!(
        "photo: {} bytes, {}x{}, {faces} face(s) found",
        photo.len(),
        first["width"],
        first["height"]
    );
    for _ in 0..WARM_UP_REQUESTS {
        send(&client, &url, &photo).await?;
    }
    let mut latencies = Vec::with_capacity(LATENCY_REQUESTS);
    for _ in 0..LATENCY_REQUESTS {
        let started = Instant::now();
        send(&client, &url, &photo).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let summary = Summary::of(&mut latencies);
    println!(
        "latency, upload to JSON, 1 client, {LATENCY_REQUESTS} requests: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        summary.median, summary.p90, summary.max
    );

    // 2. Load: many clients for a fixed time.
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak_rss) = (Arc::clone(&stop), Arc::clone(&peak_rss));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(mib) = resident_mib() {
                    peak_rss.fetch_max(mib as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let photo = Arc::new(photo);
    let mut tasks = Vec::new();
    for _ in 0..options.clients {
        let (client, url, photo) = (client.clone(), url.clone(), Arc::clone(&photo));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                match send(&client, &url, &photo).await {
                    Ok(_) => latencies.push(started.elapsed().as_secs_f64() * 1e3),
                    Err(err) => errors.push(err.to_string()),
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (ok, failed) = task.await?;
        latencies.extend(ok);
        errors.extend(failed);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    server.abort();
    let summary = Summary::of(&mut latencies);
    println!(
        "load, {} clients for {} s: {} requests ({:.1}/s), {} errors; latency median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        options.clients,
        options.seconds,
        latencies.len(),
        latencies.len() as f64 / options.seconds as f64,
        errors.len(),
        summary.median,
        summary.p90,
        summary.max
    );
    match (rss_before, resident_mib()) {
        (Some(before), Some(after)) => println!(
            "memory (resident, this process: server and clients): {before:.0} MiB before, {} MiB peak, {after:.0} MiB after",
            peak_rss.load(Ordering::Relaxed)
        ),
        _ => println!("memory: not measured (no /proc/self/status)"),
    }
    if let Some(error) = errors.first() {
        bail!("{} requests failed, the first with: {error}", errors.len());
    }
    Ok(())
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    photo: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "image/jpeg")
        .body(photo.to_vec())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

struct Summary {
    median: f64,
    p90: f64,
    max: f64,
}

impl Summary {
    fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |fraction: f64| -> f64 {
            if values.is_empty() {
                return f64::NAN;
            }
            values[((values.len() - 1) as f64 * fraction).round() as usize]
        };
        Summary {
            median: at(0.5),
            p90: at(0.9),
            max: at(1.0),
        }
    }
}

/// Resident memory of this process in MiB (Linux).
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A 640x480 JPEG of one generated face: the peak frame of a synthetic CK+ sequence.
fn generated_photo() -> anyhow::Result<Vec<u8>> {
    let folder =
        std::env::temp_dir().join(format!("dexpression-serve-load-{}", std::process::id()));
    let result = photo_from_synth(&folder);
    let _ = std::fs::remove_dir_all(&folder);
    result
}

fn photo_from_synth(folder: &Path) -> anyhow::Result<Vec<u8>> {
    use dexpression_dataset::synth::{generate, SynthOptions};
    generate(
        folder,
        &SynthOptions {
            subjects: 1,
            colour_fraction: 0.0,
            ..SynthOptions::default()
        },
    )?;
    let sequence = folder.join("cohn-kanade-images/S010/001");
    let mut frames: Vec<PathBuf> = std::fs::read_dir(&sequence)
        .with_context(|| format!("reading {}", sequence.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
        .collect();
    frames.sort();
    let peak = frames
        .last()
        .context("the synthetic sequence has no frames")?;
    let frame = image::open(peak)?.to_rgb8();
    let photo = image::imageops::crop_imm(&frame, 0, 0, 640, 480).to_image();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&photo)?;
    Ok(jpeg)
}
