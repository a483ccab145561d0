//! Training-time augmentation of face crops (off by default): horizontal flip, small rotation,
//! shift and scale, brightness and contrast, all drawn from the caller's seeded generator.

use rand::Rng;

/// Largest rotation either way, in degrees.
const MAX_ROTATION_DEGREES: f32 = 10.0;
/// Largest shift either way, as a fraction of the side.
const MAX_SHIFT: f32 = 0.08;
/// Largest zoom in or out, as a fraction.
const MAX_SCALE: f32 = 0.1;
/// Largest brightness change either way, in gray levels.
const MAX_BRIGHTNESS: f32 = 20.0;
/// Largest contrast change either way, as a fraction.
const MAX_CONTRAST: f32 = 0.2;

/// A randomly transformed copy of a `side` x `side` gray image (bilinear sampling, edges
/// repeated outside the image).
pub fn augment(pixels: &[u8], side: usize, rng: &mut impl Rng) -> Vec<u8> {
    let flip = rng.random_bool(0.5);
    let angle = rng
        .random_range(-MAX_ROTATION_DEGREES..=MAX_ROTATION_DEGREES)
        .to_radians();
    let scale = 1.0 + rng.random_range(-MAX_SCALE..=MAX_SCALE);
    let shift_x = rng.random_range(-MAX_SHIFT..=MAX_SHIFT) * side as f32;
    let shift_y = rng.random_range(-MAX_SHIFT..=MAX_SHIFT) * side as f32;
    let brightness = rng.random_range(-MAX_BRIGHTNESS..=MAX_BRIGHTNESS);
    let contrast = 1.0 + rng.random_range(-MAX_CONTRAST..=MAX_CONTRAST);

    let centre = (side as f32 - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    let at = |x: isize, y: isize| -> f32 {
        let x = x.clamp(0, side as isize - 1) as usize;
        let y = y.clamp(0, side as isize - 1) as usize;
        pixels[y * side + x] as f32
    };
    let mut out = Vec::with_capacity(side * side);
    for out_y in 0..side {
        for out_x in 0..side {
            // Inverse mapping: where in the source this output pixel comes from.
            let mut dx = out_x as f32 - centre - shift_x;
            let dy = out_y as f32 - centre - shift_y;
            if flip {
                dx = -dx;
            }
            let src_x = (cos * dx + sin * dy) / scale + centre;
            let src_y = (-sin * dx + cos * dy) / scale + centre;
            let (x0, y0) = (src_x.floor(), src_y.floor());
            let (fx, fy) = (src_x - x0, src_y - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let value = at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                + at(x0 + 1, y0) * fx * (1.0 - fy)
                + at(x0, y0 + 1) * (1.0 - fx) * fy
                + at(x0 + 1, y0 + 1) * fx * fy;
            let value = (value - 128.0) * contrast + 128.0 + brightness;
            out.push(value.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn augmentation_is_seeded_and_keeps_the_size() {
        let side = 16;
        let image: Vec<u8> = (0..side * side).map(|i| (i % 251) as u8).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let first = augment(&image, side, &mut rng);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        assert_eq!(first, augment(&image, side, &mut rng));
        assert_eq!(first.len(), side * side);
        assert_ne!(first, image);
    }
}
