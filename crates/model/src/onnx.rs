//! The network in inference mode as an ONNX model (the crate's `onnx` feature), for ONNX Runtime,
//! OpenCV's DNN module, TensorRT or a browser.
//!
//! The graph is the evaluation forward of [`Dexpression`], node for node: conv1 + ReLU + max-pool,
//! the LayerNorm over `[C, H, W]`, the two FeatEx blocks (the 3x3 branch first, then the pooling
//! branch, concatenated on the channels and max-pooled), BatchNorm with its running statistics,
//! no dropout, flatten, the fully connected layer and the log-softmax. Every tensor of the
//! weights is an initializer, under its PyTorch `state_dict` name.
//!
//! The paper variant ([`crate::Variant::Paper`]) has an `LRN` node (ONNX's cross-channel local
//! response normalisation, PyTorch's `nn.LocalResponseNorm` for the odd windows the export takes)
//! in place of the LayerNorm and no BatchNorm; its pools round their output up, which the graph
//! writes as explicit end padding (padding never wins a max-pool), so that the same file runs on
//! every opset and runtime whatever their `ceil_mode` support.
//!
//! - **Input** [`INPUT`]: `batch x 1 x side x side` float32, the batch dimension symbolic.
//! - **Outputs** [`LOG_PROBABILITIES`] (natural logarithms of the class probabilities, what
//!   the network computes) and [`PROBABILITIES`] (their exponential), both `batch x n_classes`.
//! - **Opsets** [`OPSETS`]: from [`LAYER_NORMALIZATION_OPSET`] on, the LayerNorm is one
//!   `LayerNormalization` node (axis 1); below, its decomposition (`ReduceMean`, `Sub`, `Mul`,
//!   `Add`, `Sqrt`, `Div`), which runtimes without that operator run as well.
//! - **`metadata_props`**: the keys of [`keys`]: class names, input side and where it came from,
//!   the preprocessing, what the outputs hold, and every entry of the weights file's own
//!   safetensors metadata (which holds the training state for files `train` writes).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

use candle_core::{Device, Tensor};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::config::{conv1_out, DexpressionConfig, LrnConstants};
use crate::dexpression::{BATCH_NORM_EPS, LAYER_NORM_EPS, POOL_KEEP};
use crate::{Dexpression, Error, Result, Variant, WeightsMetadata};
use dexpression_kernels::Pool2d;

/// The `ai.onnx` opsets the export can write. 9 is the first whose `BatchNormalization` and
/// `Flatten` have today's form; 21 is the newest that was checked with ONNX Runtime.
pub const OPSETS: RangeInclusive<i64> = 9..=21;

/// The opset written when none is asked for: the first with `LayerNormalization`, which ONNX
/// Runtime (1.14 on) and OpenCV (4.9 on) run.
pub const DEFAULT_OPSET: i64 = LAYER_NORMALIZATION_OPSET;

/// The first opset with the `LayerNormalization` operator; below it the LayerNorm is decomposed.
pub const LAYER_NORMALIZATION_OPSET: i64 = 17;

/// Name of the graph's input: `batch x 1 x side x side` float32, grayscale pixel / 255.
pub const INPUT: &str = "input";
/// Name of the output holding the natural logarithms of the class probabilities.
pub const LOG_PROBABILITIES: &str = "log_probabilities";
/// Name of the output holding the class probabilities (`exp` of [`LOG_PROBABILITIES`]).
pub const PROBABILITIES: &str = "probabilities";
/// Name of the symbolic batch dimension of the input and outputs.
pub const BATCH_DIM: &str = "batch";

