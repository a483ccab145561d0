//! Frontal face detection with SeetaFace (the `rustface` crate), for images without CK+
//! landmarks: whole photos at prediction time and folder-per-class copies holding full frames.
//!
//! The model (1.2 MB, BSD-2-Clause, see `assets/seeta_fd_frontal_v1.0.LICENSE`) is compiled in,
//! so detection needs no download. It finds the synthetic faces and frontal faces in photos; it
//! looks for upright frontal faces only.

use crate::crop::CropBox;
use image::GrayImage;
use std::cell::RefCell;
use std::sync::OnceLock;

/// The SeetaFace frontal detection model, as shipped in the `rustface` package.
const MODEL_BYTES: &[u8] = include_bytes!("../assets/seeta_fd_frontal_v1.0.bin");

/// Smallest face searched for, in pixels: CK+ faces are 200-300 pixels wide in 640x490 frames,
/// and skipping tiny windows makes a frame take ~0.1 s instead of ~1 s.
const MIN_FACE_SIZE: u32 = 48;

/// Detection score below which a window is not a face (SeetaFace's examples use 2.0).
const SCORE_THRESHOLD: f64 = 2.0;

/// A face found by [`detect_faces`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectedFace {
    /// The square face box, inside the image.
    pub face: CropBox,
    /// The detector's confidence (higher is surer; above 2.0 by construction).
    pub score: f64,
}

thread_local! {
    /// One detector per thread: `rustface` detectors need `&mut self` and are not `Sync`.
    static DETECTOR: RefCell<Option<Box<dyn rustface::Detector>>> = const { RefCell::new(None) };
}

fn model() -> Option<&'static rustface::Model> {
    static MODEL: OnceLock<Option<rustface::Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| rustface::read_model(std::io::Cursor::new(MODEL_BYTES)).ok())
        .as_ref()
}

/// Finds frontal faces in a grayscale image, best score first. Returns nothing for images too
/// small to hold a face.
pub fn detect_faces(image: &GrayImage) -> Vec<DetectedFace> {
    let (width, height) = image.dimensions();
    // rustface panics on images smaller than its 20-pixel window, so those are answered here.
    if width.min(height) < MIN_FACE_SIZE {
        return Vec::new();
    }
    let Some(model) = model() else {
        return Vec::new();
    };
    let faces = DETECTOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let detector = slot.get_or_insert_with(|| {
            let mut detector = rustface::create_detector_with_model(model.clone());
            detector.set_min_face_size(MIN_FACE_SIZE);
            detector.set_score_thresh(SCORE_THRESHOLD);
            detector.set_pyramid_scale_factor(0.8);
            detector.set_slide_window_step(4, 4);
            detector
        });
        detector.detect(&rustface::ImageData::new(image, width, height))
    });
    let mut found: Vec<DetectedFace> = faces
        .iter()
        .filter_map(|info| {
            let bbox = info.bbox();
            let side = bbox.width().max(bbox.height()).min(width.min(height));
            if side == 0 {
                return None;
            }
            let clamp =
                |start: i32, extent: u32| -> u32 { (start.max(0) as u32).min(extent - side) };
            Some(DetectedFace {
                face: CropBox {
                    x: clamp(bbox.x(), width),
                    y: clamp(bbox.y(), height),
                    width: side,
                    height: side,
                },
                score: info.score(),
            })
        })
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_tiny_images_have_no_face() {
        assert!(detect_faces(&GrayImage::new(10, 10)).is_empty());
        assert!(detect_faces(&GrayImage::new(0, 0)).is_empty());
        assert!(detect_faces(&GrayImage::from_pixel(200, 150, image::Luma([128]))).is_empty());
        assert!(model().is_some(), "the bundled model parses");
    }
}
