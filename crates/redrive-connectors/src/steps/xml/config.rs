//! `xml = { field, path, namespaces, keep_ancestors, into, missing }`.

use std::collections::BTreeMap;
use std::sync::Arc;

use redrive_core::step::{Step, StepTraits};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::XmlStep;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};
use crate::xml::{XmlPath, parse_xml_path};

/// `xml = { field, path, namespaces, keep_ancestors, into, missing }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlSpec {
    /// The field holding the document.
    pub field: String,
    /// The element to keep.
    pub path: XmlPath,
    /// Emit the ancestors' start and end tags around the element (a minimal document).
    pub keep_ancestors: bool,
    /// The field the result is bound to, for later steps.
    pub into: String,
    /// What to do when the document has no such element.
    pub missing: Missing,
}

/// What an `xml` step does when the path matches nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// The item fails (the default: nothing is dropped silently).
    #[default]
    Fail,
    /// The item is skipped with the reason `path not found`.
    Skip,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawXml {
    field: String,
    path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    namespaces: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "crate::plan::is_default")]
    keep_ancestors: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    into: Option<String>,
    #[serde(default, skip_serializing_if = "crate::plan::is_default")]
    missing: Missing,
}

impl StepKind for XmlSpec {
    type Raw = RawXml;

    fn check(raw: &RawXml, _cx: &CheckContext<'_>) -> Result<Self, String> {
        let path = parse_xml_path(&raw.path, &raw.namespaces)?;
        Ok(XmlSpec {
            field: raw.field.clone(),
            path,
            keep_ancestors: raw.keep_ancestors,
            into: raw.into.clone().unwrap_or_else(|| raw.field.clone()),
            missing: raw.missing,
        })
    }

    fn canonicalize(raw: &mut RawXml) {
        let field = raw.field.clone();
        crate::plan::unless_default(&mut raw.into, |into| *into == field);
    }
}

impl StepConfig for XmlSpec {
    fn templates(&self) -> Vec<&Template> {
        Vec::new()
    }

    fn fields_read(&self) -> Vec<(&'static str, &str)> {
        vec![("xml.field", &self.field)]
    }

    fn fields_bound(&self) -> Vec<&str> {
        vec![&self.into]
    }

    /// It only computes a field for later steps.
    fn traits(&self) -> StepTraits {
        StepTraits {
            binds_fields: true,
            ..StepTraits::default()
        }
    }

    fn build(&self, _cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(XmlStep::new(self.clone())))
    }
}