/// The `metadata_props` keys an exported model holds.
pub mod keys {
    /// The class names in output order, as a JSON array of strings.
    pub const CLASS_NAMES: &str = "dexpression.class_names";
    /// The number of classes, in decimal.
    pub const N_CLASSES: &str = "dexpression.n_classes";
    /// The side of the square input in pixels, in decimal.
    pub const INPUT_SIDE: &str = "dexpression.input_side";
    /// Whether the weights recorded their input side or it was inferred from the tensor shapes
    /// (and from which candidates), in words.
    pub const INPUT_SIDE_SOURCE: &str = "dexpression.input_side_source";
    /// Whether the class names were recorded in the weights or supplied by the exporter.
    pub const CLASS_NAMES_SOURCE: &str = "dexpression.class_names_source";
    /// How to turn an image into the input, as a JSON object (see [`super::Preprocessing`]).
    pub const PREPROCESSING: &str = "dexpression.preprocessing";
    /// What the outputs hold, in words.
    pub const OUTPUTS: &str = "dexpression.outputs";
    /// The configuration of the training run the weights come from, as JSON, when the exporter
    /// knows it (`cargo xtask export` reads it from the run folder's `config.json`): the
    /// dataset, its split into folds, the epochs and the optimiser's settings.
    pub const TRAINING_CONFIG: &str = "dexpression.training_config";
    /// The fold of that run the weights come from, from 1, beside [`TRAINING_CONFIG`].
    pub const TRAINING_FOLD: &str = "dexpression.training_fold";
    /// Prefix of the entries copied from the weights file's safetensors `__metadata__`: its key
    /// `image_size` becomes `safetensors.image_size`.
    pub const WEIGHTS_PREFIX: &str = "safetensors.";
}

/// How an image becomes the network's input: what [`keys::PREPROCESSING`] records, and what the
/// project's own `predict` does (`dexpression_dataset::crop`, then [`crate::batch_from_pixels`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocessing {
    /// `"grayscale"`: one channel.
    pub color: String,
    /// How colour becomes gray.
    pub grayscale: String,
    /// The square side every face crop is resized to.
    pub side: usize,
    /// The resampling filter of that resize.
    pub resize: String,
    /// What the 8-bit gray values are divided by (values in `[0, 1]`).
    pub divide_by: f32,
    /// The input layout.
    pub layout: String,
    /// The input element type.
    pub dtype: String,
    /// What is cropped before the resize.
    pub crop: String,
}

impl Preprocessing {
    /// The preprocessing of a network with input side `side`.
    pub fn for_side(side: usize) -> Self {
        Preprocessing {
            color: "grayscale".into(),
            grayscale:
                "the image crate 0.25's to_luma8: each 8-bit value / 255 in f32, weighted by BT.709's Y row (0.21264784 R + 0.7151792 G + 0.07217304 B), summed, times 255, rounded to the nearest; (2126 R + 7152 G + 722 B) / 10000 rounded down is within one level of it"
                    .into(),
            side,
            resize: "Catmull-Rom (bicubic), its support widened by the scale factor when downscaling (the Rust image crate's resize with FilterType::CatmullRom)".into(),
            divide_by: 255.0,
            layout: format!("NCHW: batch x 1 x {side} x {side}, rows top to bottom"),
            dtype: "float32".into(),
            crop: "the face: a square box around it from a face detector, or an image that is already a face crop, used whole".into(),
        }
    }
}

/// What [`Dexpression::to_onnx`] writes besides the network.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The `ai.onnx` opset, within [`OPSETS`].
    pub opset: i64,
    /// The class names in output order.
    pub class_names: Vec<String>,
    /// Where those names came from, for [`keys::CLASS_NAMES_SOURCE`].
    pub class_names_source: String,
    /// Where the input side came from, for [`keys::INPUT_SIDE_SOURCE`].
    pub input_side_source: String,
    /// Further `metadata_props` entries (the weights file's own metadata, a training protocol);
    /// a key of [`keys`] given here is refused.
    pub metadata: BTreeMap<String, String>,
}

/// What [`export_weights`] did, for the caller to report.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The network that was exported.
    pub config: DexpressionConfig,
    /// The class names written.
    pub class_names: Vec<String>,
    /// `None` when the weights recorded their input side; otherwise every side that gives their
    /// tensor shapes, of which `config.image_size` was taken (as [`Dexpression::load`] does).
    pub inferred_side_from: Option<Vec<usize>>,
    /// Whether the class names came from the weights file (else from the caller's defaults).
    pub class_names_recorded: bool,
    /// The opset written.
    pub opset: i64,
    /// Whether the LayerNorm is one `LayerNormalization` node (else its decomposition).
    pub layer_normalization_node: bool,
    /// The size of the file written, in bytes.
    pub bytes: usize,
}

