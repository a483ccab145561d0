//! The DeXpression network (Burkert, Trier, Afzal, Dengel and Liwicki, "DeXpression: Deep
//! Convolutional Neural Network for Expression Recognition", 2015) in candle, layer for layer the
//! PyTorch port's (rdgozum/dexpression-pytorch), with its `state_dict` names so that weights move
//! between the two by name.
//!
//! The crate holds the network ([`Dexpression`], configured by [`DexpressionConfig`]), plain Adam
//! ([`Adam`]), safetensors weights, the import of the port's checkpoints ([`import_torch`]) and
//! Grad-CAM ([`GradCam`]). The ops where candle 0.11 falls short live in the `dexpression-kernels`
//! crate ([`kernels`]), whose process-wide choices (reference path, vector extensions, allocator)
//! are the program's to make: this crate makes none of them. It knows nothing of CK+, folds or
//! training schedules: those live in the dataset and train crates.
//!
//! ```
//! use candle_core::{Device, ModuleT, Tensor};
//! use dexpression_model::{Dexpression, DexpressionConfig};
//!
//! # fn main() -> dexpression_model::Result<()> {
//! // A small input side keeps the example fast; the port uses 224.
//! let config = DexpressionConfig::with(7, 64);
//! let model = Dexpression::new(config, 42, &Device::Cpu)?;
//! let faces = Tensor::zeros((2, 1, 64, 64), candle_core::DType::F32, &Device::Cpu)?;
//! let log_probabilities = model.forward_t(&faces, false)?;
//! assert_eq!(log_probabilities.dims(), &[2, 7]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod classifier;
mod config;
mod device;
mod dexpression;
mod error;
mod flops;
mod gradcam;
mod input;
#[cfg(feature = "onnx")]
pub mod onnx;
mod optim;
mod torch_pickle;
mod weights;

pub use classifier::{port_class_names, Classifier, Prediction};
pub use config::{DexpressionConfig, LrnConstants, Variant, WeightInit};
pub use device::{device_name, parse_device};
pub use dexpression::{
    serialize_with_metadata, Dexpression, NamedVar, WeightsMetadata, NUM_BATCHES_TRACKED,
    POOL_KEEP, POOL_REDUCE,
};
/// The kernels behind the network (re-exported: their switches are the caller's to set).
pub use dexpression_kernels as kernels;
pub use error::{CandleError, Error, Result};
pub use gradcam::{Explanation, GradCam};
pub use input::batch_from_pixels;
pub use optim::{Adam, AdamConfig};
pub use weights::{import_torch, ImportSummary, MAX_CHECKPOINT_TENSOR_BYTES};

/// Re-exported so that users need no direct candle dependency for the basics.
pub use candle_core;

/// The README's example, compiled and run with the doc tests so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
