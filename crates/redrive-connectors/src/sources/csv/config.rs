//! `csv = "FILE"`, with `delimiter` beside it.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::CsvSource;
use crate::sources::input_file::InputPath;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A CSV file with a header row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvSpec {
    /// The file: a path or a store's URL.
    pub path: InputPath,
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
            path: InputPath::of(path, base_dir),
            delimiter,
        })
    }

    fn canonicalize(_path: &mut String, options: &mut SourceOptions) {
        options.unless_default("delimiter", |d| d.as_str() == Some(","));
    }
}

impl SourceConfig for CsvSpec {
    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        let file = self.path.open(cx.stores)?;
        Ok(Arc::new(CsvSource::read(file, self.delimiter)?))
    }
}