/// Refuses an opset outside [`OPSETS`], naming the supported ones.
pub fn check_opset(opset: i64) -> Result<()> {
    if OPSETS.contains(&opset) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "ONNX opset {opset} is not supported: the export writes opsets {} to {} (LayerNormalization from {LAYER_NORMALIZATION_OPSET}, its decomposition below); the default is {DEFAULT_OPSET}",
        OPSETS.start(),
        OPSETS.end()
    )))
}

/// Every input side in the range the loader searches that gives the same tensor shapes as
/// `config` (the same LayerNorm side for the port's variant, the same fc width for the paper's):
/// the candidates when weights record no side.
pub fn sides_with_same_shapes(config: &DexpressionConfig) -> Vec<usize> {
    let at = |image_size: usize| DexpressionConfig {
        image_size,
        ..config.clone()
    };
    (32..=4096)
        .filter(|&side| match config.variant {
            Variant::Port => at(side).block1_side() == config.block1_side(),
            Variant::Paper => at(side).fc_in_features() == config.fc_in_features(),
        })
        .collect()
}

/// Exports a safetensors weights file as an ONNX model at `out`, written atomically (a failure
/// leaves no partial file and any previous `out` as it was).
///
/// The input side and class names come from the file's metadata when it records them; otherwise
/// the side is inferred from the tensor shapes as [`Dexpression::load`] infers it (the summary
/// and the model's metadata say so and list the candidates), and the class names are
/// `default_class_names(n_classes)`, an error when that gives none. `metadata` adds entries
/// to the model's `metadata_props` (such as [`keys::TRAINING_CONFIG`]).
pub fn export_weights(
    weights: &Path,
    out: &Path,
    opset: i64,
    default_class_names: impl FnOnce(usize) -> Option<Vec<String>>,
    mut metadata: BTreeMap<String, String>,
) -> Result<ExportSummary> {
    // Before reading megabytes of weights: the opset is the cheapest mistake to report.
    check_opset(opset)?;
    let model = Dexpression::load(weights, &Device::Cpu)?;
    let config = model.config().clone();
    let entries = WeightsMetadata::read_entries(weights)?.unwrap_or_default();
    let recorded = WeightsMetadata::from_map(&entries);
    let inferred_side_from = match recorded {
        Some(_) => None,
        None => Some(sides_with_same_shapes(&config)),
    };
    let input_side_source = match &inferred_side_from {
        None => "recorded in the weights file's metadata".to_string(),
        Some(candidates) => format!(
            "inferred from the tensor shapes: the weights record no input side, and sides {} give their shapes; {} was taken (the port's 224 first, then a multiple of 16, then the smallest), as predict does",
            candidates
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            config.image_size
        ),
    };
    let (class_names, class_names_recorded) = match recorded {
        Some(metadata) => (metadata.class_names, true),
        None => {
            let names = default_class_names(config.n_classes).ok_or_else(|| Error::Weights {
                path: weights.to_path_buf(),
                message: format!(
                    "the file records no class names and there are no default names for {} classes; save the weights with their class names (Dexpression::save_with_metadata, or train with `train`)",
                    config.n_classes
                ),
            })?;
            (names, false)
        }
    };
    let class_names_source = if class_names_recorded {
        "recorded in the weights file's metadata"
    } else {
        "not recorded in the weights file: the exporter's defaults for this class count"
    };
    metadata.extend(
        entries
            .into_iter()
            .map(|(key, value)| (format!("{}{key}", keys::WEIGHTS_PREFIX), value)),
    );
    let options = ExportOptions {
        opset,
        class_names: class_names.clone(),
        class_names_source: class_names_source.into(),
        input_side_source,
        metadata,
    };
    let bytes = model.to_onnx(&options)?;
    crate::weights::write_atomic(out, &bytes)?;
    Ok(ExportSummary {
        config,
        class_names,
        inferred_side_from,
        class_names_recorded,
        opset,
        layer_normalization_node: opset >= LAYER_NORMALIZATION_OPSET,
        bytes: bytes.len(),
    })
}

