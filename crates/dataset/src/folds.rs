//! Grouped, stratified k-fold splits: no group (by default a person) on both sides of a fold.

use crate::{Error, Result, Sample, Usage};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::str::FromStr;

/// The unit that must not straddle train and test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SplitBy {
    /// No person in both train and test (the default, and the honest protocol).
    #[default]
    Subject,
    /// No sequence in both; the same person may appear on both sides with other expressions.
    Sequence,
    /// Shuffled frames: neighbouring frames of one sequence land on both sides. This is the
    /// PyTorch port's protocol, whose ~99% per fold comes from that leak.
    Frame,
    /// The dataset's own split (FER2013's `Usage`): one model trained on Training, its epoch
    /// chosen on PublicTest and tested on PrivateTest, as the literature reports FER2013. Not
    /// a k-fold split: see [`usage_split`].
    Usage,
}

impl SplitBy {
    /// Lower-case name: `subject`, `sequence` or `frame`.
    pub fn name(self) -> &'static str {
        match self {
            SplitBy::Subject => "subject",
            SplitBy::Sequence => "sequence",
            SplitBy::Frame => "frame",
            SplitBy::Usage => "usage",
        }
    }
}

display_by_name!(SplitBy);

impl FromStr for SplitBy {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "subject" | "subjects" => Ok(SplitBy::Subject),
            "sequence" | "sequences" => Ok(SplitBy::Sequence),
            "frame" | "frames" => Ok(SplitBy::Frame),
            "usage" => Ok(SplitBy::Usage),
            _ => Err(Error::InvalidOption {
                name: "split",
                value: text.to_string(),
                expected: "subject, sequence, frame or usage",
            }),
        }
    }
}

/// The dataset's own split: indices into the samples, each list ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSplit {
    /// Samples marked Training.
    pub training: Vec<usize>,
    /// Samples marked PublicTest (used to choose the epoch).
    pub public_test: Vec<usize>,
    /// Samples marked PrivateTest (only reported).
    pub private_test: Vec<usize>,
}

/// Splits samples by their own `usage` (FER2013's Training / PublicTest / PrivateTest).
/// Errors when a sample has none (the source has no split of its own) or a part is empty.
pub fn usage_split(samples: &[Sample]) -> Result<UsageSplit> {
    let mut split = UsageSplit {
        training: Vec::new(),
        public_test: Vec::new(),
        private_test: Vec::new(),
    };
    for (index, sample) in samples.iter().enumerate() {
        let part = match sample.usage {
            Some(Usage::Training) => &mut split.training,
            Some(Usage::PublicTest) => &mut split.public_test,
            Some(Usage::PrivateTest) => &mut split.private_test,
            None => {
                return Err(Error::InvalidOption {
                    name: "split",
                    value: format!("usage ({} has no Usage)", sample.source.display()),
                    expected: "subject, sequence or frame: only FER2013's CSV has its own split",
                })
            }
        };
        part.push(index);
    }
    for (usage, part) in [
        (Usage::Training, &split.training),
        (Usage::PublicTest, &split.public_test),
        (Usage::PrivateTest, &split.private_test),
    ] {
        if part.is_empty() {
            return Err(Error::InvalidOption {
                name: "split",
                value: format!("usage (no {usage} sample)"),
                expected: "a dataset with Training, PublicTest and PrivateTest rows, or k folds (subject, sequence or frame)",
            });
        }
    }
    Ok(split)
}

/// One fold: indices into the samples, each list sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    /// Samples to train on.
    pub train: Vec<usize>,
    /// Held-out samples.
    pub test: Vec<usize>,
}

