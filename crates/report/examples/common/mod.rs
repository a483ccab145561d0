//! What the examples share: the exit of a `main` that reports its error as a sentence.

use std::process::ExitCode;

/// Success, or the error printed as its message (not as `Debug`, which `main` returning a
/// `Result` would print) and failure.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
