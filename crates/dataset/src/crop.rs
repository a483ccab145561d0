//! Face boxes and the decode → crop → grayscale → resize step for one image: the one place
//! where an image becomes a face's pixels, for `prepare`'s frames and for `predict`'s photos.

use std::path::Path;

use image::imageops::FilterType;
use image::GrayImage;

use crate::{Error, Result};

/// A pixel rectangle inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The square face box of a set of landmark points: their bounding box, widened on every side
/// by `margin` times its larger side, made square around its centre, then moved (and if need be
/// shrunk) to lie inside a `image_width` x `image_height` image. `None` when there are no points
/// or the image is empty.
pub fn landmark_box(
    points: &[[f32; 2]],
    margin: f32,
    image_width: u32,
    image_height: u32,
) -> Option<CropBox> {
    if points.is_empty() || image_width == 0 || image_height == 0 {
        return None;
    }
    let (mut left, mut top) = (f32::INFINITY, f32::INFINITY);
    let (mut right, mut bottom) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for [x, y] in points {
        left = left.min(*x);
        right = right.max(*x);
        top = top.min(*y);
        bottom = bottom.max(*y);
    }
    let margin = if margin.is_finite() {
        margin.max(0.0)
    } else {
        0.0
    };
    let side = (right - left).max(bottom - top) * (1.0 + 2.0 * margin);
    let centre_x = (left + right) / 2.0;
    let centre_y = (top + bottom) / 2.0;
    // A square no larger than the image, at least one pixel.
    let side = side
        .round()
        .clamp(1.0, image_width.min(image_height) as f32) as u32;
    let clamp_start = |centre: f32, extent: u32| -> u32 {
        let start = (centre - side as f32 / 2.0).round();
        start.clamp(0.0, (extent - side) as f32) as u32
    };
    Some(CropBox {
        x: clamp_start(centre_x, image_width),
        y: clamp_start(centre_y, image_height),
        width: side,
        height: side,
    })
}

/// Crops (when a box is given), converts to grayscale and resizes to `size` x `size`.
///
/// Downscaling uses a Catmull-Rom filter whose support `image` widens with the scale factor,
/// so it averages over the source pixels instead of aliasing (a 300-pixel face to 64 pixels).
pub fn crop_and_resize(image: &image::DynamicImage, face: Option<CropBox>, size: u32) -> Vec<u8> {
    let gray: GrayImage = match face {
        Some(face) => image
            .crop_imm(face.x, face.y, face.width, face.height)
            .to_luma8(),
        None => image.to_luma8(),
    };
    let resized = if gray.width() == size && gray.height() == size {
        gray
    } else {
        image::imageops::resize(&gray, size, size, FilterType::CatmullRom)
    };
    resized.into_raw()
}

/// Opens an image file, refusing from its header alone, before any pixel memory is allocated,
/// one wider or taller than [`crate::MAX_IMAGE_SIDE`] pixels (a header may declare any size and decoding allocates
/// what it declares). The format is read from the content, not the file name.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|error| Error::io(path, error))?;
    crate::prepare::decode_image(&bytes).map_err(|error| Error::Image {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Reads an image as an already cropped face, as the PyTorch port fed its network: grayscale,
/// resized to `side` x `side` like every crop (see [`crop_and_resize`]), row-major pixels.
pub fn load_face_pixels(path: &Path, side: u32) -> Result<Vec<u8>> {
    Ok(crop_and_resize(&open_image(path)?, None, side))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_beyond_the_side_limit_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("huge.png");
        image::GrayImage::new(8193, 1).save(&path).expect("png");
        let error = load_face_pixels(&path, 224).expect_err("too large");
        assert!(matches!(error, Error::Image { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("huge.png") && message.contains("8193x1") && message.contains("8192"),
            "{message}"
        );
        let missing = load_face_pixels(&dir.path().join("none.png"), 224).expect_err("missing");
        assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
    }

    #[test]
    fn a_face_file_is_read_gray_and_resized() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tall = dir.path().join("tall.png");
        // At the side limit: read, and a uniform image stays uniform through the resize.
        image::GrayImage::from_pixel(2, 8192, image::Luma([200u8]))
            .save(&tall)
            .expect("png");
        assert_eq!(
            load_face_pixels(&tall, 32).expect("read"),
            vec![200u8; 32 * 32]
        );
        // Colour to gray by the usual luma weights; an image of the right side is not resampled.
        let colour = dir.path().join("colour.png");
        let pixels: Vec<u8> = (0..16u8).flat_map(|i| [i * 16, 255 - i * 16, 40]).collect();
        image::RgbImage::from_raw(4, 4, pixels)
            .expect("4 x 4")
            .save(&colour)
            .expect("png");
        let gray = load_face_pixels(&colour, 4).expect("read");
        let expected: Vec<u8> = (0..16u8)
            .map(|i| {
                let (r, g, b) = (f32::from(i * 16), f32::from(255 - i * 16), 40.0);
                (0.2126 * r + 0.7152 * g + 0.0722 * b).round() as u8
            })
            .collect();
        for (got, want) in gray.iter().zip(&expected) {
            assert!(got.abs_diff(*want) <= 1, "{gray:?} vs {expected:?}");
        }
    }

    #[test]
    fn landmark_box_is_widened_square_and_clamped() {
        // 100 x 80 box centred at (300, 250) in a 640 x 490 image, margin 0.1 → side 120.
        let points = [[250.0, 210.0], [350.0, 290.0], [300.0, 250.0]];
        let face = landmark_box(&points, 0.1, 640, 490).expect("points given");
        assert_eq!(
            face,
            CropBox {
                x: 240,
                y: 190,
                width: 120,
                height: 120
            }
        );
        // Near the top-left corner: moved inside the image.
        let corner = landmark_box(&[[0.0, 0.0], [50.0, 40.0]], 0.0, 640, 490).expect("points");
        assert_eq!((corner.x, corner.y, corner.width), (0, 0, 50));
        // Larger than the image: shrunk to the image's shorter side.
        let huge = landmark_box(&[[-200.0, -500.0], [840.0, 900.0]], 0.1, 640, 490).expect("p");
        assert_eq!((huge.x, huge.y, huge.width, huge.height), (75, 0, 490, 490));
        assert_eq!(landmark_box(&[], 0.1, 640, 490), None);
    }

    #[test]
    fn crops_are_resized_grayscale() {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, _| {
            image::Rgb([if x < 32 { 0 } else { 255 }; 3])
        }));
        let pixels = crop_and_resize(
            &image,
            Some(CropBox {
                x: 32,
                y: 0,
                width: 32,
                height: 32,
            }),
            16,
        );
        assert_eq!(pixels.len(), 256);
        assert!(pixels.iter().all(|&value| value == 255));
        assert_eq!(crop_and_resize(&image, None, 8).len(), 64);
    }
}
