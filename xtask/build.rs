//! No build step: this script exists so that cargo resolves xtask's `[build-dependencies]`,
//! which pin features of proc-macro dependencies (see Cargo.toml).

fn main() {}
