//! Weights on disk: atomic safetensors writes and import of the PyTorch port's checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::dexpression::{infer_config, Dexpression, NUM_BATCHES_TRACKED};
use crate::torch_pickle::StorageType;
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

/// The most bytes of tensor data an import reads: the port's network at 224 pixels holds about
/// 8 MB; a network with an input side of 4,096 about 600 MB.
pub const MAX_CHECKPOINT_TENSOR_BYTES: u64 = 1 << 30;

/// The largest `data.pkl` an import parses; the port's is 7 KB.
pub(crate) const MAX_PICKLE_BYTES: u64 = 16 << 20;

/// The most entries a checkpoint's zip may list; the port's has 89.
pub(crate) const MAX_CHECKPOINT_ENTRIES: usize = 100_000;

/// Converts a checkpoint of the PyTorch port into our safetensors weights.
///
/// Accepts the port's per-epoch `.tar` files (a zip pickle of `{"fold", "epoch", "model":
/// state_dict, "model_opt"}`), a bare `state_dict` saved with `torch.save`, and either with the
/// `module.` prefix that `nn.DataParallel` adds.
///
/// The checkpoint is treated as untrusted: its pickle is parsed by a reader that runs no code and
/// understands only tensor records, and every tensor's name, dtype, shape, layout and byte size is
/// checked against the network and the zip's entries before any tensor data is read (at most
/// [`MAX_CHECKPOINT_TENSOR_BYTES`]); values must be finite. Nothing is written unless all checks
/// pass.
pub fn import_torch(checkpoint: &Path, output: &Path) -> Result<ImportSummary> {
    let (tensors, stripped_module_prefix) = read_torch_state_dict(checkpoint)?;
    let config = infer_config(&tensors, checkpoint, None)?;
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

/// Reads and checks the `state_dict` of a `torch.save` zip; returns the tensors (names without a
/// DataParallel `module.` prefix) and whether that prefix was removed.
fn read_torch_state_dict(checkpoint: &Path) -> Result<(HashMap<String, Tensor>, bool)> {
    let bad = |message: String| Error::Weights {
        path: checkpoint.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(checkpoint).map_err(|err| {
        bad(format!(
            "cannot open: {err}; expected a checkpoint written by torch.save"
        ))
    })?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|err| {
        bad(format!(
            "not a zip checkpoint ({err}); expected a file written by torch.save (torch >= 1.6); an older one must be re-saved with a recent torch"
        ))
    })?;
    if archive.len() > MAX_CHECKPOINT_ENTRIES {
        return Err(bad(format!(
            "the zip lists {} entries, more than the limit of {MAX_CHECKPOINT_ENTRIES}; a DeXpression checkpoint has about 90",
            archive.len()
        )));
    }
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|err| bad(format!("unreadable zip entry names: {err}")))?;
    let pickles: Vec<&String> = names
        .iter()
        .filter(|name| *name == "data.pkl" || name.ends_with("/data.pkl"))
        .collect();
    let pickle_name = match pickles.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(bad(
                "holds no data.pkl; is this a checkpoint written by torch.save?".into(),
            ))
        }
        _ => {
            return Err(bad(format!(
                "holds {} data.pkl records; a torch.save checkpoint has one",
                pickles.len()
            )))
        }
    };
    let prefix = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    let zip_error =
        |name: &str, err: &dyn std::fmt::Display| bad(format!("zip entry `{name}`: {err}"));

    let byteorder = format!("{prefix}byteorder");
    if names.contains(&byteorder) {
        let order =
            read_entry(&mut archive, &byteorder, 16).map_err(|e| zip_error(&byteorder, &e))?;
        if order.trim_ascii() != b"little" {
            return Err(bad(format!(
                "its tensors are stored {}-endian; only little-endian checkpoints are read",
                String::from_utf8_lossy(order.trim_ascii())
            )));
        }
    }

    let pickle = read_entry(&mut archive, &pickle_name, MAX_PICKLE_BYTES)
        .map_err(|e| zip_error(&pickle_name, &e))?;
    let root = crate::torch_pickle::parse(&pickle).map_err(bad)?;
    let mut records = crate::torch_pickle::tensor_table(&root).map_err(|message| {
        bad(format!(
            "{message}; is this a DeXpression checkpoint of the PyTorch port?"
        ))
    })?;
    if records.is_empty() {
        return Err(bad(
            "holds no tensors under `model` nor at the top level; is this a DeXpression checkpoint of the PyTorch port?".into(),
        ));
    }
    let stripped_module_prefix = records.iter().all(|r| r.name.starts_with("module."));
    if stripped_module_prefix {
        for record in &mut records {
            record.name.drain(.."module.".len());
        }
    }

    // Everything the file declares is checked against the network before anything is read.
    let shape_of = |name: &str| {
        records.iter().find(|r| r.name == name).map(|r| {
            r.shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
                .collect()
        })
    };
    let config = crate::dexpression::infer_config_from_shapes(shape_of, checkpoint, None)?;
    let expected = crate::dexpression::expected_shapes(&config);
    for record in &records {
        if record.name != NUM_BATCHES_TRACKED
            && !expected.iter().any(|(name, _)| *name == record.name)
        {
            return Err(bad(format!(
                "holds tensor `{}`, which the DeXpression network does not have; is this a DeXpression checkpoint of the PyTorch port?",
                record.name
            )));
        }
        if records.iter().filter(|r| r.name == record.name).count() > 1 {
            return Err(bad(format!("holds tensor `{}` twice", record.name)));
        }
    }
    let mut storages: HashMap<String, (StorageType, u64)> = HashMap::new();
    for record in &records {
        let tensor_error = |message: String| bad(format!("tensor `{}`: {message}", record.name));
        let expected_shape: Vec<u64> = match expected.iter().find(|(name, _)| *name == record.name)
        {
            Some((_, shape)) => shape.iter().map(|&d| d as u64).collect(),
            None => Vec::new(),
        };
        if record.shape != expected_shape {
            return Err(tensor_error(format!(
                "declared shape {:?}, but the network ({} classes, input {}) needs {expected_shape:?}",
                record.shape, config.n_classes, config.image_size
            )));
        }
        let wants_float = record.name != NUM_BATCHES_TRACKED;
        if record.storage_type.is_float() != wants_float {
            return Err(tensor_error(format!(
                "stored as {:?}, expected {}",
                record.storage_type,
                if wants_float {
                    "floating point"
                } else {
                    "an integer"
                }
            )));
        }
        let elements: u64 = expected_shape.iter().product();
        let mut row_major = 1u64;
        for (dim, &stride) in expected_shape.iter().zip(&record.stride).rev() {
            if *dim > 1 && stride != row_major {
                return Err(tensor_error(format!(
                    "strides {:?} are not those of a contiguous tensor; save it after `.contiguous()`",
                    record.stride
                )));
            }
            row_major *= dim;
        }
        if record
            .offset
            .checked_add(elements)
            .is_none_or(|end| end > record.storage_len)
        {
            return Err(tensor_error(format!(
                "{elements} elements from offset {} run past its storage of {} elements",
                record.offset, record.storage_len
            )));
        }
        match storages.get(&record.storage_key) {
            Some(&(kind, len)) if kind != record.storage_type || len != record.storage_len => {
                return Err(tensor_error(format!(
                    "storage `{}` is declared twice with different types or lengths",
                    record.storage_key
                )))
            }
            _ => {
                storages.insert(
                    record.storage_key.clone(),
                    (record.storage_type, record.storage_len),
                );
            }
        }
    }
    let mut total_bytes = 0u64;
    for (key, (kind, len)) in &storages {
        let bytes = len.checked_mul(kind.size() as u64).unwrap_or(u64::MAX);
        total_bytes = total_bytes.saturating_add(bytes);
        let entry_name = format!("{prefix}data/{key}");
        let entry_size = archive
            .by_name(&entry_name)
            .map_err(|_| {
                bad(format!(
                    "the pickle names storage `{key}`, but the zip has no `{entry_name}`"
                ))
            })?
            .size();
        if entry_size != bytes {
            return Err(bad(format!(
                "storage `{key}` is declared as {len} {kind:?} elements ({bytes} bytes), but its zip entry holds {entry_size} bytes"
            )));
        }
    }
    if total_bytes > MAX_CHECKPOINT_TENSOR_BYTES {
        return Err(bad(format!(
            "declares {total_bytes} bytes of tensors, more than the limit of {MAX_CHECKPOINT_TENSOR_BYTES}"
        )));
    }

    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for (key, (kind, len)) in &storages {
        let entry_name = format!("{prefix}data/{key}");
        let bytes = read_entry(&mut archive, &entry_name, len * kind.size() as u64)
            .map_err(|e| zip_error(&entry_name, &e))?;
        if bytes.len() as u64 != len * kind.size() as u64 {
            return Err(zip_error(
                &entry_name,
                &"shorter than its size in the zip directory",
            ));
        }
        data.insert(key.clone(), bytes);
    }
    let mut tensors = HashMap::with_capacity(records.len());
    for record in records {
        let size = record.storage_type.size();
        let elements: usize = record.shape.iter().product::<u64>() as usize;
        let start = record.offset as usize * size;
        let bytes = &data[&record.storage_key][start..start + elements * size];
        let shape: Vec<usize> = record.shape.iter().map(|&d| d as usize).collect();
        let tensor =
            Tensor::from_raw_buffer(bytes, record.storage_type.dtype(), &shape, &Device::Cpu)?;
        tensors.insert(record.name, tensor);
    }
    Ok((tensors, stripped_module_prefix))
}

