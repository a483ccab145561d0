//! Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
//! Gradient-based Localization", 2017) at the last FeatEx block: where in the face the network
//! found the evidence for a class.
//!
//! The class score is the fc output before the softmax. Its gradient with respect to each
//! channel of the last FeatEx block's output, averaged over the map, weighs that channel; the
//! weighted sum of the channels, with negative values cut to zero, is the heat map. At an input
//! side of 224 the map is 13 x 13; [`GradCam::resized`] brings it to any size.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use dexpression_model::{Dexpression, DexpressionConfig};
//!
//! # fn main() -> dexpression_model::Result<()> {
//! let model = Dexpression::new(DexpressionConfig::with(7, 96), 0, &Device::Cpu)?;
//! let faces = Tensor::rand(0f32, 1f32, (2, 1, 96, 96), &Device::Cpu)?;
//! let explained = model.explain(&faces, None)?;
//! assert_eq!(explained.len(), 2);
//! assert_eq!(explained[0].probabilities.len(), 7);
//! let map = &explained[0].heatmap;
//! assert_eq!((map.width, map.height), (5, 5));
//! assert!(map.values.iter().all(|v| (0.0..=1.0).contains(v)));
//! # Ok(())
//! # }
//! ```

use candle_core::{DType, Device, Tensor, Var, D};
use image::{Rgb, RgbImage, Rgba, RgbaImage};

use crate::{Dexpression, Error, Result};

/// A Grad-CAM heat map at the resolution of the last FeatEx block.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCam {
    /// The class whose score the map explains.
    pub class: usize,
    /// Columns of the map.
    pub width: usize,
    /// Rows of the map.
    pub height: usize,
    /// Row-major values in [0, 1], scaled so that the largest is 1; all zero when no location
    /// adds to the class score.
    pub values: Vec<f32>,
}

/// What [`Dexpression::explain`] gives for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Class probabilities (evaluation mode), in class order.
    pub probabilities: Vec<f32>,
    /// The heat map of the explained class.
    pub heatmap: GradCam,
}

impl Dexpression {
    /// Class probabilities and a Grad-CAM heat map for each input of an `N x 1 x S x S` batch
    /// (pixel values / 255, as for `forward_t`), in evaluation mode. The map explains `class`
    /// when given, else each input's most probable class.
    pub fn explain(&self, xs: &Tensor, class: Option<usize>) -> Result<Vec<Explanation>> {
        let n_classes = self.config().n_classes;
        if let Some(class) = class.filter(|&class| class >= n_classes) {
            return Err(Error::Config(format!(
                "class {class} asked for, but the network has {n_classes} classes"
            )));
        }
        // The activation becomes a leaf variable, so the backward pass stops there instead of
        // running through the convolutions.
        let features = Var::from_tensor(&self.last_featex_t(xs, false)?.detach())?;
        let logits = self.head_logits_t(features.as_tensor(), false)?;
        let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        let classes: Vec<usize> = probabilities
            .iter()
            .map(|row| class.unwrap_or_else(|| most_probable(row)))
            .collect();
        // Summing each row's chosen score gives every row its own gradient: rows do not mix in
        // evaluation mode.
        let mut one_hot = vec![0f32; classes.len() * n_classes];
        for (row, &class) in classes.iter().enumerate() {
            one_hot[row * n_classes + class] = 1.0;
        }
        let one_hot = Tensor::from_vec(one_hot, (classes.len(), n_classes), logits.device())?;
        let score = logits.mul(&one_hot)?.sum_all()?;
        let gradients = score.backward()?;
        let gradient = gradients.get(features.as_tensor()).ok_or_else(|| {
            Error::Config("the class score does not depend on the features".into())
        })?;
        let channel_weights = gradient.mean_keepdim(3)?.mean_keepdim(2)?;
        let maps = features
            .as_tensor()
            .broadcast_mul(&channel_weights)?
            .sum(1)?
            .relu()?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (_, height, width) = maps.dims3()?;
        let maps = maps.flatten_from(1)?.to_vec2::<f32>()?;
        Ok(probabilities
            .into_iter()
            .zip(maps)
            .zip(classes)
            .map(|((probabilities, values), class)| Explanation {
                probabilities,
                heatmap: GradCam::scaled(class, width, height, values),
            })
            .collect())
    }
}

fn most_probable(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index)
}

impl GradCam {
    /// A map from raw non-negative values, scaled so that the largest is 1.
    fn scaled(class: usize, width: usize, height: usize, mut values: Vec<f32>) -> Self {
        let max = values.iter().copied().fold(0f32, f32::max);
        for value in &mut values {
            *value = if max > 0.0 && value.is_finite() {
                *value / max
            } else {
                0.0
            };
        }
        GradCam {
            class,
            width,
            height,
            values,
        }
    }

    /// The map's value at a cell (0 outside).
    fn at(&self, column: usize, row: usize) -> f32 {
        self.values
            .get(row * self.width + column)
            .copied()
            .unwrap_or(0.0)
    }

