//! `lines = "FILE"`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::LinesSource;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A text file, one item per non-empty line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinesSpec {
    /// The file.
    pub path: PathBuf,
}

impl SourceKindConfig for LinesSpec {
    type Raw = String;

    fn check(path: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(LinesSpec {
            path: base_dir.join(path),
        })
    }
}

impl SourceConfig for LinesSpec {
    fn default_key(&self) -> Option<String> {
        Some("{line}".to_owned())
    }

    fn build(&self, _cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(LinesSource::open(&self.path)?))
    }
}
