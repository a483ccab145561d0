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
pub(crate) fn augment(pixels: &[u8], side: usize, rng: &mut impl Rng) -> Vec<u8> {
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
    use rand::{Rng, RngCore, SeedableRng};
    use std::collections::VecDeque;

    /// The parameters `augment` draws, in its order; each is turned into the generator output
    /// that makes rand 0.9 return it (see [`Scripted`]).
    #[derive(Clone, Copy)]
    struct Draws {
        flip: bool,
        rotation_degrees: f32,
        scale: f32,
        shift_x: f32,
        shift_y: f32,
        brightness: f32,
        contrast: f32,
    }

    /// No change at all: every range's midpoint, no flip.
    const NONE: Draws = Draws {
        flip: false,
        rotation_degrees: 0.0,
        scale: 1.0,
        shift_x: 0.0,
        shift_y: 0.0,
        brightness: 0.0,
        contrast: 1.0,
    };

    /// A generator replaying fixed words. rand 0.9 draws `random_bool(0.5)` as one `next_u64`
    /// compared with 2^63, and a float in `low..=high` as `low + (high - low) * f` with `f` the
    /// top 23 bits of one `next_u32` over 2^23; `scripted_draws_give_the_asked_values` checks
    /// that reading, so a rand upgrade that changes it fails there first.
    struct Scripted(VecDeque<u64>);

    impl Scripted {
        fn new(draws: Draws) -> Self {
            let uniform = |value: f32, low: f32, high: f32| -> u64 {
                let fraction = f64::from((value - low) / (high - low));
                let bits = (fraction * f64::from(1u32 << 23)).round() as u64;
                // `next_u32` hands out the high half of each word.
                bits.min((1 << 23) - 1) << 41
            };
            let symmetric = |value: f32, max: f32| uniform(value, -max, max);
            Scripted(VecDeque::from([
                if draws.flip { 0 } else { u64::MAX },
                symmetric(draws.rotation_degrees, MAX_ROTATION_DEGREES),
                symmetric(draws.scale - 1.0, MAX_SCALE),
                symmetric(draws.shift_x, MAX_SHIFT),
                symmetric(draws.shift_y, MAX_SHIFT),
                symmetric(draws.brightness, MAX_BRIGHTNESS),
                symmetric(draws.contrast - 1.0, MAX_CONTRAST),
            ]))
        }
    }

    impl RngCore for Scripted {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }

        fn next_u64(&mut self) -> u64 {
            self.0
                .pop_front()
                .expect("augment drew more values than scripted")
        }

        fn fill_bytes(&mut self, _: &mut [u8]) {
            unreachable!("augment draws no bytes")
        }
    }

    fn augmented(pixels: &[u8], side: usize, draws: Draws) -> Vec<u8> {
        let mut rng = Scripted::new(draws);
        let out = augment(pixels, side, &mut rng);
        assert!(rng.0.is_empty(), "augment drew fewer values than scripted");
        out
    }

    /// Black with one white pixel at (x, y).
    fn dot(side: usize, x: usize, y: usize) -> Vec<u8> {
        let mut pixels = vec![0u8; side * side];
        pixels[y * side + x] = 255;
        pixels
    }

    /// A smooth bright blob centred at (x, y), so that bilinear resampling keeps its centroid.
    fn blob(side: usize, x: f32, y: f32) -> Vec<u8> {
        (0..side * side)
            .map(|i| {
                let (px, py) = ((i % side) as f32, (i / side) as f32);
                let distance2 = (px - x).powi(2) + (py - y).powi(2);
                (255.0 * (-distance2 / 8.0).exp()).round() as u8
            })
            .collect()
    }

    /// Intensity-weighted centre of an image.
    fn centroid(pixels: &[u8], side: usize) -> (f32, f32) {
        let (mut sum, mut sum_x, mut sum_y) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &value) in pixels.iter().enumerate() {
            let value = f64::from(value);
            sum += value;
            sum_x += value * (i % side) as f64;
            sum_y += value * (i / side) as f64;
        }
        ((sum_x / sum) as f32, (sum_y / sum) as f32)
    }

    fn assert_near(actual: (f32, f32), expected: (f32, f32), tolerance: f32) {
        let distance = (actual.0 - expected.0).hypot(actual.1 - expected.1);
        assert!(
            distance <= tolerance,
            "centre at {actual:?}, expected {expected:?} within {tolerance} px"
        );
    }

    #[test]
    fn scripted_draws_give_the_asked_values() {
        let mut rng = Scripted::new(Draws {
            flip: true,
            rotation_degrees: 7.5,
            ..NONE
        });
        assert!(rng.random_bool(0.5));
        let angle = rng.random_range(-MAX_ROTATION_DEGREES..=MAX_ROTATION_DEGREES);
        assert!((angle - 7.5).abs() < 1e-5, "{angle}");
        let scale = rng.random_range(-MAX_SCALE..=MAX_SCALE);
        assert_eq!(scale, 0.0, "the midpoint of a symmetric range is exact");
    }

    #[test]
    fn no_change_returns_the_image() {
        let side = 16;
        let image: Vec<u8> = (0..side * side).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(augmented(&image, side, NONE), image);
    }

    #[test]
    fn a_flip_mirrors_left_and_right() {
        let side = 16;
        let flipped = augmented(&dot(side, 3, 5), side, Draws { flip: true, ..NONE });
        assert_eq!(flipped, dot(side, side - 1 - 3, 5));
    }

    #[test]
    fn a_shift_moves_the_image_by_that_fraction_of_its_side() {
        // 0.04 of 50 pixels is 2 pixels right; -0.06 is 3 pixels up.
        let side = 50;
        let shifted = augmented(
            &dot(side, 20, 30),
            side,
            Draws {
                shift_x: 0.04,
                shift_y: -0.06,
                ..NONE
            },
        );
        assert_eq!(shifted, dot(side, 22, 27));
    }

    #[test]
    fn a_rotation_turns_about_the_centre_clockwise_on_screen() {
        // Image y points down, so a positive angle turns a point right of the centre downwards.
        let (side, radius, degrees) = (64usize, 20.0f32, 8.0f32);
        let centre = (side as f32 - 1.0) / 2.0;
        let rotated = augmented(
            &blob(side, centre + radius, centre),
            side,
            Draws {
                rotation_degrees: degrees,
                ..NONE
            },
        );
        let (sin, cos) = degrees.to_radians().sin_cos();
        // 8 degrees moves the blob 2.8 px down; half a pixel separates that from no turn.
        assert_near(
            centroid(&rotated, side),
            (centre + radius * cos, centre + radius * sin),
            0.5,
        );
    }

    #[test]
    fn a_scale_above_one_zooms_in_about_the_centre() {
        let (side, offset, scale) = (64usize, 15.0f32, 1.08f32);
        let centre = (side as f32 - 1.0) / 2.0;
        let zoomed = augmented(
            &blob(side, centre + offset, centre - offset),
            side,
            Draws { scale, ..NONE },
        );
        // 15 px from the centre become 16.2 px.
        assert_near(
            centroid(&zoomed, side),
            (centre + offset * scale, centre - offset * scale),
            0.3,
        );
    }

    #[test]
    fn brightness_adds_and_contrast_stretches_about_mid_grey() {
        let side = 2;
        let image = [28u8, 128, 228, 250];
        // Within one grey level of (value - 128) * contrast + 128 + brightness, clamped.
        let expect = |brightness: f32, contrast: f32| -> Vec<f32> {
            image
                .iter()
                .map(|&v| {
                    ((f32::from(v) - 128.0) * contrast + 128.0 + brightness).clamp(0.0, 255.0)
                })
                .collect()
        };
        for (brightness, contrast) in [(15.0, 1.0), (0.0, 1.1), (-10.0, 0.85)] {
            let out = augmented(
                &image,
                side,
                Draws {
                    brightness,
                    contrast,
                    ..NONE
                },
            );
            for (got, want) in out.iter().zip(expect(brightness, contrast)) {
                assert!(
                    (f32::from(*got) - want).abs() <= 1.0,
                    "brightness {brightness}, contrast {contrast}: {out:?}"
                );
            }
        }
        // +15 lifts 250 past white: clamped, not wrapped.
        let bright = augmented(
            &image,
            side,
            Draws {
                brightness: 15.0,
                ..NONE
            },
        );
        assert_eq!(bright, [43, 143, 243, 255]);
    }

    #[test]
    fn random_draws_stay_within_the_stated_limits() {
        // Mid-grey is unchanged by contrast, so a flat mid-grey image shows the brightness alone.
        let side = 8;
        let grey = vec![128u8; side * side];
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let out = augment(&grey, side, &mut rng);
            let level = out[0];
            assert!(out.iter().all(|&value| value == level), "seed {seed}");
            assert!(
                (f32::from(level) - 128.0).abs() <= MAX_BRIGHTNESS,
                "seed {seed}: {level}"
            );
        }
    }

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
