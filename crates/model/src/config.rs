//! The network's configuration.

use crate::{Error, Result};
use dexpression_kernels::Pool2d;

/// pool1, pool2b, pool3b as the port has them: 3x3 stride 2, no padding, rounding down
/// ([`DexpressionConfig::reduce_pool`] gives a configuration's).
pub const POOL_REDUCE: Pool2d = Pool2d::floor(3, 2, 0);
/// pool2a, pool3a: 3x3 stride 1 padding 1, keeping the side (the FeatEx pooling branch; either
/// rounding gives the same side).
pub const POOL_KEEP: Pool2d = Pool2d::floor(3, 1, 1);

/// Number of channels after each FeatEx block (208 from the 3x3 branch + 64 from the pooling branch).
pub(crate) const FEATEX_CHANNELS: usize = 272;

/// Which DeXpression: the PyTorch port's (its weights load by name) or the paper's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// rdgozum/dexpression-pytorch: a LayerNorm over `[64, S, S]` (named `lrn1`) after pool1,
    /// and dropout then BatchNorm before the classifier.
    #[default]
    Port,
    /// Burkert et al. (2015): local response normalisation after pool1 (no weights), dropout
    /// before the classifier, no BatchNorm (docs/architecture.md quotes the paper for each choice).
    Paper,
}

impl Variant {
    /// Both variants, the port's first.
    pub const ALL: [Variant; 2] = [Variant::Port, Variant::Paper];

    /// The name used on the command line, in weights metadata and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Port => "port",
            Variant::Paper => "paper",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Variant {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Variant::ALL
            .into_iter()
            .find(|variant| variant.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown variant `{text}`: use `port` (the PyTorch port's network) or `paper` (Burkert et al.'s)"
                ))
            })
    }
}

/// The constants of the paper variant's local response normalisation (PyTorch's
/// `nn.LocalResponseNorm(size, alpha, beta, k)`). The paper names the layer but not its
/// constants; the default is AlexNet's and GoogLeNet's size 5, alpha 1e-4, beta 0.75 with k 1.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrnConstants {
    /// Channels in the window.
    pub size: usize,
    /// Scale of the window's mean square.
    pub alpha: f64,
    /// Exponent of the divisor.
    pub beta: f64,
    /// Additive constant of the divisor.
    pub k: f64,
}

impl Default for LrnConstants {
    fn default() -> Self {
        let lrn = dexpression_kernels::LocalResponseNorm::ALEXNET;
        Self {
            size: lrn.size,
            alpha: lrn.alpha,
            beta: lrn.beta,
            k: lrn.k,
        }
    }
}

impl LrnConstants {
    /// The kernels' form of the constants.
    pub fn op(&self) -> dexpression_kernels::LocalResponseNorm {
        dexpression_kernels::LocalResponseNorm {
            size: self.size,
            alpha: self.alpha,
            beta: self.beta,
            k: self.k,
        }
    }
}

/// How [`crate::Dexpression::new`] draws a fresh network's weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightInit {
    /// PyTorch's defaults, as the port gets them: every weight and bias uniform in
    /// `±1/sqrt(fan_in)` (`kaiming_uniform_(a = sqrt(5))`, variance `1/(3 fan_in)`).
    #[default]
    Pytorch,
    /// He et al. (2015)'s initialisation for ReLU networks: weights of variance `2/fan_in`
    /// (uniform in `±sqrt(6/fan_in)`, PyTorch's `kaiming_uniform_(nonlinearity="relu")`; Caffe's
    /// `msra` filler draws the same variance from a normal distribution), biases 0. It keeps the
    /// activations' scale from layer to layer where no normalisation layer restores it.
    He,
}

