//! Sources: where items come from. Each streams; none holds the work list in memory.
//!
//! Each kind is a folder: `config.rs` (its part of the `[source]` table as written, its check,
//! canonical form and build) beside `mod.rs` (the runtime). Adding a kind: a folder like the
//! others and one line in [`source_kinds!`] below.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Shard, Source};
use redrive_core::template::Template;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::storage::Stores;

mod compressed;
mod csv;
mod dates;
mod filter;
pub(crate) mod glob;
mod input_file;
mod inventory;
mod jsonl;
mod kusto;
mod lines;
mod list;
mod narrowed;
mod parquet;
mod shard;
mod sql;

pub use self::csv::config::CsvSpec;
pub use self::dates::config::DatesSpec;
pub use self::glob::config::GlobSpec;
pub use self::input_file::InputPath;
pub use self::inventory::config::InventorySpec;
pub use self::jsonl::config::JsonlSpec;
pub use self::kusto::config::KustoSpec;
pub use self::lines::config::LinesSpec;
pub use self::list::config::ListSpec;
pub use self::parquet::config::ParquetSpec;
pub use self::sql::config::{DEFAULT_SQL_BATCH, SqlSourceSpec};

pub use self::csv::CsvSource;
pub use self::dates::DatesSource;
pub(crate) use self::filter::Bounds;
pub use self::filter::{Filter, FilterOn, Filtered};
pub use self::glob::GlobSource;
pub use self::kusto::KustoSource;
pub use self::lines::LinesSource;
pub use self::list::ListSource;
pub use self::narrowed::{Narrowed, Narrowing};
pub use self::shard::{ShardOf, Sharded};
pub use self::sql::SqlSource;

use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::SourceError;
use tokio::sync::mpsc;

use self::input_file::InputFile;

/// A source kind's configuration: the value of its key in `[source]` as written
/// ([`SourceKindConfig::Raw`]), with the kind's own keys beside it (`delimiter` for `csv`),
/// checked into `Self`.
pub(crate) trait SourceKindConfig: Sized {
    /// The value as written (`csv = "FILE"`, `sql = { … }`); when serialized, keys absent or
    /// at their default are skipped (the fingerprint's canonical form).
    type Raw: DeserializeOwned + Serialize;

    /// Keys of the `[source]` table besides the kind's own that belong to this kind.
    const OPTIONS: &'static [&'static str] = &[];

    /// Checks it (pure: no I/O). `Err` is the message, naming the key and the fix.
    fn check(raw: &Self::Raw, options: &SourceOptions, base_dir: &Path) -> Result<Self, String>;

    /// Makes what is at its default absent, in the value and in the options.
    fn canonicalize(_raw: &mut Self::Raw, _options: &mut SourceOptions) {}
}

/// The keys of any `[source]` that narrow its items ([`Filter`]).
pub(crate) const FILTER_KEYS: [&str; 6] = [
    "include",
    "exclude",
    "min_size",
    "max_size",
    "newer_than",
    "older_than",
];

/// The keys of a `[source]` table that belong to its kind, as written (scalars).
#[derive(Debug, Default, Serialize)]
pub struct SourceOptions(pub(crate) std::collections::BTreeMap<String, toml::Value>);

impl SourceOptions {
    /// A string option.
    pub(crate) fn string(&self, key: &str) -> Result<Option<&str>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(format!("`{key}` must be a string, got `{other}`")),
        }
    }

    /// A boolean option.
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(value)) => Ok(Some(*value)),
            Some(other) => Err(format!("`{key}` must be true or false, got `{other}`")),
        }
    }

    /// Drops `key` when `same` says its value is the default.
    pub(crate) fn unless_default(&mut self, key: &str, same: impl Fn(&toml::Value) -> bool) {
        if self.0.get(key).is_some_and(same) {
            self.0.remove(key);
        }
    }
}

/// What building a source may use.
pub struct SourceBuildContext<'a> {
    /// The stores, configured from the plan and the environment.
    pub stores: &'a Arc<Stores>,
    /// The shard of the items to read, for a source that splits them itself
    /// ([`SourceConfig::shards_itself`]).
    pub shard: Option<Shard>,
}

