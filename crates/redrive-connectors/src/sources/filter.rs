//! `include`, `exclude`, `min_size` and `max_size` on any `[source]`: the items a source
//! yields, narrowed before they reach the state. Patterns are globs on the item's path (its
//! `rel`, else `key`, `path`, `name` or `line` field): a pattern with a `/` matches the whole
//! path, one without matches its last segment, as in rclone and `.gitignore`; `*` stays within
//! a segment and `**` crosses them. Sizes (`10MiB`, `4096`) bound the `size` field.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use super::narrowed::{Narrowed, Narrowing};

/// The fields a path is taken from, in order of preference.
const PATH_FIELDS: [&str; 5] = ["rel", "key", "path", "name", "line"];

/// What a plan's filter keys say, checked.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    min_size: Option<u64>,
    max_size: Option<u64>,
}

impl Filter {
    /// The filter of `include`/`exclude` patterns and size bounds; `None` when none is given.
    pub(crate) fn check(
        include: &[String],
        exclude: &[String],
        min_size: Option<&toml::Value>,
        max_size: Option<&toml::Value>,
    ) -> Result<Option<Self>, String> {
        let patterns = |key: &str, texts: &[String]| -> Result<Vec<glob::Pattern>, String> {
            texts
                .iter()
                .map(|text| {
                    glob::Pattern::new(text).map_err(|e| {
                        format!("`{key}`: `{text}` is not a glob pattern ({e}); e.g. `*.json` or `logs/**/*.gz`")
                    })
                })
                .collect()
        };
        let filter = Self {
            include: patterns("include", include)?,
            exclude: patterns("exclude", exclude)?,
            min_size: size("min_size", min_size)?,
            max_size: size("max_size", max_size)?,
        };
        if let (Some(min), Some(max)) = (filter.min_size, filter.max_size)
            && min > max
        {
            return Err(format!(
                "`min_size` ({min} bytes) is larger than `max_size` ({max} bytes): no item would be left"
            ));
        }
        let empty = filter.include.is_empty()
            && filter.exclude.is_empty()
            && filter.min_size.is_none()
            && filter.max_size.is_none();
        Ok((!empty).then_some(filter))
    }

