//! The Markdown of `summary.md`: fold tables, per-class scores, protocol and figure links.

use std::fmt::Write as _;

use crate::config::RunConfig;
use crate::history::History;
use crate::metrics::{class_scores, mean_and_std};
use crate::report::{best_test_epoch, file_names, EpochChoice, IncompleteFold};
use crate::HistoryRow;

/// Everything `write_report` worked out that the summary shows.
pub(crate) struct SummaryInput<'a> {
    pub history: &'a History,
    pub config: &'a RunConfig,
    pub has_config: bool,
    pub epoch_choice: EpochChoice,
    pub folds: &'a [u32],
    pub aggregate_folds: &'a [u32],
    pub missing_folds: &'a [u32],
    pub incomplete_folds: &'a [IncompleteFold],
    pub expected_epochs: usize,
    pub notes: &'a [String],
    pub class_names: &'a [String],
    pub total_counts: Option<&'a [Vec<u64>]>,
    pub fold_matrices: &'a [u32],
}

pub(crate) fn write_summary(input: &SummaryInput<'_>) -> String {
    let mut md = String::new();
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(md, "# DeXpression report\n");
    let sources: Vec<String> = input
        .history
        .sources()
        .iter()
        .map(|path| format!("`{}`", path.display()))
        .collect();
    let _ = writeln!(
        md,
        "From {} ({} folds, up to {} epochs each).\n",
        sources.join(", "),
        input.folds.len(),
        input.expected_epochs
    );
    if input.config.split_name() == "frame" {
        let _ = writeln!(
            md,
            "> **Warning:** this run split the data by frame, so frames of the same sequence (the same \
             face, moments apart) are in both the training and the test set of a fold. Test accuracy \
             then includes faces seen in training and overstates how well the network recognises \
             new people.\n"
        );
    }

    write_protocol(&mut md, input);
    write_missing(&mut md, input);

    let aggregate_note = aggregate_note(input);
    let _ = writeln!(md, "## Final epoch\n");
    let final_records: Vec<&HistoryRow> = input
        .folds
        .iter()
        .filter_map(|&fold| input.history.fold_records(fold).last().copied())
        .collect();
    write_fold_table(&mut md, input, &final_records, false);
    let _ = writeln!(md, "\n{aggregate_note}\n");

    let _ = writeln!(md, "## Best test epoch of each fold\n");
    let best_records: Vec<&HistoryRow> = input
        .folds
        .iter()
        .filter_map(|&fold| best_test_epoch(&input.history.fold_records(fold)))
        .collect();
    write_fold_table(&mut md, input, &best_records, true);
    let _ = writeln!(
        md,
        "\n{aggregate_note} Picking the epoch by its test accuracy is optimistic: the test set chose it.\n"
    );

    write_class_scores(&mut md, input);
    write_figures(&mut md, input);
    md
}

fn write_protocol(md: &mut String, input: &SummaryInput<'_>) {
    let config = input.config;
    let _ = writeln!(md, "## Protocol\n");
    let sentence = match config.split_name().as_str() {
        "subject" => "Folds were split by subject: no person appears in both the training and the test set of a fold, so test accuracy measures recognition of people the network has not seen.".to_string(),
        "sequence" => "Folds were split by sequence: the frames of one sequence stay together, but the same person can appear in the training set with other sequences.".to_string(),
        "frame" => "Folds were split by frame: test accuracy includes faces seen in training (frames of the same sequences are in both sets).".to_string(),
        "usage" => "The dataset's own split was used (FER2013's `Usage`), as the literature reports it: one model trained on Training, its `best` checkpoint chosen on PublicTest, and the test columns below measured on PrivateTest. The best-test-epoch table picks its epoch on PrivateTest itself and is optimistic; quote the final epoch or the `best` checkpoint.".to_string(),
        "unknown" if !input.has_config => "The split protocol is not recorded (no `config.json` beside the history, as with histories from the PyTorch port), so it is unknown whether test faces were seen in training.".to_string(),
        "unknown" => "The split protocol is not recorded in `config.json`, so it is unknown whether test faces were seen in training.".to_string(),
        other => format!("Folds were split by `{other}`."),
    };
    let _ = writeln!(md, "{sentence}\n");
    let mut options: Vec<String> = Vec::new();
    options.push(match config.variant.as_deref() {
        Some("paper") => "network: the paper's DeXpression (`--variant paper`: local response normalisation, no BatchNorm)".to_string(),
        Some("port") | None => "network: the PyTorch port's DeXpression (`--variant port`: LayerNorm and BatchNorm)".to_string(),
        Some(other) => format!("network: `{other}`"),
    });
    if let Some(dataset) = &config.dataset {
        options.push(format!("dataset: {dataset}"));
    }
    if let Some(selection) = &config.selection {
        options.push(format!("frame selection: {selection}"));
    }
    if let Some(neutral) = config.neutral {
        options.push(format!(
            "neutral class: {}",
            if neutral { "yes" } else { "no" }
        ));
    }
    if let Some(folds) = config.folds {
        options.push(format!("folds: {folds}"));
    }
    if let Some(epochs) = config.epochs {
        options.push(format!("epochs: {epochs}"));
    }
    if let Some(batch_size) = config.batch_size {
        options.push(format!("batch size: {batch_size}"));
    }
    if let Some(learning_rate) = config.learning_rate {
        options.push(format!("learning rate: {learning_rate}"));
    }
    if let Some(image_size) = config.image_size {
        options.push(format!("image size: {image_size}"));
    }
    if let Some(seed) = config.seed {
        options.push(format!("seed: {seed}"));
    }
    options.push(format!("classes: {}", input.class_names.join(", ")));
    for option in options {
        let _ = writeln!(md, "- {option}");
    }
    let _ = writeln!(md);
}