/// A checked source configuration: what the plan reader and the builder ask of every kind.
pub trait SourceConfig: std::fmt::Debug + Send + Sync {
    /// The templates in the source's location (under `[expand]` they use the parent's fields).
    fn templates(&self) -> Vec<&Template> {
        Vec::new()
    }

    /// The key template used when the plan sets none; `None`: the plan must set `key`.
    fn default_key(&self) -> Option<String> {
        None
    }

    /// True for a kind that can list an item's children under `[expand]`.
    fn expands(&self) -> bool {
        false
    }

    /// True for a source that reads only its shard of the items itself (in its query); the
    /// others are filtered by a hash of the key.
    fn shards_itself(&self) -> bool {
        false
    }

    /// The runtime source.
    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError>;
}

/// The registry of source kinds: one line each, `"key" => Variant(ConfigType)`, in the order
/// plan errors list them.
macro_rules! source_kinds {
    ($($name:literal => $variant:ident($spec:ty)),* $(,)?) => {
        /// The kinds of source, each with its checked configuration.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum SourceKind {
            $(
                #[doc = concat!("`", $name, " = …`")]
                $variant($spec),
            )*
        }

        /// The source kinds, as written in a plan.
        pub const SOURCE_KINDS: &[&str] = &[$($name),*];

        /// A source kind's value as written.
        pub(crate) enum RawSourceKind {
            $($variant(<$spec as SourceKindConfig>::Raw),)*
        }

        /// Every key a `[source]` table may have: the kinds, `key`, and the kinds' options.
        pub(crate) fn source_keys() -> &'static [&'static str] {
            static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
            KEYS.get_or_init(|| {
                let mut keys: Vec<&'static str> = SOURCE_KINDS.to_vec();
                keys.push("key");
                keys.push("duplicates");
                keys.extend(FILTER_KEYS);
                $(
                    for option in <$spec as SourceKindConfig>::OPTIONS {
                        if !keys.contains(option) {
                            keys.push(option);
                        }
                    }
                )*
                keys
            })
        }

        /// The kinds whose option `key` is.
        pub(crate) fn kinds_with_option(key: &str) -> Vec<&'static str> {
            let mut kinds = Vec::new();
            $(
                if <$spec as SourceKindConfig>::OPTIONS.contains(&key) {
                    kinds.push($name);
                }
            )*
            kinds
        }

        impl RawSourceKind {
            /// Reads the value of key `kind` from `map`; `None` when it is not a source kind.
            pub(crate) fn next_value<'de, A: serde::de::MapAccess<'de>>(
                kind: &str,
                map: &mut A,
            ) -> Result<Option<Self>, A::Error> {
                $(
                    if kind == $name {
                        return map.next_value().map(|raw| Some(RawSourceKind::$variant(raw)));
                    }
                )*
                Ok(None)
            }

            /// The kind, as written.
            pub(crate) fn name(&self) -> &'static str {
                match self {
                    $(RawSourceKind::$variant(_) => $name,)*
                }
            }

            /// The options this kind takes.
            pub(crate) fn options(&self) -> &'static [&'static str] {
                match self {
                    $(RawSourceKind::$variant(_) => <$spec as SourceKindConfig>::OPTIONS,)*
                }
            }

            /// Checks the value and its options.
            pub(crate) fn check(&self, options: &SourceOptions, base_dir: &Path) -> Result<SourceKind, String> {
                match self {
                    $(RawSourceKind::$variant(raw) => <$spec as SourceKindConfig>::check(raw, options, base_dir).map(SourceKind::$variant),)*
                }
            }

            /// Writes `kind = value` into the source's canonical form.
            pub(crate) fn serialize_entry<M: serde::ser::SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                match self {
                    $(RawSourceKind::$variant(raw) => map.serialize_entry($name, raw),)*
                }
            }

            /// Defaults become absent (see [`SourceKindConfig::canonicalize`]).
            pub(crate) fn canonicalize(&mut self, options: &mut SourceOptions) {
                match self {
                    $(RawSourceKind::$variant(raw) => <$spec as SourceKindConfig>::canonicalize(raw, options),)*
                }
            }
        }

        impl SourceKind {
            /// The kind, as written in a plan.
            pub fn name(&self) -> &'static str {
                match self {
                    $(SourceKind::$variant(_) => $name,)*
                }
            }

            /// The configuration, whatever the kind.
            pub fn config(&self) -> &dyn SourceConfig {
                match self {
                    $(SourceKind::$variant(spec) => spec,)*
                }
            }
        }
    };
}

