//! The data folder's layout (`data/` by default): where the downloads, the imported release,
//! the weights and the crop cache go. Here, not in the download crate, so that every program
//! (xtask built without its download stack included) finds the same paths.

use std::path::{Path, PathBuf};

/// The folder of a data folder that holds the official CK+ release once imported
/// (`dexpression_download::import_ckplus`): `<data>/ckplus`.
pub const OFFICIAL_RELEASE_FOLDER: &str = "ckplus";

/// The folder of a data folder that holds the Hugging Face mirror of CK+, one folder per class
/// (`dexpression_download::download_mirror`): `<data>/ckplus48`.
pub const MIRROR_FOLDER: &str = "ckplus48";

/// The file name of the PyTorch port's checkpoint once converted to safetensors.
pub const PORT_WEIGHTS_FILE: &str = "dexpression-port-fold1.safetensors";

/// The data folder when none is given.
pub const DEFAULT_DATA_DIR: &str = "data";

/// The layout of the data folder (`data/` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl Default for DataDir {
    /// [`DEFAULT_DATA_DIR`], relative to the working folder.
    fn default() -> Self {
        DataDir::new(DEFAULT_DATA_DIR)
    }
}

impl DataDir {
    /// A data folder at `root`; nothing is created until something is written.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mirror converted to folder-per-class: `<root>/ckplus48/<Class>/<stem>.png`.
    pub fn mirror_dir(&self) -> PathBuf {
        self.root.join(MIRROR_FOLDER)
    }

    /// The official release imported from disk: `<root>/ckplus/cohn-kanade-images/...`.
    pub fn ckplus_dir(&self) -> PathBuf {
        self.root.join(OFFICIAL_RELEASE_FOLDER)
    }

    /// The dataset to use: the official release if it was imported, else the mirror.
    pub fn default_source(&self) -> PathBuf {
        let official = self.ckplus_dir();
        if official.exists() {
            official
        } else {
            self.mirror_dir()
        }
    }

    /// The cache of prepared crops ([`crate::prepare`]'s `cache_dir`): `<root>/cache`.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Pretrained weights: `<root>/weights/`.
    pub fn weights_dir(&self) -> PathBuf {
        self.root.join("weights")
    }

    /// The converted port checkpoint: `<root>/weights/dexpression-port-fold1.safetensors`.
    pub fn port_weights(&self) -> PathBuf {
        self.weights_dir().join(PORT_WEIGHTS_FILE)
    }
}

/// The dataset to use in a data folder: [`DataDir::default_source`].
pub fn default_source(data: &Path) -> PathBuf {
    DataDir::new(data).default_source()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_release_is_preferred_once_imported() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.default_source(), dir.path().join("ckplus48"));
        std::fs::create_dir(dir.path().join("ckplus")).unwrap();
        assert_eq!(default_source(dir.path()), dir.path().join("ckplus"));
        assert_eq!(
            DataDir::default().port_weights(),
            Path::new("data/weights/dexpression-port-fold1.safetensors")
        );
    }
}