/// Reads a zip entry whole, refusing one whose size exceeds `limit`; reading to the end lets the
/// zip reader check the CRC.
fn read_entry<R: std::io::Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let entry = archive.by_name(name).map_err(|err| err.to_string())?;
    if entry.size() > limit {
        return Err(format!(
            "declares {} bytes, more than the {limit} this record may hold",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| err.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("holds more than the {limit} bytes it may"));
    }
    Ok(bytes)
}

/// Reads a safetensors file; a file that is not one is an error that says how to convert a
/// PyTorch checkpoint, and a missing one says only that.
pub(crate) fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|err| Error::Weights {
        path: path.to_path_buf(),
        message: if path.exists() {
            format!(
                "cannot read as safetensors ({}); a PyTorch `.tar`/`.pt` checkpoint must first be converted with `import_torch`",
                crate::error::one_line(&err)
            )
        } else {
            "no such file".to_string()
        },
    })
}

/// A network parameter as f32, refusing integer tensors and non-finite values, which a damaged or
/// crafted file could hold and which would silently poison every prediction.
pub(crate) fn checked_f32(tensor: &Tensor, name: &str, source: &Path) -> Result<Tensor> {
    if !tensor.dtype().is_float() {
        return Err(Error::Weights {
            path: source.to_path_buf(),
            message: format!(
                "tensor `{name}` has dtype {:?}; a network parameter must be floating point",
                tensor.dtype()
            ),
        });
    }
    let tensor = tensor.to_dtype(DType::F32)?;
    check_finite(&tensor, name, source)?;
    Ok(tensor)
}

