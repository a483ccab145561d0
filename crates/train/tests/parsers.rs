//! Property tests of what the train crate reads back from user-writable files: the checkpoint
//! state (`last.json`), the weights file names it holds, the safetensors header of a weights
//! file and `history.jsonl`. Each input gives an error or a valid value, never a panic.

use std::path::Path;

use dexpression_train::testing::{
    load_state, parse_weights_name, weights_name, TrainState, LAST_STATE,
};
use dexpression_train::{read_history_jsonl, TrainConfig, WeightsKind};
use proptest::prelude::*;

fn config() -> TrainConfig {
    serde_json::from_value(serde_json::json!({
        "dataset": "synthetic",
        "dataset_key": "abc",
        "class_names": ["a", "b"],
        "image_size": 48,
        "split": "subject",
        "selection": "peak:3",
        "neutral": false,
        "folds": 3,
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "dropout": 0.2,
        "seed": 0,
        "augment": false,
        "select_on": "test",
        "validation_fraction": 0.2,
        "keep_every_epoch": false,
        "version": "0.1.0"
    }))
    .expect("a valid configuration")
}

/// A state as training writes it after epoch 1, as JSON.
fn valid_state_json() -> serde_json::Value {
    let mut state = serde_json::to_value(TrainState::new(1, &config(), (0, 0))).unwrap();
    state["epoch"] = 1.into();
    state["weights"] = "last-epoch001.safetensors".into();
    state["records"] = serde_json::json!([{
        "fold": 1, "epoch": 1,
        "train": {"accuracy": 50.0, "loss": 0.7, "recall": [null, 50.0], "predictions": [], "truths": []},
        "test": {"accuracy": 50.0, "loss": 0.7, "recall": [100.0, 0.0], "predictions": [0, 0], "truths": [0, 1]},
        "validation": null, "seconds": 1.0, "images_per_second": 10.0
    }]);
    state
}

/// JSON values of every kind, nested a little.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-z./\\\\-]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("../x.safetensors"),
            Just("/etc/passwd"),
            Just("last-epoch001.safetensors"),
            Just("best-epoch001.safetensors"),
            Just("last-epoch1.safetensors"),
            Just(""),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

const STATE_KEYS: &[&str] = &[
    "fold",
    "epoch",
    "finished",
    "weights",
    "dropout_rng",
    "adam_steps",
    "best",
    "records",
    "dataset_key",
    "config",
    "version",
];

/// A file with a complete safetensors header (one `f32`), under the names a state may hold.
fn write_fake_weights(dir: &Path) {
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 4]);
    for name in ["last-epoch001.safetensors", "best-epoch001.safetensors"] {
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
}

fn check_state_file(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join(LAST_STATE), bytes).unwrap();
    if let Ok(Some(point)) = load_state(dir, &config()) {
        // Accepted only with names training writes, of files that are there.
        let state = point.state;
        for name in state
            .weights
            .iter()
            .chain(state.best.iter().map(|b| &b.weights))
        {
            assert!(parse_weights_name(name).is_some(), "accepted {name:?}");
            assert!(dir.join(name).is_file(), "accepted missing {name:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_state_with_any_field_replaced_is_an_error_or_a_safe_state(
        key in prop::sample::select(STATE_KEYS),
        value in any_json(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write_fake_weights(dir.path());
        let mut state = valid_state_json();
        state[key] = value;
        check_state_file(dir.path(), state.to_string().as_bytes());
    }

    #[test]
    fn a_cut_or_flipped_state_is_an_error_or_a_safe_state(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write_fake_weights(dir.path());
        let mut bytes = valid_state_json().to_string().into_bytes();
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let keep = cut.index(bytes.len() + 1);
        check_state_file(dir.path(), &bytes[..keep]);
    }

    #[test]
    fn weights_names_round_trip_and_nothing_else_parses(name in "\\PC{0,30}") {
        if let Some((kind, epoch)) = parse_weights_name(&name) {
            prop_assert_eq!(weights_name(kind, epoch), name);
        }
    }

    #[test]
    fn written_weights_names_parse_back(epoch in 0usize..1_000_000, last in any::<bool>()) {
        let kind = if last { WeightsKind::Last } else { WeightsKind::Best };
        prop_assert_eq!(parse_weights_name(&weights_name(kind, epoch)), Some((kind, epoch)));
    }

    #[test]
    fn any_weights_file_under_a_valid_state_is_checked_not_trusted(
        header_len in prop_oneof![any::<u64>(), 0u64..200],
        header in prop_oneof![
            "\\PC{0,60}",
            Just("{\"__metadata__\":{\"dexpression_train_state\":\"{\"},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}".to_string()),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = header_len.to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(tail);
        std::fs::write(dir.path().join("last-epoch001.safetensors"), bytes).unwrap();
        std::fs::write(dir.path().join("best-epoch001.safetensors"), b"").unwrap();
        let mut state = valid_state_json();
        state["best"] = serde_json::json!({"epoch": 1, "score": 50.0, "weights": "best-epoch001.safetensors"});
        // The weights files are not valid safetensors of this length (unless the generator
        // built one by chance): an error or a fallback, never a panic.
        check_state_file(dir.path(), state.to_string().as_bytes());
    }

    #[test]
    fn any_history_jsonl_is_an_error_or_records(
        lines in prop::collection::vec(prop_oneof![
            "\\PC{0,40}",
            any_json().prop_map(|value| value.to_string()),
        ], 0..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let _ = read_history_jsonl(&path);
    }
}
