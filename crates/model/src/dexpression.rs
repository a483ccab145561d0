//! The DeXpression network, layer for layer the PyTorch port's, with its `state_dict` names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use candle_core::{Device, ModuleT, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{DexpressionConfig, LrnConstants, Variant, WeightInit, FEATEX_CHANNELS};
use crate::{Error, Result};
use dexpression_kernels as ops;

/// LayerNorm epsilon of the port's `nn.LayerNorm([64, 55, 55], eps=1e-5)`.
pub(crate) const LAYER_NORM_EPS: f64 = 1e-5;
/// BatchNorm epsilon and momentum: PyTorch's `nn.BatchNorm2d` defaults.
pub(crate) const BATCH_NORM_EPS: f64 = 1e-5;
const BATCH_NORM_MOMENTUM: f64 = 0.1;

pub use crate::config::{POOL_KEEP, POOL_REDUCE};

/// The key PyTorch adds to BatchNorm's state; read and written, never used for computation.
pub const NUM_BATCHES_TRACKED: &str = "batch_normalization.num_batches_tracked";

/// The DeXpression CNN (Burkert et al., 2015) as the PyTorch port builds it, or as the paper
/// does ([`DexpressionConfig::variant`]).
///
/// Input `N x 1 x S x S` with pixel values / 255; output `N x n_classes` log-probabilities.
/// Implements [`ModuleT`]: `train = true` uses dropout and batch statistics (and updates the
/// running statistics), `train = false` uses running statistics and no dropout. On the CPU's fast
/// kernels, `train = false` runs each FeatEx block as one inference op with no autograd graph
/// (see `dexpression_kernels::feat_ex`): take gradients from a training-mode forward, or detach
/// the activation whose gradient you need.
pub struct Dexpression {
    config: DexpressionConfig,
    /// Every tensor of the port's `state_dict`, in its order, with whether Adam updates it.
    tensors: Vec<NamedVar>,
    conv1: Conv,
    /// The port's LayerNorm after pool1 (the paper's variant has a weightless LRN instead).
    lrn1: Option<Affine>,
    conv2a: Conv,
    conv2b: Conv,
    conv2c: Conv,
    conv3a: Conv,
    conv3b: Conv,
    conv3c: Conv,
    /// The port's BatchNorm before the classifier (none in the paper's variant).
    batch_normalization: Option<BatchNorm>,
    fc: Affine,
    dropout: DropoutRng,
    /// Whether an inference forward keeps the pool's threads awake
    /// ([`Self::with_threads_awake`]).
    threads_awake: bool,
    /// The Winograd transforms of conv2b's and conv3b's weights, kept between inferences (owned
    /// here, not by the process).
    winograd_weights: ops::WeightCache,
}

/// A named tensor of the network.
#[derive(Clone)]
pub struct NamedVar {
    /// The PyTorch `state_dict` key, e.g. `conv2b.weight`.
    pub name: String,
    /// The tensor, shared with the layer that uses it.
    pub var: Var,
    /// Whether it is a learned parameter (false for BatchNorm's running statistics).
    pub trainable: bool,
}

struct Conv {
    weight: Var,
    bias: Var,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn layer(&self) -> ops::ConvLayer<'_> {
        ops::ConvLayer {
            weight: self.weight.as_tensor(),
            bias: self.bias.as_tensor(),
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// A weight and bias pair: the LayerNorm's affine part, or the linear layer.
struct Affine {
    weight: Var,
    bias: Var,
}

struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: AtomicI64,
}

/// Seeded, resumable randomness for dropout: call `k` uses stream `k` of a ChaCha generator.
struct DropoutRng {
    seed: AtomicU64,
    calls: AtomicU64,
}

/// How a tensor is initialised.
#[derive(Clone, Copy)]
enum Init {
    /// U(-bound, bound).
    Uniform {
        bound: f32,
    },
    Constant(f32),
}

impl Init {
    /// A convolution's or the classifier's weight of `fan_in` inputs: PyTorch's
    /// kaiming_uniform(a = sqrt(5)) has bound 1/sqrt(fan_in), He et al.'s variance 2/fan_in
    /// bound sqrt(6/fan_in).
    fn weight(init: WeightInit, fan_in: usize) -> Self {
        let fan_in = fan_in as f32;
        let bound = match init {
            WeightInit::Pytorch => 1.0 / fan_in.sqrt(),
            WeightInit::He => (6.0 / fan_in).sqrt(),
        };
        Init::Uniform { bound }
    }

    /// The bias beside that weight: PyTorch draws it with the weight's default bound, He et al.
    /// start from zero.
    fn bias(init: WeightInit, fan_in: usize) -> Self {
        match init {
            WeightInit::Pytorch => Init::Uniform {
                bound: 1.0 / (fan_in as f32).sqrt(),
            },
            WeightInit::He => Init::Constant(0.0),
        }
    }
}

struct TensorSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
    trainable: bool,
}