fn write_missing(md: &mut String, input: &SummaryInput<'_>) {
    if input.missing_folds.is_empty() && input.incomplete_folds.is_empty() && input.notes.is_empty()
    {
        return;
    }
    let _ = writeln!(md, "## Missing data and notes\n");
    for fold in input.missing_folds {
        let _ = writeln!(md, "- Fold {fold} is missing.");
    }
    for incomplete in input.incomplete_folds {
        let _ = writeln!(
            md,
            "- Fold {} is incomplete: {} of {} epochs.",
            incomplete.fold, incomplete.n_epochs, incomplete.expected_epochs
        );
    }
    for note in input.notes {
        let _ = writeln!(md, "- Note: {note}.");
    }
    let _ = writeln!(md);
}

fn aggregate_note(input: &SummaryInput<'_>) -> String {
    let n_folds = input.aggregate_folds.len();
    if n_folds == input.folds.len() {
        format!("Mean ± sample standard deviation (n − 1) over all {n_folds} folds.")
    } else {
        format!(
            "Mean ± sample standard deviation (n − 1) over the {n_folds} complete folds ({}); incomplete folds are listed but not averaged.",
            join_numbers(input.aggregate_folds)
        )
    }
}

fn write_fold_table(
    md: &mut String,
    input: &SummaryInput<'_>,
    records: &[&HistoryRow],
    with_epoch: bool,
) {
    let epoch_header = if with_epoch { " Epoch |" } else { "" };
    let epoch_rule = if with_epoch { "---:|" } else { "" };
    // With the dataset's own split, the test set is FER2013's PrivateTest: say so in the table.
    let test = if input.config.split_name() == "usage" {
        "PrivateTest"
    } else {
        "Test"
    };
    let _ = writeln!(
        md,
        "| Fold |{epoch_header} Train Accuracy | {test} Accuracy | Train Loss | {test} Loss |"
    );
    let _ = writeln!(md, "|---:|{epoch_rule}---:|---:|---:|---:|");
    for record in records {
        let fold_label = match input
            .incomplete_folds
            .iter()
            .find(|incomplete| incomplete.fold == record.fold)
        {
            Some(incomplete) => format!(
                "{} (incomplete, {}/{} epochs)",
                record.fold, incomplete.n_epochs, incomplete.expected_epochs
            ),
            None => record.fold.to_string(),
        };
        let epoch_cell = if with_epoch {
            format!(" {} |", record.epoch)
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {fold_label} |{epoch_cell} {} | {} | {} | {} |",
            accuracy(record.train_accuracy),
            accuracy(record.test_accuracy),
            loss(record.train_loss),
            loss(record.test_loss)
        );
    }
    let aggregated: Vec<&HistoryRow> = records
        .iter()
        .copied()
        .filter(|record| input.aggregate_folds.contains(&record.fold))
        .collect();
    let column = |value: fn(&HistoryRow) -> f64, format: fn(f64) -> String| {
        let values: Vec<f64> = aggregated.iter().map(|record| value(record)).collect();
        match mean_and_std(&values) {
            (Some(mean), Some(std)) => format!("{} ± {}", format(mean), format(std)),
            (Some(mean), None) => format(mean),
            _ => "–".to_string(),
        }
    };
    let epoch_cell = if with_epoch { " |" } else { "" };
    let _ = writeln!(
        md,
        "| Mean ± std |{epoch_cell} {} | {} | {} | {} |",
        column(|r| r.train_accuracy, accuracy),
        column(|r| r.test_accuracy, accuracy),
        column(|r| r.train_loss, loss),
        column(|r| r.test_loss, loss)
    );
}

