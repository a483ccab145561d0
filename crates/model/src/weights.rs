//! Weights on disk: atomic safetensors writes and import of the PyTorch port's checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::dexpression::{infer_config, Dexpression};
use crate::{Error, Result};

/// What [`import_torch`] converted.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The checkpoint that was read.
    pub source: PathBuf,
    /// The safetensors file written.
    pub output: PathBuf,
    /// Number of tensors written.
    pub n_tensors: usize,
    /// The network configuration read from the tensor shapes.
    pub config: crate::DexpressionConfig,
    /// Whether a DataParallel `module.` prefix was removed from the names.
    pub stripped_module_prefix: bool,
}

/// Converts a checkpoint of the PyTorch port into our safetensors weights.
///
/// Accepts the port's per-epoch `.tar` files (a zip pickle of `{"fold", "epoch", "model":
/// state_dict, "model_opt"}`), a bare `state_dict` saved with `torch.save`, and either with the
/// `module.` prefix that `nn.DataParallel` adds. The tensors are checked against the network
/// (names and shapes) before anything is written.
pub fn import_torch(checkpoint: &Path, output: &Path) -> Result<ImportSummary> {
    let unreadable = |message: String| Error::Weights {
        path: checkpoint.to_path_buf(),
        message,
    };
    if !checkpoint.is_file() {
        return Err(unreadable("no such file".into()));
    }
    // The port nests the state_dict under "model"; `read_all` alone would return nothing for it.
    let nested =
        candle_core::pickle::read_all_with_key(checkpoint, Some("model")).unwrap_or_default();
    let tensors = if nested.is_empty() {
        candle_core::pickle::read_all_with_key(checkpoint, None).map_err(|err| {
            unreadable(format!(
                "not a readable PyTorch checkpoint ({err}); expected a file written by torch.save"
            ))
        })?
    } else {
        nested
    };
    if tensors.is_empty() {
        return Err(unreadable(
            "holds no tensors under `model` nor at the top level; is this a DeXpression checkpoint of the PyTorch port?".into(),
        ));
    }
    let stripped_module_prefix = tensors.iter().all(|(name, _)| name.starts_with("module."));
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, tensor)| {
            let name = if stripped_module_prefix {
                name["module.".len()..].to_string()
            } else {
                name
            };
            (name, tensor)
        })
        .collect();
    let config = infer_config(&tensors, checkpoint)?;
    let model = Dexpression::from_tensors(config.clone(), tensors, checkpoint, &Device::Cpu)?;
    let state = model.state_dict()?;
    save_atomic(&state, output)?;
    Ok(ImportSummary {
        source: checkpoint.to_path_buf(),
        output: output.to_path_buf(),
        n_tensors: state.len(),
        config,
        stripped_module_prefix,
    })
}

/// Writes named tensors as safetensors through a temporary file in the same directory, renamed
/// into place only once complete.
pub fn save_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let io_error = |err: std::io::Error| Error::Weights {
        path: path.to_path_buf(),
        message: format!("cannot write: {err}"),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(name, tensor)| Ok((name.clone(), tensor.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, &tmp).map_err(|err| Error::Weights {
        path: tmp.clone(),
        message: format!("cannot write: {err}"),
    })?;
    std::fs::rename(&tmp, path).map_err(io_error)
}
