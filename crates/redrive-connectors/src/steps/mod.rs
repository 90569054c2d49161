//! Steps: one action per item. Each kind is a folder: `config.rs` (the configuration as
//! written, its check, its canonical form and its build) beside `mod.rs` (the runtime).
//!
//! Adding a step kind: a folder like the others, and one line in [`step_kinds!`] below. The
//! plan reader, `validate`, the fingerprint, `--dry-run` and the engine find it from there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redrive_core::step::{Step, StepTraits};
use redrive_core::template::Template;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::storage::Stores;

mod copy;
mod enqueue;
mod exists;
mod http;
mod require;
mod run;
mod sql_insert;
mod xml;

pub use copy::CopyStep;
pub use copy::config::{CopySpec, DEFAULT_PART_SIZE, DEFAULT_PARTS, IfExists};
pub use enqueue::EnqueueStep;
pub use enqueue::config::EnqueueSpec;
pub use exists::ExistsStep;
pub use exists::config::ExistsSpec;
pub use http::HttpStep;
pub use http::config::{HttpBody, HttpSpec};
pub use require::Required;
pub use run::RunStep;
pub use run::config::RunSpec;
pub use sql_insert::SqlInsertStep;
pub use sql_insert::config::{DEFAULT_INSERT_BATCH, OnConflict, SqlInsertSpec};
pub use xml::XmlStep;
pub use xml::config::{Missing, XmlSpec};

/// A step kind's configuration: as written ([`StepKind::Raw`]), checked into `Self`.
pub(crate) trait StepKind: Sized {
    /// The table as written: `deny_unknown_fields`, and every key absent or at its default
    /// skipped when serialized (the fingerprint's canonical form).
    type Raw: DeserializeOwned + Serialize;

    /// Checks the table (pure: no I/O). `Err` is the message, naming the key and the fix.
    fn check(raw: &Self::Raw, cx: &CheckContext<'_>) -> Result<Self, String>;

    /// Makes the keys whose value is their default absent (and short forms alike), so that a
    /// plan has one fingerprint however it is written.
    fn canonicalize(_raw: &mut Self::Raw) {}
}

/// What checking a step's table may use.
pub(crate) struct CheckContext<'a> {
    /// Relative paths in the plan are relative to this (the plan's folder).
    pub(crate) base_dir: &'a Path,
}

/// What building a step may use.
pub struct BuildContext<'a> {
    /// The step's name.
    pub name: &'a str,
    /// The stores, configured from the plan and the environment.
    pub stores: &'a Arc<Stores>,
    /// The plan's folder.
    pub base_dir: &'a Path,
    /// Where `run` steps write their logs.
    pub log_dir: &'a PathBuf,
}

/// A checked step configuration: what the plan reader and the builder ask of every kind.
pub trait StepConfig: std::fmt::Debug + Send + Sync {
    /// Every template of the step, checked against the fields items will have.
    fn templates(&self) -> Vec<&Template>;

    /// Fields the step reads by name (not through a template): `(key, field)`, e.g.
    /// `("xml.field", "body")`.
    fn fields_read(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// Fields the step adds for later steps.
    fn fields_bound(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Where the step writes, when two steps must not write the same place (`copy.to`).
    fn target(&self) -> Option<&Template> {
        None
    }

    /// True for a step whose items run one at a time unless `[limits] items` says otherwise
    /// (`run`: the backfill scripts run one command at a time).
    fn one_at_a_time(&self) -> bool {
        false
    }

    /// What the step needs from the engine.
    fn traits(&self) -> StepTraits {
        StepTraits::default()
    }

    /// `--rate` for the whole run: a step that paces itself takes it as its own rate.
    fn override_rate(&mut self, _rate: f64) {}

    /// The runtime step. `Err` is the message (for the step's table).
    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String>;
}

/// The registry of step kinds: one line each, `"key" => Variant(ConfigType)`, in the order
/// plan errors list them.
macro_rules! step_kinds {
    ($($name:literal => $variant:ident($spec:ty)),* $(,)?) => {
        /// What a step does: its kind, with its checked configuration.
        #[derive(Clone, Debug)]
        pub enum Action {
            $(
                #[doc = concat!("`", $name, " = …`")]
                $variant($spec),
            )*
        }

        /// The step kinds, as written in a plan.
        pub const STEP_KINDS: &[&str] = &[$($name),*];

        /// Every key a `[[step]]` table may have.
        pub(crate) const STEP_KEYS: &[&str] = &["name", "require", $($name),*];

        /// A step kind's table as written.
        pub(crate) enum RawAction {
            $($variant(<$spec as StepKind>::Raw),)*
        }

        impl RawAction {
            /// Reads the value of key `kind` (a step kind) from `map`; `None` when `kind` is
            /// not a step kind.
            pub(crate) fn next_value<'de, A: serde::de::MapAccess<'de>>(
                kind: &str,
                map: &mut A,
            ) -> Result<Option<Self>, A::Error> {
                $(
                    if kind == $name {
                        return map.next_value().map(|raw| Some(RawAction::$variant(raw)));
                    }
                )*
                Ok(None)
            }

            /// The kind, as written.
            pub(crate) fn name(&self) -> &'static str {
                match self {
                    $(RawAction::$variant(_) => $name,)*
                }
            }

            /// Checks the table.
            pub(crate) fn check(&self, cx: &CheckContext<'_>) -> Result<Action, String> {
                match self {
                    $(RawAction::$variant(raw) => <$spec as StepKind>::check(raw, cx).map(Action::$variant),)*
                }
            }

            /// Writes `kind = table` into the step's canonical form.
            pub(crate) fn serialize_entry<M: serde::ser::SerializeMap>(
                &self,
                map: &mut M,
            ) -> Result<(), M::Error> {
                match self {
                    $(RawAction::$variant(raw) => map.serialize_entry($name, raw),)*
                }
            }

            /// Defaults become absent (see [`StepKind::canonicalize`]).
            pub(crate) fn canonicalize(&mut self) {
                match self {
                    $(RawAction::$variant(raw) => <$spec as StepKind>::canonicalize(raw),)*
                }
            }
        }

        impl Action {
            /// The kind, as written in a plan.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Action::$variant(_) => $name,)*
                }
            }

            /// The configuration, whatever the kind.
            pub fn config(&self) -> &dyn StepConfig {
                match self {
                    $(Action::$variant(spec) => spec,)*
                }
            }

            /// The configuration, to change (`--rate`).
            pub fn config_mut(&mut self) -> &mut dyn StepConfig {
                match self {
                    $(Action::$variant(spec) => spec,)*
                }
            }
        }
    };
}

step_kinds! {
    "exists" => Exists(ExistsSpec),
    "copy" => Copy(CopySpec),
    "enqueue" => Enqueue(EnqueueSpec),
    "run" => Run(RunSpec),
    "http" => Http(HttpSpec),
    "xml" => Xml(XmlSpec),
    "sql_insert" => SqlInsert(SqlInsertSpec),
}
