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
    pub use crate::relay::Args;

    pub fn run(args: Args) -> anyhow::Result<()> {
        crate::relay::run_with_feature("download", "download", "a few minutes", args)
    }
}
