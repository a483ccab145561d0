//! `cargo xtask import-torch`: the PyTorch port's checkpoints into safetensors.

use std::path::PathBuf;

use anyhow::Context;
use dexpression_dataset::DataDir;

/// Convert a PyTorch port checkpoint (`cnn-fold1-..._25-1.00.tar`, a bare `state_dict`, or a
/// DataParallel one) into DeXpression safetensors weights.
#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint written by `torch.save`.
    checkpoint: PathBuf,
    /// Where to write the safetensors weights.
    #[arg(long, default_value_os_t = DataDir::default().weights_dir().join("dexpression-port.safetensors"))]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.checkpoint.exists() {
        anyhow::bail!(
            "{}: no such file; pass a checkpoint written by the PyTorch port (`torch.save`), or get ready-made weights with `cargo xtask download --weights`",
            args.checkpoint.display()
        );
    }
    let summary = dexpression_model::import_torch(&args.checkpoint, &args.out)
        .with_context(|| format!("importing {}", args.checkpoint.display()))?;
    println!(
        "{} -> {}: {} tensors, {} classes, input {}x{}{}",
        summary.source.display(),
        summary.output.display(),
        summary.n_tensors,
        summary.config.n_classes,
        summary.config.image_size,
        summary.config.image_size,
        if summary.stripped_module_prefix {
            " (DataParallel `module.` prefix removed)"
        } else {
            ""
        }
    );
    Ok(())
}
