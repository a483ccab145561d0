//! End-to-end checks of `write_report` on small histories whose numbers were worked out by hand.

use std::path::{Path, PathBuf};

use dexpression_report::{
    draw_confusion_matrix, write_report, EpochChoice, Error, History, ReportOptions, ReportSummary,
    CONFUSION_SIZE, CURVES_SIZE,
};

/// One epoch of the PyTorch port's history: the numbers the tests derive their expectations from.
struct PortRow {
    /// Counted from 0, as the port does.
    fold: u32,
    epoch: u32,
    train_accuracy: f64,
    test_accuracy: f64,
    train_loss: f64,
    test_loss: f64,
    pred: &'static [usize],
    truth: &'static [usize],
}

/// Two folds of three epochs; fold 0 has 5 test samples, fold 1 has 4.
#[rustfmt::skip]
const PORT_ROWS: [PortRow; 6] = [
    PortRow { fold: 0, epoch: 0, train_accuracy: 50.0, test_accuracy: 40.0, train_loss: 1.5, test_loss: 1.8, pred: &[0, 1, 1, 2, 4], truth: &[0, 1, 2, 2, 4] },
    PortRow { fold: 0, epoch: 1, train_accuracy: 80.0, test_accuracy: 80.0, train_loss: 0.6, test_loss: 0.9, pred: &[0, 1, 2, 2, 3], truth: &[0, 1, 2, 2, 4] },
    PortRow { fold: 0, epoch: 2, train_accuracy: 90.0, test_accuracy: 60.0, train_loss: 0.3, test_loss: 1.1, pred: &[0, 0, 2, 1, 4], truth: &[0, 1, 2, 2, 4] },
    PortRow { fold: 1, epoch: 0, train_accuracy: 60.0, test_accuracy: 50.0, train_loss: 1.2, test_loss: 1.3, pred: &[6, 0, 0, 0], truth: &[6, 5, 0, 3] },
    PortRow { fold: 1, epoch: 1, train_accuracy: 70.0, test_accuracy: 100.0, train_loss: 0.8, test_loss: 0.5, pred: &[6, 5, 0, 3], truth: &[6, 5, 0, 3] },
    PortRow { fold: 1, epoch: 2, train_accuracy: 100.0, test_accuracy: 75.0, train_loss: 0.1, test_loss: 0.7, pred: &[6, 5, 0, 0], truth: &[6, 5, 0, 3] },
];

/// The port's classes, in its order: the names label the expected CSV rows and columns.
const CK_CLASSES: [&str; 7] = dexpression_report::CK_PLUS_CLASS_NAMES;

/// [`PORT_ROWS`] in the port's file format: pandas' index column first, label lists quoted.
fn port_history() -> String {
    let list = |labels: &[usize]| {
        let items: Vec<String> = labels.iter().map(usize::to_string).collect();
        format!("\"[{}]\"", items.join(", "))
    };
    let mut csv = ",fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth\n".to_string();
    for (index, row) in PORT_ROWS.iter().enumerate() {
        csv.push_str(&format!(
            "{index},{},{},{:.1},{:.1},{},{},{},{}\n",
            row.fold,
            row.epoch,
            row.train_accuracy,
            row.test_accuracy,
            row.train_loss,
            row.test_loss,
            list(row.pred),
            list(row.truth)
        ));
    }
    csv
}

/// Each fold's row with the highest epoch (`final`) or test accuracy (`best`).
fn chosen_rows(best: bool) -> Vec<&'static PortRow> {
    let mut chosen: Vec<&PortRow> = Vec::new();
    for row in &PORT_ROWS {
        match chosen.iter_mut().find(|kept| kept.fold == row.fold) {
            None => chosen.push(row),
            Some(kept) => {
                let better = if best {
                    row.test_accuracy > kept.test_accuracy
                } else {
                    row.epoch > kept.epoch
                };
                if better {
                    *kept = row;
                }
            }
        }
    }
    chosen
}

/// `counts[truth][predicted]` over `rows`.
fn counts_of(rows: &[&PortRow]) -> Vec<Vec<u64>> {
    let mut counts = vec![vec![0u64; CK_CLASSES.len()]; CK_CLASSES.len()];
    for row in rows {
        for (&truth, &pred) in row.truth.iter().zip(row.pred) {
            counts[truth][pred] += 1;
        }
    }
    counts
}

