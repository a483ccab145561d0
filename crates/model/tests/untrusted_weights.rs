//! Weights files are untrusted input: crafted or damaged PyTorch checkpoints, safetensors files
//! and Adam states are refused with an error naming the file, never a panic, and nothing is
//! allocated because a file merely declares it.
//!
//! The checkpoints are written here, in the format `torch.save` uses (a zip holding a protocol-2
//! pickle and one raw little-endian record per storage), so the tests need no PyTorch fixture.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dexpression_model::{
    import_torch, Adam, AdamConfig, Dexpression, DexpressionConfig, Error, ImportSummary,
    NUM_BATCHES_TRACKED,
};
use proptest::prelude::*;

/// A small network keeps checkpoints to a few hundred KB.
fn small_config() -> DexpressionConfig {
    DexpressionConfig::with(7, 32)
}

/// One `_rebuild_tensor_v2` entry of a state_dict.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    storage_class: &'static str,
    storage_key: String,
    storage_len: u64,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

fn push_int(p: &mut Vec<u8>, n: u64) {
    if n < 256 {
        p.extend_from_slice(&[b'K', n as u8]);
    } else if n < 65_536 {
        p.push(b'M');
        p.extend_from_slice(&(n as u16).to_le_bytes());
    } else if n <= i32::MAX as u64 {
        p.push(b'J');
        p.extend_from_slice(&(n as i32).to_le_bytes());
    } else {
        p.extend_from_slice(&[0x8a, 8]);
        p.extend_from_slice(&n.to_le_bytes());
    }
}

fn push_str(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn push_int_tuple(p: &mut Vec<u8>, values: &[u64]) {
    p.push(b'(');
    for &v in values {
        push_int(p, v);
    }
    p.push(b't');
}

/// The rebuild call of one tensor, as torch writes it.
fn push_tensor(p: &mut Vec<u8>, entry: &Entry) {
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    push_str(p, "storage");
    p.extend_from_slice(format!("ctorch\n{}\n", entry.storage_class).as_bytes());
    push_str(p, &entry.storage_key);
    push_str(p, "cpu");
    push_int(p, entry.storage_len);
    p.extend_from_slice(b"tQ");
    push_int(p, entry.offset);
    push_int_tuple(p, &entry.shape);
    push_int_tuple(p, &entry.stride);
    p.push(0x89);
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    p.extend_from_slice(b"tR");
}

/// `{"fold": 1, "epoch": 25, "model": OrderedDict(entries)}` in protocol 2, as the port saves.
fn pickle(entries: &[Entry]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    push_str(&mut p, "fold");
    push_int(&mut p, 1);
    push_str(&mut p, "epoch");
    push_int(&mut p, 25);
    push_str(&mut p, "model");
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
    for entry in entries {
        push_str(&mut p, &entry.name);
        push_tensor(&mut p, entry);
    }
    p.extend_from_slice(b"uu.");
    p
}

/// A torch.save zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
fn write_checkpoint(path: &Path, pickle: &[u8], storages: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), stored)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn le_bytes(tensor: &Tensor) -> Vec<u8> {
    match tensor.dtype() {
        DType::I64 => tensor
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => tensor
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    }
}

fn row_major(shape: &[u64]) -> Vec<u64> {
    let mut stride = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    stride
}

/// The raw record of each storage, by key.
type Storages = Vec<(String, Vec<u8>)>;

/// The entries and storages of network seed 5, made once for the property tests.
fn cached_checkpoint() -> &'static (Vec<Entry>, Storages) {
    static CHECKPOINT: std::sync::OnceLock<(Vec<Entry>, Storages)> = std::sync::OnceLock::new();
    CHECKPOINT.get_or_init(|| {
        let (entries, storages, _) = network_checkpoint(5);
        (entries, storages)
    })
}