impl Dexpression {
    /// The network in inference mode as the bytes of an ONNX model (see the [module
    /// docs](crate::onnx)).
    pub fn to_onnx(&self, options: &ExportOptions) -> Result<Vec<u8>> {
        check_opset(options.opset)?;
        let config = self.config();
        if config.variant == Variant::Paper {
            check_lrn(&config.lrn)?;
        }
        if options.class_names.len() != config.n_classes {
            return Err(Error::Config(format!(
                "{} class names given for a network of {} classes",
                options.class_names.len(),
                config.n_classes
            )));
        }
        let mut graph = Graph::new(options.opset);
        for named in self.named_vars() {
            graph.initializer(&named.name, named.var.as_tensor())?;
        }
        let conv = self.conv_geometry();
        let conv = |name: &str| {
            let (_, stride, padding) = conv
                .iter()
                .find(|(n, _, _)| *n == name)
                .copied()
                .expect("every convolution of the network is listed");
            ConvNode {
                name: name.to_string(),
                stride,
                padding,
            }
        };

        // Block 1: conv1, ReLU, pool1, then the port's LayerNorm over [C, H, W] or the paper's
        // LRN.
        let reduce = config.reduce_pool();
        let x = graph.conv(INPUT, &conv("conv1"), self)?;
        let x = graph.op("Relu", "conv1.relu", &[&x], vec![]);
        let side1 = conv1_out(config.image_size);
        let x = graph.max_pool("pool1", &x, reduce, side1);
        let x = match config.variant {
            Variant::Port => graph.layer_norm("lrn1", &x)?,
            Variant::Paper => graph.lrn("lrn", &x, &config.lrn),
        };
        // The FeatEx blocks.
        let side2 = config.block1_side();
        let x = graph.featex(
            &x,
            ["conv2a", "conv2b", "conv2c"].map(conv),
            "2",
            self,
            side2,
        )?;
        let side3 = reduce.out_side(side2);
        let x = graph.featex(
            &x,
            ["conv3a", "conv3b", "conv3c"].map(conv),
            "3",
            self,
            side3,
        )?;
        // The head in evaluation mode: no dropout, the port's BatchNorm on its running
        // statistics (the paper's head has none).
        let x = match config.variant {
            Variant::Port => graph.op(
                "BatchNormalization",
                "batch_normalization",
                &[
                    &x,
                    "batch_normalization.weight",
                    "batch_normalization.bias",
                    "batch_normalization.running_mean",
                    "batch_normalization.running_var",
                ],
                vec![float_attr("epsilon", BATCH_NORM_EPS as f32)],
            ),
            Variant::Paper => x,
        };
        let x = graph.op("Flatten", "flatten", &[&x], vec![int_attr("axis", 1)]);
        let x = graph.op(
            "Gemm",
            "fc",
            &[&x, "fc.weight", "fc.bias"],
            vec![int_attr("transB", 1)],
        );
        let logp = graph.op_to(
            "LogSoftmax",
            "log_softmax",
            &[&x],
            vec![int_attr("axis", 1)],
            LOG_PROBABILITIES,
        );
        graph.op_to("Exp", "exp", &[&logp], vec![], PROBABILITIES);

        let side = config.image_size as i64;
        let classes = config.n_classes as i64;
        let graph = GraphProto {
            name: "dexpression".into(),
            doc_string: "DeXpression (Burkert et al., 2015) in inference mode, exported by the dexpression crate".into(),
            node: graph.nodes,
            initializer: graph.initializers,
            input: vec![value_info(
                INPUT,
                &[Dim::Batch, Dim::Fixed(1), Dim::Fixed(side), Dim::Fixed(side)],
                "grayscale faces, pixel / 255 (see the metadata's dexpression.preprocessing)",
            )],
            output: vec![
                value_info(
                    LOG_PROBABILITIES,
                    &[Dim::Batch, Dim::Fixed(classes)],
                    "natural logarithms of the class probabilities, classes in the order of dexpression.class_names",
                ),
                value_info(
                    PROBABILITIES,
                    &[Dim::Batch, Dim::Fixed(classes)],
                    "class probabilities (exp of log_probabilities)",
                ),
            ],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: ir_version(options.opset),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: options.opset,
                ..Default::default()
            }],
            producer_name: "dexpression".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: format!(
                "DeXpression facial expression classifier: {classes} classes from {side}x{side} grayscale faces"
            ),
            graph: Some(graph).into(),
            metadata_props: metadata_props(config, options)?,
            ..Default::default()
        };
        model
            .write_to_bytes()
            .map_err(|err| Error::Config(format!("the ONNX model cannot be encoded: {err}")))
    }
}