/// The port's `state_dict` (minus `num_batches_tracked`), in order, with shapes and initialisers.
/// A convolution of the network as the port's `state_dict` names it.
struct ConvSpec {
    name: &'static str,
    out_channels: usize,
    in_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

const fn conv_spec(
    name: &'static str,
    (out_channels, in_channels, kernel): (usize, usize, usize),
    (stride, padding): (usize, usize),
) -> ConvSpec {
    ConvSpec {
        name,
        out_channels,
        in_channels,
        kernel,
        stride,
        padding,
    }
}

/// The convolutions in forward order: the one place their names, shapes and geometry are written
/// (the tensor list, the network's fields and the exporter read them from here).
const CONVS: [ConvSpec; 7] = [
    conv_spec("conv1", (64, 1, 7), (2, 3)),
    conv_spec("conv2a", (96, 64, 1), (1, 0)),
    conv_spec("conv2b", (208, 96, 3), (1, 1)),
    conv_spec("conv2c", (64, 64, 1), (1, 0)),
    conv_spec("conv3a", (96, FEATEX_CHANNELS, 1), (1, 0)),
    conv_spec("conv3b", (208, 96, 3), (1, 1)),
    conv_spec("conv3c", (64, FEATEX_CHANNELS, 1), (1, 0)),
];

/// The `state_dict` prefixes of the other layers.
const LRN1: &str = "lrn1";
const FC: &str = "fc";
const BATCH_NORMALIZATION: &str = "batch_normalization";

fn tensor_specs(config: &DexpressionConfig) -> Vec<TensorSpec> {
    let conv = |spec: &ConvSpec| {
        let ConvSpec {
            name,
            out_channels: out,
            in_channels: inp,
            kernel: k,
            ..
        } = *spec;
        let fan_in = inp * k * k;
        [
            TensorSpec {
                name: format!("{name}.weight"),
                shape: vec![out, inp, k, k],
                init: Init::weight(config.init, fan_in),
                trainable: true,
            },
            TensorSpec {
                name: format!("{name}.bias"),
                shape: vec![out],
                init: Init::bias(config.init, fan_in),
                trainable: true,
            },
        ]
    };
    let mut specs = Vec::new();
    let (conv1, feat_ex) = CONVS.split_first().expect("seven convolutions");
    specs.extend(conv(conv1));
    let side = config.block1_side();
    let port = config.variant == Variant::Port;
    specs.extend(port.then(|| TensorSpec {
        name: format!("{LRN1}.weight"),
        shape: vec![conv1.out_channels, side, side],
        init: Init::Constant(1.0),
        trainable: true,
    }));
    specs.extend(port.then(|| TensorSpec {
        name: format!("{LRN1}.bias"),
        shape: vec![conv1.out_channels, side, side],
        init: Init::Constant(0.0),
        trainable: true,
    }));
    for spec in feat_ex {
        specs.extend(conv(spec));
    }
    let fc_in = config.fc_in_features();
    specs.push(TensorSpec {
        name: format!("{FC}.weight"),
        shape: vec![config.n_classes, fc_in],
        init: Init::weight(config.init, fc_in),
        trainable: true,
    });
    specs.push(TensorSpec {
        name: format!("{FC}.bias"),
        shape: vec![config.n_classes],
        init: Init::bias(config.init, fc_in),
        trainable: true,
    });
    let bn = |suffix: &str, init: Init, trainable: bool| TensorSpec {
        name: format!("{BATCH_NORMALIZATION}.{suffix}"),
        shape: vec![FEATEX_CHANNELS],
        init,
        trainable,
    };
    if port {
        specs.push(bn("weight", Init::Constant(1.0), true));
        specs.push(bn("bias", Init::Constant(0.0), true));
        specs.push(bn("running_mean", Init::Constant(0.0), false));
        specs.push(bn("running_var", Init::Constant(1.0), false));
    }
    specs
}

impl Dexpression {
    /// A freshly initialised network, as PyTorch initialises the port's, from a seeded generator
    /// (candle's own CPU generator cannot be seeded, and runs must be reproducible).
    pub fn new(config: DexpressionConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for spec in tensor_specs(&config) {
            let count: usize = spec.shape.iter().product();
            let values: Vec<f32> = match spec.init {
                Init::Uniform { bound } => (0..count)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect(),
                Init::Constant(value) => vec![value; count],
            };
            tensors.insert(spec.name, Tensor::from_vec(values, spec.shape, device)?);
        }
        let model = Self::from_tensors(config, tensors, Path::new("<initialisation>"), device)?;
        model.set_dropout_state(seed, 0);
        Ok(model)
    }

