//! The plan file: TOML read into a checked model.
//!
//! Reading is pure: no file but the plan itself is opened, no network. Fields a source yields
//! are checked against the templates later, when the source is built (`Pipeline::check`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::template::{Template, TemplateError};

mod sql;
pub use sql::{
    DEFAULT_INSERT_BATCH, DEFAULT_SQL_BATCH, Hook, Missing, OnConflict, SqlInsertSpec,
    SqlSourceSpec, XmlPath, XmlSpec, XmlStep, check_identifier, parse_xml_path,
};

/// Default items in flight.
pub const DEFAULT_ITEMS: usize = 16;
/// Most items in flight by default, however large a step's batch.
const MAX_DEFAULT_ITEMS: usize = 4_096;
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
        /// The table, e.g. `step.2` or `source`.
        table: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A checked plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The plan file.
    pub path: PathBuf,
    /// Relative paths in the plan are relative to this directory (the plan's own).
    pub base_dir: PathBuf,
    /// `job.name`.
    pub name: String,
    /// Where the state lives: a file path (resolved) or a URL.
    pub state: String,
    /// Where `run` steps write each item's output log.
    pub log_dir: PathBuf,
    /// The work list.
    pub source: SourceSpec,
    /// The expansion of each item into children; the steps then run for each child.
    pub expand: Option<SourceSpec>,
    /// The pipeline, in order.
    pub steps: Vec<StepSpec>,
    /// Concurrency and retry limits.
    pub limits: Limits,
    /// Store settings by URL prefix, longest prefix first.
    pub stores: Vec<(String, StoreSpec)>,
    /// Hash of the job name, source, expansion and steps (not limits or stores), in their
    /// canonical form: a default written out or left absent is the same plan.
    pub fingerprint: String,
    /// What earlier releases called this same plan: a state that records one of these resumes
    /// (and is given [`Plan::fingerprint`]).
    pub earlier_fingerprints: Vec<String>,
    /// SQL run once before the job's items (`[[job.before]]`).
    pub before: Vec<Hook>,
    /// SQL run once after every item ended (`[[job.after]]`).
    pub after: Vec<Hook>,
}

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

/// One `[[step]]`.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// Shown in status and telemetry; unique in the plan.
    pub name: String,
    /// What the step does.
    pub action: Action,
    /// What must exist before the step runs.
    pub require: Option<RequireSpec>,
}

/// `require = "PATH|URL|GLOB"` or `require = { path = "…", field = "input" }`.
#[derive(Clone, Debug)]
pub struct RequireSpec {
    /// A local path (relative to the plan), a glob, or a URL.
    pub path: Template,
    /// The field the matched path is bound to, for this step and later ones.
    pub field: String,
}

/// `run = { cmd, shell, cwd, env, timeout, output }`.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The program and its arguments, run without a shell.
    pub cmd: Vec<Template>,
    /// A command line for `sh -c`, instead of `cmd`.
    pub shell: Option<Template>,
    /// Working directory (default: the plan's folder).
    pub cwd: Option<Template>,
    /// Extra environment variables.
    pub env: Vec<(String, Template)>,
    /// Longest the command may run before it is killed.
    pub timeout: Option<std::time::Duration>,
    /// The file the command must produce; recorded, and the step is redone if it disappears.
    pub output: Option<Template>,
}

/// The actions a step can take.
#[derive(Clone, Debug)]
pub enum Action {
    /// Skip the item when the object exists (or, negated, when it is missing).
    Exists {
        /// The object's URL.
        url: Template,
        /// Skip when missing instead.
        negate: bool,
    },
    /// Copy one object, streamed.
    Copy(CopySpec),
    /// Send one queue message.
    Enqueue(EnqueueSpec),
    /// Run a command.
    Run(RunSpec),
    /// Call an HTTP API, one request per item or per batch of items.
    Http(HttpSpec),
    /// Keep one element of an XML field.
    Xml(XmlSpec),
    /// Insert (or upsert) one row per item, in batches.
    SqlInsert(SqlInsertSpec),
}