/// The IR version that goes with an opset (onnx's `helper.VERSION_TABLE`): the oldest that
/// knows it, so that older runtimes load the file.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn metadata_props(
    config: &DexpressionConfig,
    options: &ExportOptions,
) -> Result<Vec<StringStringEntryProto>> {
    let json = |value: serde_json::Result<String>| {
        value.map_err(|err| Error::Config(format!("cannot encode the ONNX metadata: {err}")))
    };
    let ours = [
        (keys::CLASS_NAMES, json(serde_json::to_string(&options.class_names))?),
        (keys::N_CLASSES, config.n_classes.to_string()),
        (keys::INPUT_SIDE, config.image_size.to_string()),
        (keys::INPUT_SIDE_SOURCE, options.input_side_source.clone()),
        (keys::CLASS_NAMES_SOURCE, options.class_names_source.clone()),
        (
            keys::PREPROCESSING,
            json(serde_json::to_string(&Preprocessing::for_side(
                config.image_size,
            )))?,
        ),
        (
            keys::OUTPUTS,
            format!(
                "{LOG_PROBABILITIES}: natural logarithms of the class probabilities (the network's log-softmax), {PROBABILITIES}: their exponential; both {BATCH_DIM} x {}, classes in the order of {}",
                config.n_classes,
                keys::CLASS_NAMES
            ),
        ),
    ];
    let mut props: Vec<StringStringEntryProto> = Vec::new();
    for (key, value) in ours {
        props.push(entry(key, value));
    }
    for (key, value) in &options.metadata {
        if ours_key(key) {
            return Err(Error::Config(format!(
                "metadata key `{key}` is written by the export itself; choose another name"
            )));
        }
        props.push(entry(key, value.clone()));
    }
    Ok(props)
}

fn ours_key(key: &str) -> bool {
    [
        keys::CLASS_NAMES,
        keys::N_CLASSES,
        keys::INPUT_SIDE,
        keys::INPUT_SIDE_SOURCE,
        keys::CLASS_NAMES_SOURCE,
        keys::PREPROCESSING,
        keys::OUTPUTS,
    ]
    .contains(&key)
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value,
        ..Default::default()
    }
}

enum Dim {
    Batch,
    Fixed(i64),
}

fn value_info(name: &str, dims: &[Dim], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|dim| Dimension {
            value: Some(match dim {
                Dim::Batch => dimension::Value::DimParam(BATCH_DIM.into()),
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto {
            dim,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        })
        .into(),
        doc_string: doc.into(),
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: value,
        ..Default::default()
    }
}

fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::FLOAT.into(),
        f: value,
        ..Default::default()
    }
}

struct ConvNode {
    name: String,
    stride: usize,
    padding: usize,
}

/// The nodes and initializers of the graph being built.
struct Graph {
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    fn new(opset: i64) -> Self {
        Graph {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    /// A float32 initializer with the tensor's shape, its values little-endian as ONNX stores
    /// `raw_data`.
    fn initializer(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let values = tensor
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: tensor.dims().iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        Ok(())
    }

    /// A node whose single output is named after the node.
    fn op(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_to(op, name, inputs, attrs, name)
    }

    fn op_to(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        output: &str,
    ) -> String {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        });
        output.to_string()
    }

    fn conv(&mut self, x: &str, conv: &ConvNode, model: &Dexpression) -> Result<String> {
        let weight = format!("{}.weight", conv.name);
        let kernel = model
            .named_vars()
            .iter()
            .find(|n| n.name == weight)
            .map(|n| n.var.as_tensor().dims().to_vec())
            .ok_or_else(|| Error::Config(format!("the network has no `{weight}`")))?;
        let (kh, kw) = (kernel[2] as i64, kernel[3] as i64);
        let (s, p) = (conv.stride as i64, conv.padding as i64);
        let bias = format!("{}.bias", conv.name);
        Ok(self.op(
            "Conv",
            &conv.name,
            &[x, &weight, &bias],
            vec![
                ints_attr("kernel_shape", &[kh, kw]),
                ints_attr("strides", &[s, s]),
                ints_attr("pads", &[p, p, p, p]),
                ints_attr("dilations", &[1, 1]),
                int_attr("group", 1),
            ],
        ))
    }

