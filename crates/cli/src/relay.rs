//! `download` and `serve` sit behind xtask features so that the demo's cold build stays small.
//! Without its feature, such a command re-runs xtask through cargo with the feature switched on
//! (compiled on first use), passing every argument on untouched.
//!
//! Only a binary that cargo itself started (`cargo xtask`, `cargo run`, cargo's tests) relays: an
//! installed `dexpression` may have no source tree and no toolchain beside it, so it says how to
//! reinstall with the feature instead.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// Every argument of the command, passed on untouched (`--help` included).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<OsString>,
}

impl Args {
    /// The arguments after the command's name on this process's command line (the binary
    /// takes no options before its command), for a command that relays only some of its uses.
    #[cfg_attr(feature = "serve", allow(dead_code))]
    pub fn from_process() -> Self {
        Args {
            args: std::env::args_os().skip(2).collect(),
        }
    }
}

/// Runs `cargo xtask <command> ARGS` with xtask's `feature`; `build_time` says how long its
/// first compilation takes.
pub fn run_with_feature(
    feature: &str,
    command: &str,
    build_time: &str,
    args: Args,
) -> anyhow::Result<()> {
    // `cargo run` sets CARGO to the cargo that runs us, so the same toolchain builds again; its
    // absence means we were not started by cargo (an installed binary, a container image).
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cargo = match std::env::var_os("CARGO") {
        Some(cargo) if Path::new(manifest).is_file() => cargo,
        _ => bail!(
            "`dexpression {command}` needs the `{feature}` feature, which this binary was built \
             without: reinstall it with `cargo install --path crates/cli --features {feature}` \
             from the source tree, or run `cargo xtask {command}` there"
        ),
    };
    eprintln!("running xtask with its `{feature}` feature (compiled on first use: {build_time})");
    let status = Command::new(&cargo)
        .args(["run", "--quiet", "--release", "--manifest-path", manifest])
        .args(["--features", feature, "--", command])
        .args(&args.args)
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    match status.code() {
        Some(0) => Ok(()),
        // The inner run has printed its own error; pass its exit code on.
        Some(code) => std::process::exit(code),
        None => bail!("`cargo xtask {command}` was stopped by a signal ({status})"),
    }
}
