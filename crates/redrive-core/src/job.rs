//! The job model of a plan: `[job]` (name, state, logs, hooks), `[limits]` and `[store."…"]`,
//! as written and as checked, and the value parsers every component uses (sizes, durations,
//! SQL names). What the plan's source and steps say is each component's own (in
//! `redrive-connectors`); this module names none of their options.
//!
//! Checking is pure: no file but the plan itself is opened, no network.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::template::{Template, TemplateError};

/// Default items in flight.
pub const DEFAULT_ITEMS: usize = 16;
/// Most items in flight by default, however large a step's batch.
pub const MAX_DEFAULT_ITEMS: usize = 4_096;
/// Default children in flight per item.
pub const DEFAULT_PER_ITEM: usize = 10;
/// Default retries per step.
pub const DEFAULT_RETRIES: u32 = 5;

/// A plan file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The file could not be read.
    #[error("cannot read plan `{file}`")]
    Read {
        /// The plan file.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown or of the wrong type.
    #[error("{file}: {message}")]
    Syntax {
        /// The plan file.
        file: String,
        /// What and where (line, column, key and table), and what is allowed.
        message: String,
    },
    /// The plan is well-formed TOML but does not make sense.
    #[error("{file}: in [{table}]: {message}")]
    Invalid {
        /// The plan file.
        file: String,
        /// The table, e.g. `step 2 (copy)` or `source`.
        table: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Several tables do not make sense: each with its table (job, source, expand, steps, limits,
    /// stores, in that order).
    #[error("{file}: {} problems:{}", problems.len(), listed(problems))]
    Several {
        /// The plan file.
        file: String,
        /// `(table, message)`, as [`PlanError::Invalid`] has them.
        problems: Vec<(String, String)>,
    },
}

/// `\n  in [table]: message` for each problem.
fn listed(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(table, message)| format!("\n  in [{table}]: {message}"))
        .collect()
}

/// `[job]`, checked.
#[derive(Clone, Debug)]
pub struct Job {
    /// `job.name`.
    pub name: String,
    /// Where the state lives: a file path (resolved) or a URL.
    pub state: String,
    /// Where `run` steps write each item's output log.
    pub log_dir: PathBuf,
    /// SQL run once before the job's items (`[[job.before]]`).
    pub before: Vec<Hook>,
    /// SQL run once after every item ended (`[[job.after]]`).
    pub after: Vec<Hook>,
}

/// `[job]` as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobTable {
    /// `name`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    before: Vec<HookTable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    after: Vec<HookTable>,
}

impl JobTable {
    /// Checks `[job]`; relative paths are relative to `base_dir`. The error is the message
    /// for the `[job]` table.
    pub fn check(&self, base_dir: &Path) -> Result<Job, String> {
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".to_owned());
        }
        // `state = "${REDRIVE_STATE}"`: a URL with a password comes from the environment
        // (read now, masked everywhere).
        let state = match &self.state {
            Some(state) => Some(
                Template::parse(state)
                    .and_then(|t| t.render(&crate::item::Fields::new()))
                    .map_err(|e| format!("`state`: {e}"))?,
            ),
            None => None,
        };
        let state = match &state {
            Some(state) if state.contains("://") => state.clone(),
            Some(state) => base_dir.join(state).display().to_string(),
            None => base_dir
                .join(".redrive")
                .join(format!("{}.db", file_safe(&self.name)))
                .display()
                .to_string(),
        };
        let log_dir = match &self.logs {
            Some(logs) => base_dir.join(logs),
            None => Path::new(&state)
                .parent()
                .filter(|_| !state.contains("://"))
                .map_or_else(|| base_dir.join(".redrive"), Path::to_path_buf)
                .join(format!("{}-logs", file_safe(&self.name))),
        };
        Ok(Job {
            name: self.name.clone(),
            state,
            log_dir,
            before: hooks("before", &self.before)?,
            after: hooks("after", &self.after)?,
        })
    }
}