/// `http = { url, method, headers, form | json, batch, max_wait, rate, concurrency }`.
#[derive(Clone, Debug)]
pub struct HttpSpec {
    /// The endpoint.
    pub url: Template,
    /// `POST` by default.
    pub method: String,
    /// Header values may use `${ENV}` (masked everywhere).
    pub headers: Vec<(String, Template)>,
    /// The body.
    pub body: HttpBody,
    /// Items per request (1 by default).
    pub batch: usize,
    /// Longest an item waits for its batch to fill.
    pub max_wait: std::time::Duration,
    /// Requests per second at most.
    pub rate: Option<f64>,
    /// Requests in flight at most.
    pub concurrency: Option<usize>,
}

/// The body of an HTTP step.
#[derive(Clone, Debug)]
pub enum HttpBody {
    /// `application/x-www-form-urlencoded`: each item adds its values (fields repeat).
    Form(Vec<(String, Template)>),
    /// `application/json`: a JSON array of each item's rendered template (a single value when
    /// `batch = 1`).
    Json(Template),
    /// No body.
    Empty,
}

impl Action {
    /// The action's name as written in a plan.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Exists { .. } => "exists",
            Action::Copy(_) => "copy",
            Action::Enqueue(_) => "enqueue",
            Action::Run(_) => "run",
            Action::Http(_) => "http",
            Action::Xml(_) => "xml",
            Action::SqlInsert(_) => "sql_insert",
        }
    }

    /// Every template of the action.
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            Action::Exists { url, .. } => vec![url],
            Action::Copy(copy) => {
                let mut all = vec![&copy.from, &copy.to];
                all.extend(copy.content_type.as_ref());
                all
            }
            Action::Enqueue(enqueue) => vec![&enqueue.queue, &enqueue.body],
            Action::Http(http) => {
                let mut all = vec![&http.url];
                all.extend(http.headers.iter().map(|(_, t)| t));
                match &http.body {
                    HttpBody::Form(form) => all.extend(form.iter().map(|(_, t)| t)),
                    HttpBody::Json(json) => all.push(json),
                    HttpBody::Empty => {}
                }
                all
            }
            Action::Run(run) => {
                let mut all: Vec<&Template> = run.cmd.iter().collect();
                all.extend(run.shell.as_ref());
                all.extend(run.cwd.as_ref());
                all.extend(run.env.iter().map(|(_, t)| t));
                all.extend(run.output.as_ref());
                all
            }
            Action::Xml(_) => Vec::new(),
            Action::SqlInsert(insert) => {
                let mut all = vec![&insert.url];
                all.extend(insert.columns.iter().map(|(_, t)| t));
                all
            }
        }
    }
}

/// `copy = { from, to, if_exists, content_type }`.
#[derive(Clone, Debug)]
pub struct CopySpec {
    /// Source object URL.
    pub from: Template,
    /// Target object URL.
    pub to: Template,
    /// What to do when the target exists.
    pub if_exists: IfExists,
    /// Content type to set on the target.
    pub content_type: Option<Template>,
    /// Bytes per read and per uploaded part (multipart / block upload above it).
    pub part_size: usize,
    /// Parts uploaded at once; peak memory per copy is about `parts × part_size`.
    pub parts: usize,
    /// Checksum computed while streaming, compared with the store's where it reports one.
    pub checksum: Option<Checksum>,
    /// A file that gets one JSON line per object copied.
    pub manifest: Option<PathBuf>,
}

/// Default bytes per part.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// Default parts in flight.
pub const DEFAULT_PARTS: usize = 8;

/// Checksum algorithms for `copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// MD5 (what S3 single-part ETags and Azure Content-MD5 hold).
    Md5,
    /// CRC32C (Castagnoli).
    Crc32c,
    /// SHA-256.
    Sha256,
}

impl Checksum {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Checksum::Md5 => "md5",
            Checksum::Crc32c => "crc32c",
            Checksum::Sha256 => "sha256",
        }
    }

    /// Parses `md5`, `crc32c` or `sha256`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "md5" => Some(Checksum::Md5),
            "crc32c" => Some(Checksum::Crc32c),
            "sha256" => Some(Checksum::Sha256),
            _ => None,
        }
    }
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

/// `enqueue = { queue, body, base64 }`.
#[derive(Clone, Debug)]
pub struct EnqueueSpec {
    /// The queue: `azq://QUEUE` or `https://ACCOUNT.queue.core.windows.net/QUEUE`.
    pub queue: Template,
    /// The message text.
    pub body: Template,
    /// Send the text base64-encoded (what Azure Functions queue triggers expect by default).
    pub base64: bool,
}

