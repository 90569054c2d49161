//! `exists = "URL"`: skip the item when the object exists (or, with `negate`, when it is
//! missing).

pub(crate) mod config;

use std::sync::Arc;

use async_trait::async_trait;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Check, Outcome, Step, StepContext};
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

impl ExistsStep {
    /// Whether the object is there now.
    async fn present(&self, fields: &Fields) -> Result<bool, StepError> {
        let url = self
            .url
            .render(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let values = self
            .url
            .fields()
            .filter_map(|name| fields.get(name).map(String::as_str));
        if let Some(why) = names_a_folder_by_its_values(values, &url) {
            return Err(StepError::permanent(format!(
                "`{}` {why}",
                redrive_core::secrets::redact(&url)
            )));
        }
        let location = self.stores.resolve(&url)?;
        if location.local {
            // A local file is one stat. OpenDAL would answer a missing one with an error that
            // captures a backtrace whenever RUST_BACKTRACE is set (a quarter of a run's time
            // when most checked files are missing).
            let path =
                std::path::PathBuf::from(location.operator.info().root()).join(&location.path);
            let stat = crate::local_io::run(move || std::fs::metadata(&path))
                .await
                .map_err(|e| StepError::permanent(e.to_string()))?;
            match stat {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StepError::permanent(format!(
                    "cannot check whether `{}` exists",
                    location.display
                ))
                .with_source(e)),
            }
        } else {
            match location.operator.stat(&location.path).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(step_error(
                    format!("cannot check whether `{}` exists", location.display),
                    e,
                )),
            }
        }
    }

    /// Why the item is skipped, when it is.
    fn skips(&self, present: bool) -> Option<&'static str> {
        match (present, self.negate) {
            (true, false) => Some("exists"),
            (false, true) => Some("missing"),
            _ => None,
        }
    }
}

/// Why `url` names a folder where an object was meant: its last part is empty, `.` or `..`
/// and one of the `values` it was rendered from is (an empty CSV cell: `done/{name}` →
/// `done/`). A folder is there, so the item was skipped as "exists" without a word. A URL
/// that ends with `/` as written, or by a value that ends so, checks a folder.
fn names_a_folder_by_its_values<'a>(
    mut values: impl Iterator<Item = &'a str>,
    url: &str,
) -> Option<&'static str> {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    let last = path.rsplit('/').next().unwrap_or(path);
    (matches!(last, "" | "." | "..") && values.any(|value| matches!(value, "" | "." | "..")))
        .then_some(
            "names a folder, not an object: a value it is made of is empty, `.` or `..` (fix \
             the value; to check a folder, end the URL with `/`)",
        )
}

#[async_trait]
impl Step for ExistsStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let present = self.present(fields).await?;
        Ok(match self.skips(present) {
            Some(reason) => Outcome::Skipped(reason.into()),
            None => Outcome::done(0),
        })
    }

    fn calls(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        let local = self
            .url
            .render(fields)
            .ok()
            .and_then(|url| self.stores.resolve(&url).ok())
            .is_none_or(|location| location.local);
        vec![(if local { "stat" } else { "HEAD" }, 1)]
    }

    async fn check(&self, fields: &Fields) -> Result<Check, StepError> {
        let present = self.present(fields).await?;
        Ok(match self.skips(present) {
            Some(reason) => Check::Skips(reason.into()),
            None => Check::Unknown,
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

#[cfg(test)]
mod tests {
    use super::names_a_folder_by_its_values as folder;

    #[test]
    fn a_value_that_leaves_an_object_url_naming_a_folder_is_told() {
        assert!(folder([""].into_iter(), "out/").is_some());
        assert!(folder(["x", ""].into_iter(), "s3://b/x/").is_some());
        assert!(folder([".."].into_iter(), "out/..").is_some());
        assert!(folder(["a.txt"].into_iter(), "out/a.txt").is_none());
        // A folder checked as written, or as a value gives it.
        assert!(folder(["x"].into_iter(), "out/x/").is_none());
        assert!(folder(["s3://b/x/"].into_iter(), "s3://b/x/").is_none());
        assert!(folder(["a", "x=1"].into_iter(), "az://c/a?x=1").is_none());
    }
}