/// The entries and storages of a real, freshly initialised small network.
fn network_checkpoint(seed: u64) -> (Vec<Entry>, Storages, Dexpression) {
    let model = Dexpression::new(small_config(), seed, &Device::Cpu).unwrap();
    let mut entries = Vec::new();
    let mut storages = Vec::new();
    for (idx, (name, tensor)) in model.state_dict().unwrap().into_iter().enumerate() {
        let shape: Vec<u64> = tensor.dims().iter().map(|&d| d as u64).collect();
        let is_count = tensor.dtype() == DType::I64;
        entries.push(Entry {
            name,
            storage_class: if is_count {
                "LongStorage"
            } else {
                "FloatStorage"
            },
            storage_key: idx.to_string(),
            storage_len: tensor.elem_count() as u64,
            offset: 0,
            stride: row_major(&shape),
            shape,
        });
        storages.push((idx.to_string(), le_bytes(&tensor)));
    }
    (entries, storages, model)
}

/// The import of a checkpoint called `file_name` holding `pickle` and `storages`, written into
/// a fresh folder (kept alive by the returned guard), with where it writes its output.
fn import_written(
    file_name: &str,
    pickle: &[u8],
    storages: &[(String, Vec<u8>)],
) -> (
    tempfile::TempDir,
    PathBuf,
    dexpression_model::Result<ImportSummary>,
) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join(file_name);
    write_checkpoint(&checkpoint, pickle, storages);
    let out = dir.path().join("out.safetensors");
    let imported = import_torch(&checkpoint, &out);
    (dir, out, imported)
}

fn import_err(entries: &[Entry], storages: &[(String, Vec<u8>)]) -> (Error, String) {
    let (_dir, out, imported) = import_written("crafted.tar", &pickle(entries), storages);
    let err = imported.expect_err("a crafted checkpoint is refused");
    assert!(!out.exists(), "nothing is written for a refused checkpoint");
    let message = err.to_string();
    assert!(message.contains("crafted.tar"), "names the file: {message}");
    assert!(!message.contains('\n'), "one line: {message}");
    (err, message)
}

#[test]
fn a_checkpoint_written_like_torch_save_imports_exactly() {
    let (entries, storages, model) = network_checkpoint(3);
    let (_dir, out, imported) = import_written("cnn-fold1.tar", &pickle(&entries), &storages);
    let summary = imported.unwrap();
    assert_eq!(summary.config, small_config());
    assert_eq!(summary.n_tensors, entries.len());
    let imported = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    for (name, tensor) in model.state_dict().unwrap() {
        assert_eq!(
            le_bytes(&imported[&name]),
            le_bytes(&tensor),
            "{name} survives the import bit for bit"
        );
    }
}

#[test]
fn a_one_element_rebuild_tuple_is_an_error_not_a_panic() {
    // The input that made candle's pickle reader panic ("removal index (is 3) should be < len").
    let (entries, storages, _) = network_checkpoint(1);
    let mut p = vec![0x80, 2, b'}', b'('];
    push_str(&mut p, "model");
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
    push_str(&mut p, &entries[0].name);
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
    push_int(&mut p, 0);
    p.extend_from_slice(&[0x85, b'R', b'u', b'u', b'.']);
    let (_dir, _, imported) = import_written("crafted.tar", &p, &storages);
    let message = imported.unwrap_err().to_string();
    assert!(
        message.contains("crafted.tar")
            && message.contains("conv1.weight")
            && message.contains("_rebuild_tensor_v2 with 1 arguments"),
        "{message}"
    );
}

#[test]
fn a_huge_declared_shape_is_refused_before_anything_is_read() {
    let (mut entries, storages, _) = network_checkpoint(1);
    let fc = entries.iter_mut().find(|e| e.name == "fc.weight").unwrap();
    fc.shape[0] = 1 << 40;
    fc.storage_len = fc.shape[0] * fc.shape[1];
    fc.stride = row_major(&fc.shape);
    let (_, message) = import_err(&entries, &storages);
    // The class count read from fc.weight makes fc.bias the wrong shape: refused on the
    // declarations alone, before 2^40 x 272 floats could be allocated.
    assert!(
        message.contains("fc.bias") && message.contains("1099511627776 classes"),
        "{message}"
    );
}