/// `[limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Items in flight.
    pub items: usize,
    /// Children in flight per item.
    pub per_item: usize,
    /// Retries per step after the first attempt.
    pub retries: u32,
    /// With a PostgreSQL state shared by several processes: how long an item claimed by a
    /// worker stays its own without a heartbeat (a dead worker's items wait this long).
    pub lease: std::time::Duration,
}

/// Default `[limits] lease`.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// `[store."PREFIX"]`: settings for URLs that start with the prefix. Values may use `${ENV}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Service endpoint, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region (S3).
    pub region: Option<String>,
    /// Permit a plain-http endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Storage account (Azure).
    pub account_name: Option<String>,
    /// Storage account key (Azure).
    pub account_key: Option<String>,
    /// SAS token (Azure).
    pub sas_token: Option<String>,
    /// Connection string (Azure).
    pub connection_string: Option<String>,
    /// Access key id (S3).
    pub access_key_id: Option<String>,
    /// Secret access key (S3).
    pub secret_access_key: Option<String>,
    /// Session token (S3).
    pub session_token: Option<String>,
    /// Service account JSON file (GCS).
    pub credential_path: Option<String>,
    /// Use virtual-host-style addressing (S3).
    #[serde(default)]
    pub virtual_host_style: bool,
    /// Deadline of each call to the store (`30s`, `5m`); default 60 s, 120 s for a body.
    pub timeout: Option<String>,
    /// The slowest a body may arrive (`64KiB/s`): a transfer that receives less over a whole
    /// `timeout` (default 120 s) fails the attempt. Default 1 KiB/s.
    pub min_rate: Option<String>,
}

impl StoreSpec {
    /// `timeout`, parsed (checked when the plan is read).
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout.as_deref().and_then(parse_duration)
    }

    /// `min_rate` in bytes per second, parsed (checked when the plan is read).
    pub fn min_rate(&self) -> Option<u64> {
        parse_rate(self.min_rate.as_deref()?)
    }
}

/// `64KiB/s`, `1MB/s`, `512`: bytes per second.
fn parse_rate(text: &str) -> Option<u64> {
    let text = text.trim();
    let size = text.strip_suffix("/s").unwrap_or(text);
    parse_size(size).and_then(|n| u64::try_from(n).ok())
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials are never printed, not even in debug output.
        f.debug_struct("StoreSpec")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("account_name", &self.account_name)
            .finish_non_exhaustive()
    }
}

/// `[limits]` as written.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsTable {
    items: Option<usize>,
    per_item: Option<usize>,
    retries: Option<u32>,
    lease: Option<String>,
}

impl LimitsTable {
    /// Checks `[limits]`; `default_items` is what the steps call for when `items` is absent.
    pub fn check(&self, default_items: usize) -> Result<Limits, String> {
        let limits = Limits {
            items: self.items.unwrap_or(default_items),
            per_item: self.per_item.unwrap_or(DEFAULT_PER_ITEM),
            retries: self.retries.unwrap_or(DEFAULT_RETRIES),
            lease: match self.lease.as_deref() {
                None => DEFAULT_LEASE,
                Some(text) => parse_duration(text)
                    .filter(|d| *d >= std::time::Duration::from_secs(1))
                    .ok_or_else(|| {
                        format!(
                            "`lease` = `{text}` is not a duration of 1s or more; write e.g. `30s`"
                        )
                    })?,
            },
        };
        if limits.items == 0 || limits.per_item == 0 {
            return Err("`items` and `per_item` must be at least 1".to_owned());
        }
        Ok(limits)
    }
}

/// A `[[job.before]]` or `[[job.after]]` statement.
#[derive(Clone, Debug)]
pub struct Hook {
    /// The database.
    pub url: Template,
    /// One or more SQL statements, run as written.
    pub sql: String,
}

/// `[[job.before]]` / `[[job.after]]` as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookTable {
    url: String,
    sql: String,
}

