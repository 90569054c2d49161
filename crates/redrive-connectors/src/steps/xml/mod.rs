//! `xml = { field, path, namespaces, keep_ancestors, into, missing }`: keeps one element of an
//! XML field and binds it to `into` for later steps. No side effect: on resume it runs again.

pub(crate) mod config;

use std::borrow::Cow;

use self::config::{Missing, XmlSpec};
use async_trait::async_trait;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Done, Outcome, Step, StepContext};
use redrive_core::template::TemplateError;

/// Documents at least this large are parsed on the blocking pool, off the async workers.
const BLOCKING_FROM: usize = 64 * 1024;

/// Extracts an element.
#[derive(Debug)]
pub struct XmlStep {
    spec: XmlSpec,
}

impl XmlStep {
    /// A step as the plan describes it.
    pub fn new(spec: XmlSpec) -> Self {
        Self { spec }
    }
}

#[async_trait]
impl Step for XmlStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let Some(doc) = fields.get(&self.spec.field) else {
            return Err(StepError::permanent(format!(
                "the item has no field `{}` (for a `sql` source: is it in `columns`, and is the row still there?)",
                self.spec.field
            )));
        };
        let found = if doc.len() >= BLOCKING_FROM {
            let (doc, path, keep) = (
                doc.clone(),
                self.spec.path.clone(),
                self.spec.keep_ancestors,
            );
            tokio::task::spawn_blocking(move || crate::xml::extract(&doc, &path, keep))
                .await
                .map_err(|e| StepError::permanent(format!("the XML parser stopped: {e}")))?
        } else {
            crate::xml::extract(doc, &self.spec.path, self.spec.keep_ancestors)
        };
        let found =
            found.map_err(|e| StepError::permanent(format!("field `{}`: {e}", self.spec.field)))?;
        match (found, self.spec.missing) {
            (Some(text), _) => Ok(Outcome::Done(Done {
                fields: Fields::from([(self.spec.into.clone(), text)]),
                ..Done::default()
            })),
            (None, Missing::Skip) => Ok(Outcome::Skipped(Cow::Owned(format!(
                "{} not found",
                self.spec.path.text
            )))),
            (None, Missing::Fail) => Err(StepError::permanent(format!(
                "field `{}` has no element {} (set `missing = \"skip\"` to skip such items)",
                self.spec.field, self.spec.path.text
            ))),
        }
    }

    fn describe(&self, _fields: &Fields) -> Result<String, TemplateError> {
        Ok(format!(
            "keep {} of `{}`{} as `{}`",
            self.spec.path.text,
            self.spec.field,
            if self.spec.keep_ancestors {
                " with its ancestors"
            } else {
                ""
            },
            self.spec.into
        ))
    }
}