    /// The map bilinearly resized to `width` x `height` (row-major), each map cell standing for
    /// an equal share of the face, as the cells cover the input.
    pub fn resized(&self, width: u32, height: u32) -> Vec<f32> {
        if self.width == 0 || self.height == 0 {
            return vec![0.0; width as usize * height as usize];
        }
        // Cell centres sit at (i + 0.5) / side of the face; outside the outer centres the map
        // is held at its edge value.
        let coordinate = |pixel: u32, out: u32, cells: usize| -> (usize, usize, f32) {
            let position = ((pixel as f32 + 0.5) / out as f32 * cells as f32 - 0.5)
                .clamp(0.0, (cells - 1) as f32);
            let low = position.floor() as usize;
            (low, (low + 1).min(cells - 1), position - low as f32)
        };
        let mut out = Vec::with_capacity(width as usize * height as usize);
        for y in 0..height {
            let (top, bottom, fy) = coordinate(y, height, self.height);
            for x in 0..width {
                let (left, right, fx) = coordinate(x, width, self.width);
                let upper = self.at(left, top) * (1.0 - fx) + self.at(right, top) * fx;
                let lower = self.at(left, bottom) * (1.0 - fx) + self.at(right, bottom) * fx;
                out.push(upper * (1.0 - fy) + lower * fy);
            }
        }
        out
    }

    /// The map as a `width` x `height` colour image (blue for low, red for high) whose opacity
    /// follows the value, to lay over the face it explains.
    pub fn to_rgba(&self, width: u32, height: u32) -> RgbaImage {
        let values = self.resized(width, height);
        RgbaImage::from_fn(width, height, |x, y| {
            let value = values[(y * width + x) as usize];
            let [r, g, b] = colour(value);
            Rgba([r, g, b, (40.0 + 160.0 * value).round() as u8])
        })
    }

    /// Blends the map over the region `x, y, width, height` of an image (clipped to it): the
    /// overlay `cargo xtask predict --heatmap` writes.
    pub fn blend_onto(&self, image: &mut RgbImage, x: u32, y: u32, width: u32, height: u32) {
        let overlay = self.to_rgba(width, height);
        for (dx, dy, pixel) in overlay.enumerate_pixels() {
            let (px, py) = (x + dx, y + dy);
            if px >= image.width() || py >= image.height() {
                continue;
            }
            let alpha = f32::from(pixel[3]) / 255.0;
            let base = image.get_pixel(px, py).0;
            let mixed: [u8; 3] = std::array::from_fn(|channel| {
                (f32::from(base[channel]) * (1.0 - alpha) + f32::from(pixel[channel]) * alpha)
                    .round() as u8
            });
            image.put_pixel(px, py, Rgb(mixed));
        }
    }
}

/// A blue-cyan-yellow-red colour scale over [0, 1] ("jet" without its dark ends).
fn colour(value: f32) -> [u8; 3] {
    let value = value.clamp(0.0, 1.0);
    let ramp = |centre: f32| (1.5 - (4.0 * value - centre).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)].map(|channel| (255.0 * channel).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DexpressionConfig;

    #[test]
    fn resizing_keeps_cells_in_place() {
        // One hot cell at the bottom right of a 2 x 2 map.
        let map = GradCam::scaled(0, 2, 2, vec![0.0, 0.0, 0.0, 3.0]);
        assert_eq!(map.values, vec![0.0, 0.0, 0.0, 1.0]);
        let big = map.resized(8, 8);
        assert_eq!(big[0], 0.0);
        assert_eq!(big[63], 1.0);
        // Monotone along the diagonal.
        for i in 1..8 {
            assert!(big[i * 9] >= big[(i - 1) * 9]);
        }
        // Pixel 3 of 8 sits 0.375 of the way from the first cell's centre to the second's.
        assert_eq!(big[3 * 8 + 3], 0.375 * 0.375);
    }

    #[test]
    fn an_all_zero_map_stays_zero() {
        let map = GradCam::scaled(1, 3, 1, vec![0.0; 3]);
        assert_eq!(map.values, vec![0.0; 3]);
        assert!(map.resized(5, 5).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn colours_run_from_blue_to_red() {
        assert_eq!(colour(0.0), [0, 0, 128]);
        assert_eq!(colour(1.0), [128, 0, 0]);
        assert_eq!(colour(0.5), [128, 255, 128]);
    }

    #[test]
    fn the_map_follows_the_chosen_class_and_the_input() {
        let model = Dexpression::new(DexpressionConfig::with(3, 64), 1, &Device::Cpu).unwrap();
        let faces = Tensor::rand(0f32, 1f32, (2, 1, 64, 64), &Device::Cpu).unwrap();
        let top = model.explain(&faces, None).unwrap();
        let probabilities = model.probabilities(&faces).unwrap();
        for (explained, expected) in top.iter().zip(&probabilities) {
            assert_eq!(explained.heatmap.class, most_probable(expected));
            for (a, b) in explained.probabilities.iter().zip(expected) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            assert_eq!(explained.heatmap.values.len(), 9);
        }
        let second = model.explain(&faces, Some(2)).unwrap();
        assert!(second.iter().all(|e| e.heatmap.class == 2));
        assert!(model.explain(&faces, Some(3)).is_err());
    }
}
