//! `cargo xtask <command>`: the dexpression command line from a checkout (the same code as the
//! installed `dexpression` binary; see crates/cli).

fn main() -> std::process::ExitCode {
    dexpression_cli::main()
}
