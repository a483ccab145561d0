//! `cargo xtask synth`: write a synthetic CK+ in the official layout (see
//! `dexpression_dataset::synth`).

use dexpression_dataset::synth::{generate, SynthOptions};
use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Output folder (created; a previous synth output there is replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of people (each gets one sequence per expression plus an unlabeled one).
    #[arg(long, default_value_t = SynthOptions::default().subjects)]
    pub subjects: usize,
    /// Random seed: the same seed gives identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = SynthOptions {
        subjects: args.subjects,
        seed: args.seed,
        ..SynthOptions::default()
    };
    let started = std::time::Instant::now();
    let written = generate(&args.out, &options)?;
    println!(
        "wrote a synthetic CK+ to {} in {:.1} s: {} subjects, {} sequences ({} labeled), {} frames \
         ({} colour, {} at 640x480)",
        written.root.display(),
        started.elapsed().as_secs_f64(),
        written.n_subjects,
        written.n_sequences,
        written.n_labeled_sequences,
        written.n_frames,
        written.n_colour_frames,
        written.n_short_frames,
    );
    println!(
        "prepare it with: cargo xtask prepare --source {}",
        written.root.display()
    );
    Ok(())
}