/// Architecture choices of DeXpression.
///
/// [`DexpressionConfig::port`] is the PyTorch port's network: 7 classes, 224x224 inputs, dropout 0.2;
/// [`DexpressionConfig::paper`] is Burkert et al.'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DexpressionConfig {
    /// Number of expression classes (7 for CK+'s emotions, 8 with neutral).
    pub n_classes: usize,
    /// Side of the square grayscale input in pixels (224 in the paper and the port).
    pub image_size: usize,
    /// Dropout probability in training, before the classifier (0.2 in the port, before its
    /// BatchNorm).
    pub dropout: f32,
    /// The port's network or the paper's (configurations written before there were two are the
    /// port's).
    #[serde(default)]
    pub variant: Variant,
    /// The paper variant's local response normalisation (unused by the port's).
    #[serde(default)]
    pub lrn: LrnConstants,
    /// How a fresh network's weights are drawn (configurations written before this choice
    /// existed drew PyTorch's).
    #[serde(default)]
    pub init: WeightInit,
    /// Whether pool1, pool2b and pool3b round their output side up (Caffe's pooling, which gives
    /// the paper's 112 -> 56 -> 28 -> 14 at 224) instead of down (PyTorch's default, the port's
    /// 55 -> 27 -> 13); configurations written before this choice existed rounded down.
    #[serde(default)]
    pub ceil_mode: bool,
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
            variant: Variant::Port,
            lrn: LrnConstants::default(),
            init: WeightInit::Pytorch,
            ceil_mode: false,
        }
    }

    /// Burkert et al.'s network: 224x224 inputs, LRN after pool1 with AlexNet's constants,
    /// pools rounding up to the paper's 56, 28 and 14 pixels at 224 ([`Self::ceil_mode`]),
    /// dropout before the classifier (the port's 0.2: the paper gives no rate), 7 classes, and
    /// He et al.'s initialisation (the paper gives none; PyTorch's defaults, which the port's
    /// LayerNorm and BatchNorm rescale, shrink the signal of a network without them layer by
    /// layer until the classifier sees nearly the same features for every face).
    pub fn paper() -> Self {
        Self {
            variant: Variant::Paper,
            init: WeightInit::He,
            ceil_mode: true,
            ..Self::port()
        }
    }

    /// The port's network with another class count and input side.
    pub fn with(n_classes: usize, image_size: usize) -> Self {
        Self {
            n_classes,
            image_size,
            ..Self::port()
        }
    }

    /// The given variant's network ([`Self::port`] or [`Self::paper`]) with another class count
    /// and input side.
    pub fn of(variant: Variant, n_classes: usize, image_size: usize) -> Self {
        let preset = match variant {
            Variant::Port => Self::port(),
            Variant::Paper => Self::paper(),
        };
        Self {
            n_classes,
            image_size,
            ..preset
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
        if self.variant == Variant::Paper {
            self.lrn
                .op()
                .check()
                .map_err(|err| Error::Config(err.to_string()))?;
        }
        if self.image_size < 32 {
            return Err(Error::Config(format!(
                "image_size is {}, the network needs at least 32 pixels (three stride-2 poolings after a stride-2 conv)",
                self.image_size
            )));
        }
        Ok(())
    }

    /// pool1, pool2b and pool3b: 3x3, stride 2, no padding, rounding as [`Self::ceil_mode`]
    /// says.
    pub fn reduce_pool(&self) -> Pool2d {
        Pool2d {
            ceil_mode: self.ceil_mode,
            ..POOL_REDUCE
        }
    }

    /// Side of the normalisation's input: conv1 (7x7, stride 2, pad 3) then pool1 (3x3, stride
    /// 2): 55 at 224 (56 rounding up).
    pub fn block1_side(&self) -> usize {
        self.reduce_pool().out_side(conv1_out(self.image_size))
    }

    /// Side of the feature map that enters the head: 13 at 224 (14 rounding up).
    pub fn head_side(&self) -> usize {
        let pool = self.reduce_pool();
        pool.out_side(pool.out_side(self.block1_side()))
    }

    /// Width of the fully connected layer's input: 272 x 13 x 13 = 45968 at 224 (272 x 14 x 14
    /// rounding up).
    pub fn fc_in_features(&self) -> usize {
        FEATEX_CHANNELS * self.head_side() * self.head_side()
    }
}

/// conv1: kernel 7, stride 2, padding 3.
pub(crate) fn conv1_out(side: usize) -> usize {
    (side + 2 * 3 - 7) / 2 + 1
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
    fn the_paper_variant_has_the_papers_feature_map_sides() {
        // The paper's layer figure: 112 after conv1, 56 after pool1, 28 and 14 after the FeatEx
        // blocks' pools, at 224.
        let config = DexpressionConfig::paper();
        assert!(config.ceil_mode);
        assert_eq!(conv1_out(config.image_size), 112);
        assert_eq!(config.block1_side(), 56);
        assert_eq!(config.reduce_pool().out_side(56), 28);
        assert_eq!(config.head_side(), 14);
        assert_eq!(config.fc_in_features(), 272 * 14 * 14);
        // The demo's 48 px: 24, 12, 6, 3 (the port's 24, 11, 5, 2).
        let small = DexpressionConfig::of(Variant::Paper, 7, 48);
        assert_eq!((small.block1_side(), small.head_side()), (12, 3));
        let port = DexpressionConfig::of(Variant::Port, 7, 48);
        assert_eq!((port.block1_side(), port.head_side()), (11, 2));
    }

    #[test]
    fn small_sides_are_derived() {
        let c64 = DexpressionConfig::with(7, 64);
        assert_eq!(c64.block1_side(), 15);
        assert_eq!(c64.head_side(), 3);
        assert_eq!(c64.fc_in_features(), 272 * 3 * 3);
        assert!(DexpressionConfig::with(7, 16).validate().is_err());
    }

    #[test]
    fn variants_parse_by_name_and_old_configs_are_the_ports() {
        for variant in Variant::ALL {
            assert_eq!(variant.name().parse::<Variant>().ok(), Some(variant));
        }
        let error = "alexnet".parse::<Variant>().unwrap_err().to_string();
        assert!(
            error.contains("`port`") && error.contains("`paper`"),
            "{error}"
        );
        let old: DexpressionConfig =
            serde_json::from_str(r#"{"n_classes": 7, "image_size": 64, "dropout": 0.2}"#)
                .expect("an old config");
        assert_eq!(old.variant, Variant::Port);
        let paper = DexpressionConfig::paper();
        let again: DexpressionConfig =
            serde_json::from_str(&serde_json::to_string(&paper).expect("json")).expect("read");
        assert_eq!(again, paper);
        let broken = DexpressionConfig {
            lrn: LrnConstants {
                size: 0,
                ..LrnConstants::default()
            },
            ..DexpressionConfig::paper()
        };
        assert!(broken.validate().is_err());
    }
}
