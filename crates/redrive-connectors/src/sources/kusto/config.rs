//! `kusto = { cluster, database, query, token, columns, api }`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::job::template;
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::KustoSource;
use crate::plan::unless_default;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// `kusto = { cluster, database, query, token, columns, api }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KustoSpec {
    /// `https://CLUSTER.REGION.kusto.windows.net`.
    pub cluster: String,
    /// The database.
    pub database: String,
    /// The query; use `{Field|kql}` to insert a value as a string literal.
    pub query: Template,
    /// A bearer token (`${ENV}`); without it, Azure credentials are used.
    pub token: Option<Template>,
    /// The result's columns, when they cannot be read from the query's last `project`.
    pub columns: Vec<String>,
    /// `v2` (default) or `v1` REST endpoint.
    pub api: String,
}

impl KustoSpec {
    /// The fields the query yields: `columns`, or the names of its last `| project`.
    pub fn fields(&self) -> Option<Vec<String>> {
        if !self.columns.is_empty() {
            return Some(self.columns.clone());
        }
        let text = self.query.raw();
        let at = text.rfind("project ")?;
        let list = text[at + "project ".len()..].split('|').next()?;
        let names: Vec<String> = list
            .split(',')
            .map(|column| {
                column
                    .split('=')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect();
        names
            .iter()
            .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then_some(names)
    }
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKusto {
    cluster: String,
    database: String,
    query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<String>,
}

impl SourceKindConfig for KustoSpec {
    type Raw = RawKusto;

    fn check(kusto: &RawKusto, _options: &SourceOptions, _base_dir: &Path) -> Result<Self, String> {
        let cluster = kusto.cluster.trim_end_matches('/').to_owned();
        if !cluster.starts_with("https://") && !cluster.starts_with("http://") {
            return Err(format!(
                "`kusto.cluster` must be a URL such as https://CLUSTER.REGION.kusto.windows.net, got `{cluster}`"
            ));
        }
        let api = kusto.api.clone().unwrap_or_else(|| "v2".to_owned());
        if api != "v1" && api != "v2" {
            return Err(format!("`kusto.api` is `v1` or `v2`, got `{api}`"));
        }
        let spec = KustoSpec {
            cluster,
            database: kusto.database.clone(),
            query: template("kusto.query", &kusto.query)?,
            token: kusto
                .token
                .as_deref()
                .map(|t| template("kusto.token", t))
                .transpose()?,
            columns: kusto.columns.clone(),
            api,
        };
        if spec.fields().is_none() {
            return Err("cannot tell the query's columns: end it with `| project Col1, Col2` or list them in `columns = [\"Col1\", \"Col2\"]`".to_owned());
        }
        Ok(spec)
    }

    fn canonicalize(kusto: &mut RawKusto, _options: &mut SourceOptions) {
        unless_default(&mut kusto.api, |a| a == "v2");
    }
}

impl SourceConfig for KustoSpec {
    fn templates(&self) -> Vec<&Template> {
        let mut all = vec![&self.query];
        all.extend(self.token.as_ref());
        all
    }

    fn expands(&self) -> bool {
        true
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(KustoSource::new(
            self.clone(),
            cx.stores.env().clone(),
        )))
    }
}