/// The confusion CSV the report must write for `counts`.
fn confusion_csv(counts: &[Vec<u64>]) -> String {
    let mut csv = format!("true\\predicted,{}\n", CK_CLASSES.join(","));
    for (name, row) in CK_CLASSES.iter().zip(counts) {
        let cells: Vec<String> = row.iter().map(u64::to_string).collect();
        csv.push_str(&format!("{name},{}\n", cells.join(",")));
    }
    csv
}

/// `mean ± sample std` (n - 1) with `decimals` places.
fn mean_std(values: &[f64], decimals: usize) -> String {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{mean:.decimals$} ± {std:.decimals$}")
}

struct Report {
    dir: tempfile::TempDir,
    summary: ReportSummary,
    markdown: String,
}

impl Report {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn read(&self, name: &str) -> String {
        let path = self.out().join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }
}

/// Writes `files` (relative path, content) into a temporary directory, reads the histories at
/// `history_paths` with `History::from_run` and writes the report into `out/`.
fn check_report(files: &[(&str, &str)], history_paths: &[&str], epoch: EpochChoice) -> Report {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (relative_path, content) in files {
        let path = dir.path().join(relative_path);
        std::fs::create_dir_all(path.parent().expect("file has a parent")).expect("create dir");
        std::fs::write(&path, content).expect("write input");
    }
    let histories: Vec<History> = history_paths
        .iter()
        .map(|path| History::from_run(dir.path().join(path)).expect("history reads"))
        .collect();
    let options = ReportOptions {
        epoch,
        config: None,
    };
    let summary = write_report(&histories, dir.path().join("out"), &options).expect("report");
    let markdown = std::fs::read_to_string(dir.path().join("out/summary.md")).expect("summary");
    Report {
        dir,
        summary,
        markdown,
    }
}

fn port_report(epoch: EpochChoice) -> Report {
    check_report(&[("history.csv", &port_history())], &["history.csv"], epoch)
}

fn assert_contains(text: &str, expected: &str) {
    assert!(
        text.contains(expected),
        "expected to find\n{expected}\nin\n{text}"
    );
}

#[test]
fn summary_tables_match_numbers_derived_from_the_rows() {
    let report = port_report(EpochChoice::Final);
    for (best, epoch_cell) in [(false, ""), (true, " |")] {
        let rows = chosen_rows(best);
        let mut table = String::new();
        for row in &rows {
            let epoch = if best {
                format!(" {} |", row.epoch)
            } else {
                String::new()
            };
            table.push_str(&format!(
                "| {} |{epoch} {:.2} | {:.2} | {:.4} | {:.4} |\n",
                row.fold + 1,
                row.train_accuracy,
                row.test_accuracy,
                row.train_loss,
                row.test_loss
            ));
        }
        let column = |value: fn(&PortRow) -> f64, decimals| {
            mean_std(
                &rows.iter().map(|row| value(row)).collect::<Vec<_>>(),
                decimals,
            )
        };
        table.push_str(&format!(
            "| Mean ± std |{epoch_cell} {} | {} | {} | {} |\n",
            column(|r| r.train_accuracy, 2),
            column(|r| r.test_accuracy, 2),
            column(|r| r.train_loss, 4),
            column(|r| r.test_loss, 4)
        ));
        assert_contains(&report.markdown, &table);
    }
    // The derivation itself, checked by hand once: final epochs 90 and 100 train accuracy, so
    // mean 95 and sample std |90 - 100| / sqrt(2) = 7.07; best epochs 80 and 100 test accuracy.
    assert_contains(
        &report.markdown,
        "| Mean ± std | 95.00 ± 7.07 | 67.50 ± 10.61 |",
    );
    assert_contains(
        &report.markdown,
        "| Mean ± std | | 75.00 ± 7.07 | 90.00 ± 14.14 |",
    );
}

