//! Mini-batches: the seeded shuffle of a fold's samples each epoch, and turning samples into
//! input and target tensors.
//!
//! Every random choice comes from a generator derived from (seed, purpose, fold, epoch) rather
//! than one long-lived generator, so a resumed run needs no generator state to draw exactly what
//! an uninterrupted run would have drawn.

use candle_core::{Device, Tensor};
use dexpression_dataset::Sample;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::augment;
use crate::Result;

/// What a derived generator is used for; each purpose gets its own streams.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    /// Network initialisation and dropout of a fold.
    Init = 1,
    /// Order of the training samples in an epoch.
    Shuffle = 2,
    /// Augmentation of the training images in an epoch.
    Augment = 3,
}

/// A generator for one purpose, fold and epoch, independent of every other.
pub(crate) fn derived_rng(seed: u64, purpose: Purpose, fold: usize, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(derived_seed(seed, purpose, fold));
    rng.set_stream(epoch as u64);
    rng
}

/// A 64-bit seed for one purpose and fold (SplitMix64 of the inputs, so nearby seeds differ).
pub(crate) fn derived_seed(seed: u64, purpose: Purpose, fold: usize) -> u64 {
    let mut z = seed ^ ((purpose as u64) << 56) ^ (fold as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The training samples of one epoch in shuffled order, cut into batches of `batch_size` (the
/// last one shorter, as PyTorch's `DataLoader(shuffle=True)` without `drop_last`).
pub fn epoch_batches(
    train: &[usize],
    batch_size: usize,
    seed: u64,
    fold: usize,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut order = train.to_vec();
    order.shuffle(&mut derived_rng(seed, Purpose::Shuffle, fold, epoch));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// The `n x 1 x side x side` input (pixels / 255) and the `u32` targets of some samples;
/// with `augment_rng`, each image is randomly transformed first.
pub fn batch_tensors(
    samples: &[Sample],
    indices: &[usize],
    side: usize,
    augment_rng: Option<&mut ChaCha8Rng>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut pixels = Vec::with_capacity(indices.len() * side * side);
    match augment_rng {
        Some(rng) => {
            for &idx in indices {
                pixels.extend(augment(&samples[idx].pixels, side, rng));
            }
        }
        None => {
            for &idx in indices {
                pixels.extend_from_slice(&samples[idx].pixels);
            }
        }
    }
    let xs = dexpression_model::batch_from_pixels(&pixels, side, device)?;
    let targets: Vec<u32> = indices
        .iter()
        .map(|&idx| samples[idx].label as u32)
        .collect();
    let ys = Tensor::from_vec(targets, indices.len(), device)?;
    Ok((xs, ys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_sample_once_and_depend_on_epoch() {
        let train: Vec<usize> = (0..70).collect();
        let batches = epoch_batches(&train, 32, 7, 1, 1);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![32, 32, 6]
        );
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, train);
        assert_eq!(batches, epoch_batches(&train, 32, 7, 1, 1));
        assert_ne!(batches, epoch_batches(&train, 32, 7, 1, 2));
        assert_ne!(batches, epoch_batches(&train, 32, 7, 2, 1));
    }
}
