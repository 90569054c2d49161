//! `[source]` and `[expand]`: the kinds of source, as written and as checked.
//!
//! The sources' configurations are here together for now; their runtimes are in
//! `crate::sources`, one module each (see docs/architecture.md).

use std::path::{Path, PathBuf};

use redrive_core::job::{check_database_url, check_identifier, template};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::unless_default;

/// Rows per keyset page of a `sql` source when the plan does not say.
pub const DEFAULT_SQL_BATCH: usize = 1_000;

/// A source of items.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// What kind of source, with its settings.
    pub kind: SourceKind,
    /// The key template; `None` means the kind's default.
    pub key: Option<Template>,
}

/// The kinds of source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A CSV file with a header row.
    Csv {
        /// The file.
        path: PathBuf,
        /// Field delimiter.
        delimiter: u8,
    },
    /// A text file, one item per non-empty line.
    Lines {
        /// The file.
        path: PathBuf,
    },
    /// Local files matching a glob pattern.
    Glob {
        /// The pattern, absolute; may use the parent's fields under `[expand]`.
        pattern: Template,
    },
    /// An Azure Data Explorer (Kusto) query; result columns become fields.
    Kusto(KustoSpec),
    /// A UTC date range, inclusive, by days or hours.
    Dates {
        /// First day.
        from: jiff::civil::Date,
        /// Last day (inclusive).
        to: jiff::civil::Date,
        /// Hours between items: 24 for days (the default), 1 for hours.
        step_hours: u32,
    },
    /// An object-store prefix listing.
    List {
        /// The prefix URL.
        url: Template,
        /// Descend into "subdirectories".
        recursive: bool,
    },
    /// Rows of an SQL table, by keyset pagination on its key column.
    Sql(SqlSourceSpec),
}

impl SourceKind {
    /// The kind's name as written in a plan.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Csv { .. } => "csv",
            SourceKind::Lines { .. } => "lines",
            SourceKind::Glob { .. } => "glob",
            SourceKind::Kusto(_) => "kusto",
            SourceKind::List { .. } => "list",
            SourceKind::Dates { .. } => "dates",
            SourceKind::Sql(_) => "sql",
        }
    }

    /// The templates in the source's location (they may use a parent's fields).
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            SourceKind::Glob { pattern } => vec![pattern],
            SourceKind::List { url, .. } => vec![url],
            SourceKind::Kusto(kusto) => {
                let mut all = vec![&kusto.query];
                all.extend(kusto.token.as_ref());
                all
            }
            SourceKind::Csv { .. }
            | SourceKind::Lines { .. }
            | SourceKind::Dates { .. }
            | SourceKind::Sql(_) => Vec::new(),
        }
    }

    /// The key used when the plan does not set one.
    pub fn default_key(&self) -> Option<&'static str> {
        match self {
            SourceKind::Csv { .. } => None,
            SourceKind::Lines { .. } => Some("{line}"),
            SourceKind::Glob { .. } => Some("{path}"),
            SourceKind::List { .. } => Some("{key}"),
            SourceKind::Kusto(_) | SourceKind::Sql(_) => None,
            SourceKind::Dates { step_hours, .. } if step_hours % 24 == 0 => Some("{date}"),
            SourceKind::Dates { .. } => Some("{date}T{hour}"),
        }
    }
}

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

