//! Turning pixels into network input. Images become pixels in the dataset crate
//! (`dexpression_dataset::crop`), so this crate decodes no image files.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

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
