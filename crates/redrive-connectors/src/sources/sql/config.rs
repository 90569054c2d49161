//! `sql = { url, table, key, columns, where, batch }`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::job::{check_database_url, check_identifier};
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::SqlSource;
use crate::plan::unless_default;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// Rows per keyset page of a `sql` source when the plan does not say.
pub const DEFAULT_SQL_BATCH: usize = 1_000;

/// `sql = { url, table, key, columns, where, batch }`: rows of a table, by keyset pagination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlSourceSpec {
    /// `postgres://…`, `mysql://…` or `mariadb://…`; may use `${ENV}` (masked).
    pub url: Template,
    /// The table (or `schema.table`).
    pub table: String,
    /// The column that orders and identifies rows; the only one recorded in the state.
    pub key: String,
    /// Columns read just before a row runs (never recorded in the state).
    pub columns: Vec<String>,
    /// An SQL condition added to every query, as written.
    pub filter: Option<String>,
    /// Rows per page.
    pub batch: usize,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSql {
    url: String,
    table: String,
    key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns: Vec<String>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
}

impl SourceKindConfig for SqlSourceSpec {
    type Raw = RawSql;

    fn check(raw: &RawSql, _options: &SourceOptions, _base_dir: &Path) -> Result<Self, String> {
        let url = check_database_url("sql.url", &raw.url)?;
        check_identifier("`sql.table`", &raw.table)?;
        check_identifier("`sql.key`", &raw.key)?;
        for column in &raw.columns {
            check_identifier("a column of `sql.columns`", column)?;
        }
        let batch = raw.batch.unwrap_or(DEFAULT_SQL_BATCH);
        if batch == 0 {
            return Err("`sql.batch` must be at least 1".to_owned());
        }
        Ok(SqlSourceSpec {
            url,
            table: raw.table.clone(),
            key: raw.key.clone(),
            columns: raw
                .columns
                .iter()
                .filter(|c| **c != raw.key)
                .cloned()
                .collect(),
            filter: raw.filter.clone().filter(|w| !w.trim().is_empty()),
            batch,
        })
    }

    fn canonicalize(raw: &mut RawSql, _options: &mut SourceOptions) {
        unless_default(&mut raw.batch, |b| *b == DEFAULT_SQL_BATCH);
    }
}

impl SourceConfig for SqlSourceSpec {
    /// The key column.
    fn default_key(&self) -> Option<String> {
        Some(format!("{{{}}}", self.key))
    }

    fn shards_itself(&self) -> bool {
        true
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(SqlSource::new(self.clone(), cx.shard)?))
    }
}