#[test]
fn a_storage_shorter_than_declared_is_refused() {
    let (entries, mut storages, _) = network_checkpoint(1);
    storages[0].1.truncate(100);
    let (_, message) = import_err(&entries, &storages);
    assert!(
        message.contains("storage `0`") && message.contains("its zip entry holds 100 bytes"),
        "{message}"
    );
}

#[test]
fn a_tensor_running_past_its_storage_is_refused() {
    let (mut entries, storages, _) = network_checkpoint(1);
    entries[1].offset = 5;
    let (_, message) = import_err(&entries, &storages);
    assert!(
        message.contains(&entries[1].name) && message.contains("run past its storage"),
        "{message}"
    );
}

#[test]
fn a_non_finite_weight_is_refused_naming_the_tensor() {
    let (entries, mut storages, _) = network_checkpoint(1);
    let idx = entries
        .iter()
        .position(|e| e.name == "conv2b.bias")
        .unwrap();
    storages[idx].1[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let (_, message) = import_err(&entries, &storages);
    assert!(
        message.contains("conv2b.bias") && message.contains("NaN at element 2"),
        "{message}"
    );
}

#[test]
fn an_unknown_tensor_is_refused() {
    let (mut entries, mut storages, _) = network_checkpoint(1);
    let mut extra = entries[1].clone();
    extra.name = "decoder.weight".into();
    extra.storage_key = "extra".into();
    storages.push(("extra".into(), storages[1].1.clone()));
    entries.push(extra);
    let (_, message) = import_err(&entries, &storages);
    assert!(message.contains("`decoder.weight`"), "{message}");
}

#[test]
fn an_integer_weight_is_refused() {
    let (mut entries, mut storages, _) = network_checkpoint(1);
    let idx = entries.iter().position(|e| e.name == "fc.bias").unwrap();
    entries[idx].storage_class = "LongStorage";
    storages[idx].1 = vec![0u8; 8 * entries[idx].storage_len as usize];
    let (_, message) = import_err(&entries, &storages);
    assert!(
        message.contains("fc.bias") && message.contains("floating point"),
        "{message}"
    );
}

#[test]
fn a_file_that_is_not_a_zip_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("notes.tar");
    std::fs::write(&checkpoint, b"just some text, not a checkpoint").unwrap();
    let err = import_torch(&checkpoint, &dir.path().join("out.safetensors")).unwrap_err();
    assert!(err.to_string().contains("not a zip checkpoint"), "{err}");
}

/// An edit of a state: the tensor called `target` replaced by `make(tensor)`, the others kept.
fn replacing(
    target: &'static str,
    make: impl Fn(Tensor) -> Tensor,
) -> impl Fn(&str, Tensor) -> Tensor {
    move |name, tensor| {
        if name == target {
            make(tensor)
        } else {
            tensor
        }
    }
}

/// Each tensor of `state` after `edit`, by name.
fn edited(
    state: Vec<(String, Tensor)>,
    edit: impl Fn(&str, Tensor) -> Tensor,
) -> HashMap<String, Tensor> {
    state
        .into_iter()
        .map(|(name, tensor)| {
            let tensor = edit(&name, tensor);
            (name, tensor)
        })
        .collect()
}

/// The error of loading a fresh small network's weights, edited by `edit` and saved as
/// `w.safetensors`.
fn load_err_of_edited(edit: impl Fn(&str, Tensor) -> Tensor) -> Error {
    let model = Dexpression::new(small_config(), 1, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&edited(model.state_dict().unwrap(), edit), &path).unwrap();
    match Dexpression::load(&path, &Device::Cpu) {
        Ok(_) => panic!("{} should be refused", path.display()),
        Err(err) => err,
    }
}

#[test]
fn safetensors_with_an_infinite_weight_are_refused() {
    let err = load_err_of_edited(replacing("lrn1.bias", |tensor| {
        (tensor.ones_like().unwrap() * f64::INFINITY).unwrap()
    }));
    assert!(
        err.to_string().contains("w.safetensors") && err.to_string().contains("lrn1.bias"),
        "{err}"
    );
}