    /// A max-pool of a square input of side `side`.
    fn max_pool(&mut self, name: &str, x: &str, pool: Pool2d, side: usize) -> String {
        let (k, s, p) = (pool.kernel as i64, pool.stride as i64, pool.padding as i64);
        // A pool that rounds up is written as one that rounds down over an input padded at
        // the end by what its last window lacks: the same windows, since padded positions never
        // win (ONNX pads max-pools with -inf, as PyTorch does). ceil_mode=1 would need opset 10
        // and a runtime that has it.
        let windows = pool.out_side(side);
        let end = ((windows - 1) * pool.stride + pool.kernel)
            .saturating_sub(side + 2 * pool.padding) as i64;
        // The output side rounds down (PyTorch's ceil_mode=False), spelled out where it exists.
        let mut attrs = vec![
            ints_attr("kernel_shape", &[k, k]),
            ints_attr("strides", &[s, s]),
            ints_attr("pads", &[p, p, p + end, p + end]),
        ];
        if self.opset >= 10 {
            attrs.push(int_attr("ceil_mode", 0));
        }
        self.op("MaxPool", name, &[x], attrs)
    }

    /// The port's `nn.LayerNorm([C, H, W])`: statistics per sample over everything but the
    /// batch axis, biased variance, then the element-wise affine of shape `[C, H, W]`.
    fn layer_norm(&mut self, name: &str, x: &str) -> Result<String> {
        let weight = format!("{name}.weight");
        let bias = format!("{name}.bias");
        if self.opset >= LAYER_NORMALIZATION_OPSET {
            return Ok(self.op(
                "LayerNormalization",
                name,
                &[x, &weight, &bias],
                vec![
                    int_attr("axis", 1),
                    float_attr("epsilon", LAYER_NORM_EPS as f32),
                ],
            ));
        }
        let epsilon = format!("{name}.epsilon");
        let eps = Tensor::new(LAYER_NORM_EPS as f32, &Device::Cpu)?;
        self.initializer(&epsilon, &eps)?;
        // `axes` is an attribute of ReduceMean up to opset 17, and this path ends at 16.
        let mean_over_chw = || vec![ints_attr("axes", &[1, 2, 3]), int_attr("keepdims", 1)];
        let mean = self.op("ReduceMean", &format!("{name}.mean"), &[x], mean_over_chw());
        let centred = self.op("Sub", &format!("{name}.centred"), &[x, &mean], vec![]);
        let squares = self.op(
            "Mul",
            &format!("{name}.squares"),
            &[&centred, &centred],
            vec![],
        );
        let variance = self.op(
            "ReduceMean",
            &format!("{name}.variance"),
            &[&squares],
            mean_over_chw(),
        );
        let shifted = self.op(
            "Add",
            &format!("{name}.variance_eps"),
            &[&variance, &epsilon],
            vec![],
        );
        let deviation = self.op("Sqrt", &format!("{name}.std"), &[&shifted], vec![]);
        let normalised = self.op(
            "Div",
            &format!("{name}.normalised"),
            &[&centred, &deviation],
            vec![],
        );
        let scaled = self.op(
            "Mul",
            &format!("{name}.scaled"),
            &[&normalised, &weight],
            vec![],
        );
        Ok(self.op("Add", name, &[&scaled, &bias], vec![]))
    }

    /// The paper variant's cross-channel local response normalisation: ONNX's `LRN` computes
    /// `x / (bias + alpha / size * sum of squares)^beta` over channels `c - (size - 1) / 2` to
    /// `c + ceil((size - 1) / 2)`, PyTorch's window for the odd sizes [`check_lrn`] lets through.
    fn lrn(&mut self, name: &str, x: &str, lrn: &LrnConstants) -> String {
        self.op(
            "LRN",
            name,
            &[x],
            vec![
                int_attr("size", lrn.size as i64),
                float_attr("alpha", lrn.alpha as f32),
                float_attr("beta", lrn.beta as f32),
                float_attr("bias", lrn.k as f32),
            ],
        )
    }

