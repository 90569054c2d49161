//! `list = "URL/PREFIX/"`, with `recursive` beside it.

use std::path::Path;
use std::sync::Arc;

use redrive_core::job::template;
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;

use super::ListSource;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// An object-store prefix listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListSpec {
    /// The prefix URL.
    pub url: Template,
    /// Descend into "subdirectories".
    pub recursive: bool,
}

impl SourceKindConfig for ListSpec {
    type Raw = String;
    const OPTIONS: &'static [&'static str] = &["recursive"];

    fn check(url: &String, options: &SourceOptions, _base_dir: &Path) -> Result<Self, String> {
        crate::storage::check_location("list", url)?;
        Ok(ListSpec {
            url: template("list", url)?,
            recursive: options.bool("recursive")?.unwrap_or(true),
        })
    }

    fn canonicalize(_url: &mut String, options: &mut SourceOptions) {
        options.unless_default("recursive", |r| r.as_bool() == Some(true));
    }
}

impl SourceConfig for ListSpec {
    fn templates(&self) -> Vec<&Template> {
        vec![&self.url]
    }

    fn default_key(&self) -> Option<String> {
        Some("{key}".to_owned())
    }

    fn expands(&self) -> bool {
        true
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(ListSource::new(
            cx.stores,
            self.url.clone(),
            self.recursive,
        )?))
    }
}