    /// Builds the network from named tensors (a `state_dict`), checking every name and shape.
    /// `source` names where they came from, for error messages.
    pub fn from_tensors(
        config: DexpressionConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &Path,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let found = variant_of_tensors(|name| tensors.contains_key(name));
        if let Some(found) = found.filter(|found| *found != config.variant) {
            return Err(variant_mismatch(source, found, config.variant));
        }
        let mut named = Vec::new();
        for spec in tensor_specs(&config) {
            let tensor = tensors
                .remove(&spec.name)
                .ok_or_else(|| Error::MissingTensor {
                    path: source.to_path_buf(),
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                })?;
            if tensor.dims() != spec.shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    path: source.to_path_buf(),
                    name: spec.name,
                    found: tensor.dims().to_vec(),
                    expected: spec.shape,
                });
            }
            let tensor = crate::weights::checked_f32(&tensor, &spec.name, source)?
                .to_device(device)?
                .contiguous()?;
            named.push(NamedVar {
                name: spec.name,
                var: Var::from_tensor(&tensor)?,
                trainable: spec.trainable,
            });
        }
        let num_batches_tracked = match tensors.remove(NUM_BATCHES_TRACKED) {
            Some(t) => crate::weights::checked_count(&t, NUM_BATCHES_TRACKED, source)?,
            None => 0,
        };
        let port = config.variant == Variant::Port;
        let var = |name: &str| -> Var {
            named
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.var.clone())
                .expect("every spec name was just inserted")
        };
        let [conv1, conv2a, conv2b, conv2c, conv3a, conv3b, conv3c] = CONVS.map(|spec| Conv {
            weight: var(&format!("{}.weight", spec.name)),
            bias: var(&format!("{}.bias", spec.name)),
            stride: spec.stride,
            padding: spec.padding,
        });
        let affine = |prefix: &str| Affine {
            weight: var(&format!("{prefix}.weight")),
            bias: var(&format!("{prefix}.bias")),
        };
        let batch_norm = |part: &str| var(&format!("{BATCH_NORMALIZATION}.{part}"));
        Ok(Self {
            conv1,
            lrn1: port.then(|| affine(LRN1)),
            conv2a,
            conv2b,
            conv2c,
            conv3a,
            conv3b,
            conv3c,
            batch_normalization: port.then(|| BatchNorm {
                weight: batch_norm("weight"),
                bias: batch_norm("bias"),
                running_mean: batch_norm("running_mean"),
                running_var: batch_norm("running_var"),
                num_batches_tracked: AtomicI64::new(num_batches_tracked),
            }),
            fc: affine(FC),
            dropout: DropoutRng {
                seed: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            },
            tensors: named,
            config,
            threads_awake: false,
            winograd_weights: ops::WeightCache::default(),
        })
    }

    /// Loads weights from a safetensors file written by [`Dexpression::save`], by the port's
    /// `state_dict` saved as safetensors, or by `import_torch`; the class count and input side are
    /// read from the tensor shapes.
    ///
    /// When the file records its input side ([`WeightsMetadata`], written by
    /// [`Dexpression::save_with_metadata`]) that side is used: several sides give the same
    /// tensor shapes, and only the recorded one is the side the network was trained at.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = read_safetensors(path)?;
        let metadata = WeightsMetadata::read(path)?;
        // The pools' rounding decides which input sides give the tensors' shapes.
        let ceil_mode = metadata.as_ref().map(|metadata| metadata.ceil_mode);
        let mut config = infer_config(&tensors, path, ceil_mode)?;
        if let Some(metadata) = metadata {
            metadata.check(&config, path)?;
            config.image_size = metadata.image_size;
            if let Some(lrn) = metadata.lrn {
                config.lrn = lrn;
            }
        }
        Self::from_tensors(config, tensors, path, device)
    }

    /// Loads weights for a given configuration; a tensor of another shape is an error naming it,
    /// and so are the other variant's weights.
    pub fn load_with_config(
        path: &Path,
        config: DexpressionConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensors(config, read_safetensors(path)?, path, device)
    }

    /// Writes every tensor of the `state_dict` (and `num_batches_tracked`) to a safetensors file,
    /// through a temporary file renamed into place so that a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::weights::save_atomic(&self.state_dict()?, path)
    }

    /// [`Dexpression::save`] with the class names and input side recorded in the file's
    /// safetensors `__metadata__`, so that the file alone says what the network predicts.
    pub fn save_with_metadata(&self, path: &Path, class_names: &[String]) -> Result<()> {
        let metadata = WeightsMetadata::of(&self.config, class_names);
        metadata.check(&self.config, path)?;
        save_tensors_with_metadata(&self.state_dict()?, &metadata, path)
    }

    /// The port's `state_dict`: every tensor by name, plus `num_batches_tracked` as an i64 scalar.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|n| (n.name.clone(), n.var.as_tensor().clone()))
            .collect();
        if let Some(batch_normalization) = &self.batch_normalization {
            let tracked = batch_normalization
                .num_batches_tracked
                .load(Ordering::Relaxed);
            out.push((
                NUM_BATCHES_TRACKED.to_string(),
                Tensor::new(tracked, &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &DexpressionConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.conv1.weight.device()
    }

    /// Stride and padding of each convolution by its `state_dict` prefix (`conv1`, `conv2a`,
    /// ...), in forward order: what an exporter needs besides the tensors.
    #[cfg(feature = "onnx")]
    pub(crate) fn conv_geometry(&self) -> [(&'static str, usize, usize); 7] {
        CONVS.map(|spec| (spec.name, spec.stride, spec.padding))
    }

    /// Every tensor with its name, trainable or not.
    pub fn named_vars(&self) -> &[NamedVar] {
        &self.tensors
    }

    /// The learned parameters, for an optimiser.
    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        self.tensors
            .iter()
            .filter(|n| n.trainable)
            .cloned()
            .collect()
    }

    /// Sets the dropout generator: the seed and how many training forwards have run, so a resumed
    /// run draws the same masks as an uninterrupted one.
    pub fn set_dropout_state(&self, seed: u64, calls: u64) {
        self.dropout.seed.store(seed, Ordering::Relaxed);
        self.dropout.calls.store(calls, Ordering::Relaxed);
    }

    /// The dropout generator's seed and call count (see [`Self::set_dropout_state`]).
    pub fn dropout_state(&self) -> (u64, u64) {
        (
            self.dropout.seed.load(Ordering::Relaxed),
            self.dropout.calls.load(Ordering::Relaxed),
        )
    }

    /// Class probabilities (eval mode), one row per input.
    pub fn probabilities(&self, xs: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .forward_t(xs, false)?
            .exp()?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?)
    }

    fn featex(
        &self,
        xs: &Tensor,
        (reduce, conv, pooled): (&Conv, &Conv, &Conv),
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let block = ops::FeatEx {
            reduce: reduce.layer(),
            conv: conv.layer(),
            pooled: pooled.layer(),
            keep: POOL_KEEP,
            out_pool: self.config.reduce_pool(),
            cache: Some(&self.winograd_weights),
        };
        ops::feat_ex(xs, &block, train)
    }

    fn apply_dropout(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let p = self.config.dropout;
        if p == 0.0 {
            return Ok(xs.clone());
        }
        let call = self.dropout.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = ChaCha8Rng::seed_from_u64(self.dropout.seed.load(Ordering::Relaxed));
        rng.set_stream(call);
        let keep = 1.0 - p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| {
                if rng.random::<f32>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        xs.mul(&Tensor::from_vec(mask, xs.shape(), xs.device())?)
    }
}

impl BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (weight, bias) = (self.weight.as_tensor(), self.bias.as_tensor());
        if !train {
            let running = ops::BatchStatistics {
                mean: self.running_mean.as_tensor().detach(),
                variance: self.running_var.as_tensor().detach(),
            };
            return ops::batch_norm_eval(xs, weight, bias, &running, BATCH_NORM_EPS);
        }
        let (ys, batch) = ops::batch_norm_train(xs, weight, bias, BATCH_NORM_EPS)?;
        // Running statistics use the unbiased variance, as PyTorch does.
        let (n, _, h, w) = xs.dims4()?;
        let count = (n * h * w) as f64;
        let unbiased = (batch.variance * (count / (count - 1.0).max(1.0)))?;
        let m = BATCH_NORM_MOMENTUM;
        let running_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (batch.mean * m)?)?;
        let running_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&running_mean)?;
        self.running_var.set(&running_var)?;
        self.num_batches_tracked.fetch_add(1, Ordering::Relaxed);
        Ok(ys)
    }
}

