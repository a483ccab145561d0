//! Imports a CK+ release (the official zips, a folder of them, or an extracted folder) into a
//! folder in the official layout, offline.
//!
//! ```text
//! cargo xtask synth --out /tmp/ck-synth            # or the zips you obtained under the CK+ licence
//! cargo run --release -p dexpression-download --example import_release -- /tmp/ck-synth /tmp/ckplus
//! ```

use std::path::PathBuf;

use dexpression_download::{import_ckplus, NoProgress, CKPLUS_PARTS};

fn main() -> std::process::ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [from, dest] = args.as_slice() else {
        eprintln!("usage: import_release <CK+ zip or folder> <output folder>");
        return std::process::ExitCode::FAILURE;
    };
    match import_ckplus(from, dest, &NoProgress) {
        Ok(summary) => {
            println!(
                "{}{}",
                summary.dest.display(),
                if summary.already_imported {
                    " (already imported)"
                } else {
                    ""
                }
            );
            for (part, n_files) in CKPLUS_PARTS.iter().zip(summary.n_files_per_part) {
                println!("  {part}: {n_files} files");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
