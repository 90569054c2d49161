//! `jsonl = "FILE"`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::JsonlSource;
use crate::sources::input_file::InputPath;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A file of JSON objects, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonlSpec {
    /// The file: a path or a store's URL.
    pub path: InputPath,
}

impl SourceKindConfig for JsonlSpec {
    type Raw = String;

    fn check(path: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(JsonlSpec {
            path: InputPath::of(path, base_dir),
        })
    }
}

impl SourceConfig for JsonlSpec {
    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(JsonlSource::read(self.path.open(cx.stores)?)?))
    }
}
