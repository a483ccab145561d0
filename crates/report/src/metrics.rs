//! Confusion matrices, per-class scores and fold statistics; plain arithmetic, no drawing.

/// Counts of (true label, predicted label) pairs: `counts[truth][predicted]`.
///
/// The matrix is `n_classes` square, grown when a label is `n_classes` or more so that no
/// prediction is dropped.
pub fn confusion_matrix(truth: &[usize], pred: &[usize], n_classes: usize) -> Vec<Vec<u64>> {
    let n_classes = truth
        .iter()
        .chain(pred)
        .map(|&label| label + 1)
        .fold(n_classes, usize::max);
    let mut counts = vec![vec![0u64; n_classes]; n_classes];
    for (&true_label, &predicted_label) in truth.iter().zip(pred) {
        counts[true_label][predicted_label] += 1;
    }
    counts
}

/// Adds `other` into `total`, growing `total` to the larger size.
pub(crate) fn add_counts(total: &mut Vec<Vec<u64>>, other: &[Vec<u64>]) {
    let n_classes = total.len().max(other.len());
    total.resize_with(n_classes, Vec::new);
    for row in total.iter_mut() {
        row.resize(n_classes, 0);
    }
    for (total_row, other_row) in total.iter_mut().zip(other) {
        for (total_count, other_count) in total_row.iter_mut().zip(other_row) {
            *total_count += other_count;
        }
    }
}

/// Precision, recall and F1 of one class; `None` where the denominator is zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ClassScores {
    /// Correct predictions of the class over all predictions of it.
    pub precision: Option<f64>,
    /// Correct predictions of the class over all samples of it.
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: Option<f64>,
    /// Number of test samples whose true label is the class.
    pub support: u64,
}

/// Scores of each class from a confusion matrix (`counts[truth][predicted]`).
pub(crate) fn class_scores(counts: &[Vec<u64>]) -> Vec<ClassScores> {
    (0..counts.len())
        .map(|class_idx| {
            let true_positives = counts[class_idx][class_idx];
            let support: u64 = counts[class_idx].iter().sum();
            let n_predicted: u64 = counts.iter().map(|row| row[class_idx]).sum();
            let ratio = |denominator: u64| {
                (denominator > 0).then(|| true_positives as f64 / denominator as f64)
            };
            let precision = ratio(n_predicted);
            let recall = ratio(support);
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            ClassScores {
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect()
}

/// Mean and sample standard deviation (n − 1, as pandas' `std`); the deviation is `None` for
/// fewer than two values and both are `None` for none.
pub(crate) fn mean_and_std(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (Some(mean), None);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (Some(mean), Some(variance.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_rows_are_truth() {
        let counts = confusion_matrix(&[0, 0, 1, 2], &[0, 1, 1, 0], 3);
        assert_eq!(counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
    }

    #[test]
    fn confusion_grows_for_unexpected_labels() {
        let counts = confusion_matrix(&[0, 3], &[0, 3], 2);
        assert_eq!(counts.len(), 4);
        assert_eq!(counts[3][3], 1);
    }

    #[test]
    fn scores_by_hand() {
        // Class 0: tp 1, predicted 2, support 2 -> p 0.5, r 0.5, f1 0.5.
        // Class 1: tp 1, predicted 2, support 1 -> p 0.5, r 1, f1 2/3.
        // Class 2: tp 0, predicted 0, support 1 -> p none, r 0, f1 none.
        let scores = class_scores(&[vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
        assert_eq!(scores[0].precision, Some(0.5));
        assert_eq!(scores[1].recall, Some(1.0));
        assert!((scores[1].f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(scores[2].precision, None);
        assert_eq!(scores[2].recall, Some(0.0));
        assert_eq!(scores[2].f1, None);
        assert_eq!(scores[2].support, 1);
    }

    #[test]
    fn sample_standard_deviation() {
        let (mean, std) = mean_and_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(mean, Some(5.0));
        assert!((std.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_and_std(&[3.0]), (Some(3.0), None));
    }
}