// ---- as written ----

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    csv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    glob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    list: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kusto: Option<RawKusto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dates: Option<RawDates>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<RawSql>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recursive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDates {
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKusto {
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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSql {
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

impl RawSource {
    pub(super) fn canonicalize(&mut self) {
        unless_default(&mut self.recursive, |r| *r);
        unless_default(&mut self.delimiter, |d| d == ",");
        if let Some(dates) = &mut self.dates {
            unless_default(&mut dates.step, |s| s.trim() == "1d");
        }
        if let Some(kusto) = &mut self.kusto {
            unless_default(&mut kusto.api, |a| a == "v2");
        }
        if let Some(sql) = &mut self.sql {
            sql.canonicalize();
        }
    }
}

impl RawSql {
    /// Defaults become absent (see `RawSource::canonicalize`).
    pub(super) fn canonicalize(&mut self) {
        unless_default(&mut self.batch, |b| *b == DEFAULT_SQL_BATCH);
    }
}

pub(super) fn source_spec(raw: &RawSource, base_dir: &Path) -> Result<SourceSpec, String> {
    let given: Vec<&str> = [
        ("csv", raw.csv.is_some()),
        ("lines", raw.lines.is_some()),
        ("glob", raw.glob.is_some()),
        ("list", raw.list.is_some()),
        ("kusto", raw.kusto.is_some()),
        ("dates", raw.dates.is_some()),
        ("sql", raw.sql.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if given.len() != 1 {
        return Err(format!(
            "give exactly one of `csv`, `lines`, `glob`, `list`, `kusto`, `dates`, `sql` (found {}); e.g. `csv = \"items.csv\"`",
            if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(", ")
            }
        ));
    }
    let delimiter = match raw.delimiter.as_deref() {
        None => b',',
        Some(d) if d.len() == 1 => d.as_bytes()[0],
        Some("\\t") => b'\t',
        Some(d) => {
            return Err(format!("`delimiter` must be one character, got `{d}`"));
        }
    };
    if raw.delimiter.is_some() && raw.csv.is_none() {
        return Err("`delimiter` applies to a `csv` source only".to_owned());
    }
    if raw.recursive.is_some() && raw.list.is_none() {
        return Err("`recursive` applies to a `list` source only".to_owned());
    }
    let kind = if let Some(path) = &raw.csv {
        SourceKind::Csv {
            path: base_dir.join(path),
            delimiter,
        }
    } else if let Some(path) = &raw.lines {
        SourceKind::Lines {
            path: base_dir.join(path),
        }
    } else if let Some(pattern) = &raw.glob {
        SourceKind::Glob {
            pattern: template("glob", &base_dir.join(pattern).display().to_string())?,
        }
    } else if let Some(dates) = &raw.dates {
        let date = |key: &str, text: &str| -> Result<jiff::civil::Date, String> {
            text.trim().parse::<jiff::civil::Date>().map_err(|e| {
                format!("`dates.{key}` = `{text}` is not a date: {e}; write YYYY-MM-DD, e.g. \"2026-01-31\"")
            })
        };
        let from = date("from", &dates.from)?;
        let to = date("to", &dates.to)?;
        if to < from {
            return Err(format!("`dates.to` ({to}) is before `dates.from` ({from})"));
        }
        let step = dates.step.as_deref().unwrap_or("1d");
        let step_hours = parse_step(step).ok_or_else(|| {
            format!("`dates.step` = `{step}` is not a step; write `1d`, `7d`, `1h` or `6h`")
        })?;
        SourceKind::Dates {
            from,
            to,
            step_hours,
        }
    } else if let Some(kusto) = &raw.kusto {
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
        SourceKind::Kusto(spec)
    } else if let Some(url) = &raw.list {
        SourceKind::List {
            url: template("list", url)?,
            recursive: raw.recursive.unwrap_or(true),
        }
    } else if let Some(sql) = &raw.sql {
        SourceKind::Sql(sql_source(sql)?)
    } else {
        return Err("no source kind".to_owned());
    };
    let key = match (&raw.key, &kind) {
        (Some(key), _) => Some(template("key", key)?),
        (None, SourceKind::Sql(sql)) => Some(template("key", &format!("{{{}}}", sql.key))?),
        (None, _) => None,
    };
    let spec = SourceSpec { kind, key };
    source_key(&spec)?;
    Ok(spec)
}

/// `1d`, `7d` → hours; `1h`, `6h` → hours.
fn parse_step(text: &str) -> Option<u32> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u32 = number.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "d" => n.checked_mul(24),
        "h" => Some(n),
        _ => None,
    }
}

pub(super) fn source_key(spec: &SourceSpec) -> Result<Template, String> {
    match (&spec.key, spec.kind.default_key()) {
        (Some(key), _) => Ok(key.clone()),
        (None, Some(default)) => template("key", default),
        (None, None) => Err(format!(
            "a `{}` source needs a `key`, the field(s) that make an item unique, e.g. `key = \"{{WorkItemId}}\"`",
            spec.kind.name()
        )),
    }
}

fn sql_source(raw: &RawSql) -> Result<SqlSourceSpec, String> {
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
