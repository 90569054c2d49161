//! `inventory = "URL/manifest.json"`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};

use super::InventorySource;
use crate::sources::input_file::InputPath;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// An S3 Inventory or Azure Blob Inventory report, named by its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventorySpec {
    /// The manifest: a store's URL or a path.
    pub manifest: InputPath,
}

impl SourceKindConfig for InventorySpec {
    type Raw = String;

    fn check(manifest: &String, _options: &SourceOptions, base_dir: &Path) -> Result<Self, String> {
        Ok(InventorySpec {
            manifest: InputPath::of(manifest, base_dir),
        })
    }
}

impl SourceConfig for InventorySpec {
    fn default_key(&self) -> Option<String> {
        Some("{key}".to_owned())
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        let manifest = self.manifest.open(cx.stores)?;
        Ok(Arc::new(InventorySource::read(manifest, cx.stores)?))
    }
}