/// Refuses a tensor holding NaN or an infinity, naming it and the first bad element.
pub(crate) fn check_finite(tensor: &Tensor, name: &str, source: &Path) -> Result<()> {
    let values = tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Weights {
            path: source.to_path_buf(),
            message: format!(
                "tensor `{name}` holds {value} at element {index}; weights must be finite (was the run diverging when this was saved?)"
            ),
        });
    }
    Ok(())
}

/// A one-element integer counter (`num_batches_tracked`, Adam's step), refusing other dtypes,
/// shapes and negative values.
pub(crate) fn checked_count(tensor: &Tensor, name: &str, source: &Path) -> Result<i64> {
    let bad = |message: String| Error::Weights {
        path: source.to_path_buf(),
        message: format!("tensor `{name}` {message}"),
    };
    if !tensor.dtype().is_int() {
        return Err(bad(format!(
            "has dtype {:?}; a counter must be an integer",
            tensor.dtype()
        )));
    }
    if tensor.elem_count() != 1 {
        return Err(bad(format!(
            "has shape {:?}; a counter holds one value",
            tensor.dims()
        )));
    }
    let value = tensor
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?[0];
    if value < 0 {
        return Err(bad(format!("is {value}; a counter cannot be negative")));
    }
    Ok(value)
}

/// Writes named tensors as safetensors through a uniquely named temporary file beside `path`,
/// synced and renamed into place only once complete (`dexpression_fsio`).
pub(crate) fn save_atomic(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let bytes = crate::dexpression::serialize_with_metadata(tensors, &Default::default())?;
    write_atomic(path, &bytes)
}

/// `bytes` into `path` by `dexpression_fsio::write_bytes`, its error as this crate's.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    dexpression_fsio::write_bytes(path, bytes).map_err(|err| Error::Weights {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}