#[test]
fn per_class_scores_match_scores_derived_from_the_rows() {
    let report = port_report(EpochChoice::Final);
    let counts = counts_of(&chosen_rows(false));
    let ratio = |numerator: u64, denominator: u64| {
        (denominator > 0).then(|| numerator as f64 / denominator as f64)
    };
    let shown = |value: Option<f64>| value.map_or("–".to_string(), |v| format!("{v:.3}"));
    let mut table =
        "| Class | Precision | Recall | F1 | Support |\n|---|---:|---:|---:|---:|\n".to_string();
    let (mut precisions, mut recalls, mut f1s) = (Vec::new(), Vec::new(), Vec::new());
    for (class, name) in CK_CLASSES.iter().enumerate() {
        let correct = counts[class][class];
        let support: u64 = counts[class].iter().sum();
        let predicted: u64 = counts.iter().map(|row| row[class]).sum();
        let precision = ratio(correct, predicted);
        let recall = ratio(correct, support);
        let f1 = match (precision, recall) {
            (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        };
        precisions.extend(precision);
        recalls.extend(recall);
        f1s.extend(f1);
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {support} |\n",
            shown(precision),
            shown(recall),
            shown(f1)
        ));
    }
    let mean = |values: &[f64]| Some(values.iter().sum::<f64>() / values.len() as f64);
    let n_samples: u64 = counts.iter().flatten().sum();
    table.push_str(&format!(
        "| Macro average | {} | {} | {} | {n_samples} |\n",
        shown(mean(&precisions)),
        shown(mean(&recalls)),
        shown(mean(&f1s))
    ));
    assert_contains(&report.markdown, &table);
    let n_correct: u64 = (0..CK_CLASSES.len())
        .map(|class| counts[class][class])
        .sum();
    assert_contains(
        &report.markdown,
        &format!(
            "Pooled accuracy: {:.2} % ({n_correct} of {n_samples} test predictions).",
            100.0 * n_correct as f64 / n_samples as f64
        ),
    );
    // Checked by hand once: Fear is never predicted (precision and F1 undefined), Anger is
    // predicted 4 times for its 2 samples; 6 of 9 predictions are right.
    assert_contains(&report.markdown, "| Fear | – | 0.000 | – | 1 |");
    assert_contains(&report.markdown, "| Anger | 0.500 | 1.000 | 0.667 | 2 |");
    assert_contains(&report.markdown, "(6 of 9 test predictions)");
}

#[test]
fn confusion_csvs_hold_the_counts_of_the_chosen_epochs() {
    let choices = [
        (EpochChoice::Final, chosen_rows(false)),
        (EpochChoice::Best, chosen_rows(true)),
        (
            EpochChoice::Number(0),
            PORT_ROWS.iter().filter(|row| row.epoch == 0).collect(),
        ),
    ];
    for (choice, rows) in choices {
        let report = port_report(choice);
        for row in &rows {
            assert_eq!(
                report.read(&format!("confusion_matrix-fold{}.csv", row.fold + 1)),
                confusion_csv(&counts_of(&[row])),
                "{choice:?}, fold {}",
                row.fold + 1
            );
        }
        assert_eq!(
            report.read("confusion_matrix-all.csv"),
            confusion_csv(&counts_of(&rows)),
            "{choice:?}"
        );
    }
    // Checked by hand once: at the final epochs one Contempt and one Fear face were taken for
    // Anger, and one Disgust face for Contempt.
    assert_contains(
        &port_report(EpochChoice::Final).read("confusion_matrix-all.csv"),
        "Anger,2,0,0,0,0,0,0\nContempt,1,0,0,0,0,0,0\nDisgust,0,1,1,0,0,0,0\nFear,1,0,0,0,0,0,0\n",
    );
    assert_contains(
        &port_report(EpochChoice::Best).markdown,
        "at the best test epoch of each fold",
    );
}

#[test]
fn all_files_are_written_and_linked() {
    let report = port_report(EpochChoice::Final);
    let expected = [
        "train_test_accuracy.png",
        "train_test_accuracy.svg",
        "train_test_loss.png",
        "train_test_loss.svg",
        "confusion_matrix-fold1.png",
        "confusion_matrix-fold1.csv",
        "confusion_matrix-fold2.png",
        "confusion_matrix-fold2.csv",
        "confusion_matrix-all.png",
        "confusion_matrix-all.csv",
        "summary.md",
    ];
    let written: Vec<String> = report
        .summary
        .written
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, expected);
    for name in expected {
        assert!(report.out().join(name).is_file(), "{name} missing");
    }
    for link in [
        "](train_test_accuracy.png)",
        "](train_test_loss.png)",
        "](confusion_matrix-all.png)",
        "](confusion_matrix-fold1.png)",
        "](confusion_matrix-fold2.png)",
    ] {
        assert_contains(&report.markdown, link);
    }
    // The port file counts folds from 0; the report says so.
    assert_contains(&report.markdown, "numbers folds from 0");
    assert_contains(&report.markdown, "The split protocol is not recorded");
}

