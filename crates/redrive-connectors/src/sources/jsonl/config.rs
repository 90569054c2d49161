//! `jsonl = "FILE"`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::JsonlSource;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A file of JSON objects, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonlSpec {
    /// The file.
    pub path: PathBuf,
}

impl SourceKindConfig for JsonlSpec {
    type Raw = String;

    fn check(path: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(JsonlSpec {
            path: base_dir.join(path),
        })
    }
}

impl SourceConfig for JsonlSpec {
    fn build(&self, _cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(JsonlSource::open(&self.path)?))
    }
}