#[test]
fn safetensors_with_an_integer_weight_are_refused() {
    let err = load_err_of_edited(replacing("fc.bias", |tensor| {
        tensor.to_dtype(DType::U8).unwrap()
    }));
    assert!(
        err.to_string().contains("fc.bias") && err.to_string().contains("floating point"),
        "{err}"
    );
}

#[test]
fn a_negative_batch_count_is_refused() {
    let err = load_err_of_edited(replacing(NUM_BATCHES_TRACKED, |_| {
        Tensor::new(-3i64, &Device::Cpu).unwrap()
    }));
    assert!(err.to_string().contains("cannot be negative"), "{err}");
}

fn adam_with_state(edit: impl Fn(&str, Tensor) -> Tensor) -> (dexpression_model::Result<()>, Adam) {
    let model = Dexpression::new(small_config(), 1, &Device::Cpu).unwrap();
    let adam = Adam::new(model.trainable_vars(), AdamConfig::default()).unwrap();
    let state = edited(adam.state().unwrap(), edit);
    let mut fresh = Adam::new(model.trainable_vars(), AdamConfig::default()).unwrap();
    let result = fresh.load_state(&state, Path::new("adam.safetensors"));
    (result, fresh)
}

#[test]
fn adam_state_with_a_negative_second_moment_is_refused() {
    let (result, adam) = adam_with_state(|name, tensor| {
        if name == "adam.v.fc.bias" {
            (tensor.ones_like().unwrap() * -1.0).unwrap()
        } else if name == "adam.step" {
            Tensor::new(4i64, &Device::Cpu).unwrap()
        } else {
            tensor
        }
    });
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("adam.v.fc.bias") && message.contains("cannot be negative"),
        "{message}"
    );
    assert_eq!(
        adam.step_count(),
        0,
        "a refused state leaves the optimiser as it was"
    );
}

#[test]
fn adam_state_with_nan_or_a_huge_step_is_refused() {
    let (result, _) = adam_with_state(replacing("adam.m.conv1.weight", |tensor| {
        (tensor.ones_like().unwrap() * f64::NAN).unwrap()
    }));
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("adam.m.conv1.weight"));
    let (result, _) = adam_with_state(replacing("adam.step", |_| {
        Tensor::new(i64::MAX, &Device::Cpu).unwrap()
    }));
    assert!(result.unwrap_err().to_string().contains("adam.step"));
}

/// Bytes of a valid pickle, and of one with a few bytes changed, cut or inserted.
fn mutated(base: &[u8]) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    let base = base.to_vec();
    prop::collection::vec((0..len, any::<u8>(), 0u8..4), 1..6).prop_map(move |edits| {
        let mut bytes = base.clone();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.truncate(at),
                2 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at.min(bytes.len() - 1));
                }
            }
            if bytes.is_empty() {
                bytes.push(byte);
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A damaged pickle header gives an error or a valid import, never a panic.
    #[test]
    fn a_damaged_pickle_never_panics(bytes in mutated(&pickle(&cached_checkpoint().0))) {
        let (entries, storages) = cached_checkpoint();
        let (_dir, out, imported) = import_written("damaged.tar", &bytes, storages);
        match imported {
            Ok(summary) => {
                prop_assert!(out.is_file());
                prop_assert_eq!(summary.n_tensors, entries.len());
            }
            Err(err) => {
                prop_assert!(!out.exists());
                prop_assert!(err.to_string().contains("damaged.tar"), "{}", err);
            }
        }
    }

    /// Arbitrary bytes as a pickle: an error naming the file, never a panic.
    #[test]
    fn arbitrary_pickle_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (_dir, _, imported) = import_written("random.tar", &bytes, &[]);
        let err = imported.unwrap_err();
        prop_assert!(err.to_string().contains("random.tar"), "{}", err);
    }
}