/// Decodes a PNG, checks its size, and that it is neither blank nor a single flat colour: the
/// grey levels must vary and some pixels must be dark (axes and text).
fn check_png(path: &Path, expected_size: (u32, u32)) {
    let image = image::open(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .to_luma8();
    assert_eq!(image.dimensions(), expected_size, "{}", path.display());
    let values: Vec<f64> = image.pixels().map(|pixel| f64::from(pixel.0[0])).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    assert!(variance > 100.0, "{}: variance {variance}", path.display());
    let n_dark = values.iter().filter(|&&v| v < 80.0).count();
    assert!(
        n_dark > 500,
        "{}: only {n_dark} dark pixels",
        path.display()
    );
}

#[test]
fn pngs_decode_with_expected_size_and_are_not_blank() {
    let report = port_report(EpochChoice::Final);
    check_png(&report.out().join("train_test_accuracy.png"), CURVES_SIZE);
    check_png(&report.out().join("train_test_loss.png"), CURVES_SIZE);
    for name in [
        "confusion_matrix-fold1.png",
        "confusion_matrix-fold2.png",
        "confusion_matrix-all.png",
    ] {
        check_png(&report.out().join(name), CONFUSION_SIZE);
    }
    // The PNG and the SVG of each curve figure are drawn apart: they must agree on the size.
    for stem in ["train_test_accuracy", "train_test_loss"] {
        let svg = report.read(&format!("{stem}.svg"));
        let attribute = |name: &str| -> u32 {
            let start = svg.find(&format!("{name}=\"")).expect("size attribute") + name.len() + 2;
            let end = start + svg[start..].find('"').expect("closing quote");
            svg[start..end].parse().expect("a number")
        };
        let png = image::open(report.out().join(format!("{stem}.png"))).expect("decodes");
        assert_eq!(
            (png.width(), png.height()),
            (attribute("width"), attribute("height")),
            "{stem}"
        );
    }
}

#[test]
fn confusion_png_text_is_drawn_with_the_embedded_font() {
    // The title band holds only the title: with a working font it has dark pixels.
    let report = port_report(EpochChoice::Final);
    let image = image::open(report.out().join("confusion_matrix-all.png"))
        .expect("decodes")
        .to_luma8();
    let n_dark_in_title = (0..CONFUSION_SIZE.0)
        .flat_map(|x| (10..42).map(move |y| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0[0] < 100)
        .count();
    assert!(n_dark_in_title > 100, "{n_dark_in_title} dark title pixels");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn accuracy_svg_structure_is_golden() {
    let report = port_report(EpochChoice::Final);
    let svg = report.read("train_test_accuracy.svg");
    assert!(svg.starts_with("<svg width=\"1200\" height=\"500\""));
    // Two panels (train, test), each with two axes, 7 value ticks (0 to 100 % in the plotted
    // range's steps), one tick per epoch, and per fold a curve and a legend swatch, the only
    // lines drawn 2 px wide.
    let n_epochs = PORT_ROWS.iter().map(|row| row.epoch).max().expect("rows") as usize + 1;
    let n_folds = chosen_rows(false).len();
    const N_VALUE_TICKS: usize = 7;
    assert_eq!(
        count(&svg, "<polyline"),
        2 * (2 + N_VALUE_TICKS + n_epochs + 2 * n_folds),
        "polylines"
    );
    assert_eq!(
        count(&svg, "stroke-width=\"2\""),
        2 * 2 * n_folds,
        "fold lines"
    );
    // Fold colours are matplotlib's tab10, in fold order.
    assert_eq!(count(&svg, "stroke=\"#1F77B4\""), 4, "fold 1 colour");
    assert_eq!(count(&svg, "stroke=\"#FF7F0E\""), 4, "fold 2 colour");
    for text in [
        ">\nTrain accuracy\n</text>",
        ">\nTest accuracy\n</text>",
        ">\nEpoch\n</text>",
        ">\nAccuracy (%)\n</text>",
        ">\nFold 1\n</text>",
        ">\nFold 2\n</text>",
    ] {
        let expected = if text.contains("Fold") || text.contains("Epoch") || text.contains("(%)") {
            2
        } else {
            1
        };
        assert_eq!(count(&svg, text), expected, "{text:?}");
    }
    // Per panel: a title, two axis labels, the tick labels and a legend entry per fold.
    assert_eq!(
        count(&svg, "<text"),
        2 * (1 + 2 + N_VALUE_TICKS + n_epochs + n_folds),
        "text elements"
    );
    // No text is turned into paths: SVG text stays searchable.
    assert_eq!(count(&svg, "<path"), 0, "paths");

    let loss_svg = report.read("train_test_loss.svg");
    assert_contains(&loss_svg, ">\nTrain loss\n</text>");
    assert_contains(&loss_svg, ">\nLoss\n</text>");
}

const OUR_FOLD1: &str = "fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth
1,1,50.0,50.0,1.0,1.2,\"[0, 1]\",\"[0, 0]\"
1,2,75.0,100.0,0.5,0.6,\"[0, 1]\",\"[0, 1]\"
1,3,100.0,50.0,0.2,0.9,\"[1, 1]\",\"[0, 1]\"
";
const OUR_FOLD2_RUNNING: &str = "fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth
2,1,40.0,0.0,1.1,1.5,\"[3]\",\"[2]\"
2,2,60.0,100.0,0.7,0.8,\"[2]\",\"[2]\"
";
const CONFIG_3_FOLDS: &str = r#"{"split": "subject", "folds": 3, "epochs": 3, "batch_size": 32,
  "learning_rate": 0.001, "selection": "peak:3", "neutral": false, "seed": 7,
  "dataset": "ck+", "a_field_from_a_newer_trainer": {"x": 1}}"#;

#[test]
fn partial_runs_in_separate_directories_are_merged_and_gaps_reported() {
    let files = [
        ("runs/fold1/history.csv", OUR_FOLD1),
        ("runs/fold1/config.json", CONFIG_3_FOLDS),
        ("runs/fold2/history.csv", OUR_FOLD2_RUNNING),
        ("runs/fold2/config.json", CONFIG_3_FOLDS),
    ];
    // The parent directory stands for both run directories; listing them gives the same report.
    for history_paths in [&["runs"][..], &["runs/fold1", "runs/fold2"][..]] {
        let report = check_report(&files, history_paths, EpochChoice::Final);
        assert_eq!(report.summary.missing_folds, vec![3]);
        assert_eq!(report.summary.incomplete_folds.len(), 1);
        let incomplete = report.summary.incomplete_folds[0];
        assert_eq!(
            (
                incomplete.fold,
                incomplete.n_epochs,
                incomplete.expected_epochs
            ),
            (2, 2, 3)
        );
        assert!(report
            .summary
            .warnings
            .contains(&"fold 3 is missing (expected folds 1 to 3)".to_string()));
        assert!(report
            .summary
            .warnings
            .contains(&"fold 2 is incomplete: 2 of 3 epochs".to_string()));
        assert_contains(&report.markdown, "- Fold 3 is missing.");
        assert_contains(&report.markdown, "- Fold 2 is incomplete: 2 of 3 epochs.");
        // The running fold is listed at its last epoch but not averaged: the mean is fold 1's.
        assert_contains(
            &report.markdown,
            "| 1 | 100.00 | 50.00 | 0.2000 | 0.9000 |\n\
             | 2 (incomplete, 2/3 epochs) | 60.00 | 100.00 | 0.7000 | 0.8000 |\n\
             | Mean ± std | 100.00 | 50.00 | 0.2000 | 0.9000 |\n",
        );
        assert_contains(&report.markdown, "over the 1 complete folds (1)");
        // Both folds get a matrix; the pooled one holds fold 1 only (truth [0, 1], pred [1, 1]).
        assert!(report.out().join("confusion_matrix-fold2.png").is_file());
        assert!(report
            .read("confusion_matrix-all.csv")
            .starts_with("true\\predicted,Anger,Contempt,Disgust,Fear,Happiness,Sadness,Surprise\nAnger,0,1,0,0,0,0,0\nContempt,0,1,0,0,0,0,0\nDisgust,0,0,0,0,0,0,0\n"));
        // The configuration's protocol and options.
        assert_contains(&report.markdown, "Folds were split by subject");
        assert_contains(&report.markdown, "- frame selection: peak:3");
        assert_contains(&report.markdown, "- batch size: 32");
        assert_contains(&report.markdown, "- learning rate: 0.001");
        assert_contains(&report.markdown, "- seed: 7");
    }
}

#[test]
fn a_frame_split_gets_a_plain_warning() {
    let report = check_report(
        &[
            ("run/history.csv", OUR_FOLD1),
            ("run/config.json", r#"{"split": "frame"}"#),
        ],
        &["run"],
        EpochChoice::Final,
    );
    assert_contains(
        &report.markdown,
        "> **Warning:** this run split the data by frame",
    );
    assert_contains(
        &report.markdown,
        "test accuracy includes faces seen in training",
    );
    assert!(report
        .summary
        .warnings
        .iter()
        .any(|warning| warning.contains("split was by frame")));
}

#[test]
fn the_summary_names_the_network_variant() {
    let paper = check_report(
        &[
            ("run/history.csv", OUR_FOLD1),
            (
                "run/config.json",
                r#"{"split": "subject", "variant": "paper"}"#,
            ),
        ],
        &["run"],
        EpochChoice::Final,
    );
    assert_contains(&paper.markdown, "- network: the paper's DeXpression");
    // A run from before there were two variants trained the port's.
    let old = check_report(
        &[
            ("run/history.csv", OUR_FOLD1),
            ("run/config.json", r#"{"split": "subject"}"#),
        ],
        &["run"],
        EpochChoice::Final,
    );
    assert_contains(&old.markdown, "- network: the PyTorch port's DeXpression");
}

#[test]
fn neutral_label_and_configured_class_names() {
    let with_neutral = "Unnamed: 0,fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth
0,1,1,50.0,50.0,1.0,1.0,\"[7, 0]\",\"[7, 1]\"
";
    let report = check_report(
        &[("history.csv", with_neutral)],
        &["history.csv"],
        EpochChoice::Final,
    );
    assert!(report.read("confusion_matrix-all.csv").starts_with(
        "true\\predicted,Anger,Contempt,Disgust,Fear,Happiness,Sadness,Surprise,Neutral\n"
    ));
    assert_contains(
        &report.read("confusion_matrix-all.csv"),
        "Neutral,0,0,0,0,0,0,0,1\n",
    );

    let report = check_report(
        &[
            ("run/history.csv", with_neutral),
            (
                "run/config.json",
                r#"{"class_names": ["a", "b", "c", "d", "e", "f", "g", "h"], "folds": "ten"}"#,
            ),
        ],
        &["run"],
        EpochChoice::Final,
    );
    // The configured names label the matrix; a mistyped field is dropped.
    assert!(report
        .read("confusion_matrix-all.csv")
        .starts_with("true\\predicted,a,b,c,d,e,f,g,h\n"));

    // Labels beyond the configured classes are refused, not given placeholder names.
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("history.csv"), with_neutral).expect("write");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"class_names": ["a", "b"]}"#,
    )
    .expect("write");
    match History::from_run(dir.path()) {
        Err(Error::LabelOutOfRange {
            line: 2, label: 7, ..
        }) => {}
        other => panic!("expected a label out of range, got {other:?}"),
    }
}

#[test]
fn a_malformed_row_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("history.csv");
    let bad_number = port_history().replace("2,0,2,90.0,60.0", "2,0,2,90.0,sixty");
    std::fs::write(&path, bad_number).expect("write");
    match History::from_csv(&path) {
        Err(
            err @ Error::MalformedRow {
                line: 4,
                column: "avg_test_accuracy",
                ..
            },
        ) => {
            let message = err.to_string();
            assert!(message.contains("history.csv:4:"), "{message}");
            assert!(message.contains("\"sixty\""), "{message}");
        }
        other => panic!("expected a malformed row on line 4, got {other:?}"),
    }

    let bad_list = port_history().replace(
        "\"[6, 5, 0, 3]\",\"[6, 5, 0, 3]\"",
        "\"[6, 5, x]\",\"[6, 5, 0, 3]\"",
    );
    std::fs::write(&path, bad_list).expect("write");
    assert!(matches!(
        History::from_csv(&path),
        Err(Error::MalformedRow {
            line: 6,
            column: "test_pred",
            ..
        })
    ));

    let short_list = port_history().replace("\"[6, 0, 0, 0]\"", "\"[6, 0, 0]\"");
    std::fs::write(&path, short_list).expect("write");
    assert!(matches!(
        History::from_csv(&path),
        Err(Error::PredictionLengthMismatch {
            line: 5,
            n_pred: 3,
            n_truth: 4,
            ..
        })
    ));

    let missing_field = port_history().replace("3,1,0,60.0,50.0,", "3,1,0,60.0,");
    std::fs::write(&path, missing_field).expect("write");
    match History::from_csv(&path) {
        Err(err @ Error::Csv { line: 5, .. }) => {
            assert!(err.to_string().contains("history.csv:5:"), "{err}");
        }
        other => panic!("expected a CSV error on line 5, got {other:?}"),
    }

    std::fs::write(&path, "fold,epoch,avg_train_accuracy\n1,1,50\n").expect("write");
    assert!(matches!(
        History::from_csv(&path),
        Err(Error::MissingColumn {
            column: "avg_test_accuracy",
            ..
        })
    ));
}

