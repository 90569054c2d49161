//! `glob = "PATTERN"`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::job::template;
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;

use super::GlobSource;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// Local files matching a glob pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobSpec {
    /// The pattern, absolute; may use the parent's fields under `[expand]`.
    pub pattern: Template,
}

impl SourceKindConfig for GlobSpec {
    type Raw = String;

    fn check(pattern: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(GlobSpec {
            pattern: template("glob", &base_dir.join(pattern).display().to_string())?,
        })
    }
}

impl SourceConfig for GlobSpec {
    fn templates(&self) -> Vec<&Template> {
        vec![&self.pattern]
    }

    fn default_key(&self) -> Option<String> {
        Some("{path}".to_owned())
    }

    fn expands(&self) -> bool {
        true
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(
            GlobSource::new(self.pattern.clone())?.leaving_out_own_files(cx.stores),
        ))
    }
}
