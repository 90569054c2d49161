//! The plan file: TOML read into a checked model.
//!
//! `[job]`, `[limits]` and `[store."…"]` are the job model ([`redrive_core::job`]); `[source]`
//! and `[expand]` are read in [`source`]; each `[[step]]` is its kind's own configuration
//! (`crate::steps::<kind>::config`), found through the registry in [`crate::steps`].
//!
//! Reading is pure: no file but the plan itself is opened, no network. Fields a source yields
//! are checked against the templates later, when the source is built
//! ([`Plan::check_fields`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use redrive_core::job::{
    DEFAULT_ITEMS, Hook, JobTable, Limits, LimitsTable, MAX_DEFAULT_ITEMS, StoreSpec, template,
};
use redrive_core::template::{Template, TemplateError};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::steps::{Action, CheckContext, RawAction, STEP_KEYS, STEP_KINDS};

mod legacy;
mod source;
mod suggest;
#[cfg(test)]
mod tests;

pub use crate::sources::{SOURCE_KINDS, SourceKind};
pub use redrive_core::job::PlanError;
pub use source::SourceSpec;
use source::{RawSource, source_key, source_spec};

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

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    job: JobTable,
    source: RawSource,
    expand: Option<RawSource>,
    #[serde(default)]
    step: Vec<RawStep>,
    #[serde(default)]
    limits: LimitsTable,
    #[serde(default)]
    store: BTreeMap<String, StoreSpec>,
}

/// A `[[step]]` table: `name`, `require`, and the kind's own key (any in the registry).
struct RawStep {
    name: Option<String>,
    require: Option<RawRequire>,
    actions: Vec<RawAction>,
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("RawStep", STEP_KEYS, StepVisitor)
    }
}

struct StepVisitor;

impl<'de> Visitor<'de> for StepVisitor {
    type Value = RawStep;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a `[[step]]` table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStep, A::Error> {
        let mut step = RawStep {
            name: None,
            require: None,
            actions: Vec::new(),
        };
        while let Some(key) = map.next_key_seed(StepKey)? {
            match key.as_str() {
                "name" => step.name = Some(map.next_value()?),
                "require" => step.require = Some(map.next_value()?),
                kind => {
                    if let Some(action) = RawAction::next_value(kind, &mut map)? {
                        step.actions.push(action);
                    }
                }
            }
        }
        Ok(step)
    }
}

/// A key of a `[[step]]` table; any other is refused while it is read, so the error has its
/// place in the file and the keys allowed.
struct StepKey;

impl<'de> DeserializeSeed<'de> for StepKey {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = String::deserialize(deserializer)?;
        if STEP_KEYS.contains(&key.as_str()) {
            Ok(key)
        } else {
            Err(de::Error::unknown_field(&key, STEP_KEYS))
        }
    }
}

/// The canonical form: `name`, `require`, then the action, each only when present.
impl Serialize for RawStep {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(name) = &self.name {
            map.serialize_entry("name", name)?;
        }
        if let Some(require) = &self.require {
            map.serialize_entry("require", require)?;
        }
        for action in &self.actions {
            action.serialize_entry(&mut map)?;
        }
        map.end()
    }
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

/// The part of a plan that decides which items exist and what is done to them, in its
/// canonical form (see [`redrive_core::fingerprint`]).
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

/// `None` when `value` is its default, as `same` tells.
pub(crate) fn unless_default<T>(value: &mut Option<T>, same: impl Fn(&T) -> bool) {
    if value.as_ref().is_some_and(same) {
        *value = None;
    }
}

/// `skip_serializing_if` for a key whose value is its type's default.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl RawStep {
    fn canonicalize(&mut self) {
        if let Some(RawRequire::Table(table)) = &mut self.require {
            unless_default(&mut table.field, |f| f == "input");
            if table.field.is_none() {
                self.require = Some(RawRequire::Path(std::mem::take(&mut table.path)));
            }
        }
        self.actions.iter_mut().for_each(RawAction::canonicalize);
    }
}

/// How errors name the step at `index` (from 0): `step 2 (copy)`, the same in every message
/// (`name`: the step's name, which is its kind unless the plan names it).
pub fn step_table(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("step {} ({name})", index + 1),
        None => format!("step {}", index + 1),
    }
}

