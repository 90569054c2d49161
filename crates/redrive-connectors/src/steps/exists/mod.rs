//! `exists = "URL"`: skip the item when the object exists (or, with `negate`, when it is
//! missing).

pub(crate) mod config;

use std::sync::Arc;

use async_trait::async_trait;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::{Template, TemplateError};

use crate::storage::{Stores, step_error};

/// Checks whether an object exists.
#[derive(Debug)]
pub struct ExistsStep {
    url: Template,
    negate: bool,
    stores: Arc<Stores>,
}

impl ExistsStep {
    /// A check of `url`; `negate` skips when the object is missing instead.
    pub fn new(url: Template, negate: bool, stores: Arc<Stores>) -> Self {
        Self {
            url,
            negate,
            stores,
        }
    }
}

#[async_trait]
impl Step for ExistsStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let url = self
            .url
            .render(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let location = self.stores.resolve(&url)?;
        let present = if location.local {
            // A local file is one stat. OpenDAL would answer a missing one with an error that
            // captures a backtrace whenever RUST_BACKTRACE is set (a quarter of a run's time
            // when most checked files are missing).
            let path =
                std::path::PathBuf::from(location.operator.info().root()).join(&location.path);
            match tokio::fs::metadata(&path).await {
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    return Err(StepError::permanent(format!(
                        "cannot check whether `{}` exists",
                        location.display
                    ))
                    .with_source(e));
                }
            }
        } else {
            match location.operator.stat(&location.path).await {
                Ok(_) => true,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => false,
                Err(e) => {
                    return Err(step_error(
                        format!("cannot check whether `{}` exists", location.display),
                        e,
                    ));
                }
            }
        };
        Ok(match (present, self.negate) {
            (true, false) => Outcome::Skipped("exists".into()),
            (false, true) => Outcome::Skipped("missing".into()),
            _ => Outcome::done(0),
        })
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let url = self.url.render(fields)?;
        Ok(if self.negate {
            format!("skip unless {url} exists")
        } else {
            format!("skip if {url} exists")
        })
    }
}
