//! The exported ONNX model, read back and run by tract (a Rust ONNX engine that shares no code
//! with ours), computes what the network's evaluation forward computes: on several random
//! networks (every tensor random, BatchNorm statistics included), several images, batch 1 and a
//! larger batch, with `LayerNormalization` and with its decomposition, for the port's network and
//! the paper's (its `LRN` node and its pools that round up); and on the PyTorch port's checkpoint
//! it gives PyTorch's outputs. Then what `export_weights` does with the files a user
//! may hand it. Run with `cargo test -p dexpression-model --release --features tract --test
//! onnx_export`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, ModuleT, Tensor};
use dexpression_model::onnx::{self, keys, ExportSummary, LOG_PROBABILITIES, PROBABILITIES};
use dexpression_model::{
    batch_from_pixels, import_torch, Dexpression, DexpressionConfig, LrnConstants, Variant,
};
use onnx_protobuf::{Message, ModelProto};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::{tvec, Framework, InferenceModelExt, IntoTValue};

/// How far the engines may differ on a log-probability: float32 roundings of different
/// summation orders, far below what any wrong layer gives.
const TOLERANCE: f32 = 1e-4;

/// An opset on each side of the `LayerNormalization` boundary, and the ends of the range.
fn opsets() -> Vec<i64> {
    let boundary = onnx::LAYER_NORMALIZATION_OPSET;
    let mut opsets = vec![
        *onnx::OPSETS.start(),
        boundary - 1,
        boundary,
        *onnx::OPSETS.end(),
    ];
    opsets.dedup();
    opsets
}

/// A network whose every tensor is random: weights around PyTorch's initial scale, LayerNorm
/// and BatchNorm affines away from 1 and 0, running statistics away from 0 and 1, so that a
/// missing or misplaced layer shows.
fn random_network(config: DexpressionConfig, seed: u64) -> Dexpression {
    let model = Dexpression::new(config, seed, &Device::Cpu).expect("network");
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    for named in model.named_vars() {
        let tensor = named.var.as_tensor();
        let count = tensor.elem_count();
        let values: Vec<f32> = match named.name.as_str() {
            "lrn1.weight" | "batch_normalization.weight" => {
                (0..count).map(|_| rng.random_range(0.5..1.5)).collect()
            }
            "batch_normalization.running_var" => {
                (0..count).map(|_| rng.random_range(0.2..3.0)).collect()
            }
            "lrn1.bias" | "batch_normalization.bias" | "batch_normalization.running_mean" => {
                (0..count).map(|_| rng.random_range(-0.5..0.5)).collect()
            }
            _ => continue,
        };
        let values = Tensor::from_vec(values, tensor.shape(), &Device::Cpu).expect("tensor");
        named.var.set(&values).expect("same shape");
    }
    model
}

fn random_images(count: usize, side: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels: Vec<u8> = (0..count * side * side).map(|_| rng.random()).collect();
    batch_from_pixels(&pixels, side, &Device::Cpu).expect("batch")
}

/// Both outputs of the ONNX model as tract runs it, at the batch size of `images`; the model's
/// batch dimension is left symbolic, so one file serves every batch size.
fn run_tract(bytes: &[u8], images: &Tensor) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the model")
        .into_optimized()
        .expect("tract optimises it")
        .into_runnable()
        .expect("tract plans it");
    let dims = images.dims().to_vec();
    let values = images
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("values");
    let input = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(dims, values)
        .expect("input array");
    let input: tract_onnx::prelude::Tensor = input.into();
    let outputs = model
        .run(tvec!(input.into_tvalue()))
        .expect("tract runs it");
    let rows = |index: usize| -> Vec<Vec<f32>> {
        let view = outputs[index].to_array_view::<f32>().expect("float output");
        view.outer_iter()
            .map(|row| row.iter().copied().collect())
            .collect()
    };
    (rows(0), rows(1))
}

fn ours(model: &Dexpression, images: &Tensor) -> Vec<Vec<f32>> {
    model
        .forward_t(images, false)
        .and_then(|t| t.to_vec2::<f32>())
        .expect("forward")
}

fn assert_close(what: &str, theirs: &[Vec<f32>], ours: &[Vec<f32>]) {
    assert_eq!(theirs.len(), ours.len(), "{what}: rows");
    for (row, (a, b)) in theirs.iter().zip(ours).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: row {row} length");
        for (class, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= TOLERANCE,
                "{what}: row {row} class {class}: tract {x} vs ours {y}"
            );
        }
    }
}

fn options(opset: i64, n_classes: usize) -> onnx::ExportOptions {
    onnx::ExportOptions {
        opset,
        class_names: (0..n_classes).map(|i| format!("class {i}")).collect(),
        class_names_source: "the test".into(),
        input_side_source: "the test".into(),
        metadata: Default::default(),
    }
}

