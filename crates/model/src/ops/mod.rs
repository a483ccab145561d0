//! The network's operations, behind plain functions so that faster kernels can replace them
//! without touching the network.
//!
//! Each op here exists because candle 0.11's own version falls short for DeXpression:
//! - [`max_pool2d`]: candle's has no padding and no backward when kernel and stride differ;
//! - [`layer_norm`]: candle-nn's fused LayerNorm has no backward (gradients silently stop) and
//!   normalises only the last dimension, where the port normalises over `[C, H, W]`;
//! - [`conv2d`]: the place where a faster CPU convolution plugs in.

mod conv;
mod layer_norm;
mod max_pool;

pub use conv::conv2d;
pub use layer_norm::layer_norm;
pub use max_pool::{max_pool2d, Pool2d};
