//! Property test over the mirror's parquet rows: whatever labels, images and file names a
//! downloaded parquet file holds, converting it gives an error or a valid folder, never a panic.

mod common;

use std::fs;

use common::{png, write_mirror_parquet, ImageColumn, Label, MirrorRow};
use dexpression_download::{convert_mirror, Error, NoProgress};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = Label> {
    prop_oneof![
        prop::sample::select(vec![
            "happy", "Sadness", "FEAR", "anger", "contempt", "disgust", "surprise", "neutral", "",
            "happy ", "ärger",
        ])
        .prop_map(|name| Label::Name(name.to_string())),
        any::<String>().prop_map(Label::Name),
    ]
}

fn image() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u8>().prop_map(png),
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<u8>(), 0usize..40).prop_map(|(seed, cut)| png(seed)[..cut].to_vec()),
        (1u32..20_000, 1u32..20_000).prop_map(|(w, h)| common::png_header(w, h)),
    ]
}

fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "S005_001_00000011",
            "../../escape",
            "/abs/path.png",
            "",
            ".",
            "..",
            "a/b\\c:d",
            "x.png",
        ])
        .prop_map(str::to_string),
        any::<String>(),
    ]
}

fn rows() -> impl Strategy<Value = Vec<MirrorRow>> {
    prop::collection::vec(
        (image(), label(), file_name()).prop_map(|(image, label, file)| MirrorRow {
            image,
            label,
            file,
        }),
        1..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn any_rows_give_an_error_or_a_valid_folder(
        parquet_rows in rows(),
        integer_labels in prop::collection::vec(-3i64..12, 1..5),
        use_integers in any::<bool>(),
        binary_images in any::<bool>(),
    ) {
        let mut parquet_rows = parquet_rows;
        if use_integers {
            for (row, index) in parquet_rows.iter_mut().zip(integer_labels.iter().cycle()) {
                row.label = Label::Index(*index);
            }
        }
        let work = tempfile::tempdir().unwrap();
        let parquet = work.path().join("mirror.parquet");
        let column = if binary_images { ImageColumn::Binary } else { ImageColumn::Struct };
        write_mirror_parquet(&parquet, column, &parquet_rows, None);
        let out = work.path().join("data").join("ckplus48");
        match convert_mirror(&parquet, "0", &out, &NoProgress) {
            Ok(summary) => {
                prop_assert!(summary.n_images() >= 1);
                prop_assert!(summary.n_images() <= parquet_rows.len());
                // Every file written lies in a class folder directly under the output.
                let mut n_files = 0;
                for class in fs::read_dir(&out).unwrap() {
                    let class = class.unwrap().path();
                    if class.is_dir() {
                        for file in fs::read_dir(&class).unwrap() {
                            let file = file.unwrap().path();
                            prop_assert!(file.is_file(), "{}", file.display());
                            prop_assert!(file.starts_with(&out));
                            n_files += 1;
                        }
                    }
                }
                prop_assert_eq!(n_files, summary.n_images());
                let siblings: Vec<_> = fs::read_dir(work.path()).unwrap().collect();
                prop_assert_eq!(siblings.len(), 2, "only the parquet and data/ exist");
            }
            Err(err) => {
                prop_assert!(
                    matches!(
                        err,
                        Error::BadLabel { .. } | Error::BadImage { .. } | Error::Io { .. }
                    ),
                    "{:?}",
                    err
                );
                prop_assert!(err.to_string().contains("mirror.parquet") || matches!(err, Error::Io { .. }), "{}", err);
                prop_assert!(!out.exists(), "nothing half-converted is left");
            }
        }
    }
}