impl ModuleT for Dexpression {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let forward = || {
            let features = self.last_featex_t(xs, train)?;
            candle_nn::ops::log_softmax(&self.head_logits_t(&features, train)?, D::Minus1)
        };
        // A training forward is one part of a step, which the caller keeps awake as a whole
        // (`dexpression_kernels::with_threads_awake`) or not.
        if self.threads_awake && !train {
            ops::with_threads_awake_for(xs, forward)
        } else {
            forward()
        }
    }
}

impl Dexpression {
    /// Keeps the rayon pool's threads awake (spinning) through each inference forward on the CPU's
    /// fast kernels (`dexpression_kernels::with_threads_awake_for`): batch-1 latency drops by about a
    /// tenth, and small inputs' batches gain too, at the cost of the pool's other threads spinning
    /// during the call. Off by default, since the pool may be shared with the caller's other
    /// work; the command line's `predict`, `serve`, `bench` and `train` switch it on.
    pub fn with_threads_awake(mut self, awake: bool) -> Self {
        self.threads_awake = awake;
        self
    }
}

impl Dexpression {
    /// The network up to the output of the last FeatEx block (`N x 272 x h x w`), the layer
    /// Grad-CAM explains; [`Self::head_logits_t`] finishes the forward.
    pub(crate) fn last_featex_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // Block 1: N x 1 x S x S -> N x 64 x 55 x 55 (at S = 224; 56 rounding up).
        let xs = ops::conv2d_relu_max_pool2d(
            xs,
            self.conv1.weight.as_tensor(),
            self.conv1.bias.as_tensor(),
            self.conv1.stride,
            self.conv1.padding,
            self.config.reduce_pool(),
        )?;
        let xs = match &self.lrn1 {
            Some(lrn1) => ops::layer_norm(
                &xs,
                lrn1.weight.as_tensor(),
                lrn1.bias.as_tensor(),
                LAYER_NORM_EPS,
            )?,
            None => ops::local_response_norm(&xs, self.config.lrn.op())?,
        };
        // FeatEx 2: -> N x 272 x 27 x 27 (28).
        let xs = self.featex(&xs, (&self.conv2a, &self.conv2b, &self.conv2c), train)?;
        // FeatEx 3: -> N x 272 x 13 x 13 (14).
        self.featex(&xs, (&self.conv3a, &self.conv3b, &self.conv3c), train)
    }

    /// The head on the last FeatEx block's output: dropout, batch norm, flatten, fc (the port's
    /// order; the paper's variant has no batch norm), giving the class scores before the
    /// log-softmax.
    pub(crate) fn head_logits_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let xs = if train {
            self.apply_dropout(xs)?
        } else {
            xs.clone()
        };
        let xs = match &self.batch_normalization {
            Some(batch_normalization) => batch_normalization.forward_t(&xs, train)?,
            None => xs,
        };
        xs.flatten_from(1)?
            .matmul(&self.fc.weight.as_tensor().t()?)?
            .broadcast_add(self.fc.bias.as_tensor())
    }
}

/// What a weights file records beside its tensors, in its safetensors `__metadata__`: enough
/// for `predict` to need nothing but the file.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsMetadata {
    /// Class names in the order of the network's outputs.
    pub class_names: Vec<String>,
    /// Side of the square grayscale input the network was trained at.
    pub image_size: usize,
    /// The network's variant (files written before there were two hold the port's).
    pub variant: Variant,
    /// The paper variant's LRN constants (`None` for the port's, which has no LRN).
    pub lrn: Option<LrnConstants>,
    /// Whether the network's stride-2 pools round up ([`DexpressionConfig::ceil_mode`]; files
    /// that do not say rounded down, as every network did before the paper variant's did not).
    pub ceil_mode: bool,
}

impl WeightsMetadata {
    /// Metadata key of the class names (a JSON array of strings).
    pub const CLASS_NAMES: &'static str = "class_names";
    /// Metadata key of the input side (a decimal number).
    pub const IMAGE_SIZE: &'static str = "image_size";
    /// Metadata key of the class count (a decimal number, for readers without a JSON parser).
    pub const N_CLASSES: &'static str = "n_classes";
    /// Metadata key of the variant (`port` or `paper`).
    pub const VARIANT: &'static str = "variant";
    /// Metadata key of the LRN constants (a JSON object: size, alpha, beta, k).
    pub const LRN: &'static str = "lrn";
    /// Metadata key of the pools' rounding (`true` when they round up; written only then).
    pub const CEIL_MODE: &'static str = "ceil_mode";

    /// The metadata of a network of `config` predicting `class_names`.
    pub fn of(config: &DexpressionConfig, class_names: &[String]) -> Self {
        Self {
            class_names: class_names.to_vec(),
            image_size: config.image_size,
            variant: config.variant,
            lrn: (config.variant == Variant::Paper).then_some(config.lrn),
            ceil_mode: config.ceil_mode,
        }
    }

