//! `lines = "FILE"`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::LinesSource;
use crate::sources::input_file::InputPath;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A text file, one item per non-empty line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinesSpec {
    /// The file: a path or a store's URL.
    pub path: InputPath,
}

impl SourceKindConfig for LinesSpec {
    type Raw = String;

    fn check(path: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(LinesSpec {
            path: InputPath::of(path, base_dir),
        })
    }
}

impl SourceConfig for LinesSpec {
    fn default_key(&self) -> Option<String> {
        Some("{line}".to_owned())
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(LinesSource::read(self.path.open(cx.stores)?)?))
    }
}