    /// The field this filter needs from `fields` that is missing, as an error to show.
    fn needs(&self, fields: &BTreeSet<String>) -> Result<Option<&'static str>, String> {
        let path = PATH_FIELDS.into_iter().find(|f| fields.contains(*f));
        if (!self.include.is_empty() || !self.exclude.is_empty()) && path.is_none() {
            return Err(format!(
                "`include` and `exclude` match an item's path, and this source has none of the fields {}",
                PATH_FIELDS.map(|f| format!("`{f}`")).join(", ")
            ));
        }
        if (self.min_size.is_some() || self.max_size.is_some()) && !fields.contains("size") {
            return Err(
                "`min_size` and `max_size` bound the `size` field, which this source does not have (`list` and `glob` have it)"
                    .to_owned(),
            );
        }
        Ok(path)
    }

    fn keeps(&self, path: Option<&str>, size: Option<&str>) -> Result<bool, String> {
        if let Some(path) = path {
            let options = glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: true,
                require_literal_leading_dot: false,
            };
            let name = path.rsplit('/').next().unwrap_or(path);
            let matches = |pattern: &glob::Pattern| {
                let subject = if pattern.as_str().contains('/') {
                    path
                } else {
                    name
                };
                pattern.matches_with(subject, options)
            };
            if !self.include.is_empty() && !self.include.iter().any(matches) {
                return Ok(false);
            }
            if self.exclude.iter().any(matches) {
                return Ok(false);
            }
        }
        if self.min_size.is_some() || self.max_size.is_some() {
            let text = size.unwrap_or_default();
            let size: u64 = text
                .parse()
                .map_err(|_| format!("its `size` is `{text}`, not a number of bytes"))?;
            if self.min_size.is_some_and(|min| size < min)
                || self.max_size.is_some_and(|max| size > max)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn size(key: &str, value: Option<&toml::Value>) -> Result<Option<u64>, String> {
    let parsed = match value {
        None => return Ok(None),
        Some(toml::Value::Integer(n)) => u64::try_from(*n).ok(),
        Some(toml::Value::String(text)) => {
            redrive_core::job::parse_size(text).and_then(|n| u64::try_from(n).ok())
        }
        Some(_) => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| format!("`{key}` is a size in bytes, e.g. `4096`, `\"10MiB\"` or `\"2GB\"`"))
}

/// A source narrowed by a [`Filter`].
pub type Filtered = Narrowed<FilterOn>;

/// A [`Filter`] and the field it takes an item's path from.
#[derive(Debug)]
pub struct FilterOn {
    filter: Filter,
    path: Option<&'static str>,
}

impl Filtered {
    /// `inner`'s items that `filter` keeps; an error when `inner` lacks the fields it needs.
    pub(crate) fn new(inner: Arc<dyn Source>, filter: Filter) -> Result<Self, String> {
        let path = filter.needs(&inner.fields())?;
        Ok(Narrowed {
            inner,
            rule: FilterOn { filter, path },
        })
    }
}

impl Narrowing for FilterOn {
    fn narrow(
        &self,
        items: BoxStream<'static, Result<Fields, SourceError>>,
    ) -> BoxStream<'static, Result<Fields, SourceError>> {
        let (filter, path) = (self.filter.clone(), self.path);
        Box::pin(items.filter_map(move |item| {
            let kept = match item {
                Ok(fields) => {
                    let path_value = path.and_then(|p| fields.get(p)).map(String::as_str);
                    match filter.keeps(path_value, fields.get("size").map(String::as_str)) {
                        Ok(true) => Some(Ok(fields)),
                        Ok(false) => None,
                        Err(message) => Some(Err(SourceError::Input {
                            location: path_value.unwrap_or("an item").to_owned(),
                            message,
                        })),
                    }
                }
                Err(error) => Some(Err(error)),
            };
            std::future::ready(kept)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Filter::check(&owned(include), &owned(exclude), None, None)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a filter"))
    }

    #[test]
    fn a_pattern_without_a_slash_matches_the_name_and_one_with_a_slash_the_path() {
        let f = filter(&["*.json"], &["tmp/**"]);
        assert_eq!(f.keeps(Some("a/b/x.json"), None), Ok(true));
        assert_eq!(f.keeps(Some("a/b/x.txt"), None), Ok(false));
        assert_eq!(f.keeps(Some("tmp/deep/x.json"), None), Ok(false));
        let f = filter(&["logs/*.gz"], &[]);
        assert_eq!(f.keeps(Some("logs/a.gz"), None), Ok(true));
        assert_eq!(
            f.keeps(Some("logs/2026/a.gz"), None),
            Ok(false),
            "`*` stays in a segment"
        );
    }

    #[test]
    fn sizes_bound_the_size_field_and_bad_input_is_named() {
        let ten = toml::Value::String("10KiB".to_owned());
        let f = Filter::check(&[], &[], Some(&toml::Value::Integer(100)), Some(&ten))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a filter"));
        assert_eq!(f.keeps(None, Some("99")), Ok(false));
        assert_eq!(f.keeps(None, Some("100")), Ok(true));
        assert_eq!(f.keeps(None, Some("10241")), Ok(false));
        assert!(f.keeps(None, Some("big")).is_err());
        let bad = Filter::check(&[], &[], Some(&toml::Value::String("ten".to_owned())), None);
        assert!(bad.is_err_and(|e| e.contains("`min_size` is a size")));
        let crossed = Filter::check(&[], &[], Some(&ten), Some(&toml::Value::Integer(1)));
        assert!(crossed.is_err_and(|e| e.contains("larger than `max_size`")));
        let pattern = Filter::check(&["[".to_owned()], &[], None, None);
        assert!(pattern.is_err_and(|e| e.contains("not a glob pattern")));
        assert!(Filter::check(&[], &[], None, None).is_ok_and(|f| f.is_none()));
    }
}
