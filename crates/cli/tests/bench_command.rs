//! `bench` on the command line: its JSON carries what the flags ask for (tiny sizes; nothing is
//! timed for its figures here, only for the fields' presence and consistency).

use std::process::Command;

/// Runs `dexpression bench` with `args` at a tiny size and returns its JSON.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_dexpression"))
        .args([
            "bench",
            "--fast-only",
            "--image-size",
            "40",
            "--batch-size",
            "2",
            "--iterations",
            "2",
            "--latency-iterations",
            "1",
        ])
        .args(args)
        .output()
        .expect("dexpression runs");
    assert!(
        output.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bench prints JSON")
}

#[test]
fn compare_variants_times_both_networks_in_pairs_at_each_side() {
    let json = bench_json(&["--compare-variants", "--sides", "40,44"]);
    let comparisons = json["variant_comparison"]
        .as_array()
        .expect("a variant_comparison list");
    let sides: Vec<u64> = comparisons
        .iter()
        .map(|c| c["image_size"].as_u64().expect("a side"))
        .collect();
    assert_eq!(sides, [40, 44]);
    for comparison in comparisons {
        assert_eq!(comparison["pairs"], 2, "{comparison}");
        let ratio = comparison["paper_over_port_train"]["median"]
            .as_f64()
            .expect("a ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "{comparison}");
    }
    // Without the flag, no comparison.
    assert!(bench_json(&[]).get("variant_comparison").is_none());
}

#[test]
fn threads_awake_training_is_on_unless_switched_off() {
    let cases: [(&[&str], bool); 3] = [
        (&[], true),
        (&["--threads-awake-training"], true),
        (&["--threads-awake-training", "false"], false),
    ];
    for (args, awake) in cases {
        let json = bench_json(args);
        assert_eq!(json["threads_awake_training"], awake, "{args:?}");
        assert!(
            json["fast"]["train_images_per_s"]["median"]
                .as_f64()
                .is_some(),
            "{args:?}"
        );
    }
}
