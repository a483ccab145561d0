//! The inference queue: a fixed number of worker threads take decoded requests from a bounded
//! queue, so that a burst of uploads waits (or is turned away) instead of starting a thread and
//! a network forward per request.

use std::io::Cursor;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use dexpression_dataset::faces::{detect_face_inputs, whole_image_input, FaceInput};
use dexpression_model::GradCam;
use serde::ser::SerializeMap;
use serde::Serialize;
use tokio::sync::oneshot;

use super::api::{ApiError, Limits};
use super::models::ModelSet;

/// Side of the heat map images sent to the page: the browser scales them onto each face, and
/// 64 pixels are smooth enough for a map of at most 13 x 13 cells.
const HEATMAP_SIDE: u32 = 64;

/// One upload to classify.
pub struct Job {
    /// The uploaded file, still encoded.
    pub bytes: axum::body::Bytes,
    /// Index of the model (checked by the caller).
    pub model: usize,
    /// Whether to compute a Grad-CAM heat map for each face.
    pub heatmap: bool,
    /// Classify the whole image as one face instead of detecting faces.
    pub whole_image: bool,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Prediction, ApiError>>,
}

/// The answer of `POST /api/predict`.
#[derive(Debug, Serialize)]
pub struct Prediction {
    /// Width of the uploaded image in pixels.
    pub width: u32,
    /// Height of the uploaded image in pixels.
    pub height: u32,
    /// The model's id.
    pub model: usize,
    /// Every face found, best detection first.
    pub faces: Vec<FacePrediction>,
    /// Time spent decoding, detecting and classifying, in milliseconds.
    pub milliseconds: f64,
}

/// One face of a [`Prediction`].
#[derive(Debug, Serialize)]
pub struct FacePrediction {
    /// Where the face is, in pixels of the uploaded image.
    #[serde(rename = "box")]
    pub region: Region,
    /// Probability of each class, by name, in the model's class order.
    pub probabilities: Probabilities,
    /// The most probable class.
    pub top: String,
    /// Its probability.
    pub top_probability: f32,
    /// The Grad-CAM heat map of the top class as a PNG data URL, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
}

/// A face box.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Region {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// Class probabilities, serialised as a JSON object in class order.
#[derive(Debug)]
pub struct Probabilities(pub Vec<(String, f32)>);

impl Serialize for Probabilities {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, probability) in &self.0 {
            map.serialize_entry(name, probability)?;
        }
        map.end()
    }
}

/// The sending side of the queue.
#[derive(Clone)]
pub struct Queue {
    sender: SyncSender<Job>,
}

impl Queue {
    /// Starts `limits.workers` threads serving `models`, behind a queue of `limits.queue` places.
    pub fn start(models: Arc<ModelSet>, limits: &Limits) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel::<Job>(limits.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..limits.workers {
            let (models, receiver, limits) =
                (Arc::clone(&models), Arc::clone(&receiver), limits.clone());
            std::thread::Builder::new()
                .name(format!("inference-{index}"))
                .spawn(move || work(&models, &receiver, &limits))?;
        }
        Ok(Queue { sender })
    }

    /// Puts a job in the queue; gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ApiError::busy()),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::internal("the inference workers have stopped"))
            }
        }
    }
}

fn work(models: &ModelSet, receiver: &Mutex<Receiver<Job>>, limits: &Limits) {
    loop {
        // The lock is held only while waiting for the next job, not while running it.
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A panic in one request must not take the worker with it.
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            predict(models, &job, limits)
        }))
        .unwrap_or_else(|_| Err(ApiError::internal("the inference failed")));
        // The client may have gone (timeout); nothing to do then.
        let _ = job.reply.send(answer);
    }
}

/// Decodes, finds the faces and classifies them.
fn predict(models: &ModelSet, job: &Job, limits: &Limits) -> Result<Prediction, ApiError> {
    let started = Instant::now();
    let image = decode(&job.bytes, limits)?;
    let served = models
        .models
        .get(job.model)
        .ok_or_else(|| ApiError::bad_request(format!("no model {}", job.model)))?;
    let side = served.info.input_side;
    let mut faces: Vec<FaceInput> = if job.whole_image {
        vec![whole_image_input(&image, side as u32)]
    } else {
        detect_face_inputs(&image, side as u32, Some(limits.detection_side))
    };
    faces.truncate(limits.max_faces);
    let mut answer = Prediction {
        width: image.width(),
        height: image.height(),
        model: job.model,
        faces: Vec::with_capacity(faces.len()),
        milliseconds: 0.0,
    };
    if !faces.is_empty() {
        let pixels: Vec<u8> = faces
            .iter()
            .flat_map(|face| face.pixels.iter().copied())
            .collect();
        let classifier = &served.classifier;
        let (predictions, heatmaps): (Vec<_>, Vec<Option<GradCam>>) = if job.heatmap {
            let explained = classifier
                .explain_batch(&pixels, None)
                .map_err(ApiError::inference)?;
            explained
                .into_iter()
                .map(|(prediction, heatmap)| (prediction, Some(heatmap)))
                .unzip()
        } else {
            let predictions = classifier
                .classify_batch(&pixels)
                .map_err(ApiError::inference)?;
            let none = vec![None; predictions.len()];
            (predictions, none)
        };
        for ((face, prediction), heatmap) in faces.iter().zip(predictions).zip(heatmaps) {
            let region = face.region.map_or(
                Region {
                    x: 0,
                    y: 0,
                    width: image.width(),
                    height: image.height(),
                },
                |r| Region {
                    x: r.x,
                    y: r.y,
                    width: r.width,
                    height: r.height,
                },
            );
            let top_probability = prediction.confidence();
            let heatmap = heatmap
                .map(|map| png_data_url(&map.to_rgba(HEATMAP_SIDE, HEATMAP_SIDE)))
                .transpose()?;
            answer.faces.push(FacePrediction {
                region,
                probabilities: Probabilities(
                    classifier
                        .class_names()
                        .iter()
                        .cloned()
                        .zip(prediction.probabilities)
                        .collect(),
                ),
                top: prediction.label,
                top_probability,
                heatmap,
            });
        }
    }
    answer.milliseconds = started.elapsed().as_secs_f64() * 1e3;
    Ok(answer)
}

/// Decodes a PNG or JPEG within the size limits, without trusting its header's claims.
fn decode(bytes: &[u8], limits: &Limits) -> Result<image::DynamicImage, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the upload is empty: send a PNG or JPEG image",
        ));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ApiError::bad_request("cannot read the upload"))?;
    if reader.format().is_none() {
        return Err(ApiError::unsupported());
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_decoded_bytes);
    reader.limits(decoder_limits);
    reader.decode().map_err(|err| match err {
        image::ImageError::Limits(_) => ApiError::too_large(format!(
            "the image is larger than the server accepts ({} pixels a side at most)",
            limits.max_side
        )),
        image::ImageError::Unsupported(_) => ApiError::unsupported(),
        other => ApiError::bad_request(format!("cannot decode the image: {other}")),
    })
}

fn png_data_url(image: &image::RgbaImage) -> Result<String, ApiError> {
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|err| ApiError::internal(format!("cannot encode the heat map: {err}")))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}
