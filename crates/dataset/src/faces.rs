//! From a photo to network input: find the faces, crop each as `prepare` crops frames without
//! landmarks, and resize it to the network's side. Used by `predict` and `serve`.

use image::imageops::FilterType;

use crate::crop::{crop_and_resize, CropBox};
use crate::detect::detect_faces;

/// One face ready for the network.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceInput {
    /// `side` x `side` grayscale pixels, row-major.
    pub pixels: Vec<u8>,
    /// Where the face is in the photo; `None` when the whole photo stands for the face.
    pub region: Option<CropBox>,
}

/// Every face the detector finds in `image`, best first, cropped from the full image and resized
/// to `side` x `side`; empty when it finds none.
///
/// With `detection_side`, the detector searches a grayscale copy whose shorter side is at most
/// that many pixels: at 240 a 640 x 480 frame is searched about four times faster, and faces
/// under a fifth of the shorter side (48 pixels in the copy) are missed. `None` searches the
/// full image.
pub fn detect_face_inputs(
    image: &image::DynamicImage,
    side: u32,
    detection_side: Option<u32>,
) -> Vec<FaceInput> {
    let gray = image.to_luma8();
    let shorter = gray.width().min(gray.height());
    let found = match detection_side {
        Some(limit) if limit > 0 && shorter > limit => {
            let scale = shorter as f32 / limit as f32;
            let small = image::imageops::resize(
                &gray,
                ((gray.width() as f32 / scale).round() as u32).max(1),
                ((gray.height() as f32 / scale).round() as u32).max(1),
                FilterType::Triangle,
            );
            detect_faces(&small)
                .into_iter()
                .map(|found| scale_up(found.face, scale, gray.width(), gray.height()))
                .collect::<Vec<_>>()
        }
        _ => detect_faces(&gray)
            .into_iter()
            .map(|found| found.face)
            .collect(),
    };
    found
        .into_iter()
        .map(|face| FaceInput {
            pixels: crop_and_resize(image, Some(face), side),
            region: Some(face),
        })
        .collect()
}

/// A square box found in a copy scaled down by `scale`, in the full image's pixels and inside it.
fn scale_up(face: CropBox, scale: f32, width: u32, height: u32) -> CropBox {
    let side = ((face.width as f32 * scale).round() as u32).clamp(1, width.min(height));
    let start = |at: u32, extent: u32| ((at as f32 * scale).round() as u32).min(extent - side);
    CropBox {
        x: start(face.x, width),
        y: start(face.y, height),
        width: side,
        height: side,
    }
}

/// The whole of `image` as one face (an already cropped face, or a photo where the detector
/// found none), resized to `side` x `side`.
pub fn whole_image_input(image: &image::DynamicImage, side: u32) -> FaceInput {
    FaceInput {
        pixels: crop_and_resize(image, None, side),
        region: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_found_in_a_smaller_copy_are_scaled_back_inside_the_image() {
        let face = CropBox {
            x: 100,
            y: 50,
            width: 120,
            height: 120,
        };
        assert_eq!(
            scale_up(face, 2.0, 640, 480),
            CropBox {
                x: 200,
                y: 100,
                width: 240,
                height: 240
            }
        );
        // Near the right edge the box is moved in, never cut.
        let edge = scale_up(CropBox { x: 200, ..face }, 2.0, 640, 480);
        assert_eq!((edge.x, edge.width), (400, 240));
    }

    #[test]
    fn a_blank_photo_has_no_face_at_any_detection_side() {
        let blank = image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(
            640,
            480,
            image::Luma([128]),
        ));
        assert!(detect_face_inputs(&blank, 48, None).is_empty());
        assert!(detect_face_inputs(&blank, 48, Some(240)).is_empty());
        let whole = whole_image_input(&blank, 48);
        assert_eq!((whole.pixels.len(), whole.region), (48 * 48, None));
    }
}