fn write_class_scores(md: &mut String, input: &SummaryInput<'_>) {
    let epoch_text = match input.epoch_choice {
        EpochChoice::Final => "the final epoch of each fold".to_string(),
        EpochChoice::Best => "the best test epoch of each fold".to_string(),
        EpochChoice::Number(epoch) => format!("epoch {epoch} of each fold"),
    };
    let _ = writeln!(md, "## Per-class scores\n");
    let Some(counts) = input.total_counts else {
        let _ = writeln!(
            md,
            "No test predictions at {epoch_text} (the history has no `test_pred`/`test_truth`), so there are no per-class scores or confusion matrices.\n"
        );
        return;
    };
    let _ = writeln!(
        md,
        "Test predictions at {epoch_text}, pooled over folds {} (the counts of `{}`).\n",
        join_numbers(input.aggregate_folds),
        file_names::CONFUSION_ALL_CSV
    );
    let _ = writeln!(md, "| Class | Precision | Recall | F1 | Support |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let scores = class_scores(counts);
    for (class_idx, score) in scores.iter().enumerate() {
        let name = input
            .class_names
            .get(class_idx)
            .cloned()
            .unwrap_or_else(|| format!("class {class_idx}"));
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            fraction(score.precision),
            fraction(score.recall),
            fraction(score.f1),
            score.support
        );
    }
    // Macro averages skip undefined scores, like classes absent from the test sets.
    let macro_average = |value: fn(&crate::metrics::ClassScores) -> Option<f64>| {
        let values: Vec<f64> = scores.iter().filter_map(value).collect();
        mean_and_std(&values).0
    };
    let n_samples: u64 = scores.iter().map(|score| score.support).sum();
    let _ = writeln!(
        md,
        "| Macro average | {} | {} | {} | {} |",
        fraction(macro_average(|s| s.precision)),
        fraction(macro_average(|s| s.recall)),
        fraction(macro_average(|s| s.f1)),
        n_samples
    );
    let n_correct: u64 = (0..counts.len()).map(|idx| counts[idx][idx]).sum();
    if n_samples > 0 {
        let _ = writeln!(
            md,
            "\nPooled accuracy: {} % ({n_correct} of {n_samples} test predictions).\n",
            accuracy(100.0 * n_correct as f64 / n_samples as f64)
        );
    }
}

fn write_figures(md: &mut String, input: &SummaryInput<'_>) {
    let _ = writeln!(md, "## Figures\n");
    let _ = writeln!(
        md,
        "![Train and test accuracy per fold]({})\n",
        file_names::ACCURACY_PNG
    );
    let _ = writeln!(
        md,
        "![Train and test loss per fold]({})\n",
        file_names::LOSS_PNG
    );
    let _ = writeln!(
        md,
        "Vector versions: [accuracy]({}), [loss]({}).\n",
        file_names::ACCURACY_SVG,
        file_names::LOSS_SVG
    );
    if input.total_counts.is_some() {
        let _ = writeln!(
            md,
            "![Confusion matrix over folds]({})\n",
            file_names::CONFUSION_ALL_PNG
        );
    }
    if !input.fold_matrices.is_empty() {
        let links: Vec<String> = input
            .fold_matrices
            .iter()
            .map(|&fold| {
                format!(
                    "[fold {fold}]({}) ([counts]({}))",
                    file_names::confusion_fold(fold, "png"),
                    file_names::confusion_fold(fold, "csv")
                )
            })
            .collect();
        let _ = writeln!(md, "Confusion matrix of each fold: {}.", links.join(", "));
    }
}

fn accuracy(value: f64) -> String {
    format!("{value:.2}")
}

fn loss(value: f64) -> String {
    format!("{value:.4}")
}

fn fraction(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |value| format!("{value:.3}"))
}

fn join_numbers(numbers: &[u32]) -> String {
    numbers
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