/// Splits samples into `k` folds whose test sets partition the samples.
///
/// Samples are grouped by `split` (subject, sequence or single frame) and whole groups are
/// dealt to folds so that each fold's class mix is as close to the overall mix as the groups
/// allow, with fold sizes kept even. The result depends only on the samples' groups and labels
/// and on `seed`. Where the source names no people every sample is a group of its own, so the
/// folds are stratified by class. Errors when `k < 2`, there are fewer groups than `k`, or
/// `split` is [`SplitBy::Usage`] (see [`usage_split`]).
pub fn k_fold(samples: &[Sample], k: usize, split: SplitBy, seed: u64) -> Result<Vec<Fold>> {
    if split == SplitBy::Usage {
        return Err(Error::InvalidOption {
            name: "split",
            value: "usage".to_string(),
            expected:
                "subject, sequence or frame for k folds; the usage split is one fold (usage_split)",
        });
    }
    if k < 2 {
        return Err(Error::InvalidOption {
            name: "folds",
            value: k.to_string(),
            expected: "at least 2",
        });
    }
    let n_classes = samples.iter().map(|s| s.label + 1).max().unwrap_or(0);
    // Group membership in first-seen order of the sorted group key, so the result does not
    // depend on HashMap ordering.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (sample_idx, sample) in samples.iter().enumerate() {
        let key = match split {
            SplitBy::Subject => sample.subject.clone(),
            SplitBy::Sequence => format!("{}\u{0}{}", sample.subject, sample.sequence),
            SplitBy::Frame | SplitBy::Usage => sample_idx.to_string(),
        };
        groups.entry(key).or_default().push(sample_idx);
    }
    if groups.len() < k {
        return Err(Error::TooFewGroups {
            k,
            n_groups: groups.len(),
            split,
        });
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    groups.shuffle(&mut rng);
    // Largest groups first: they are the hardest to place, small ones then even things out.
    groups.sort_by_key(|members| std::cmp::Reverse(members.len()));

    let class_totals = count_classes(samples, (0..samples.len()).collect::<Vec<_>>(), n_classes);
    let mut fold_counts = vec![vec![0usize; n_classes]; k];
    let mut fold_members: Vec<Vec<usize>> = vec![Vec::new(); k];
    let target_size = samples.len() as f64 / k as f64;
    for members in groups {
        let group_counts = count_classes(samples, members.iter().copied(), n_classes);
        let best_fold = (0..k)
            .min_by(|&a, &b| {
                let cost_a = placement_cost(
                    &fold_counts,
                    a,
                    &group_counts,
                    &class_totals,
                    k,
                    target_size,
                );
                let cost_b = placement_cost(
                    &fold_counts,
                    b,
                    &group_counts,
                    &class_totals,
                    k,
                    target_size,
                );
                cost_a.total_cmp(&cost_b)
            })
            .expect("k >= 2 folds were checked above");
        for (count, added) in fold_counts[best_fold].iter_mut().zip(&group_counts) {
            *count += added;
        }
        fold_members[best_fold].extend(members);
    }

    let folds = (0..k)
        .map(|fold_idx| {
            let mut test = fold_members[fold_idx].clone();
            test.sort_unstable();
            let mut train: Vec<usize> = fold_members
                .iter()
                .enumerate()
                .filter(|(other_idx, _)| *other_idx != fold_idx)
                .flat_map(|(_, members)| members.iter().copied())
                .collect();
            train.sort_unstable();
            Fold { train, test }
        })
        .collect();
    Ok(folds)
}

fn count_classes(
    samples: &[Sample],
    indices: impl IntoIterator<Item = usize>,
    n_classes: usize,
) -> Vec<usize> {
    let mut counts = vec![0; n_classes];
    for index in indices {
        counts[samples[index].label] += 1;
    }
    counts
}