fn hooks(which: &str, raw: &[HookTable]) -> Result<Vec<Hook>, String> {
    raw.iter()
        .map(|hook| {
            let url = check_database_url(&format!("job.{which}.url"), &hook.url)?;
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

impl StoreSpec {
    /// Checks `[store."PREFIX"]`: `${ENV}` values are read (and registered as secrets where
    /// they are credentials); the endpoint and timeout are checked.
    pub fn check(raw: &StoreSpec) -> Result<StoreSpec, String> {
        let resolve = |key: &str, value: &Option<String>| -> Result<Option<String>, String> {
            value
                .as_deref()
                .map(|v| {
                    let template = template(key, v)?;
                    if !template.is_constant() && template.fields().next().is_some() {
                        return Err(format!("`{key}` cannot use item fields, only `${{ENV}}`"));
                    }
                    template
                        .render(&Default::default())
                        .map_err(|e| format!("`{key}`: {e}"))
                })
                .transpose()
        };
        let spec = StoreSpec {
            endpoint: resolve("endpoint", &raw.endpoint)?,
            region: resolve("region", &raw.region)?,
            allow_http: raw.allow_http,
            account_name: resolve("account_name", &raw.account_name)?,
            account_key: resolve("account_key", &raw.account_key)?,
            sas_token: resolve("sas_token", &raw.sas_token)?,
            connection_string: resolve("connection_string", &raw.connection_string)?,
            access_key_id: resolve("access_key_id", &raw.access_key_id)?,
            secret_access_key: resolve("secret_access_key", &raw.secret_access_key)?,
            session_token: resolve("session_token", &raw.session_token)?,
            credential_path: resolve("credential_path", &raw.credential_path)?,
            virtual_host_style: raw.virtual_host_style,
            timeout: raw.timeout.clone(),
            min_rate: raw.min_rate.clone(),
        };
        if let Some(rate) = &spec.min_rate
            && parse_rate(rate).is_none()
        {
            return Err(format!(
                "`min_rate` = `{rate}` is not a rate; write e.g. `64KiB/s` or `1MB/s`"
            ));
        }
        if let Some(timeout) = &spec.timeout
            && parse_duration(timeout).is_none()
        {
            return Err(format!(
                "`timeout` = `{timeout}` is not a duration; write e.g. `30s` or `5m`"
            ));
        }
        if let Some(endpoint) = &spec.endpoint {
            if endpoint.starts_with("http://") && !spec.allow_http {
                return Err(format!(
                    "endpoint `{endpoint}` is plain http; add `allow_http = true` to permit it"
                ));
            }
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(format!(
                    "endpoint `{endpoint}` must start with https:// (or http:// with `allow_http = true`)"
                ));
            }
        }
        for secret in [
            &spec.account_key,
            &spec.sas_token,
            &spec.connection_string,
            &spec.secret_access_key,
            &spec.session_token,
        ]
        .into_iter()
        .flatten()
        {
            crate::secrets::register(secret);
        }
        Ok(spec)
    }
}

/// A template of the plan; the error names `key`.
pub fn template(key: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e: TemplateError| format!("`{key}`: {e}"))
}

/// `16MiB`, `8 MB`, `5242880`: bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `250ms`, `90s`, `10m`, `2h`, or a number of seconds.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(std::time::Duration::from_secs(seconds));
    }
    if let Some(millis) = text.strip_suffix("ms") {
        return millis
            .trim()
            .parse()
            .ok()
            .map(std::time::Duration::from_millis);
    }
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = number.trim().parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(seconds))
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
pub fn check_database_url(what: &str, url: &str) -> Result<Template, String> {
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

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain_names() {
        assert!(check_identifier("t", "dbo.app_xml_staging").is_ok());
        assert!(check_identifier("t", "app_XML").is_ok());
        for bad in ["", "a b", "x;drop table y", "a.b.c", "1abc", "\"q\""] {
            assert!(check_identifier("t", bad).is_err(), "{bad}");
        }
    }
}
