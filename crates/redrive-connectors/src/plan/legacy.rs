//! The fingerprint as release 8793c89 and those before it computed it, frozen.
//!
//! Those releases hashed `serde_json` of the plan's structs as they were then, with every
//! absent optional key written as `null`: any key added later changed every plan's
//! fingerprint. A state they wrote records that hash; [`fingerprint`] computes it again from
//! the plan text so that such a state resumes under this release (and is then upgraded to the
//! canonical fingerprint). Do not change these structs: they are a record of a past format. A
//! plan that uses a key those releases did not know has no legacy fingerprint (`None`), since
//! no state of theirs can hold it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The legacy fingerprint of plan text, or `None` when those releases could not read it.
pub(crate) fn fingerprint(text: &str) -> Option<String> {
    let plan: Plan = toml::from_str(text).ok()?;
    let json = serde_json::to_vec(&Fingerprinted {
        name: &plan.job.name,
        source: &plan.source,
        expand: &plan.expand,
        step: &plan.step,
    })
    .ok()?;
    Some(redrive_core::fingerprint::short_hash(&json))
}

#[derive(Serialize)]
struct Fingerprinted<'a> {
    name: &'a str,
    source: &'a Source,
    expand: &'a Option<Source>,
    step: &'a [Step],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    job: Job,
    source: Source,
    expand: Option<Source>,
    #[serde(default)]
    step: Vec<Step>,
    #[expect(dead_code, reason = "read only so that a plan with limits parses")]
    limits: Option<toml::Value>,
    #[expect(dead_code, reason = "read only so that a plan with stores parses")]
    store: Option<toml::Value>,
}

#[derive(Deserialize)]
struct Job {
    name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    csv: Option<String>,
    lines: Option<String>,
    glob: Option<String>,
    list: Option<String>,
    kusto: Option<Kusto>,
    dates: Option<Dates>,
    sql: Option<Sql>,
    key: Option<String>,
    recursive: Option<bool>,
    delimiter: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dates {
    from: String,
    to: String,
    step: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kusto {
    cluster: String,
    database: String,
    query: String,
    token: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
    api: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sql {
    url: String,
    table: String,
    key: String,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    batch: Option<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: Option<String>,
    require: Option<Require>,
    run: Option<Run>,
    http: Option<Http>,
    exists: Option<Exists>,
    copy: Option<Copy>,
    enqueue: Option<Enqueue>,
    xml: Option<Xml>,
    sql_insert: Option<SqlInsert>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Require {
    Path(String),
    Table(RequireTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireTable {
    path: String,
    field: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    form: Option<BTreeMap<String, String>>,
    json: Option<String>,
    batch: Option<usize>,
    max_wait: Option<String>,
    rate: Option<f64>,
    concurrency: Option<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Run {
    cmd: Option<Vec<String>>,
    shell: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<String>,
    output: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Enqueue {
    queue: String,
    body: String,
    #[serde(default)]
    base64: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Exists {
    Url(String),
    Table(ExistsTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExistsTable {
    url: String,
    #[serde(default)]
    negate: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    from: String,
    to: String,
    #[serde(default)]
    if_exists: IfExists,
    content_type: Option<String>,
    part_size: Option<String>,
    parts: Option<usize>,
    checksum: Option<Checksum>,
    manifest: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum IfExists {
    #[default]
    Skip,
    Overwrite,
    Fail,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Checksum {
    Md5,
    Crc32c,
    Sha256,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Xml {
    field: String,
    path: String,
    #[serde(default)]
    namespaces: BTreeMap<String, String>,
    #[serde(default)]
    keep_ancestors: bool,
    into: Option<String>,
    #[serde(default)]
    missing: FailOrSkip,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlInsert {
    url: String,
    table: String,
    columns: BTreeMap<String, String>,
    #[serde(default)]
    key: Vec<String>,
    batch: Option<usize>,
    max_wait: Option<String>,
    #[serde(default)]
    on_conflict: OnConflict,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FailOrSkip {
    #[default]
    Fail,
    Skip,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnConflict {
    #[default]
    Fail,
    Skip,
    Update,
}
