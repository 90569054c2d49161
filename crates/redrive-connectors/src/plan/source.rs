//! `[source]` and `[expand]`: one source kind (its key names it, e.g. `csv = "FILE"`), the
//! item `key`, and the kind's own keys beside it (`delimiter`). Each kind's configuration is
//! its own (`crate::sources::<kind>::config`), found through the registry in
//! [`crate::sources`].

use std::fmt;
use std::path::Path;

use redrive_core::engine::Duplicates;
use redrive_core::job::template;
use redrive_core::template::Template;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::sources::{
    FILTER_KEYS, Filter, RawSourceKind, SOURCE_KINDS, SourceKind, SourceOptions, kinds_with_option,
    source_keys,
};

/// A source of items.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// What kind of source, with its settings.
    pub kind: SourceKind,
    /// The key template; `None` means the kind's default.
    pub key: Option<Template>,
    /// What a load does with a row whose key an earlier row had, with other fields.
    pub duplicates: Duplicates,
    /// `include`, `exclude`, `min_size`, `max_size`: the items kept.
    pub filter: Option<Filter>,
}

/// A `[source]` (or `[expand]`) table as written.
pub(super) struct RawSource {
    kinds: Vec<RawSourceKind>,
    key: Option<String>,
    /// Not in the canonical form: it decides only what happens to rows the state never takes,
    /// so a user told of a key conflict may add it and rerun without `--restart`.
    duplicates: Option<String>,
    /// `include`, `exclude`, `min_size`, `max_size` as written (in the canonical form: they
    /// decide which items exist).
    filter: std::collections::BTreeMap<String, toml::Value>,
    options: SourceOptions,
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("RawSource", source_keys(), SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = RawSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a `[source]` table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSource, A::Error> {
        let mut source = RawSource {
            kinds: Vec::new(),
            key: None,
            duplicates: None,
            filter: std::collections::BTreeMap::new(),
            options: SourceOptions::default(),
        };
        while let Some(key) = map.next_key_seed(SourceKey)? {
            if key == "key" {
                source.key = Some(map.next_value()?);
            } else if key == "duplicates" {
                source.duplicates = Some(map.next_value()?);
            } else if FILTER_KEYS.contains(&key.as_str()) {
                let value: toml::Value = map.next_value()?;
                source.filter.insert(key, value);
            } else if let Some(kind) = RawSourceKind::next_value(&key, &mut map)? {
                source.kinds.push(kind);
            } else {
                let value: toml::Value = map.next_value()?;
                source.options.0.insert(key, value);
            }
        }
        Ok(source)
    }
}

/// A key of a `[source]` table; any other is refused while it is read, so the error has its
/// place in the file and the keys allowed.
struct SourceKey;

impl<'de> DeserializeSeed<'de> for SourceKey {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = String::deserialize(deserializer)?;
        if source_keys().contains(&key.as_str()) {
            Ok(key)
        } else {
            Err(de::Error::unknown_field(&key, source_keys()))
        }
    }
}

/// The canonical form: the kind, `key`, then the kind's options, each only when present.
impl Serialize for RawSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for kind in &self.kinds {
            kind.serialize_entry(&mut map)?;
        }
        if let Some(key) = &self.key {
            map.serialize_entry("key", key)?;
        }
        for (key, value) in &self.filter {
            map.serialize_entry(key, value)?;
        }
        for (option, value) in &self.options.0 {
            map.serialize_entry(option, value)?;
        }
        map.end()
    }
}

impl RawSource {
    /// Whether the table says `duplicates` (which `[expand]` refuses: a parent's children
    /// are listed, never told apart by a plan's choice).
    pub(super) fn says_duplicates(&self) -> bool {
        self.duplicates.is_some()
    }

    /// Defaults become absent.
    pub(super) fn canonicalize(&mut self) {
        for kind in &mut self.kinds {
            kind.canonicalize(&mut self.options);
        }
    }
}

pub(super) fn source_spec(raw: &RawSource, base_dir: &Path) -> Result<SourceSpec, String> {
    let [kind] = raw.kinds.as_slice() else {
        let given: Vec<&str> = SOURCE_KINDS
            .iter()
            .copied()
            .filter(|name| raw.kinds.iter().any(|kind| kind.name() == *name))
            .collect();
        return Err(format!(
            "give exactly one of {} (found {}); e.g. `csv = \"items.csv\"`",
            SOURCE_KINDS
                .iter()
                .map(|kind| format!("`{kind}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(", ")
            }
        ));
    };
    for option in raw.options.0.keys() {
        if !kind.options().contains(&option.as_str()) {
            let owners: Vec<String> = kinds_with_option(option)
                .iter()
                .map(|kind| format!("`{kind}`"))
                .collect();
            return Err(format!(
                "`{option}` applies to a {} source only",
                owners.join(" or ")
            ));
        }
    }
    let kind = kind.check(&raw.options, base_dir)?;
    let key = match &raw.key {
        Some(key) => Some(template("key", key)?),
        None => None,
    };
    let duplicates = match raw.duplicates.as_deref() {
        None | Some("error") => Duplicates::Error,
        Some("first") => Duplicates::First,
        Some(other) => {
            return Err(format!(
                "`duplicates` is \"error\" (the default: a key that comes again with other fields stops the run) or \"first\" (the first row with a key is the item, later ones are left out and counted), not \"{other}\""
            ));
        }
    };
    let patterns = |key: &str| -> Result<Vec<String>, String> {
        match raw.filter.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::String(one)) => Ok(vec![one.clone()]),
            Some(toml::Value::Array(values)) => values
                .iter()
                .map(|v| match v {
                    toml::Value::String(text) => Ok(text.clone()),
                    other => Err(format!(
                        "`{key}` holds glob patterns (strings), not `{other}`"
                    )),
                })
                .collect(),
            Some(other) => Err(format!(
                "`{key}` is a list of glob patterns, e.g. `{key} = [\"*.json\"]`, not `{other}`"
            )),
        }
    };
    let filter = Filter::check(
        &patterns("include")?,
        &patterns("exclude")?,
        crate::sources::Bounds {
            min_size: raw.filter.get("min_size"),
            max_size: raw.filter.get("max_size"),
            newer_than: raw.filter.get("newer_than"),
            older_than: raw.filter.get("older_than"),
        },
    )?;
    let spec = SourceSpec {
        kind,
        key,
        duplicates,
        filter,
    };
    source_key(&spec)?;
    Ok(spec)
}

pub(super) fn source_key(spec: &SourceSpec) -> Result<Template, String> {
    match (&spec.key, spec.kind.config().default_key()) {
        (Some(key), _) => Ok(key.clone()),
        (None, Some(default)) => template("key", &default),
        (None, None) => Err(format!(
            "a `{}` source needs a `key`, the field(s) that make an item unique, e.g. `key = \"{{WorkItemId}}\"`",
            spec.kind.name()
        )),
    }
}
