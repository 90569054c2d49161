//! `require = "PATH|URL|GLOB"` on any step: the step runs only when something matches; the
//! match is bound to a field (`input` by default) for this step and the later ones.

use std::sync::Arc;

use async_trait::async_trait;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Check, NO_INPUT, Outcome, Step, StepContext};
use redrive_core::template::{Template, TemplateError};

use crate::sources::glob::walk::Walk;
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

/// Where a requirement is looked for, once rendered.
enum Looked {
    /// A local pattern: its own text has wildcards (a field's value is matched as written,
    /// `{field|raw}` as a pattern).
    Glob(String),
    /// A store's URL.
    Url(String),
    /// A local path.
    Local(String),
}

impl Required {
    fn looked(&self, fields: &Fields) -> Result<Looked, TemplateError> {
        let path = self.path.render(fields)?;
        if path.contains("://") {
            return Ok(Looked::Url(path));
        }
        let own_text = self.path.render_quoted(fields, |_| String::new())?;
        if own_text.contains(['*', '?', '[']) {
            return self
                .path
                .render_quoted(fields, |value| glob::Pattern::escape(&value))
                .map(Looked::Glob);
        }
        Ok(Looked::Local(path))
    }
}

/// How a requirement is looked for: one request.
fn look(looked: &Looked) -> (&'static str, u64) {
    match looked {
        Looked::Glob(_) => ("glob", 1),
        Looked::Url(_) => ("HEAD", 1),
        Looked::Local(_) => ("stat", 1),
    }
}

/// The first file `pattern` matches, in the order of their paths' text; links to folders are
/// not followed through `**` (the `glob` source's walk).
fn first_match(pattern: &str) -> Result<Option<String>, String> {
    let walk = Walk::new(pattern).map_err(|e| format!("`require` pattern `{pattern}`: {e}"))?;
    let mut first: Option<String> = None;
    walk.run(&mut |path, _| {
        let path = path.display().to_string();
        if first.as_ref().is_none_or(|f| path < *f) {
            first = Some(path);
        }
        true
    })
    .map_err(|e| {
        format!(
            "`require` pattern `{pattern}`: {}: {}",
            e.path.display(),
            e.error
        )
    })?;
    Ok(first)
}

#[async_trait]
impl Step for Required {
    async fn require(&self, fields: &Fields) -> Result<Option<Fields>, StepError> {
        let looked = self
            .looked(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let found = match looked {
            Looked::Glob(pattern) => tokio::task::spawn_blocking(move || first_match(&pattern))
                .await
                .map_err(|e| StepError::permanent(e.to_string()))?
                .map_err(StepError::permanent)?,
            Looked::Url(path) => {
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
            }
            Looked::Local(path) => std::path::Path::new(&path).exists().then_some(path),
        };
        Ok(found.map(|found| Fields::from([(self.field.clone(), found)])))
    }

    async fn run(&self, fields: &Fields, cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        self.inner.run(fields, cx).await
    }

    fn calls(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        let (Ok(path), Ok(looked)) = (self.path.render(fields), self.looked(fields)) else {
            return Vec::new();
        };
        let mut bound = fields.clone();
        bound
            .entry(self.field.clone())
            .or_insert_with(|| path.clone());
        let mut calls = vec![look(&looked)];
        calls.extend(self.inner.calls(&bound));
        calls
    }

    fn calls_when_skipped(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        self.looked(fields)
            .map(|looked| vec![look(&looked)])
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