    /// The `__metadata__` entries.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            (
                Self::CLASS_NAMES.to_string(),
                serde_json::to_string(&self.class_names).unwrap_or_default(),
            ),
            (Self::IMAGE_SIZE.to_string(), self.image_size.to_string()),
            (
                Self::N_CLASSES.to_string(),
                self.class_names.len().to_string(),
            ),
            (Self::VARIANT.to_string(), self.variant.name().to_string()),
        ]);
        if let Some(lrn) = &self.lrn {
            map.insert(
                Self::LRN.to_string(),
                serde_json::to_string(lrn).unwrap_or_default(),
            );
        }
        // Only when it is true, so that the port's files stay as they were.
        if self.ceil_mode {
            map.insert(Self::CEIL_MODE.to_string(), true.to_string());
        }
        map
    }

    /// Reads the entries back; `None` when the class names or input side are absent or not of
    /// the expected form (files from the PyTorch port or `import-torch` have neither). A file
    /// without a variant is the port's (it was written before there were two); an unknown
    /// variant, unreadable LRN constants or rounding read as no metadata, and the tensors
    /// decide.
    pub fn from_map(map: &HashMap<String, String>) -> Option<Self> {
        let class_names: Vec<String> = serde_json::from_str(map.get(Self::CLASS_NAMES)?).ok()?;
        let image_size = map.get(Self::IMAGE_SIZE)?.trim().parse().ok()?;
        let variant = match map.get(Self::VARIANT) {
            Some(name) => name.parse().ok()?,
            None => Variant::Port,
        };
        let lrn = match map.get(Self::LRN) {
            Some(json) => Some(serde_json::from_str(json).ok()?),
            None => None,
        };
        let ceil_mode = match map.get(Self::CEIL_MODE) {
            Some(flag) => flag.trim().parse().ok()?,
            None => false,
        };
        Some(WeightsMetadata {
            class_names,
            image_size,
            variant,
            lrn,
            ceil_mode,
        })
    }

    /// Reads a safetensors file's metadata without reading its tensors.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        Ok(Self::read_entries(path)?.and_then(|map| Self::from_map(&map)))
    }

    /// Every string entry of a safetensors file's `__metadata__` (ours and any other writer's,
    /// such as the training state `train` records), `None` when it has no `__metadata__`.
    pub fn read_entries(path: &Path) -> Result<Option<HashMap<String, String>>> {
        use std::io::Read;
        // Headers of our files are a few kilobytes; refuse absurd lengths before allocating.
        const MAX_HEADER_LEN: u64 = 100 << 20;
        let unreadable = |message: String| Error::Weights {
            path: path.to_path_buf(),
            message,
        };
        let mut file =
            std::fs::File::open(path).map_err(|err| unreadable(format!("cannot open: {err}")))?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length)
            .map_err(|err| unreadable(format!("not a safetensors file ({err})")))?;
        let length = u64::from_le_bytes(length);
        if length > MAX_HEADER_LEN {
            return Err(unreadable(format!(
                "not a safetensors file (header of {length} bytes)"
            )));
        }
        let mut header = vec![0u8; length as usize];
        file.read_exact(&mut header)
            .map_err(|err| unreadable(format!("not a safetensors file ({err})")))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|err| unreadable(format!("not a safetensors file ({err})")))?;
        let Some(entries) = header.get("__metadata__").and_then(|m| m.as_object()) else {
            return Ok(None);
        };
        Ok(Some(
            entries
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect(),
        ))
    }

    /// Checks the metadata against the network the tensors describe.
    pub fn check(&self, config: &DexpressionConfig, path: &Path) -> Result<()> {
        if self.variant != config.variant {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                message: format!(
                    "its metadata names the {} variant but its tensors are the {} variant's; the file was altered, train or export it again",
                    self.variant, config.variant
                ),
            });
        }
        if self.ceil_mode != config.ceil_mode {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                message: format!(
                    "its metadata says its pools round {} but the network's round {}; the file was altered, train or export it again",
                    rounding(self.ceil_mode),
                    rounding(config.ceil_mode)
                ),
            });
        }
        let same_side = DexpressionConfig {
            image_size: self.image_size,
            ..config.clone()
        };
        // The side shows in lrn1's shape (the port's) and in fc's width (both variants).
        let port = config.variant == Variant::Port;
        if self.class_names.len() != config.n_classes
            || (port && same_side.block1_side() != config.block1_side())
            || same_side.fc_in_features() != config.fc_in_features()
        {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                message: format!(
                    "its metadata names {} classes at {} px but its tensors are a network of {} classes at {} px; the file was altered, train or export it again",
                    self.class_names.len(),
                    self.image_size,
                    config.n_classes,
                    config.image_size
                ),
            });
        }
        Ok(())
    }
}

/// How pools with `ceil_mode` round, for messages.
fn rounding(ceil_mode: bool) -> &'static str {
    if ceil_mode {
        "up"
    } else {
        "down"
    }
}

/// Writes named tensors and their metadata as safetensors through a temporary file renamed into
/// place, like [`crate::save_atomic`].
pub(crate) fn save_tensors_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: &WeightsMetadata,
    path: &Path,
) -> Result<()> {
    let entries: BTreeMap<String, String> = metadata.to_map().into_iter().collect();
    let bytes = serialize_with_metadata(tensors, &entries)?;
    crate::weights::write_atomic(path, &bytes)
}