#[test]
fn an_empty_history_is_an_error_not_a_blank_report() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("history.csv");
    std::fs::write(&path, "").expect("write");
    let history = History::from_csv(&path).expect("an empty file is an empty history");
    assert!(history.records().is_empty());
    let result = write_report(
        &[history],
        dir.path().join("out"),
        &ReportOptions::default(),
    );
    assert!(matches!(result, Err(Error::EmptyHistory { .. })));
}

#[test]
fn duplicate_rows_keep_the_last_and_say_so() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let first = dir.path().join("a.csv");
    let second = dir.path().join("b.csv");
    std::fs::write(&first, OUR_FOLD1).expect("write");
    std::fs::write(
        &second,
        OUR_FOLD1.replace("1,3,100.0,50.0", "1,3,99.0,50.0"),
    )
    .expect("write");
    let merged = History::merge([
        History::from_csv(&first).expect("a reads"),
        History::from_csv(&second).expect("b reads"),
    ]);
    assert_eq!(merged.records().len(), 3);
    assert_eq!(merged.records()[2].train_accuracy, 99.0);
    assert_eq!(merged.notes().len(), 3);
    assert!(merged.notes()[2].contains("fold 1 epoch 3 appears in"));
}

#[test]
fn epoch_choices_parse() {
    assert_eq!(
        "final".parse::<EpochChoice>().ok(),
        Some(EpochChoice::Final)
    );
    assert_eq!("best".parse::<EpochChoice>().ok(), Some(EpochChoice::Best));
    assert_eq!(
        "25".parse::<EpochChoice>().ok(),
        Some(EpochChoice::Number(25))
    );
    assert!(matches!(
        "latest".parse::<EpochChoice>(),
        Err(Error::InvalidEpochChoice(_))
    ));
}

