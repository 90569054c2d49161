//! `exists = "URL"` or `exists = { url, negate }`.

use std::sync::Arc;

use redrive_core::job::template;
use redrive_core::step::Step;
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::ExistsStep;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};

/// Skip the item when the object exists (or, negated, when it is missing).
#[derive(Clone, Debug)]
pub struct ExistsSpec {
    /// The object's URL.
    pub url: Template,
    /// Skip when missing instead.
    pub negate: bool,
}

/// As written: a URL, or a table.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawExists {
    Url(String),
    Table(RawExistsTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExistsTable {
    url: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    negate: bool,
}

impl StepKind for ExistsSpec {
    type Raw = RawExists;

    fn check(raw: &RawExists, _cx: &CheckContext<'_>) -> Result<Self, String> {
        let (url, negate) = match raw {
            RawExists::Url(url) => (url.as_str(), false),
            RawExists::Table(table) => (table.url.as_str(), table.negate),
        };
        crate::storage::check_location("exists", url)?;
        Ok(ExistsSpec {
            url: template("exists", url)?,
            negate,
        })
    }

    fn canonicalize(raw: &mut RawExists) {
        if let RawExists::Table(table) = raw
            && !table.negate
        {
            *raw = RawExists::Url(std::mem::take(&mut table.url));
        }
    }
}

impl StepConfig for ExistsSpec {
    fn templates(&self) -> Vec<&Template> {
        vec![&self.url]
    }

    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(ExistsStep::new(
            self.url.clone(),
            self.negate,
            Arc::clone(cx.stores),
        )))
    }
}
