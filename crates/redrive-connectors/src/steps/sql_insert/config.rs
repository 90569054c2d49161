//! `sql_insert = { url, table, columns, key, batch, max_wait, on_conflict }`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redrive_core::job::{check_database_url, check_identifier, parse_duration, template};
use redrive_core::step::{Step, StepTraits};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::SqlInsertStep;
use crate::plan::unless_default;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};

/// Rows per `sql_insert` statement when the plan does not say.
pub const DEFAULT_INSERT_BATCH: usize = 500;

/// `sql_insert = { url, table, columns, key, batch, max_wait, on_conflict }`.
#[derive(Clone, Debug)]
pub struct SqlInsertSpec {
    /// `postgres://…`, `mysql://…` or `mariadb://…`.
    pub url: Template,
    /// The table.
    pub table: String,
    /// Column and the template of its value, always bound as a parameter.
    pub columns: Vec<(String, Template)>,
    /// The unique columns a conflict is detected on (needed by `on_conflict = "update"`).
    pub key: Vec<String>,
    /// Rows per statement.
    pub batch: usize,
    /// Longest a row waits for its batch to fill.
    pub max_wait: Duration,
    /// What to do when a row's key exists.
    pub on_conflict: OnConflict,
}

/// What `sql_insert` does with a row whose key exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// The row fails (the default).
    #[default]
    Fail,
    /// The row is left as it is; the item is done.
    Skip,
    /// The existing row takes the new values (an upsert).
    Update,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSqlInsert {
    url: String,
    table: String,
    columns: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    key: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait: Option<String>,
    #[serde(default, skip_serializing_if = "crate::plan::is_default")]
    on_conflict: OnConflict,
}

impl StepKind for SqlInsertSpec {
    type Raw = RawSqlInsert;

    fn check(raw: &RawSqlInsert, _cx: &CheckContext<'_>) -> Result<Self, String> {
        let url = check_database_url("sql_insert.url", &raw.url)?;
        check_identifier("`sql_insert.table`", &raw.table)?;
        if raw.columns.is_empty() {
            return Err(
                "`sql_insert.columns` is empty; map columns to values, e.g. `columns = { app_id = \"{app_id}\" }`"
                    .to_owned(),
            );
        }
        let mut columns = Vec::with_capacity(raw.columns.len());
        for (column, value) in &raw.columns {
            check_identifier("a column of `sql_insert.columns`", column)?;
            columns.push((
                column.clone(),
                template(&format!("sql_insert.columns.{column}"), value)?,
            ));
        }
        for key in &raw.key {
            if !raw.columns.contains_key(key) {
                return Err(format!(
                    "`sql_insert.key` names `{key}`, which is not one of `columns`"
                ));
            }
        }
        if raw.on_conflict == OnConflict::Update && raw.key.is_empty() {
            return Err("`on_conflict = \"update\"` needs `key = [\"COLUMN\"]`, the unique column(s) a conflict is found on".to_owned());
        }
        let batch = raw.batch.unwrap_or(DEFAULT_INSERT_BATCH);
        if batch == 0 {
            return Err("`sql_insert.batch` must be at least 1".to_owned());
        }
        let max_wait = match raw.max_wait.as_deref() {
            Some(text) => parse_duration(text).ok_or_else(|| {
                format!("`sql_insert.max_wait` = `{text}` is not a duration; write e.g. `1s`")
            })?,
            None => Duration::from_secs(1),
        };
        Ok(SqlInsertSpec {
            url,
            table: raw.table.clone(),
            columns,
            key: raw.key.clone(),
            batch,
            max_wait,
            on_conflict: raw.on_conflict,
        })
    }

    fn canonicalize(raw: &mut RawSqlInsert) {
        unless_default(&mut raw.batch, |b| *b == DEFAULT_INSERT_BATCH);
        unless_default(&mut raw.max_wait, |w| {
            parse_duration(w) == Some(Duration::from_secs(1))
        });
    }
}

impl StepConfig for SqlInsertSpec {
    fn templates(&self) -> Vec<&Template> {
        let mut all = vec![&self.url];
        all.extend(self.columns.iter().map(|(_, t)| t));
        all
    }

    /// One statement carries a batch of rows: holding items back would only shrink batches.
    fn traits(&self) -> StepTraits {
        StepTraits::batching(self.batch, self.max_wait)
    }

    fn build(&self, _cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        let step =
            SqlInsertStep::new(self.clone()).map_err(|e| format!("`sql_insert.url`: {e}"))?;
        Ok(Arc::new(step))
    }
}
