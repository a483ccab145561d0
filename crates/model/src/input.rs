//! Turning pixels into network input.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;

use crate::{Error, Result};

/// Reads an image as an already cropped face, as the port fed its network: grayscale, resized to
/// `side` x `side` (Catmull-Rom) when it has another size, row-major u8 pixels.
pub fn load_face_pixels(path: &Path, side: usize) -> Result<Vec<u8>> {
    let image = image::open(path).map_err(|source| Error::Image {
        path: path.to_path_buf(),
        source,
    })?;
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
    if plane == 0 || pixels.len() % plane != 0 {
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
