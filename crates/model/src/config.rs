//! The network's configuration.

use crate::{Error, Result};

/// Number of channels after each FeatEx block (208 from the 3x3 branch + 64 from the pooling branch).
pub(crate) const FEATEX_CHANNELS: usize = 272;

/// Architecture choices of DeXpression.
///
/// [`DexpressionConfig::port`] is the PyTorch port's network: 7 classes, 224x224 inputs, dropout 0.2.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DexpressionConfig {
    /// Number of expression classes (7 for CK+'s emotions, 8 with neutral).
    pub n_classes: usize,
    /// Side of the square grayscale input in pixels (224 in the paper and the port).
    pub image_size: usize,
    /// Dropout probability before batch normalisation in training (0.2 in the port).
    pub dropout: f32,
}

impl Default for DexpressionConfig {
    fn default() -> Self {
        Self::port()
    }
}

impl DexpressionConfig {
    /// The PyTorch port's network (rdgozum/dexpression-pytorch): 7 classes, 224x224, dropout 0.2.
    pub fn port() -> Self {
        Self {
            n_classes: 7,
            image_size: 224,
            dropout: 0.2,
        }
    }

    /// The same network with another class count and input side.
    pub fn with(n_classes: usize, image_size: usize) -> Self {
        Self {
            n_classes,
            image_size,
            ..Self::port()
        }
    }

    /// Checks that the input side leaves at least one pixel after the last pooling.
    pub fn validate(&self) -> Result<()> {
        if self.n_classes < 2 {
            return Err(Error::Config(format!(
                "n_classes is {}, at least 2 are needed",
                self.n_classes
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout is {}, it must be in [0, 1)",
                self.dropout
            )));
        }
        if self.image_size < 32 {
            return Err(Error::Config(format!(
                "image_size is {}, the network needs at least 32 pixels (three stride-2 poolings after a stride-2 conv)",
                self.image_size
            )));
        }
        Ok(())
    }

    /// Side of the LayerNorm input: conv1 (7x7, stride 2, pad 3) then pool1 (3x3, stride 2): 55 at 224.
    pub fn block1_side(&self) -> usize {
        pool_out(conv1_out(self.image_size))
    }

    /// Side of the feature map that enters the head: 13 at 224.
    pub fn head_side(&self) -> usize {
        pool_out(pool_out(self.block1_side()))
    }

    /// Width of the fully connected layer's input: 272 x 13 x 13 = 45968 at 224.
    pub fn fc_in_features(&self) -> usize {
        FEATEX_CHANNELS * self.head_side() * self.head_side()
    }
}

/// conv1: kernel 7, stride 2, padding 3.
pub(crate) fn conv1_out(side: usize) -> usize {
    (side + 2 * 3 - 7) / 2 + 1
}

/// Max-pool with kernel 3, stride 2, no padding, floor mode.
fn pool_out(side: usize) -> usize {
    side.saturating_sub(3) / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_shapes_match_the_paper() {
        let config = DexpressionConfig::port();
        assert_eq!(config.block1_side(), 55);
        assert_eq!(config.head_side(), 13);
        assert_eq!(config.fc_in_features(), 45968);
    }

    #[test]
    fn small_sides_are_derived() {
        let c64 = DexpressionConfig::with(7, 64);
        assert_eq!(c64.block1_side(), 15);
        assert_eq!(c64.head_side(), 3);
        assert_eq!(c64.fc_in_features(), 272 * 3 * 3);
        assert!(DexpressionConfig::with(7, 16).validate().is_err());
    }
}
