//! What the commands share on the terminal: the progress bars of `prepare` and of a training run,
//! and durations in words.

use dexpression_dataset::{Stage, Step};
use dexpression_train::{EpochRecord, FoldInfo, Progress, RunInfo};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar that [`show_prepare`] drives from `prepare`'s progress reports.
pub fn prepare_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{msg:>13} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Moves the bar to a progress report (called from worker threads; indicatif is thread-safe).
pub fn show_prepare(bar: &ProgressBar, progress: Step) {
    if progress.done == 0 || progress.stage == Stage::Scanning {
        bar.set_message(progress.stage.to_string());
        bar.set_length(progress.total as u64);
    }
    bar.set_position(progress.done as u64);
}

/// Bars for folds, epochs and batches (images/s and ETA), and a line per epoch; silent when quiet.
pub struct Bars {
    quiet: bool,
    multi: MultiProgress,
    folds: ProgressBar,
    epochs: ProgressBar,
    batches: ProgressBar,
    n_folds: usize,
    epochs_per_fold: usize,
}

impl Bars {
    /// Bars drawn on stderr, or hidden when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let multi = if quiet {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
        };
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let folds = multi.add(
            ProgressBar::new(0)
                .with_style(style("folds   [{bar:30}] {pos}/{len} {elapsed_precise}")),
        );
        let epochs = multi.add(
            ProgressBar::new(0)
                .with_style(style("epochs  [{bar:30}] {pos}/{len} {msg} (ETA {eta})")),
        );
        let batches = multi.add(ProgressBar::new(0).with_style(style(
            "images  [{bar:30}] {pos}/{len} {msg} {per_sec} (ETA {eta})",
        )));
        Bars {
            quiet,
            multi,
            folds,
            epochs,
            batches,
            n_folds: 0,
            epochs_per_fold: 0,
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        self.batches.finish_and_clear();
        self.epochs.finish_and_clear();
        self.folds.finish_and_clear();
    }

    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            // Not a terminal (a log file, CI): no bars, so plain lines.
            println!("{text}");
        } else {
            // Printed above the bars, which stay at the bottom.
            let _ = self.multi.println(text);
        }
    }
}

impl Progress for Bars {
    fn run_start(&mut self, info: &RunInfo) {
        self.n_folds = info.n_folds;
        self.epochs_per_fold = info.epochs;
        self.folds.set_length(info.folds.len() as u64);
        self.line(format!(
            "training fold(s) {:?} of {}, {} epochs each, on {}",
            info.folds, info.n_folds, info.epochs, info.device
        ));
    }

    fn warning(&mut self, message: &str) {
        if self.multi.is_hidden() {
            eprintln!("warning: {message}");
        } else {
            let _ = self.multi.println(format!("warning: {message}"));
        }
    }

    fn fold_start(&mut self, fold: &FoldInfo) {
        self.epochs.set_length(fold.epochs as u64);
        self.epochs.set_position(fold.resumed_epochs as u64);
        self.epochs.reset_eta();
        self.epochs.set_message(format!("fold {}", fold.fold));
        let resumed = if fold.resumed_epochs > 0 {
            format!(", resumed after epoch {}", fold.resumed_epochs)
        } else {
            String::new()
        };
        let validation = if fold.n_validation > 0 {
            format!(", {} validation", fold.n_validation)
        } else {
            String::new()
        };
        self.line(format!(
            "fold {}/{}: {} training{validation}, {} test samples{resumed}",
            fold.fold, self.n_folds, fold.n_train, fold.n_test
        ));
    }

    fn fold_skipped(&mut self, fold: usize) {
        self.line(format!(
            "fold {fold}/{}: already finished, not trained again",
            self.n_folds
        ));
        self.folds.inc(1);
    }

    fn epoch_start(&mut self, _fold: usize, epoch: usize, _n_batches: usize, n_images: usize) {
        self.batches.set_length(n_images as u64);
        self.batches.set_position(0);
        self.batches.reset();
        self.batches.set_message(format!("epoch {epoch}"));
    }

    fn batch_done(&mut self, _fold: usize, _epoch: usize, _batch: usize, n_images: usize) {
        self.batches.inc(n_images as u64);
    }

    fn epoch_done(&mut self, record: &EpochRecord) {
        self.epochs.inc(1);
        self.line(format!(
            "fold {}/{} epoch {:>2}/{}  train acc {:6.2}% loss {:.4}  test acc {:6.2}% loss {:.4}  ({:.1} s, {:.1} images/s)",
            record.fold,
            self.n_folds,
            record.epoch,
            self.epochs_per_fold,
            record.train.accuracy,
            record.train.loss,
            record.test.accuracy,
            record.test.loss,
            record.seconds,
            record.images_per_second,
        ));
    }

    fn fold_done(&mut self, _fold: usize) {
        self.folds.inc(1);
    }
}

/// `1 h 02 min`, `3 min 05 s` or `12.3 s`.
pub fn format_seconds(seconds: f64) -> String {
    let whole = seconds as u64;
    if whole >= 3600 {
        format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60)
    } else if whole >= 60 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{seconds:.1} s")
    }
}
