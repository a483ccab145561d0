//! Turning pixels into network input.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;

use crate::{Error, Result};

/// The largest width or height of an image that is decoded: a header may declare any size, and
/// decoding allocates what it declares (65,535 x 65,535 RGBA is 16 GiB).
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Opens an image, refusing from its header alone, before any pixel memory is allocated, one
/// wider or taller than [`MAX_IMAGE_SIDE`].
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let image_error = |source: image::ImageError| Error::Image {
        path: path.to_path_buf(),
        source,
    };
    let reader = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        image::ImageReader::open(path)
            .and_then(|reader| reader.with_guessed_format())
            .map_err(|err| image_error(err.into()))
    };
    let (width, height) = reader()?.into_dimensions().map_err(image_error)?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let mut reader = reader()?;
    // The limits hold even if the file changed between the two reads.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(image_error)
}

/// Reads an image as an already cropped face, as the port fed its network: grayscale, resized to
/// `side` x `side` (Catmull-Rom) when it has another size, row-major u8 pixels. Images larger
/// than [`MAX_IMAGE_SIDE`] are refused.
pub fn load_face_pixels(path: &Path, side: usize) -> Result<Vec<u8>> {
    let image = open_image(path)?;
    let gray = image.to_luma8();
    let gray = if gray.width() as usize == side && gray.height() as usize == side {
        gray
    } else {
        image::imageops::resize(&gray, side as u32, side as u32, FilterType::CatmullRom)
    };
    Ok(gray.into_raw())
}

/// Stacks `n` images of `side` x `side` u8 pixels (concatenated) into an `n x 1 x side x side`
/// f32 tensor of pixel / 255, the network's input.
pub fn batch_from_pixels(pixels: &[u8], side: usize, device: &Device) -> Result<Tensor> {
    let plane = side * side;
    if plane == 0 || !pixels.len().is_multiple_of(plane) {
        return Err(Error::Config(format!(
            "{} pixels is not a whole number of {side}x{side} images",
            pixels.len()
        )));
    }
    let values: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::from_vec(
        values,
        (pixels.len() / plane, 1, side, side),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG header (signature and IHDR) declaring `width` x `height` 8-bit grayscale, with no
    /// pixel data: what a crafted file needs to make a decoder allocate.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        // An empty IDAT: decoders read the header up to the first data chunk.
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(b"IDAT");
        png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
        png
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn an_image_beyond_the_side_limit_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        std::fs::write(&path, png_header(60_000, 60_000)).unwrap();
        let err = load_face_pixels(&path, 224).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ImageTooLarge {
                    width: 60_000,
                    height: 60_000,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("huge.png") && message.contains("8192"),
            "{message}"
        );
    }

    #[test]
    fn an_image_at_the_limit_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tall.png");
        image::GrayImage::from_pixel(2, MAX_IMAGE_SIDE, image::Luma([200u8]))
            .save(&path)
            .unwrap();
        let pixels = load_face_pixels(&path, 32).unwrap();
        assert_eq!(pixels.len(), 32 * 32);
        assert!(
            pixels.iter().all(|&p| p == 200),
            "a uniform image stays uniform"
        );
    }
}