/// The problems found while checking a plan's tables, each with its table.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, table: &str, message: String) {
        self.0.push((table.to_owned(), message));
    }

    /// The value, or `None` with the problem noted.
    fn check<T>(&mut self, table: &str, checked: Result<T, String>) -> Option<T> {
        checked.map_err(|message| self.add(table, message)).ok()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One problem as [`PlanError::Invalid`], more as [`PlanError::Several`].
    fn into_error(mut self, file: &str) -> PlanError {
        match self.0.len() {
            1 => {
                let (table, message) = self.0.remove(0);
                PlanError::Invalid {
                    file: file.to_owned(),
                    table,
                    message,
                }
            }
            _ => PlanError::Several {
                file: file.to_owned(),
                problems: self.0,
            },
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
        let mut raw = parse_toml(text, &file)?;
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
        // Each table is checked on its own and every problem is said at once: a user fixes
        // them in one pass instead of one per run.
        let mut problems = Problems::default();

        let job = problems.check("job", raw.job.check(&base_dir));
        let source = problems.check("source", source_spec(&raw.source, &base_dir));
        let expand = match &raw.expand {
            Some(expand) => problems
                .check("expand", source_spec(expand, &base_dir))
                .and_then(|spec| {
                    let refused = if expand.says_duplicates() {
                        Some("`duplicates` applies to `[source]` only: children's keys are unique within their parent".to_owned())
                    } else if !spec.kind.config().expands() {
                        Some(format!(
                            "a `{}` source cannot expand an item; use `list` (e.g. `list = \"az://src/{{JobId}}/{{WorkItemId}}/\"`), `glob` or `kusto`",
                            spec.kind.name()
                        ))
                    } else {
                        None
                    };
                    match refused {
                        Some(message) => problems.check::<SourceSpec>("expand", Err(message)),
                        None => Some(spec),
                    }
                }),
            None => None,
        };

        if raw.step.is_empty() {
            problems.add(
                "step",
                "the plan has no steps; add at least one `[[step]]` table, e.g. `copy = { from = \"{path}\", to = \"out/{name}\" }`".to_owned(),
            );
        }
        let cx = CheckContext {
            base_dir: &base_dir,
        };
        let mut steps = Vec::with_capacity(raw.step.len());
        let mut names = BTreeSet::new();
        for (index, step) in raw.step.iter().enumerate() {
            // Named as it is written: its `name`, else its one action's kind.
            let called = step.name.as_deref().or(match step.actions.as_slice() {
                [one] => Some(one.name()),
                _ => None,
            });
            let table = step_table(index, called);
            let Some(action) = problems.check(&table, action(step, &cx)) else {
                continue;
            };
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
                problems.add(
                    &table,
                    format!("step name `{name}` is used twice; give each step its own `name`"),
                );
                continue;
            }
            let require = step
                .require
                .as_ref()
                .map(|require| require_spec(require, &base_dir))
                .transpose();
            let Some(require) = problems.check(&table, require) else {
                continue;
            };
            steps.push(StepSpec {
                name,
                action,
                require,
            });
        }

        // Two steps writing the same target would overwrite (or skip) each other's work.
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for step in &steps {
            if let Some(target) = step.action.config().target()
                && let Some(other) = targets.insert(target.raw(), &step.name)
            {
                return Err(invalid(
                    "step",
                    format!(
                        "steps `{other}` and `{}` both copy to `{}`; give each its own target",
                        step.name,
                        target.raw()
                    ),
                ));
            }
        }
        // Commands run one at a time unless the plan says otherwise, as the backfill scripts do.
        let one_at_a_time = steps.iter().any(|s| s.action.config().one_at_a_time());
        // A batching step fills its batches only with enough items in flight.
        let largest_batch = steps
            .iter()
            .filter_map(|s| s.action.config().traits().batch)
            .map(|(size, _)| size)
            .max()
            .unwrap_or(1);
        let default_items = if one_at_a_time {
            1
        } else {
            DEFAULT_ITEMS.max(largest_batch.saturating_mul(2).min(MAX_DEFAULT_ITEMS))
        };
        let limits = problems.check("limits", raw.limits.check(default_items));

        let mut stores = Vec::new();
        for (prefix, spec) in &raw.store {
            let table = format!("store.\"{prefix}\"");
            if let Some(spec) = problems.check(&table, StoreSpec::check(spec)) {
                stores.push((prefix.clone(), spec));
            }
        }
        stores.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let (Some(job), Some(source), Some(limits)) = (job, source, limits) else {
            return Err(problems.into_error(&file));
        };
        if !problems.is_empty() {
            return Err(problems.into_error(&file));
        }

        raw.source.canonicalize();
        if let Some(expand) = &mut raw.expand {
            expand.canonicalize();
        }
        raw.step.iter_mut().for_each(RawStep::canonicalize);
        let fingerprint = redrive_core::fingerprint::of(&Fingerprinted {
            name: &raw.job.name,
            source: &raw.source,
            expand: &raw.expand,
            step: &raw.step,
        });
        let earlier_fingerprints = legacy::fingerprint(text)
            .filter(|legacy| *legacy != fingerprint)
            .into_iter()
            .collect();

        Ok(Plan {
            path: path.to_path_buf(),
            base_dir,
            name: job.name,
            state: job.state,
            log_dir: job.log_dir,
            source,
            expand,
            steps,
            limits,
            stores,
            fingerprint,
            earlier_fingerprints,
            before: job.before,
            after: job.after,
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
            for template in expand.kind.config().templates() {
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
                    .map_err(|e| invalid(step_table(index, Some(&step.name)), "require", e))?;
                item_fields.insert(require.field.clone());
            }
            let config = step.action.config();
            for template in config.templates() {
                template.check_fields(&item_fields).map_err(|e| {
                    invalid(step_table(index, Some(&step.name)), step.action.name(), e)
                })?;
            }
            for (key, field) in config.fields_read() {
                if !item_fields.contains(field) {
                    return Err(PlanError::Invalid {
                        file: file.clone(),
                        table: step_table(index, Some(&step.name)),
                        message: format!(
                            "`{key}` names `{field}`, which items do not have; they have: {}",
                            item_fields.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
            item_fields.extend(config.fields_bound().into_iter().map(str::to_owned));
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
        let mut message = in_plan_terms(inner.trim_end());
        if let Some(hint) = suggest::did_you_mean(&message) {
            message.push('\n');
            message.push_str(&hint);
        }
        if path.is_empty() || path == "." {
            syntax(message)
        } else {
            syntax(format!("in `{path}`: {message}"))
        }
    })
}

/// serde's words for the types a plan's values have, in the plan's (TOML's) terms: `expected
/// usize` becomes `expected a whole number`, `a sequence` a list, `a map` a table.
fn in_plan_terms(message: &str) -> String {
    const TERMS: [(&str, &str); 14] = [
        ("expected usize", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected isize", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list (`[ … ]`)"),
        ("expected a map", "expected a table (`{ … }`)"),
        ("invalid type: sequence", "invalid type: a list"),
        ("invalid type: map", "invalid type: a table"),
    ];
    let mut text = without_type_names(message);
    for (serde, plan) in TERMS {
        // Whole words only: `expected u8` is not the start of `expected u80…`.
        let mut from = 0;
        while let Some(at) = text[from..].find(serde).map(|i| i + from) {
            let end = at + serde.len();
            let whole = !text[end..].starts_with(|c: char| c.is_ascii_alphanumeric());
            if whole {
                text.replace_range(at..end, plan);
                from = at + plan.len();
            } else {
                from = end;
            }
        }
    }
    text
}

/// serde names the Rust type a table is read into (`expected struct RawCopy`), and a list
/// given for a table is read as its fields in order (`invalid length 2, expected struct
/// RawCopy with 10 elements`): both say `a table` instead.
fn without_type_names(message: &str) -> String {
    const STRUCT: &str = "expected struct ";
    let Some(at) = message.find(STRUCT) else {
        return message.to_owned();
    };
    let rest = &message[at + STRUCT.len()..];
    let name_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let mut after = &rest[name_end..];
    // The message may follow a TOML excerpt: its own line starts after the last newline.
    let line_start = message[..at].rfind('\n').map_or(0, |i| i + 1);
    let (excerpt, mut line) = message[..at].split_at(line_start);
    if let Some(elements) = after.strip_prefix(" with ")
        && let Some(end) = elements.find(" elements")
        && elements[..end].bytes().all(|b| b.is_ascii_digit())
    {
        after = &elements[end + " elements".len()..];
        if line.starts_with("invalid length ") {
            line = "invalid type: a list, ";
        }
    }
    format!("{excerpt}{line}expected a table (`{{ … }}`) with named fields{after}")
}

/// The step's one action, checked.
fn action(raw: &RawStep, cx: &CheckContext<'_>) -> Result<Action, String> {
    match raw.actions.as_slice() {
        [action] => action.check(cx),
        [] => Err(format!(
            "the step has no action; give one of {}",
            STEP_KINDS
                .iter()
                .map(|kind| format!("`{kind}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        several => Err(format!(
            "a step holds one action; put {} in separate `[[step]]` tables",
            STEP_KINDS
                .iter()
                .filter(|kind| several.iter().any(|action| action.name() == **kind))
                .map(|kind| format!("`{kind}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
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
