//! `parquet = "FILE"`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::ParquetSource;
use crate::sources::input_file::InputPath;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// An Apache Parquet file, one item per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParquetSpec {
    /// The file: a path or a store's URL.
    pub path: InputPath,
}

impl SourceKindConfig for ParquetSpec {
    type Raw = String;

    fn check(path: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(ParquetSpec {
            path: InputPath::of(path, base_dir),
        })
    }
}

impl SourceConfig for ParquetSpec {
    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(ParquetSource::read(self.path.open(cx.stores)?)?))
    }
}