#[test]
fn a_history_without_predictions_still_gets_curves_and_tables() {
    let no_lists = "epoch,fold,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss
1,1,50.0,40.0,1.0,1.2
2,1,70.0,60.0,0.5,0.8
";
    let report = check_report(&[("h.csv", no_lists)], &["h.csv"], EpochChoice::Final);
    let written: Vec<String> = report
        .summary
        .written
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        written,
        [
            "train_test_accuracy.png",
            "train_test_accuracy.svg",
            "train_test_loss.png",
            "train_test_loss.svg",
            "summary.md"
        ]
    );
    assert_contains(
        &report.markdown,
        "| 1 | 70.00 | 60.00 | 0.5000 | 0.8000 |\n",
    );
    assert_contains(&report.markdown, "so there are no per-class scores");
    assert!(!report.markdown.contains("confusion_matrix-all.png"));
    assert!(report
        .summary
        .warnings
        .iter()
        .any(|warning| warning.contains("fold 1 epoch 2 has no test predictions")));
}

/// Classes are data (issue 14): two classes and three hundred both draw, every name labelling
/// the axes where it fits, without panicking.
#[test]
fn confusion_matrices_of_two_and_three_hundred_classes_draw() {
    let dir = tempfile::tempdir().expect("temp dir");
    for n_classes in [2usize, 300] {
        let names: Vec<String> = (0..n_classes).map(|i| format!("person_{i:03}")).collect();
        let counts: Vec<Vec<u64>> = (0..n_classes)
            .map(|row| {
                (0..n_classes)
                    .map(|col| u64::from(row == col) * 3)
                    .collect()
            })
            .collect();
        let path = dir.path().join(format!("confusion-{n_classes}.png"));
        draw_confusion_matrix(&counts, &names, "many classes", &path).expect("drawn");
        check_png(&path, CONFUSION_SIZE);
    }
}
