//! `csv = "FILE"`, with `delimiter` beside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::CsvSource;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A CSV file with a header row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvSpec {
    /// The file.
    pub path: PathBuf,
    /// Field delimiter.
    pub delimiter: u8,
}

impl SourceKindConfig for CsvSpec {
    type Raw = String;
    const OPTIONS: &'static [&'static str] = &["delimiter"];

    fn check(path: &String, options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        let delimiter = match options.string("delimiter")? {
            None => b',',
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some("\\t") => b'\t',
            Some(d) => return Err(format!("`delimiter` must be one character, got `{d}`")),
        };
        Ok(CsvSpec {
            path: base_dir.join(path),
            delimiter,
        })
    }

    fn canonicalize(_path: &mut String, options: &mut SourceOptions) {
        options.unless_default("delimiter", |d| d.as_str() == Some(","));
    }
}

impl SourceConfig for CsvSpec {
    fn build(&self, _cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(CsvSource::open(&self.path, self.delimiter)?))
    }
}