/// How far the folds would be from an even, stratified split if the group went to `fold`:
/// squared overshoot of each class's per-fold share plus squared overshoot of the fold size.
fn placement_cost(
    fold_counts: &[Vec<usize>],
    fold: usize,
    group_counts: &[usize],
    class_totals: &[usize],
    k: usize,
    target_size: f64,
) -> f64 {
    let mut cost = 0.0;
    let mut size_after = 0.0;
    for class in 0..class_totals.len() {
        let after = (fold_counts[fold][class] + group_counts[class]) as f64;
        size_after += after;
        if class_totals[class] == 0 {
            continue;
        }
        let target = class_totals[class] as f64 / k as f64;
        let before = fold_counts[fold][class] as f64;
        // The increase in squared deviation from the class target, normalised per class so
        // rare classes (contempt, fear) weigh as much as common ones.
        cost += ((after - target).powi(2) - (before - target).powi(2)) / target.max(1.0);
    }
    let size_before = size_after - group_counts.iter().sum::<usize>() as f64;
    cost += ((size_after - target_size).powi(2) - (size_before - target_size).powi(2))
        / target_size.max(1.0);
    cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::PathBuf;

    fn sample(subject: usize, sequence: usize, frame: u32, label: usize) -> Sample {
        Sample {
            pixels: Vec::new(),
            label,
            subject: format!("S{subject:03}"),
            sequence: format!("S{subject:03}_{sequence:03}"),
            frame,
            source: PathBuf::new(),
            crop: crate::CropMethod::Landmarks,
            usage: None,
        }
    }

    /// 20 subjects, 7 sequences each (one per class), 3 frames per sequence.
    fn samples() -> Vec<Sample> {
        let mut samples = Vec::new();
        for subject in 0..20 {
            for label in 0..7 {
                if (subject + label) % 5 == 0 {
                    continue; // Not every subject shows every class.
                }
                for frame in 0..3 {
                    samples.push(sample(subject, label + 1, frame, label));
                }
            }
        }
        samples
    }

    fn check(samples: &[Sample], k: usize, split: SplitBy) -> Vec<Fold> {
        let folds = k_fold(samples, k, split, 7).expect("enough groups");
        assert_eq!(folds.len(), k);
        let mut seen = vec![0; samples.len()];
        for fold in &folds {
            assert_eq!(fold.train.len() + fold.test.len(), samples.len());
            for &index in &fold.test {
                seen[index] += 1;
            }
            let group = |index: usize| match split {
                SplitBy::Subject => samples[index].subject.clone(),
                SplitBy::Sequence => samples[index].sequence.clone(),
                SplitBy::Frame | SplitBy::Usage => index.to_string(),
            };
            let train_groups: HashSet<String> = fold.train.iter().map(|&i| group(i)).collect();
            let test_groups: HashSet<String> = fold.test.iter().map(|&i| group(i)).collect();
            assert!(
                train_groups.is_disjoint(&test_groups),
                "a {split} group is on both sides"
            );
        }
        assert!(
            seen.iter().all(|&count| count == 1),
            "test sets must partition the samples"
        );
        folds
    }

    #[test]
    fn subject_folds_keep_people_apart_and_are_balanced() {
        let samples = samples();
        let folds = check(&samples, 5, SplitBy::Subject);
        for fold in &folds {
            assert!((fold.test.len() as f64 - samples.len() as f64 / 5.0).abs() <= 21.0 + 3.0);
            // Every class appears in every test fold with 20 subjects.
            let classes: HashSet<usize> = fold.test.iter().map(|&i| samples[i].label).collect();
            assert_eq!(classes.len(), 7);
        }
    }

    #[test]
    fn sequence_and_frame_folds_partition() {
        let samples = samples();
        check(&samples, 10, SplitBy::Sequence);
        let folds = check(&samples, 10, SplitBy::Frame);
        for fold in &folds {
            let expected = samples.len() as f64 / 10.0;
            assert!((fold.test.len() as f64 - expected).abs() <= 2.0);
        }
    }

    #[test]
    fn folds_are_deterministic_per_seed() {
        let samples = samples();
        let first = k_fold(&samples, 5, SplitBy::Subject, 1).expect("enough groups");
        let again = k_fold(&samples, 5, SplitBy::Subject, 1).expect("enough groups");
        assert_eq!(first, again);
        let frames = k_fold(&samples, 5, SplitBy::Frame, 1).expect("enough groups");
        let other = k_fold(&samples, 5, SplitBy::Frame, 2).expect("enough groups");
        assert_ne!(frames, other);
    }

    #[test]
    fn too_few_groups_is_an_error() {
        let samples: Vec<Sample> = (0..9).map(|i| sample(i % 3, 1, i as u32, 0)).collect();
        let error = k_fold(&samples, 5, SplitBy::Subject, 0).expect_err("3 subjects < 5 folds");
        assert!(error.to_string().contains("only 3 distinct subject"));
        assert!(k_fold(&samples, 1, SplitBy::Frame, 0).is_err());
        assert!(k_fold(&samples, 3, SplitBy::Subject, 0).is_ok());
        assert_eq!("Frame".parse::<SplitBy>().ok(), Some(SplitBy::Frame));
        assert!("person".parse::<SplitBy>().is_err());
    }
}