#[test]
fn tract_runs_the_export_of_random_networks_as_the_forward_does() {
    // Small sides keep the test quick; 46 is not a multiple of 16 and leaves 2x2 maps at the head.
    for (seed, side, n_classes) in [(1, 46, 4), (2, 64, 7), (3, 48, 2)] {
        let model = random_network(DexpressionConfig::with(n_classes, side), seed);
        let single = random_images(1, side, seed + 100);
        let batch = random_images(5, side, seed + 200);
        let (single_ours, batch_ours) = (ours(&model, &single), ours(&model, &batch));
        for opset in opsets() {
            let bytes = model.to_onnx(&options(opset, n_classes)).expect("exported");
            for (images, expected, size) in [(&single, &single_ours, 1), (&batch, &batch_ours, 5)] {
                let what = format!("seed {seed}, side {side}, opset {opset}, batch {size}");
                let (logp, probabilities) = run_tract(&bytes, images);
                assert_close(&format!("{what}: {LOG_PROBABILITIES}"), &logp, expected);
                let expected_probabilities: Vec<Vec<f32>> = expected
                    .iter()
                    .map(|row| row.iter().map(|v| v.exp()).collect())
                    .collect();
                assert_close(
                    &format!("{what}: {PROBABILITIES}"),
                    &probabilities,
                    &expected_probabilities,
                );
            }
        }
    }
}

#[test]
fn tract_runs_the_export_of_paper_networks_as_the_forward_does() {
    // 48 and 64 px: every pool of the paper variant rounds up a partial window (24 -> 12 -> 6
    // -> 3, 32 -> 16 -> 8 -> 4); 46 px: none does. The LRN with AlexNet's constants and with
    // constants strong enough that a wrong window or exponent would show.
    let strong = LrnConstants {
        size: 5,
        alpha: 1.0,
        beta: 0.75,
        k: 2.0,
    };
    for (seed, side, n_classes, lrn) in [
        (4, 48, 7, LrnConstants::default()),
        (5, 64, 3, strong),
        (6, 46, 2, strong),
    ] {
        let config = DexpressionConfig {
            lrn,
            ..DexpressionConfig::of(Variant::Paper, n_classes, side)
        };
        let model = random_network(config, seed);
        let batch = random_images(3, side, seed + 300);
        let expected = ours(&model, &batch);
        for opset in [*onnx::OPSETS.start(), *onnx::OPSETS.end()] {
            let bytes = model.to_onnx(&options(opset, n_classes)).expect("exported");
            let proto = ModelProto::parse_from_bytes(&bytes).expect("parses back");
            let graph = proto.graph.as_ref().expect("a graph");
            let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
            assert!(ops.contains(&"LRN"), "{ops:?}");
            assert!(!ops.contains(&"BatchNormalization"), "{ops:?}");
            let what = format!("paper, seed {seed}, side {side}, opset {opset}");
            let (logp, _) = run_tract(&bytes, &batch);
            assert_close(&format!("{what}: {LOG_PROBABILITIES}"), &logp, &expected);
        }
    }
    // An even LRN window is centred differently by ONNX: refused, not written wrong.
    let even = DexpressionConfig {
        lrn: LrnConstants {
            size: 4,
            ..LrnConstants::default()
        },
        ..DexpressionConfig::of(Variant::Paper, 2, 48)
    };
    let error = random_network(even, 7)
        .to_onnx(&options(onnx::DEFAULT_OPSET, 2))
        .expect_err("an even window");
    assert!(error.to_string().contains("odd LRN window"), "{error}");
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

#[test]
fn the_ports_checkpoint_exported_gives_pytorchs_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoint = std::fs::read_dir(fixture())
        .expect("fixture folder")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .expect("the port's .tar checkpoint in the fixture");
    let weights = dir.path().join("port.safetensors");
    import_torch(&checkpoint, &weights).expect("imported");
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu)
            .expect("reference loads");
    let expected = reference["eval.logp"].to_vec2::<f32>().expect("reference");
    for opset in opsets() {
        let out = dir.path().join(format!("port-{opset}.onnx"));
        onnx::export_weights(
            &weights,
            &out,
            opset,
            |n| Some((0..n).map(|i| format!("c{i}")).collect()),
            Default::default(),
        )
        .expect("exported");
        let bytes = std::fs::read(&out).expect("written");
        let (logp, _) = run_tract(&bytes, &reference["x"]);
        assert_close(
            &format!("opset {opset}: PyTorch's eval.logp"),
            &logp,
            &expected,
        );
    }
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).expect("model written");
    let model = ModelProto::parse_from_bytes(&bytes).expect("an ONNX model");
    model
        .metadata_props
        .iter()
        .map(|entry| (entry.key.clone(), entry.value.clone()))
        .collect()
}

fn export(weights: &Path, out: &Path) -> dexpression_model::Result<ExportSummary> {
    let training = [(keys::TRAINING_FOLD.to_string(), "2".to_string())].into();
    onnx::export_weights(
        weights,
        out,
        onnx::DEFAULT_OPSET,
        |n| (n == 3).then(|| vec!["a".into(), "b".into(), "c".into()]),
        training,
    )
}

