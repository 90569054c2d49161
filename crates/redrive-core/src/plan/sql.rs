//! The SQL parts of a plan: the `sql` source, the `xml` and `sql_insert` steps and the
//! `[[job.before]]` / `[[job.after]]` hooks, as written and as checked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{parse_duration, template};
use crate::template::Template;

/// Rows per keyset page of a `sql` source when the plan does not say.
pub const DEFAULT_SQL_BATCH: usize = 1_000;
/// Rows per `sql_insert` statement when the plan does not say.
pub const DEFAULT_INSERT_BATCH: usize = 500;

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

/// `xml = { field, path, namespaces, keep_ancestors, into, missing }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlSpec {
    /// The field holding the document.
    pub field: String,
    /// The element to keep.
    pub path: XmlPath,
    /// Emit the ancestors' start and end tags around the element (a minimal document).
    pub keep_ancestors: bool,
    /// The field the result is bound to, for later steps.
    pub into: String,
    /// What to do when the document has no such element.
    pub missing: Missing,
}

/// What an `xml` step does when the path matches nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// The item fails (the default: nothing is dropped silently).
    #[default]
    Fail,
    /// The item is skipped with the reason `path not found`.
    Skip,
}

/// An absolute element path: `/a:Root/Request[@type='x']/CustData`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlPath {
    /// The path as written.
    pub text: String,
    /// One step per element, from the root.
    pub steps: Vec<XmlStep>,
}

/// One element of an [`XmlPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlStep {
    /// The namespace URI of the prefix it was written with; `None` matches any namespace.
    pub namespace: Option<String>,
    /// The local name.
    pub local: String,
    /// `[@name='value']` predicates: attribute (local name) and value, all must hold.
    pub attributes: Vec<(String, String)>,
}

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

/// A `[[job.before]]` or `[[job.after]]` statement.
#[derive(Clone, Debug)]
pub struct Hook {
    /// The database.
    pub url: Template,
    /// One or more SQL statements, run as written.
    pub sql: String,
}

// ---- as written ----

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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXml {
    field: String,
    path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    namespaces: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "crate::fingerprint::is_default")]
    keep_ancestors: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    into: Option<String>,
    #[serde(default, skip_serializing_if = "crate::fingerprint::is_default")]
    missing: Missing,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSqlInsert {
    url: String,
    table: String,
    columns: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    key: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait: Option<String>,
    #[serde(default, skip_serializing_if = "crate::fingerprint::is_default")]
    on_conflict: OnConflict,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    url: String,
    sql: String,
}

impl RawSql {
    /// Defaults become absent (see `RawSource::canonicalize`).
    pub(super) fn canonicalize(&mut self) {
        super::unless_default(&mut self.batch, |b| *b == DEFAULT_SQL_BATCH);
    }
}

impl RawXml {
    /// Defaults become absent (see `RawStep::canonicalize`).
    pub(super) fn canonicalize(&mut self) {
        let field = self.field.clone();
        super::unless_default(&mut self.into, |into| *into == field);
    }
}

impl RawSqlInsert {
    /// Defaults become absent (see `RawStep::canonicalize`).
    pub(super) fn canonicalize(&mut self) {
        super::unless_default(&mut self.batch, |b| *b == DEFAULT_INSERT_BATCH);
        super::unless_default(&mut self.max_wait, |w| {
            super::parse_duration(w) == Some(Duration::from_secs(1))
        });
    }
}

