//! `require = "PATH|URL|GLOB"` on any step: the step runs only when something matches; the
//! match is bound to a field (`input` by default) for this step and the later ones.

use std::sync::Arc;

use async_trait::async_trait;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Check, NO_INPUT, Outcome, Step, StepContext};
use redrive_core::template::{Template, TemplateError};

use crate::storage::{Stores, step_error};

/// A step with a requirement.
#[derive(Debug)]
pub struct Required {
    inner: Arc<dyn Step>,
    path: Template,
    field: String,
    stores: Arc<Stores>,
}

impl Required {
    /// `inner`, run only when `path` matches something.
    pub fn new(inner: Arc<dyn Step>, path: Template, field: String, stores: Arc<Stores>) -> Self {
        Self {
            inner,
            path,
            field,
            stores,
        }
    }
}

/// How a requirement is looked for: one request.
fn look(path: &str) -> (&'static str, u64) {
    if is_glob(path) {
        ("glob", 1)
    } else if path.contains("://") {
        ("HEAD", 1)
    } else {
        ("stat", 1)
    }
}

fn is_glob(path: &str) -> bool {
    !path.contains("://") && path.contains(['*', '?', '['])
}

#[async_trait]
impl Step for Required {
    async fn require(&self, fields: &Fields) -> Result<Option<Fields>, StepError> {
        let path = self
            .path
            .render(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let found = if is_glob(&path) {
            let pattern = path.clone();
            tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
                let mut matches: Vec<String> = glob::glob(&pattern)
                    .map_err(|e| format!("`require` pattern `{pattern}`: {e}"))?
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .map(|p| p.display().to_string())
                    .collect();
                matches.sort();
                Ok(matches.into_iter().next())
            })
            .await
            .map_err(|e| StepError::permanent(e.to_string()))?
            .map_err(StepError::permanent)?
        } else if path.contains("://") {
            let location = self.stores.resolve(&path)?;
            match location.operator.stat(&location.path).await {
                Ok(_) => Some(path),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(step_error(
                        format!("cannot check `{}`", location.display),
                        e,
                    ));
                }
            }
        } else {
            std::path::Path::new(&path).exists().then_some(path)
        };
        Ok(found.map(|found| Fields::from([(self.field.clone(), found)])))
    }

    async fn run(&self, fields: &Fields, cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        self.inner.run(fields, cx).await
    }

    fn calls(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        let Ok(path) = self.path.render(fields) else {
            return Vec::new();
        };
        let mut bound = fields.clone();
        bound
            .entry(self.field.clone())
            .or_insert_with(|| path.clone());
        let mut calls = vec![look(&path)];
        calls.extend(self.inner.calls(&bound));
        calls
    }

    fn calls_when_skipped(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        self.path
            .render(fields)
            .map(|path| vec![look(&path)])
            .unwrap_or_default()
    }

    async fn check(&self, fields: &Fields) -> Result<Check, StepError> {
        match self.require(fields).await? {
            None => Ok(Check::Skips(NO_INPUT.into())),
            Some(found) => {
                let mut bound = fields.clone();
                bound.extend(found);
                self.inner.check(&bound).await
            }
        }
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let path = self.path.render(fields)?;
        // A dry run does not look: it says what is needed and the action with it bound.
        let mut bound = fields.clone();
        bound
            .entry(self.field.clone())
            .or_insert_with(|| path.clone());
        Ok(format!("needs {path}; {}", self.inner.describe(&bound)?))
    }
}
