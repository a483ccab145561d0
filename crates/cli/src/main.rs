//! The `dexpression` binary: the command line in [`dexpression_cli`].

fn main() -> std::process::ExitCode {
    dexpression_cli::main()
}