/// Checks an SQL identifier (`name` or `schema.name`): it is written into statements, so
/// only letters, digits, `_` and `$` are allowed.
pub fn check_identifier(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.split('.').count() <= 2
        && name.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` is not a plain SQL name; use letters, digits and `_` (optionally `schema.table`)"
        ))
    }
}

/// A database URL: no item fields (rows are read and written in batches); `${ENV}` allowed,
/// even for the whole URL.
fn check_url(what: &str, url: &str) -> Result<Template, String> {
    let parsed = template(what, url)?;
    if parsed.fields().next().is_some() {
        return Err(format!(
            "`{what}` cannot use item fields (rows are read and written in batches), only `${{ENV}}`"
        ));
    }
    let rendered = parsed
        .render(&Default::default())
        .map_err(|e| format!("`{what}`: {e}"))?;
    let scheme = rendered.split("://").next().unwrap_or_default();
    if !rendered.contains("://")
        || !matches!(
            scheme,
            "postgres" | "postgresql" | "mysql" | "mariadb" | "mssql" | "sqlserver"
        )
    {
        return Err(format!(
            "`{what}` = `{url}` is not a database URL; write postgres://USER@HOST/DB, mysql://USER@HOST/DB or mssql://USER:PASSWORD@HOST/DB (passwords as ${{ENV}})"
        ));
    }
    Ok(parsed)
}

pub(super) fn sql_source(raw: &RawSql) -> Result<SqlSourceSpec, String> {
    let url = check_url("sql.url", &raw.url)?;
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

pub(super) fn xml(raw: &RawXml) -> Result<XmlSpec, String> {
    let path = parse_xml_path(&raw.path, &raw.namespaces)?;
    Ok(XmlSpec {
        field: raw.field.clone(),
        path,
        keep_ancestors: raw.keep_ancestors,
        into: raw.into.clone().unwrap_or_else(|| raw.field.clone()),
        missing: raw.missing,
    })
}

pub(super) fn sql_insert(raw: &RawSqlInsert) -> Result<SqlInsertSpec, String> {
    let url = check_url("sql_insert.url", &raw.url)?;
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

pub(super) fn hooks(which: &str, raw: &[RawHook]) -> Result<Vec<Hook>, String> {
    raw.iter()
        .map(|hook| {
            let url = check_url(&format!("job.{which}.url"), &hook.url)?;
            if hook.sql.trim().is_empty() {
                return Err(format!("`job.{which}.sql` is empty"));
            }
            Ok(Hook {
                url,
                sql: hook.sql.clone(),
            })
        })
        .collect()
}

/// Parses `/p:A/B[@x='1']/C` with the plan's `namespaces` (prefix → URI).
pub fn parse_xml_path(
    text: &str,
    namespaces: &BTreeMap<String, String>,
) -> Result<XmlPath, String> {
    let bad = |why: &str| {
        format!(
            "`xml.path` = `{text}`: {why}; write an absolute element path such as `/Provenir/Request/CustData` or `/p:Root/Item[@type='a']`"
        )
    };
    let Some(rest) = text.trim().strip_prefix('/') else {
        return Err(bad("it must start with `/`"));
    };
    let mut steps = Vec::new();
    for part in split_steps(rest) {
        let (name, mut predicates) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        let (namespace, local) = match name.split_once(':') {
            Some((prefix, local)) => match namespaces.get(prefix) {
                Some(uri) => (Some(uri.clone()), local),
                None => {
                    return Err(bad(&format!(
                        "the prefix `{prefix}` is not declared; add `namespaces = {{ {prefix} = \"URI\" }}`"
                    )));
                }
            },
            None => (None, name),
        };
        if local.is_empty()
            || !local
                .chars()
                .all(|c| c.is_alphanumeric() || "_-.".contains(c))
        {
            return Err(bad(&format!("`{part}` is not an element name")));
        }
        let mut attributes = Vec::new();
        while !predicates.is_empty() {
            let Some(end) = predicates.find(']') else {
                return Err(bad("a `[` is not closed"));
            };
            let inner = &predicates[1..end];
            let Some((attr, value)) = inner.strip_prefix('@').and_then(|p| p.split_once('='))
            else {
                return Err(bad(&format!(
                    "`[{inner}]` is not an attribute test `[@name='value']`"
                )));
            };
            let value = value.trim();
            let quoted = value.len() >= 2
                && ((value.starts_with('\'') && value.ends_with('\''))
                    || (value.starts_with('"') && value.ends_with('"')));
            if !quoted {
                return Err(bad(&format!("the value in `[{inner}]` must be quoted")));
            }
            let attr = attr.trim();
            let attr = attr.split_once(':').map_or(attr, |(_, local)| local);
            attributes.push((attr.to_owned(), value[1..value.len() - 1].to_owned()));
            predicates = &predicates[end + 1..];
            if !predicates.is_empty() && !predicates.starts_with('[') {
                return Err(bad(&format!("unexpected `{predicates}`")));
            }
        }
        steps.push(XmlStep {
            namespace,
            local: local.to_owned(),
            attributes,
        });
    }
    if steps.is_empty() {
        return Err(bad("it names no element"));
    }
    Ok(XmlPath {
        text: text.trim().to_owned(),
        steps,
    })
}

/// Splits at `/` outside quotes (an attribute value may contain `/`).
fn split_steps(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if q == c => quote = None,
            (None, '/') => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_with_prefixes_and_predicates() {
        let ns = BTreeMap::from([("p".to_owned(), "urn:p".to_owned())]);
        let path = parse_xml_path("/p:Root/Req[@type='a/b'][@n=\"2\"]/CustData", &ns).unwrap();
        assert_eq!(path.steps.len(), 3);
        assert_eq!(path.steps[0].namespace.as_deref(), Some("urn:p"));
        assert_eq!(
            path.steps[1].attributes,
            vec![("type".into(), "a/b".into()), ("n".into(), "2".into())]
        );
        assert_eq!(path.steps[2].local, "CustData");
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        let ns = BTreeMap::new();
        for (path, says) in [
            ("Root/A", "must start with `/`"),
            ("/x:Root", "prefix `x` is not declared"),
            ("/Root/A[@t=1]", "must be quoted"),
            ("/Root/A[t='1']", "not an attribute test"),
            ("/Root/A[@t='1'", "not closed"),
            ("/Root//A", "not an element name"),
            ("/", "not an element name"),
        ] {
            let error = parse_xml_path(path, &ns).unwrap_err();
            assert!(error.contains(says), "{path}: {error}");
        }
    }

    #[test]
    fn identifiers_are_plain_names() {
        assert!(check_identifier("t", "dbo.app_xml_staging").is_ok());
        assert!(check_identifier("t", "app_XML").is_ok());
        for bad in ["", "a b", "x;drop table y", "a.b.c", "1abc", "\"q\""] {
            assert!(check_identifier("t", bad).is_err(), "{bad}");
        }
    }
}
