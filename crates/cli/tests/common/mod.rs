//! What the xtask tests share: running `cargo xtask`, a small network trained on a synthetic CK+
//! in a few seconds, and generated photos.

#![allow(dead_code)]

/// Chromium, chromedriver and the fake webcam of the browser tests.
#[cfg(feature = "serve")]
pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use dexpression_dataset::synth::{generate, SynthOptions};
use dexpression_dataset::{prepare, Dataset, PrepareOptions};
use dexpression_model::candle_core::Device;
use dexpression_model::{Adam, AdamConfig, Dexpression, DexpressionConfig};
use dexpression_train::testing::{batch_tensors, epoch_batches, train_batch};

/// `cargo xtask ARGS`, which must succeed; its standard output. A proxy in the environment is
/// bypassed for the local servers some tests start.
pub fn xtask(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("xtask runs");
    assert!(
        output.status.success(),
        "xtask {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// A temporary path as an argument.
pub fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 temporary path")
}

/// A network trained on some subjects of a synthetic CK+, and the subjects it never saw.
pub struct Trained {
    /// The weights, saved as safetensors.
    pub weights: PathBuf,
    /// The synthetic CK+ it came from (official layout, with landmarks).
    pub synth: PathBuf,
    /// The prepared crops (every subject).
    pub dataset: Dataset,
    /// Subjects left out of training.
    pub held_out: Vec<String>,
    /// The network.
    pub model: Dexpression,
}

/// Generates `subjects` people, trains on all but the last `held_out` of them for `epochs`
/// epochs at input side `side`, and saves the weights into `dir`.
pub fn train_small_model(
    dir: &Path,
    side: usize,
    subjects: usize,
    held_out: usize,
    epochs: usize,
) -> Trained {
    let synth = dir.join("synth");
    generate(
        &synth,
        &SynthOptions {
            subjects,
            seed: 7,
            ..SynthOptions::default()
        },
    )
    .expect("synthetic CK+");
    let options = PrepareOptions {
        image_size: side,
        ..PrepareOptions::default()
    };
    let dataset = prepare(&synth, &dir.join("cache"), &options, &|_| {}).expect("prepared");
    let mut people: Vec<String> = dataset.samples.iter().map(|s| s.subject.clone()).collect();
    people.sort();
    people.dedup();
    let held_out: Vec<String> = people.split_off(people.len() - held_out);
    let train: Vec<usize> = (0..dataset.samples.len())
        .filter(|&i| !held_out.contains(&dataset.samples[i].subject))
        .collect();
    let device = Device::Cpu;
    let config = DexpressionConfig::with(dataset.class_names.len(), side);
    let model = Dexpression::new(config, 3, &device).expect("network");
    let mut adam = Adam::new(model.trainable_vars(), AdamConfig::default()).expect("adam");
    for epoch in 1..=epochs {
        for batch in epoch_batches(&train, 8, 11, 1, epoch) {
            let (xs, ys) =
                batch_tensors(&dataset.samples, &batch, side, None, &device).expect("batch");
            let outcome = train_batch(&model, &mut adam, &xs, &ys).expect("training step");
            assert!(outcome.loss.is_finite(), "training diverged");
        }
    }
    let weights = dir.join("small.safetensors");
    model.save(&weights).expect("weights saved");
    Trained {
        weights,
        synth,
        dataset,
        held_out,
        model,
    }
}

/// The frames of one synthetic sequence, in order.
pub fn sequence_frames(synth: &Path, sequence: &str) -> Vec<PathBuf> {
    let (subject, number) = sequence
        .split_once('_')
        .expect("sequence ids look like S010_001");
    let folder = synth.join("cohn-kanade-images").join(subject).join(number);
    let mut frames: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|err| panic!("{}: {err}", folder.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
        .collect();
    frames.sort();
    frames
}

/// The landmarks file of a frame.
pub fn landmarks_of(synth: &Path, frame: &Path) -> Vec<[f32; 2]> {
    let stem = frame.file_stem().expect("frame name").to_string_lossy();
    let relative = frame
        .parent()
        .expect("frame folder")
        .strip_prefix(synth.join("cohn-kanade-images"))
        .expect("frame under cohn-kanade-images");
    let path = synth
        .join("Landmarks")
        .join(relative)
        .join(format!("{stem}_landmarks.txt"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    dexpression_dataset::testing::parse_landmarks(&text).expect("landmarks parse")
}

/// A 640 x 480 RGB photo made from a synthetic frame (640 x 490 or 640 x 480).
pub fn photo_640x480(frame: &Path) -> image::RgbImage {
    let frame = image::open(frame).expect("frame").to_rgb8();
    image::imageops::crop_imm(&frame, 0, 0, 640, 480).to_image()
}

/// A child process killed when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cargo xtask serve ARGS` on a free port and returns it with its address.
pub fn start_server(args: &[&std::ffi::OsStr]) -> (Running, String) {
    start_server_with_env(args, &[])
}

/// [`start_server`] with further environment variables.
pub fn start_server_with_env(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .args(["serve", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdout(Stdio::piped())
        .spawn()
        .expect("xtask serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server prints its address before exiting")
            .expect("readable stdout");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.trim_end_matches('/').to_string();
        }
    };
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (server, url)
}

/// A one-file HTTP server on 127.0.0.1 that answers every request with `status` and `body` (a
/// stand-in for the npm registry); its address and the number of requests it has had.
pub fn serve_bytes(
    status: u16,
    body: Vec<u8>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener =
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(stream) => stream,
                Err(_) => continue,
            });
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (format!("http://{address}/onnxruntime-web.tgz"), requests)
}

/// A loopback address where nothing listens.
pub fn closed_address() -> String {
    let address = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    format!("http://{address}/onnxruntime-web.tgz")
}