source_kinds! {
    "csv" => Csv(CsvSpec),
    "lines" => Lines(LinesSpec),
    "jsonl" => Jsonl(JsonlSpec),
    "parquet" => Parquet(ParquetSpec),
    "inventory" => Inventory(InventorySpec),
    "glob" => Glob(GlobSpec),
    "list" => List(ListSpec),
    "kusto" => Kusto(KustoSpec),
    "dates" => Dates(DatesSpec),
    "sql" => Sql(SqlSourceSpec),
}

/// Items buffered between a blocking reader thread and the engine.
const CHANNEL: usize = 1_024;

/// Runs a blocking producer on tokio's blocking pool and streams what it sends. The producer
/// stops when the stream is dropped (its `send` fails).
fn blocking_stream(
    produce: impl FnOnce(&mpsc::Sender<Result<Fields, SourceError>>) + Send + 'static,
) -> BoxStream<'static, Result<Fields, SourceError>> {
    let (sender, receiver) = mpsc::channel(CHANNEL);
    tokio::task::spawn_blocking(move || produce(&sender));
    Box::pin(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

/// The items of a file read a line at a time (through its compression), streamed: `item`
/// turns a line that is not blank (its text without the line end, and its number) into an
/// item; the first error, the file's or `item`'s, ends the stream.
fn line_items(
    file: &InputFile,
    item: impl Fn(&str) -> Result<Fields, String> + Send + 'static,
) -> BoxStream<'static, Result<Fields, SourceError>> {
    use std::io::BufRead as _;
    let source = file.clone();
    blocking_stream(move |sender| {
        let shown = source.display();
        let file = match source.open() {
            Ok(file) => file,
            Err(e) => {
                let _ = sender.blocking_send(Err(SourceError::Io {
                    location: shown,
                    source: Box::new(e),
                }));
                return;
            }
        };
        let mut reader = std::io::BufReader::new(file);
        let mut buffer = Vec::new();
        for number in 1u64.. {
            buffer.clear();
            let at = || format!("{shown}:{number}");
            let next = match reader.read_until(b'\n', &mut buffer) {
                Ok(0) => return,
                Ok(_) => match std::str::from_utf8(&buffer) {
                    Ok(text) => {
                        let line = text.trim_end_matches(['\n', '\r']);
                        if line.trim().is_empty() {
                            continue;
                        }
                        item(line).map_err(|message| input(at(), message))
                    }
                    Err(_) => Err(input(
                        at(),
                        "the line is not valid UTF-8; save the file as UTF-8",
                    )),
                },
                Err(e) => Err(input(at(), e.to_string())),
            };
            let stop = next.is_err();
            if sender.blocking_send(next).is_err() || stop {
                return;
            }
        }
    })
}

/// A place found by reading a source's file again off the async runtime (error paths only):
/// `find` returns the line number of the first matching row.
fn place_in_file(
    file: &InputFile,
    find: impl FnOnce(&InputFile) -> Option<u64> + Send + 'static,
) -> futures::future::BoxFuture<'static, Option<String>> {
    let source = file.clone();
    Box::pin(async move {
        let file = source.display();
        let line = tokio::task::spawn_blocking(move || find(&source))
            .await
            .ok()
            .flatten()?;
        Some(format!("{file}:{line}"))
    })
}

/// Does a row hold each of `wanted`'s values?
fn holds(row: impl Fn(&str) -> Option<String>, wanted: &Fields) -> bool {
    wanted
        .iter()
        .all(|(name, value)| row(name).as_deref() == Some(value.as_str()))
}

fn input(location: impl Into<String>, message: impl Into<String>) -> SourceError {
    SourceError::Input {
        location: location.into(),
        message: message.into(),
    }
}

/// A local file's revision: its length and modification time (what `rsync` and `make` look at).
pub(crate) fn file_revision(path: &std::path::Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{}:{}", meta.len(), modified.as_nanos()))
}