/// What a copy does when its target exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Create only (a conditional write); an existing target counts as success.
    #[default]
    Skip,
    /// Replace the target.
    Overwrite,
    /// Fail the item.
    Fail,
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
}

impl StoreSpec {
    /// `timeout`, parsed (checked when the plan is read).
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout.as_deref().and_then(parse_duration)
    }
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

// ---- the file as written ----

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    job: RawJob,
    source: RawSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    expand: Option<RawSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    step: Vec<RawStep>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    store: BTreeMap<String, StoreSpec>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    before: Vec<sql::RawHook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    after: Vec<sql::RawHook>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
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
    sql: Option<sql::RawSql>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recursive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delimiter: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDates {
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKusto {
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
struct RawStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    require: Option<RawRequire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<RawRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<RawHttp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exists: Option<RawExists>,
    #[serde(skip_serializing_if = "Option::is_none")]
    copy: Option<RawCopy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enqueue: Option<RawEnqueue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xml: Option<sql::RawXml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql_insert: Option<sql::RawSqlInsert>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawRequire {
    Path(String),
    Table(RawRequireTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequireTable {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    form: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shell: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnqueue {
    queue: String,
    body: String,
    #[serde(default, skip_serializing_if = "crate::fingerprint::is_default")]
    base64: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawExists {
    Url(String),
    Table(RawExistsTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExistsTable {
    url: String,
    #[serde(default, skip_serializing_if = "crate::fingerprint::is_default")]
    negate: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    from: String,
    to: String,
    #[serde(default, skip_serializing_if = "crate::fingerprint::is_default")]
    if_exists: IfExists,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_item: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
}

/// The part of a plan that decides which items exist and what is done to them, in its
/// canonical form (see [`crate::fingerprint`]).
#[derive(Serialize)]
struct Fingerprinted<'a> {
    name: &'a str,
    source: &'a RawSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    expand: &'a Option<RawSource>,
    step: &'a [RawStep],
}

// ---- canonical form (for the fingerprint) ----
//
// Each value equal to its default becomes absent, and a short form (`exists = "URL"`) and its
// table form are written alike, so that a plan means one fingerprint however it is written.

/// `None` when `value` is `default` under `same`.
fn unless_default<T>(value: &mut Option<T>, same: impl Fn(&T) -> bool) {
    if value.as_ref().is_some_and(same) {
        *value = None;
    }
}

impl RawSource {
    fn canonicalize(&mut self) {
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

impl RawStep {
    fn canonicalize(&mut self) {
        if let Some(RawRequire::Table(table)) = &mut self.require {
            unless_default(&mut table.field, |f| f == "input");
            if table.field.is_none() {
                self.require = Some(RawRequire::Path(std::mem::take(&mut table.path)));
            }
        }
        if let Some(RawExists::Table(table)) = &mut self.exists
            && !table.negate
        {
            self.exists = Some(RawExists::Url(std::mem::take(&mut table.url)));
        }
        if let Some(copy) = &mut self.copy {
            unless_default(&mut copy.part_size, |p| {
                parse_size(p) == Some(DEFAULT_PART_SIZE)
            });
            unless_default(&mut copy.parts, |p| *p == DEFAULT_PARTS);
        }
        if let Some(http) = &mut self.http {
            unless_default(&mut http.method, |m| m.eq_ignore_ascii_case("POST"));
            unless_default(&mut http.batch, |b| *b == 1);
            unless_default(&mut http.max_wait, |w| {
                parse_duration(w) == Some(std::time::Duration::from_secs(1))
            });
        }
        if let Some(xml) = &mut self.xml {
            xml.canonicalize();
        }
        if let Some(insert) = &mut self.sql_insert {
            insert.canonicalize();
        }
    }
}

impl Plan {
    /// Reads and checks a plan file.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks plan text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PlanError> {
        let file = path.display().to_string();
        let raw = parse_toml(text, &file)?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
        let invalid = |table: &str, message: String| PlanError::Invalid {
            file: file.clone(),
            table: table.to_owned(),
            message,
        };

        if raw.job.name.trim().is_empty() {
            return Err(invalid("job", "`name` must not be empty".to_owned()));
        }
        // `state = "${REDRIVE_STATE}"`: a URL with a password comes from the environment
        // (read now, masked everywhere).
        let state = match &raw.job.state {
            Some(state) => Some(
                crate::Template::parse(state)
                    .and_then(|t| t.render(&crate::item::Fields::new()))
                    .map_err(|e| invalid("job", format!("`state`: {e}")))?,
            ),
            None => None,
        };
        let state = match &state {
            Some(state) if state.contains("://") => state.clone(),
            Some(state) => base_dir.join(state).display().to_string(),
            None => base_dir
                .join(".redrive")
                .join(format!("{}.db", file_safe(&raw.job.name)))
                .display()
                .to_string(),
        };

        let log_dir = match &raw.job.logs {
            Some(logs) => base_dir.join(logs),
            None => Path::new(&state)
                .parent()
                .filter(|_| !state.contains("://"))
                .map_or_else(|| base_dir.join(".redrive"), Path::to_path_buf)
                .join(format!("{}-logs", file_safe(&raw.job.name))),
        };
        let source = source_spec(&raw.source, &base_dir).map_err(|m| invalid("source", m))?;
        let expand = match &raw.expand {
            Some(expand) => {
                let spec = source_spec(expand, &base_dir).map_err(|m| invalid("expand", m))?;
                if !matches!(
                    spec.kind,
                    SourceKind::List { .. } | SourceKind::Glob { .. } | SourceKind::Kusto(_)
                ) {
                    return Err(invalid(
                        "expand",
                        format!(
                            "a `{}` source cannot expand an item; use `list` (e.g. `list = \"az://src/{{JobId}}/{{WorkItemId}}/\"`), `glob` or `kusto`",
                            spec.kind.name()
                        ),
                    ));
                }
                Some(spec)
            }
            None => None,
        };

        if raw.step.is_empty() {
            return Err(invalid(
                "step",
                "the plan has no steps; add at least one `[[step]]` table, e.g. `copy = { from = \"{path}\", to = \"out/{name}\" }`".to_owned(),
            ));
        }
        let mut steps = Vec::with_capacity(raw.step.len());
        let mut names = BTreeSet::new();
        for (index, step) in raw.step.iter().enumerate() {
            let table = format!("step.{}", index + 1);
            let action = action(step, &base_dir).map_err(|m| invalid(&table, m))?;
            let name = match &step.name {
                Some(name) => name.clone(),
                None => {
                    let base = action.name();
                    let mut name = base.to_owned();
                    let mut n = 2;
                    while names.contains(&name) {
                        name = format!("{base}-{n}");
                        n += 1;
                    }
                    name
                }
            };
            if !names.insert(name.clone()) {
                return Err(invalid(
                    &table,
                    format!("step name `{name}` is used twice; give each step its own `name`"),
                ));
            }
            let require = step
                .require
                .as_ref()
                .map(|require| require_spec(require, &base_dir))
                .transpose()
                .map_err(|m| invalid(&table, m))?;
            steps.push(StepSpec {
                name,
                action,
                require,
            });
        }

        // Two steps writing the same target would overwrite (or skip) each other's work.
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for step in &steps {
            if let Action::Copy(copy) = &step.action
                && let Some(other) = targets.insert(copy.to.raw(), &step.name)
            {
                return Err(invalid(
                    "step",
                    format!(
                        "steps `{other}` and `{}` both copy to `{}`; give each its own target",
                        step.name,
                        copy.to.raw()
                    ),
                ));
            }
        }
        // Commands run one at a time unless the plan says otherwise, as the backfill scripts do.
        let runs_commands = steps.iter().any(|s| matches!(s.action, Action::Run(_)));
        // A batching step fills its batches only with enough items in flight.
        let largest_batch = steps
            .iter()
            .map(|s| match &s.action {
                Action::Http(http) => http.batch,
                Action::SqlInsert(insert) => insert.batch,
                _ => 1,
            })
            .max()
            .unwrap_or(1);
        let default_items = if runs_commands {
            1
        } else {
            DEFAULT_ITEMS.max(largest_batch.saturating_mul(2).min(MAX_DEFAULT_ITEMS))
        };
        let limits = Limits {
            items: raw.limits.items.unwrap_or(default_items),
            per_item: raw.limits.per_item.unwrap_or(DEFAULT_PER_ITEM),
            retries: raw.limits.retries.unwrap_or(DEFAULT_RETRIES),
            lease: match raw.limits.lease.as_deref() {
                None => DEFAULT_LEASE,
                Some(text) => parse_duration(text)
                    .filter(|d| *d >= std::time::Duration::from_secs(1))
                    .ok_or_else(|| {
                        invalid(
                            "limits",
                            format!("`lease` = `{text}` is not a duration of 1s or more; write e.g. `30s`"),
                        )
                    })?,
            },
        };
        if limits.items == 0 || limits.per_item == 0 {
            return Err(invalid(
                "limits",
                "`items` and `per_item` must be at least 1".to_owned(),
            ));
        }

        let mut stores = Vec::new();
        for (prefix, spec) in &raw.store {
            let table = format!("store.\"{prefix}\"");
            stores.push((
                prefix.clone(),
                store_spec(spec).map_err(|m| invalid(&table, m))?,
            ));
        }
        stores.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));

        let mut raw = raw;
        raw.source.canonicalize();
        if let Some(expand) = &mut raw.expand {
            expand.canonicalize();
        }
        raw.step.iter_mut().for_each(RawStep::canonicalize);
        let fingerprint = crate::fingerprint::of(&Fingerprinted {
            name: &raw.job.name,
            source: &raw.source,
            expand: &raw.expand,
            step: &raw.step,
        });
        let earlier_fingerprints = crate::fingerprint::legacy(text)
            .filter(|legacy| *legacy != fingerprint)
            .into_iter()
            .collect();

        Ok(Plan {
            path: path.to_path_buf(),
            base_dir,
            name: raw.job.name.clone(),
            state,
            log_dir,
            source,
            expand,
            steps,
            limits,
            stores,
            fingerprint,
            earlier_fingerprints,
            before: sql::hooks("before", &raw.job.before).map_err(|m| invalid("job", m))?,
            after: sql::hooks("after", &raw.job.after).map_err(|m| invalid("job", m))?,
        })
    }

    /// The key template of the top-level source.
    pub fn key(&self) -> Result<Template, PlanError> {
        source_key(&self.source).map_err(|message| PlanError::Invalid {
            file: self.path.display().to_string(),
            table: "source".to_owned(),
            message,
        })
    }

    /// The key template of the children, when the plan expands items.
    pub fn expand_key(&self) -> Result<Option<Template>, PlanError> {
        self.expand
            .as_ref()
            .map(|expand| {
                source_key(expand).map_err(|message| PlanError::Invalid {
                    file: self.path.display().to_string(),
                    table: "expand".to_owned(),
                    message,
                })
            })
            .transpose()
    }

    /// Checks every template of the plan against the fields that will exist: the source's,
    /// and under `[expand]` the parent's plus the children's (children inherit their parent's).
    pub fn check_fields(
        &self,
        parent: &BTreeSet<String>,
        children: Option<&BTreeSet<String>>,
    ) -> Result<(), PlanError> {
        let file = self.path.display().to_string();
        let invalid = |table: String, what: &str, e: TemplateError| PlanError::Invalid {
            file: file.clone(),
            table,
            message: format!("`{what}`: {e}"),
        };
        self.key()?
            .check_fields(parent)
            .map_err(|e| invalid("source".to_owned(), "key", e))?;
        let mut item_fields = parent.clone();
        if let (Some(expand), Some(children)) = (&self.expand, children) {
            for template in expand.kind.templates() {
                template
                    .check_fields(parent)
                    .map_err(|e| invalid("expand".to_owned(), expand.kind.name(), e))?;
            }
            item_fields.extend(children.iter().cloned());
            if let Some(key) = self.expand_key()? {
                key.check_fields(&item_fields)
                    .map_err(|e| invalid("expand".to_owned(), "key", e))?;
            }
        }
        for (index, step) in self.steps.iter().enumerate() {
            if let Some(require) = &step.require {
                require
                    .path
                    .check_fields(&item_fields)
                    .map_err(|e| invalid(format!("step.{}", index + 1), "require", e))?;
                item_fields.insert(require.field.clone());
            }
            for template in step.action.templates() {
                template
                    .check_fields(&item_fields)
                    .map_err(|e| invalid(format!("step.{}", index + 1), step.action.name(), e))?;
            }
            if let Action::Xml(xml) = &step.action {
                if !item_fields.contains(&xml.field) {
                    return Err(PlanError::Invalid {
                        file: file.clone(),
                        table: format!("step.{}", index + 1),
                        message: format!(
                            "`xml.field` names `{}`, which items do not have; they have: {}",
                            xml.field,
                            item_fields.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                item_fields.insert(xml.into.clone());
            }
        }
        Ok(())
    }
}

fn parse_toml(text: &str, file: &str) -> Result<RawPlan, PlanError> {
    let syntax = |message: String| PlanError::Syntax {
        file: file.to_owned(),
        message,
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| syntax(e.to_string()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let message = inner.trim_end().to_owned();
        if path.is_empty() || path == "." {
            syntax(message)
        } else {
            syntax(format!("in `{path}`: {message}"))
        }
    })
}

fn source_spec(raw: &RawSource, base_dir: &Path) -> Result<SourceSpec, String> {
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
        SourceKind::Sql(sql::sql_source(sql)?)
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

fn source_key(spec: &SourceSpec) -> Result<Template, String> {
    match (&spec.key, spec.kind.default_key()) {
        (Some(key), _) => Ok(key.clone()),
        (None, Some(default)) => template("key", default),
        (None, None) => Err(format!(
            "a `{}` source needs a `key`, the field(s) that make an item unique, e.g. `key = \"{{WorkItemId}}\"`",
            spec.kind.name()
        )),
    }
}

fn action(raw: &RawStep, base_dir: &Path) -> Result<Action, String> {
    let given: Vec<&str> = [
        ("exists", raw.exists.is_some()),
        ("copy", raw.copy.is_some()),
        ("enqueue", raw.enqueue.is_some()),
        ("run", raw.run.is_some()),
        ("http", raw.http.is_some()),
        ("xml", raw.xml.is_some()),
        ("sql_insert", raw.sql_insert.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if given.len() > 1 {
        return Err(format!(
            "a step holds one action; put {} in separate `[[step]]` tables",
            given
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    if let Some(exists) = &raw.exists {
        let (url, negate) = match exists {
            RawExists::Url(url) => (url.as_str(), false),
            RawExists::Table(table) => (table.url.as_str(), table.negate),
        };
        return Ok(Action::Exists {
            url: template("exists", url)?,
            negate,
        });
    }
    if let Some(copy) = &raw.copy {
        let part_size = match copy.part_size.as_deref() {
            Some(text) => parse_size(text)
                .filter(|n| *n >= 1024 * 1024)
                .ok_or_else(|| format!("`copy.part_size` = `{text}`: give a size of at least 1MiB, e.g. \"16MiB\" (S3 parts are at least 5MiB)"))?,
            None => DEFAULT_PART_SIZE,
        };
        let parts = copy.parts.unwrap_or(DEFAULT_PARTS);
        if parts == 0 {
            return Err("`copy.parts` must be at least 1".to_owned());
        }
        return Ok(Action::Copy(CopySpec {
            from: template("copy.from", &copy.from)?,
            to: template("copy.to", &copy.to)?,
            if_exists: copy.if_exists,
            content_type: copy
                .content_type
                .as_deref()
                .map(|t| template("copy.content_type", t))
                .transpose()?,
            part_size,
            parts,
            checksum: copy.checksum,
            manifest: copy.manifest.as_deref().map(|m| base_dir.join(m)),
        }));
    }
    if let Some(enqueue) = &raw.enqueue {
        return Ok(Action::Enqueue(EnqueueSpec {
            queue: template("enqueue.queue", &enqueue.queue)?,
            body: template("enqueue.body", &enqueue.body)?,
            base64: enqueue.base64,
        }));
    }
    if let Some(run) = &raw.run {
        return run_spec(run).map(Action::Run);
    }
    if let Some(http) = &raw.http {
        return http_spec(http).map(Action::Http);
    }
    if let Some(xml) = &raw.xml {
        return sql::xml(xml).map(Action::Xml);
    }
    if let Some(insert) = &raw.sql_insert {
        return sql::sql_insert(insert).map(Action::SqlInsert);
    }
    Err("the step has no action; give one of `exists`, `copy`, `enqueue`, `run`, `http`, `xml`, `sql_insert`".to_owned())
}

fn http_spec(raw: &RawHttp) -> Result<HttpSpec, String> {
    let method = raw
        .method
        .clone()
        .unwrap_or_else(|| "POST".to_owned())
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(format!(
            "`http.method` = `{method}`; use GET, POST, PUT, PATCH or DELETE"
        ));
    }
    let body = match (&raw.form, &raw.json) {
        (Some(_), Some(_)) => return Err("give `http.form` or `http.json`, not both".to_owned()),
        (Some(form), None) => HttpBody::Form(
            form.iter()
                .map(|(k, v)| Ok((k.clone(), template(&format!("http.form.{k}"), v)?)))
                .collect::<Result<Vec<_>, String>>()?,
        ),
        (None, Some(json)) => HttpBody::Json(template("http.json", json)?),
        (None, None) => HttpBody::Empty,
    };
    let batch = raw.batch.unwrap_or(1);
    if batch == 0 {
        return Err("`http.batch` must be at least 1".to_owned());
    }
    if let Some(rate) = raw.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err(format!(
            "`http.rate` must be a positive number of requests per second, got {rate}"
        ));
    }
    if raw.concurrency == Some(0) {
        return Err("`http.concurrency` must be at least 1".to_owned());
    }
    let max_wait = match raw.max_wait.as_deref() {
        Some(text) => parse_duration(text).ok_or_else(|| {
            format!("`http.max_wait` = `{text}` is not a duration; write e.g. `2s`")
        })?,
        None => std::time::Duration::from_secs(1),
    };
    Ok(HttpSpec {
        url: template("http.url", &raw.url)?,
        method,
        headers: raw
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), template(&format!("http.headers.{k}"), v)?)))
            .collect::<Result<Vec<_>, String>>()?,
        body,
        batch,
        max_wait,
        rate: raw.rate,
        concurrency: raw.concurrency,
    })
}

fn run_spec(raw: &RawRun) -> Result<RunSpec, String> {
    let cmd = match (&raw.cmd, &raw.shell) {
        (Some(cmd), None) if !cmd.is_empty() => cmd
            .iter()
            .map(|part| template("run.cmd", part))
            .collect::<Result<Vec<_>, _>>()?,
        (None, Some(_)) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err("give `run.cmd` (no shell) or `run.shell`, not both".to_owned());
        }
        _ => {
            return Err(
                "`run` needs `cmd`, e.g. `cmd = [\"converter\", \"--in\", \"{input}\"]`, or `shell = \"…\"`".to_owned(),
            );
        }
    };
    let timeout = raw
        .timeout
        .as_deref()
        .map(|t| {
            parse_duration(t).ok_or_else(|| {
                format!("`run.timeout` = `{t}` is not a duration; write e.g. `90s`, `10m` or `2h`")
            })
        })
        .transpose()?;
    Ok(RunSpec {
        cmd,
        shell: raw
            .shell
            .as_deref()
            .map(|t| template("run.shell", t))
            .transpose()?,
        cwd: raw
            .cwd
            .as_deref()
            .map(|t| template("run.cwd", t))
            .transpose()?,
        env: raw
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), template(&format!("run.env.{k}"), v)?)))
            .collect::<Result<Vec<_>, String>>()?,
        timeout,
        output: raw
            .output
            .as_deref()
            .map(|t| template("run.output", t))
            .transpose()?,
    })
}

/// `250ms`, `90s`, `10m`, `2h`, or a number of seconds.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
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

fn require_spec(raw: &RawRequire, base_dir: &Path) -> Result<RequireSpec, String> {
    let (path, field) = match raw {
        RawRequire::Path(path) => (path.as_str(), "input".to_owned()),
        RawRequire::Table(table) => (
            table.path.as_str(),
            table.field.clone().unwrap_or_else(|| "input".to_owned()),
        ),
    };
    let path = if path.contains("://") || Path::new(path).is_absolute() {
        path.to_owned()
    } else {
        base_dir.join(path).display().to_string()
    };
    Ok(RequireSpec {
        path: template("require", &path)?,
        field,
    })
}

fn store_spec(raw: &StoreSpec) -> Result<StoreSpec, String> {
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
    };
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

fn template(key: &str, text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e: TemplateError| format!("`{key}`: {e}"))
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
mod tests;
