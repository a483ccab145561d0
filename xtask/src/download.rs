//! `cargo xtask download`: CK+ from the Hugging Face mirror (or the official release with
//! `--from`), and the PyTorch port's pretrained weights with `--weights`.
//!
//! The download stack (hf-hub with its async runtime and Xet client, parquet) is most of what
//! a cold build of xtask would compile, and only this command needs it. It therefore sits behind
//! xtask's `download` feature, so that `cargo xtask demo` on a fresh clone builds without it.
//! Without the feature, this command builds and runs xtask once more with it (the first time
//! takes a few minutes; after that both builds are kept side by side).

#[cfg(feature = "download")]
mod fetch;
#[cfg(feature = "download")]
pub use fetch::{run, Args};

#[cfg(not(feature = "download"))]
pub use relay::{run, Args};

#[cfg(not(feature = "download"))]
mod relay {
    use std::ffi::OsString;
    use std::process::Command;

    use anyhow::{bail, Context};

    /// Every argument of `cargo xtask download`, passed on untouched (`--help` included).
    #[derive(clap::Args)]
    #[command(disable_help_flag = true)]
    pub struct Args {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<OsString>,
    }

    pub fn run(args: Args) -> anyhow::Result<()> {
        // `cargo run` sets CARGO to the cargo that runs us, so the same toolchain builds again.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        eprintln!(
            "running xtask with its `download` feature (compiled on first use: a few minutes)"
        );
        let status = Command::new(&cargo)
            .args(["run", "--quiet", "--release", "--manifest-path", manifest])
            .args(["--features", "download", "--", "download"])
            .args(&args.args)
            .status()
            .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
        match status.code() {
            Some(0) => Ok(()),
            // The inner run has printed its own error; pass its exit code on.
            Some(code) => std::process::exit(code),
            None => bail!("`cargo xtask download` was stopped by a signal ({status})"),
        }
    }
}