/// Named tensors and `__metadata__` entries as the bytes of a safetensors file, tensors in name
/// order. The header is written here rather than by the `safetensors` crate, whose metadata is a
/// `HashMap` written in random order: with sorted keys, the same weights give the same bytes.
pub fn serialize_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    use safetensors::View;
    let mut on_cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(name, tensor)| Ok((name.as_str(), tensor.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    on_cpu.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0usize;
    for (name, tensor) in &on_cpu {
        let end = offset + View::data_len(tensor);
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": View::dtype(tensor),
                "shape": View::shape(tensor),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // The data must start 8-byte aligned; the format pads the header with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for (_, tensor) in &on_cpu {
        bytes.extend_from_slice(&View::data(tensor));
    }
    Ok(bytes)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    crate::weights::read_safetensors(path)
}

/// The variant whose tensors `has` names: the port's has `lrn1.weight` (its LayerNorm) and
/// BatchNorm's, the paper's neither; `None` when there is not even `conv1.weight`.
pub(crate) fn variant_of_tensors(has: impl Fn(&str) -> bool) -> Option<Variant> {
    if has(&format!("{LRN1}.weight")) || has(&format!("{BATCH_NORMALIZATION}.weight")) {
        Some(Variant::Port)
    } else if has(&format!("{}.weight", CONVS[0].name)) {
        Some(Variant::Paper)
    } else {
        None
    }
}

/// The error for weights of one variant loaded as the other's.
fn variant_mismatch(path: &Path, found: Variant, asked: Variant) -> Error {
    let what = match found {
        Variant::Port => "has the port's LayerNorm (`lrn1.*`) and BatchNorm",
        Variant::Paper => "has neither the port's LayerNorm (`lrn1.*`) nor its BatchNorm",
    };
    Error::Weights {
        path: path.to_path_buf(),
        message: format!(
            "these are the {found} variant's weights (the file {what}), not the {asked} variant's; pass `--variant {found}` or train the {asked} variant"
        ),
    }
}

/// Reads the class count from `fc.weight`, the variant from which tensors there are and the
/// input side from `lrn1.weight` (the port's) or `fc.weight`'s width (the paper's), with the
/// pools rounding as `ceil_mode` says (by default as the variant's preset does).
pub(crate) fn infer_config(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    ceil_mode: Option<bool>,
) -> Result<DexpressionConfig> {
    infer_config_from_shapes(
        |name| tensors.get(name).map(|t| t.dims().to_vec()),
        path,
        ceil_mode,
    )
}

/// The names and shapes of the `state_dict` tensors (without `num_batches_tracked`) that a
/// network of this configuration has.
pub(crate) fn expected_shapes(config: &DexpressionConfig) -> Vec<(String, Vec<usize>)> {
    tensor_specs(config)
        .into_iter()
        .map(|spec| (spec.name, spec.shape))
        .collect()
}

/// [`infer_config`] from declared shapes alone, before any tensor is read.
pub(crate) fn infer_config_from_shapes(
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    path: &Path,
    ceil_mode: Option<bool>,
) -> Result<DexpressionConfig> {
    let dims = |name: &str, rank: usize| -> Result<Vec<usize>> {
        let dims = shape_of(name).ok_or_else(|| Error::MissingTensor {
            path: path.to_path_buf(),
            name: name.into(),
            expected: vec![],
        })?;
        if dims.len() != rank {
            return Err(Error::Weights {
                path: path.into(),
                message: format!("`{name}` has shape {dims:?}, expected rank {rank}"),
            });
        }
        Ok(dims)
    };
    let fc = dims(&format!("{FC}.weight"), 2)?;
    let n_classes = fc[0];
    let variant = variant_of_tensors(|name| shape_of(name).is_some()).unwrap_or_default();
    // The paper's variant has no LayerNorm: its side shows only in fc's width, which fixes fewer
    // bits of it (sides 61 to 76 share a width); its metadata records the side it was trained at.
    let lrn_side = match variant {
        Variant::Port => Some(dims(&format!("{LRN1}.weight"), 3)?[1]),
        Variant::Paper => None,
    };
    // Several input sides give one LayerNorm side (or fc width): prefer the port's 224, then a
    // multiple of 16 (the usual crop sides: 48, 64, 96, ...), then the smallest.
    let preset = DexpressionConfig::of(variant, n_classes, 224);
    let config_at = |image_size: usize| DexpressionConfig {
        image_size,
        ceil_mode: ceil_mode.unwrap_or(preset.ceil_mode),
        ..preset.clone()
    };
    let fits = |side: &usize| {
        let config = config_at(*side);
        match lrn_side {
            Some(lrn_side) => config.block1_side() == lrn_side,
            None => config.fc_in_features() == fc[1],
        }
    };
    let image_size = std::iter::once(224)
        .filter(fits)
        .chain((32..=4096).filter(|side| side % 16 == 0).filter(fits))
        .chain((32..=4096).filter(fits))
        .next()
        .ok_or_else(|| Error::Weights {
            path: path.into(),
            message: match lrn_side {
                Some(lrn_side) => format!("no input side gives a LayerNorm of side {lrn_side}"),
                None => format!("no input side gives `fc.weight`'s {} inputs", fc[1]),
            },
        })?;
    Ok(config_at(image_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_travels_with_the_weights_and_fixes_the_input_side() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weights.safetensors");
        // Sides 45 to 48 give the same tensor shapes: only the metadata knows it was 46.
        let config = DexpressionConfig::with(2, 46);
        assert_eq!(
            DexpressionConfig::with(2, 45).block1_side(),
            config.block1_side()
        );
        let model = Dexpression::new(config, 3, &Device::Cpu).expect("network");
        let names = vec!["pain".to_string(), "no pain, \"really\"".to_string()];
        model.save_with_metadata(&path, &names).expect("saved");
        let again = dir.path().join("again.safetensors");
        model.save_with_metadata(&again, &names).expect("saved");
        assert_eq!(
            std::fs::read(&path).expect("bytes"),
            std::fs::read(&again).expect("bytes"),
            "the same weights give the same bytes"
        );

        let metadata = WeightsMetadata::read(&path)
            .expect("readable")
            .expect("present");
        assert_eq!(metadata.class_names, names);
        assert_eq!(metadata.image_size, 46);
        let loaded = Dexpression::load(&path, &Device::Cpu).expect("loads");
        assert_eq!(loaded.config().image_size, 46);
        assert_eq!(loaded.config().n_classes, 2);
        let original = model.state_dict().expect("tensors");
        let read = loaded.state_dict().expect("tensors");
        for ((name, a), (_, b)) in original.iter().zip(&read) {
            let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>());
            let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>());
            if let (Ok(a), Ok(b)) = (a, b) {
                assert_eq!(a, b, "{name}");
            }
        }

        // Without metadata (the port's files) nothing is recorded and the side is inferred: of
        // the sides 45-48 that give these shapes, the multiple of 16.
        let plain = dir.path().join("plain.safetensors");
        model.save(&plain).expect("saved");
        assert_eq!(WeightsMetadata::read(&plain).expect("readable"), None);
        assert_eq!(
            Dexpression::load(&plain, &Device::Cpu)
                .expect("loads")
                .config()
                .image_size,
            48
        );
        // Metadata that contradicts the tensors is refused.
        let wrong = WeightsMetadata {
            class_names: vec!["a".into(), "b".into(), "c".into()],
            image_size: 48,
            variant: Variant::Port,
            lrn: None,
            ceil_mode: false,
        };
        let tampered = dir.path().join("tampered.safetensors");
        save_tensors_with_metadata(&model.state_dict().expect("tensors"), &wrong, &tampered)
            .expect("written");
        let Err(error) = Dexpression::load(&tampered, &Device::Cpu) else {
            panic!("3 names for 2 outputs must be refused");
        };
        assert!(error.to_string().contains("3 classes"), "{error}");
    }

    #[test]
    fn the_variant_travels_with_the_weights_and_the_other_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = (0..3).map(|i| format!("class {i}")).collect();
        let paper_config = DexpressionConfig {
            lrn: LrnConstants {
                k: 2.0,
                ..LrnConstants::default()
            },
            ..DexpressionConfig::of(Variant::Paper, 3, 46)
        };
        let paper = Dexpression::new(paper_config.clone(), 1, &Device::Cpu).expect("network");
        let names_of = |model: &Dexpression| -> Vec<String> {
            model.named_vars().iter().map(|n| n.name.clone()).collect()
        };
        assert!(!names_of(&paper)
            .iter()
            .any(|n| n.starts_with("lrn1") || n.starts_with("batch_normalization")));
        let paper_path = dir.path().join("paper.safetensors");
        paper
            .save_with_metadata(&paper_path, &names)
            .expect("saved");
        let metadata = WeightsMetadata::read(&paper_path)
            .expect("readable")
            .expect("present");
        assert_eq!(metadata.variant, Variant::Paper);
        assert_eq!(metadata.lrn, Some(paper_config.lrn));
        assert!(metadata.ceil_mode);
        let loaded = Dexpression::load(&paper_path, &Device::Cpu).expect("loads");
        assert_eq!(
            loaded.config(),
            &paper_config,
            "variant, side and LRN constants"
        );
        // Sides 63 to 78 give the paper's variant one fc width (and no LayerNorm side): the
        // recorded side is the one used.
        let at_76 = DexpressionConfig::of(Variant::Paper, 3, 76);
        let path_76 = dir.path().join("paper-76.safetensors");
        Dexpression::new(at_76, 2, &Device::Cpu)
            .expect("network")
            .save_with_metadata(&path_76, &names)
            .expect("saved");
        assert_eq!(
            Dexpression::load(&path_76, &Device::Cpu)
                .expect("loads")
                .config()
                .image_size,
            76
        );
        assert!(loaded.state_dict().expect("tensors").len() == names_of(&paper).len());
        // A paper network whose pools round down (as the variant's did before it took the
        // paper's sides) records nothing of its rounding, and loads rounding down.
        let floor_config = DexpressionConfig {
            ceil_mode: false,
            ..paper_config.clone()
        };
        let floor_path = dir.path().join("paper-floor.safetensors");
        Dexpression::new(floor_config.clone(), 3, &Device::Cpu)
            .expect("network")
            .save_with_metadata(&floor_path, &names)
            .expect("saved");
        let entries = WeightsMetadata::read_entries(&floor_path)
            .expect("readable")
            .expect("present");
        assert!(!entries.contains_key(WeightsMetadata::CEIL_MODE));
        assert_eq!(
            Dexpression::load(&floor_path, &Device::Cpu)
                .expect("loads")
                .config(),
            &floor_config
        );
        // Metadata whose rounding contradicts the tensors is refused (at 48 px, where the
        // roundings differ: 46 px gives the same sides either way).
        let at_48 = Dexpression::new(
            DexpressionConfig::of(Variant::Paper, 3, 48),
            4,
            &Device::Cpu,
        )
        .expect("network");
        let tampered = dir.path().join("tampered-rounding.safetensors");
        let lying = WeightsMetadata {
            image_size: 48,
            ceil_mode: false,
            ..metadata.clone()
        };
        save_tensors_with_metadata(&at_48.state_dict().expect("tensors"), &lying, &tampered)
            .expect("written");
        let Err(error) = Dexpression::load(&tampered, &Device::Cpu) else {
            panic!("metadata rounding down over tensors that round up must be refused");
        };
        assert!(error.to_string().contains("at 48 px"), "{error}");

        let port = Dexpression::new(DexpressionConfig::with(3, 46), 1, &Device::Cpu).expect("port");
        let port_path = dir.path().join("port.safetensors");
        port.save_with_metadata(&port_path, &names).expect("saved");
        // Either file loaded as the other variant: an error naming both and the flag to pass.
        let Err(error) =
            Dexpression::load_with_config(&port_path, paper_config.clone(), &Device::Cpu)
        else {
            panic!("port weights must not load as the paper's");
        };
        let error = error.to_string();
        assert!(
            error.contains("port variant's weights") && error.contains("--variant port"),
            "{error}"
        );
        let Err(error) = Dexpression::load_with_config(
            &paper_path,
            DexpressionConfig::with(3, 46),
            &Device::Cpu,
        ) else {
            panic!("paper weights must not load as the port's");
        };
        let error = error.to_string();
        assert!(
            error.contains("paper variant's weights") && error.contains("--variant paper"),
            "{error}"
        );
        // Metadata naming the other variant than the tensors is refused too.
        let tampered = dir.path().join("tampered.safetensors");
        let lying = WeightsMetadata {
            variant: Variant::Port,
            ..metadata
        };
        save_tensors_with_metadata(&paper.state_dict().expect("tensors"), &lying, &tampered)
            .expect("written");
        let Err(error) = Dexpression::load(&tampered, &Device::Cpu) else {
            panic!("metadata naming the port over paper tensors must be refused");
        };
        assert!(error.to_string().contains("port variant"), "{error}");
        // Without metadata the tensors alone say which variant: no lrn1, no BatchNorm.
        let plain = dir.path().join("plain.safetensors");
        paper.save(&plain).expect("saved");
        assert_eq!(
            Dexpression::load(&plain, &Device::Cpu)
                .expect("loads")
                .config()
                .variant,
            Variant::Paper
        );
    }

    #[test]
    fn threads_kept_awake_change_no_output() {
        // Spinning threads between parallel steps must not change which thread sums what.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a thread pool");
        pool.install(|| {
            let config = DexpressionConfig::with(3, 48);
            let asleep = Dexpression::new(config.clone(), 4, &Device::Cpu).expect("network");
            let awake = Dexpression::new(config, 4, &Device::Cpu)
                .expect("network")
                .with_threads_awake(true);
            for (images, seed) in [(1, 1), (5, 2)] {
                let xs = Tensor::rand(0f32, 1.0, (images, 1, 48, 48), &Device::Cpu)
                    .expect("input")
                    .affine(1.0, seed as f64 * 0.01)
                    .expect("input");
                let bits = |model: &Dexpression| -> Vec<u32> {
                    model
                        .forward_t(&xs, false)
                        .and_then(|ys| ys.flatten_all()?.to_vec1::<f32>())
                        .expect("forward")
                        .into_iter()
                        .map(f32::to_bits)
                        .collect()
                };
                assert_eq!(bits(&asleep), bits(&awake), "{images} image(s)");
            }
        });
    }

    #[test]
    fn the_paper_variant_trains_through_its_lrn() {
        let config = DexpressionConfig::of(Variant::Paper, 2, 48);
        let model = Dexpression::new(config, 5, &Device::Cpu).expect("network");
        let xs = Tensor::rand(0f32, 1f32, (2, 1, 48, 48), &Device::Cpu).expect("input");
        let logp = model.forward_t(&xs, true).expect("forward");
        let grads = logp.sum_all().and_then(|l| l.backward()).expect("backward");
        // conv1 is before the LRN: its gradient went through the LRN's backward.
        let conv1 = &model.named_vars()[0];
        assert_eq!(conv1.name, "conv1.weight");
        let grad = grads
            .get(conv1.var.as_tensor())
            .expect("a gradient for conv1");
        assert!(
            grad.abs()
                .and_then(|g| g.sum_all())
                .and_then(|s| s.to_scalar::<f32>())
                .expect("sum")
                > 0.0
        );
    }

    /// The weights and biases of `name` in a fresh network of `config`.
    fn fresh(config: DexpressionConfig, name: &str) -> (Vec<f32>, Vec<f32>) {
        let model = Dexpression::new(config, 3, &Device::Cpu).expect("network");
        let values = |suffix: &str| {
            let full = format!("{name}.{suffix}");
            let var = model
                .named_vars()
                .iter()
                .find(|n| n.name == full)
                .expect("a parameter of that name");
            var.var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values")
        };
        (values("weight"), values("bias"))
    }

    #[test]
    fn the_paper_variant_starts_from_he_init_and_the_port_from_pytorchs() {
        // conv2b: 208 x 96 x 3 x 3, fan-in 864.
        let fan_in = 864.0f32;
        let variance = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        let (weights, biases) = fresh(DexpressionConfig::of(Variant::Paper, 7, 48), "conv2b");
        assert_eq!(DexpressionConfig::paper().init, WeightInit::He);
        // He et al.: variance 2 / fan-in (uniform in +-sqrt(6 / fan-in)), biases zero.
        let bound = (6.0 / fan_in).sqrt();
        assert!(weights.iter().all(|w| w.abs() <= bound));
        let ratio = variance(&weights) / (2.0 / fan_in);
        assert!((0.95..1.05).contains(&ratio), "variance ratio {ratio}");
        assert!(biases.iter().all(|&b| b == 0.0));
        // The port keeps PyTorch's defaults, variance 1 / (3 fan-in), biases drawn likewise.
        let (weights, biases) = fresh(DexpressionConfig::of(Variant::Port, 7, 48), "conv2b");
        let ratio = variance(&weights) / (1.0 / (3.0 * fan_in));
        assert!((0.95..1.05).contains(&ratio), "variance ratio {ratio}");
        let bound = 1.0 / fan_in.sqrt();
        assert!(biases.iter().all(|b| b.abs() <= bound) && biases.iter().any(|&b| b != 0.0));
        // The classifier too: He's variance, zero bias.
        let (weights, biases) = fresh(DexpressionConfig::of(Variant::Paper, 7, 48), "fc");
        let fc_in = DexpressionConfig::of(Variant::Paper, 7, 48).fc_in_features() as f32;
        let ratio = variance(&weights) / (2.0 / fc_in);
        assert!((0.9..1.1).contains(&ratio), "variance ratio {ratio}");
        assert!(biases.iter().all(|&b| b == 0.0));
    }
}