#[test]
fn weights_with_metadata_give_their_side_and_names_and_without_it_the_side_is_inferred() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Sides 45 to 48 give the same tensor shapes: only the metadata knows it was 46.
    let model = random_network(DexpressionConfig::with(3, 46), 7);
    let names: Vec<String> = ["pain", "no pain", "unsure"].map(String::from).to_vec();
    let recorded = dir.path().join("recorded.safetensors");
    model.save_with_metadata(&recorded, &names).expect("saved");
    let out = dir.path().join("recorded.onnx");
    let summary = export(&recorded, &out).expect("exported");
    assert_eq!(summary.config.image_size, 46);
    assert_eq!(summary.inferred_side_from, None);
    assert!(summary.class_names_recorded);
    let props = metadata(&out);
    assert_eq!(props[keys::INPUT_SIDE], "46");
    assert_eq!(props[keys::N_CLASSES], "3");
    let written: Vec<String> = serde_json::from_str(&props[keys::CLASS_NAMES]).expect("JSON");
    assert_eq!(written, names);
    // The weights' own metadata travels too, and what the caller adds.
    assert_eq!(props[keys::TRAINING_FOLD], "2");
    assert_eq!(props[&format!("{}image_size", keys::WEIGHTS_PREFIX)], "46");
    let preprocessing: onnx::Preprocessing =
        serde_json::from_str(&props[keys::PREPROCESSING]).expect("JSON");
    assert_eq!(preprocessing, onnx::Preprocessing::for_side(46));
    assert_eq!(
        summary.bytes as u64,
        std::fs::metadata(&out).expect("file").len()
    );

    // Without metadata the side is inferred as `load` infers it, and said.
    let plain = dir.path().join("plain.safetensors");
    model.save(&plain).expect("saved");
    let out = dir.path().join("plain.onnx");
    let summary = export(&plain, &out).expect("exported");
    assert_eq!(summary.config.image_size, 48);
    assert_eq!(summary.inferred_side_from, Some(vec![45, 46, 47, 48]));
    assert!(!summary.class_names_recorded);
    assert_eq!(summary.class_names, ["a", "b", "c"]);
    let props = metadata(&out);
    assert_eq!(props[keys::INPUT_SIDE], "48");
    let source = &props[keys::INPUT_SIDE_SOURCE];
    assert!(
        source.contains("inferred") && source.contains("45, 46, 47, 48"),
        "{source}"
    );
    // ... and the model runs at that side.
    let images = random_images(2, 48, 9);
    let (logp, _) = run_tract(&std::fs::read(&out).expect("written"), &images);
    assert_close("inferred side", &logp, &ours(&model, &images));

    // No recorded names and no defaults for 2 classes: an error, no file.
    let two = dir.path().join("two.safetensors");
    Dexpression::new(DexpressionConfig::with(2, 48), 1, &Device::Cpu)
        .and_then(|m| m.save(&two))
        .expect("saved");
    let out = dir.path().join("two.onnx");
    let error = export(&two, &out).expect_err("no class names");
    assert!(error.to_string().contains("two.safetensors"), "{error}");
    assert!(!out.exists());
}

/// Nothing but the files the test made itself: no temporary file left behind.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("folder")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bad_input_is_refused_with_the_file_named_and_nothing_half_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("weights.safetensors");
    random_network(DexpressionConfig::with(3, 48), 1)
        .save_with_metadata(&weights, &["a".into(), "b".into(), "c".into()])
        .expect("saved");
    let out = dir.path().join("model.onnx");
    std::fs::write(&out, b"the previous model").expect("written");

    // A corrupt weights file: named in the error, the previous model untouched.
    let corrupt = dir.path().join("corrupt.safetensors");
    let mut bytes = std::fs::read(&weights).expect("weights");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).expect("written");
    let error = export(&corrupt, &out).expect_err("truncated weights");
    assert!(error.to_string().contains("corrupt.safetensors"), "{error}");
    assert_eq!(std::fs::read(&out).expect("kept"), b"the previous model");

    // An opset we cannot express: the supported range named, nothing written.
    for opset in [*onnx::OPSETS.start() - 1, *onnx::OPSETS.end() + 1] {
        let error = onnx::export_weights(&weights, &out, opset, |_| None, Default::default())
            .expect_err("unsupported opset");
        let message = error.to_string();
        let range = format!("{} to {}", onnx::OPSETS.start(), onnx::OPSETS.end());
        assert!(message.contains(&range), "{message}");
        assert_eq!(std::fs::read(&out).expect("kept"), b"the previous model");
    }

    // An output that cannot be written (its folder is a file): the path in the error.
    let blocked = dir.path().join("model.onnx").join("inside.onnx");
    let error = export(&weights, &blocked).expect_err("unwritable output");
    assert!(error.to_string().contains("model.onnx"), "{error}");
    assert_eq!(std::fs::read(&out).expect("kept"), b"the previous model");
    assert_eq!(
        files_in(dir.path()),
        ["corrupt.safetensors", "model.onnx", "weights.safetensors"]
    );

    // And a good export replaces the previous model whole.
    export(&weights, &out).expect("exported");
    assert!(ModelProto::parse_from_bytes(&std::fs::read(&out).expect("written")).is_ok());
}