    /// A FeatEx block on an input of side `side`: `relu(conv_b(relu(conv_a(x))))` and
    /// `relu(conv_c(pool_keep(x)))`, concatenated on the channels in that order, then the
    /// reducing max-pool.
    fn featex(
        &mut self,
        x: &str,
        [reduce, conv, pooled]: [ConvNode; 3],
        block: &str,
        model: &Dexpression,
        side: usize,
    ) -> Result<String> {
        let a = self.conv(x, &reduce, model)?;
        let a = self.op("Relu", &format!("{}.relu", reduce.name), &[&a], vec![]);
        let a = self.conv(&a, &conv, model)?;
        let a = self.op("Relu", &format!("{}.relu", conv.name), &[&a], vec![]);
        let b = self.max_pool(&format!("pool{block}a"), x, POOL_KEEP, side);
        let b = self.conv(&b, &pooled, model)?;
        let b = self.op("Relu", &format!("{}.relu", pooled.name), &[&b], vec![]);
        let joined = self.op(
            "Concat",
            &format!("concat{block}"),
            &[&a, &b],
            vec![int_attr("axis", 1)],
        );
        let reduce = model.config().reduce_pool();
        Ok(self.max_pool(&format!("pool{block}b"), &joined, reduce, side))
    }
}

/// Refuses LRN constants the `LRN` node cannot hold: an even window, which ONNX centres one
/// channel later than PyTorch (and our kernel) does.
fn check_lrn(lrn: &LrnConstants) -> Result<()> {
    if lrn.size % 2 == 1 {
        return Ok(());
    }
    Err(Error::Config(format!(
        "ONNX export of the paper variant needs an odd LRN window: ONNX's LRN centres a window of {} channels one channel later than PyTorch's LocalResponseNorm, which the network computes",
        lrn.size
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(opset: i64, n_classes: usize) -> ExportOptions {
        ExportOptions {
            opset,
            class_names: (0..n_classes).map(|i| format!("class {i}")).collect(),
            class_names_source: "test".into(),
            input_side_source: "test".into(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn opsets_outside_the_range_are_refused_naming_the_range() {
        let model =
            Dexpression::new(DexpressionConfig::with(3, 32), 1, &Device::Cpu).expect("network");
        for opset in [OPSETS.start() - 1, OPSETS.end() + 1, 0, -3] {
            let error = model
                .to_onnx(&options(opset, 3))
                .expect_err("outside the range");
            let message = error.to_string();
            let range = format!("{} to {}", OPSETS.start(), OPSETS.end());
            assert!(
                message.contains(&range) && message.contains(&opset.to_string()),
                "{message}"
            );
        }
    }

    #[test]
    fn the_model_declares_a_symbolic_batch_and_the_decomposition_below_opset_17() {
        let model =
            Dexpression::new(DexpressionConfig::with(3, 32), 1, &Device::Cpu).expect("network");
        for opset in OPSETS {
            let bytes = model.to_onnx(&options(opset, 3)).expect("exported");
            let proto = ModelProto::parse_from_bytes(&bytes).expect("parses back");
            assert_eq!(proto.opset_import[0].version, opset);
            let graph = proto.graph.as_ref().expect("a graph");
            let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
            assert_eq!(
                ops.contains(&"LayerNormalization"),
                opset >= LAYER_NORMALIZATION_OPSET,
                "opset {opset}: {ops:?}"
            );
            assert_eq!(
                ops.contains(&"ReduceMean"),
                opset < LAYER_NORMALIZATION_OPSET,
                "opset {opset}: {ops:?}"
            );
            let input = &graph.input[0];
            let Some(type_proto::Value::TensorType(tensor)) = &input.type_.value else {
                panic!("the input is a tensor");
            };
            let first = &tensor.shape.dim[0].value;
            assert_eq!(first, &Some(dimension::Value::DimParam(BATCH_DIM.into())));
            let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
            assert_eq!(names, [LOG_PROBABILITIES, PROBABILITIES]);
        }
    }

    #[test]
    fn wrong_class_names_and_our_metadata_keys_are_refused() {
        let model =
            Dexpression::new(DexpressionConfig::with(3, 32), 1, &Device::Cpu).expect("network");
        let error = model
            .to_onnx(&options(DEFAULT_OPSET, 4))
            .expect_err("4 names for 3 classes");
        assert!(error.to_string().contains("4 class names"), "{error}");
        let mut clashing = options(DEFAULT_OPSET, 3);
        clashing
            .metadata
            .insert(keys::INPUT_SIDE.into(), "64".into());
        let error = model.to_onnx(&clashing).expect_err("our own key");
        assert!(error.to_string().contains(keys::INPUT_SIDE), "{error}");
    }
}
