//! Where the loaders find ready model files, and whether they are there.

use std::path::PathBuf;

use super::encoders::EncoderModel;
use super::pins::{GENERATOR_DIR, GENERATOR_FILE, READY_MARKER};
use crate::{Error, Result};

/// Where the loaders find ready model files.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    pub root: PathBuf,
}

impl ModelPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$CLOSER_MODEL_DIR`, else the user's cache dir (`~/.cache/closer/models` on Linux).
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("CLOSER_MODEL_DIR") {
            return PathBuf::from(dir);
        }
        dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("closer")
            .join("models")
    }

    /// The default encoder's folder.
    pub fn encoder_dir(&self) -> PathBuf {
        self.encoder_dir_of(EncoderModel::MiniLm)
    }
    pub fn encoder_dir_of(&self, model: EncoderModel) -> PathBuf {
        self.root.join(model.dir())
    }
    pub fn generator_file(&self) -> PathBuf {
        self.root.join(GENERATOR_DIR).join(GENERATOR_FILE)
    }
    pub fn encoder_ready(&self) -> bool {
        self.encoder_ready_of(EncoderModel::MiniLm)
    }
    pub fn encoder_ready_of(&self, model: EncoderModel) -> bool {
        let dir = self.encoder_dir_of(model);
        dir.join(READY_MARKER).is_file()
            && model
                .files()
                .iter()
                .all(|(_, name, _)| dir.join(name).is_file())
    }

    /// An error naming the folder when `model` is not pulled, or Ok.
    pub fn check_encoder(&self, model: EncoderModel) -> Result<()> {
        if self.encoder_ready_of(model) {
            Ok(())
        } else {
            Err(Error::Missing(format!(
                "{} (run `closer models pull --intent-encoder {}`)",
                self.encoder_dir_of(model).display(),
                model.key()
            )))
        }
    }
    pub fn generator_ready(&self) -> bool {
        self.root.join(GENERATOR_DIR).join(READY_MARKER).is_file()
            && self.generator_file().is_file()
    }

    /// An error naming what is missing, or Ok.
    pub fn check(&self) -> Result<()> {
        let mut missing = vec![];
        if !self.encoder_ready() {
            missing.push(self.encoder_dir().display().to_string());
        }
        if !self.generator_ready() {
            missing.push(self.generator_file().display().to_string());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Missing(missing.join(", ")))
        }
    }
}
