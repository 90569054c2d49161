//! `include`, `exclude`, `min_size` and `max_size` on any `[source]`: the items a source
//! yields, narrowed before they reach the state. Patterns are globs on the item's path (its
//! `rel`, else `key`, `path`, `name` or `line` field): a pattern with a `/` matches the whole
//! path, one without matches its last segment, as in rclone and `.gitignore`; `*` stays within
//! a segment and `**` crosses them. Sizes (`10MiB`, `4096`) bound the `size` field;
//! `newer_than` and `older_than` (an age, `7d`, or a time, `2026-11-30T00:00:00Z`) bound its
//! modification time (`last_modified_date` in an inventory, else `last_modified` or
//! `modified`).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use super::narrowed::{Narrowed, Narrowing};

/// The fields a path is taken from, in order of preference.
const PATH_FIELDS: [&str; 5] = ["rel", "key", "path", "name", "line"];

/// The fields a modification time is taken from, in order of preference.
const TIME_FIELDS: [&str; 3] = ["last_modified_date", "last_modified", "modified"];

/// The bounds a plan's filter keys give, as written.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bounds<'a> {
    pub(crate) min_size: Option<&'a toml::Value>,
    pub(crate) max_size: Option<&'a toml::Value>,
    pub(crate) newer_than: Option<&'a toml::Value>,
    pub(crate) older_than: Option<&'a toml::Value>,
}

/// What a plan's filter keys say, checked.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    /// Kept: modified after this.
    newer_than: Option<jiff::Timestamp>,
    /// Kept: modified before this.
    older_than: Option<jiff::Timestamp>,
}

impl Filter {
    /// The filter of `include`/`exclude` patterns, size and time bounds; `None` when none is
    /// given. An age (`7d`) is counted back from now.
    pub(crate) fn check(
        include: &[String],
        exclude: &[String],
        bounds: Bounds<'_>,
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
            min_size: size("min_size", bounds.min_size)?,
            max_size: size("max_size", bounds.max_size)?,
            newer_than: time("newer_than", bounds.newer_than)?,
            older_than: time("older_than", bounds.older_than)?,
        };
        if let (Some(min), Some(max)) = (filter.min_size, filter.max_size)
            && min > max
        {
            return Err(format!(
                "`min_size` ({min} bytes) is larger than `max_size` ({max} bytes): no item would be left"
            ));
        }
        if let (Some(newer), Some(older)) = (filter.newer_than, filter.older_than)
            && newer >= older
        {
            return Err(format!(
                "`newer_than` ({newer}) is not before `older_than` ({older}): no item would be left"
            ));
        }
        let empty = filter.include.is_empty()
            && filter.exclude.is_empty()
            && filter.min_size.is_none()
            && filter.max_size.is_none()
            && !filter.dated();
        Ok((!empty).then_some(filter))
    }

    fn dated(&self) -> bool {
        self.newer_than.is_some() || self.older_than.is_some()
    }

    /// The fields this filter takes an item's path and time from; an error to show when one
    /// it needs is missing.
    fn needs(&self, fields: &BTreeSet<String>) -> Result<FieldsUsed, String> {
        let time = TIME_FIELDS.into_iter().find(|f| fields.contains(*f));
        if self.dated() && time.is_none() {
            return Err(format!(
                "`newer_than` and `older_than` compare an item's modification time, and this source has none of the fields {} (an `inventory` has it)",
                TIME_FIELDS.map(|f| format!("`{f}`")).join(", ")
            ));
        }
        Ok(FieldsUsed {
            path: self.path_field(fields)?,
            time,
        })
    }

    fn path_field(&self, fields: &BTreeSet<String>) -> Result<Option<&'static str>, String> {
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

    fn keeps(
        &self,
        path: Option<&str>,
        size: Option<&str>,
        modified: Option<&str>,
    ) -> Result<bool, String> {
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
        if self.dated() {
            let text = modified.unwrap_or_default();
            // RFC 3339 (S3's inventories and listings), or an HTTP date (`Last-Modified`).
            let at: jiff::Timestamp = text
                .parse()
                .ok()
                .or_else(|| jiff::fmt::rfc2822::parse(text).ok().map(|z| z.timestamp()))
                .ok_or_else(|| {
                    format!(
                        "its modification time is `{text}`, not a time such as 2026-11-30T12:00:00Z"
                    )
                })?;
            if self.newer_than.is_some_and(|bound| at <= bound)
                || self.older_than.is_some_and(|bound| at >= bound)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// `7d`, `12h`, `30m`, `90s`, `2w` before now, or a time (`2026-11-30T00:00:00Z`, a TOML
/// datetime) or a day (`2026-11-30`, midnight UTC).
fn time(key: &str, value: Option<&toml::Value>) -> Result<Option<jiff::Timestamp>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = match value {
        toml::Value::String(text) => text.trim().to_owned(),
        toml::Value::Datetime(at) => at.to_string(),
        _ => String::new(),
    };
    let age = text
        .char_indices()
        .last()
        .and_then(|(at, unit)| {
            let n: i64 = text[..at].trim().parse().ok()?;
            let seconds = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return None,
            };
            n.checked_mul(seconds)
        })
        .and_then(|seconds| {
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(seconds))
                .ok()
        });
    let at = age
        .or_else(|| text.parse::<jiff::Timestamp>().ok())
        .or_else(|| {
            text.parse::<jiff::civil::Date>()
                .ok()
                .and_then(|day| day.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|zoned| zoned.timestamp())
        });
    at.map(Some).ok_or_else(|| {
        format!("`{key}` is an age such as `\"7d\"` or `\"12h\"`, or a time such as `\"2026-11-30T00:00:00Z\"` or `\"2026-11-30\"`")
    })
}

/// The fields a filter reads.
#[derive(Clone, Copy, Debug)]
struct FieldsUsed {
    path: Option<&'static str>,
    time: Option<&'static str>,
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
    fields: FieldsUsed,
}

impl Filtered {
    /// `inner`'s items that `filter` keeps; an error when `inner` lacks the fields it needs.
    pub(crate) fn new(inner: Arc<dyn Source>, filter: Filter) -> Result<Self, String> {
        let fields = filter.needs(&inner.fields())?;
        Ok(Narrowed {
            inner,
            rule: FilterOn { filter, fields },
        })
    }
}

impl Narrowing for FilterOn {
    fn narrow(
        &self,
        items: BoxStream<'static, Result<Fields, SourceError>>,
    ) -> BoxStream<'static, Result<Fields, SourceError>> {
        let (filter, used) = (self.filter.clone(), self.fields);
        Box::pin(items.filter_map(move |item| {
            let kept = match item {
                Ok(fields) => {
                    let value =
                        |name: Option<&str>| name.and_then(|n| fields.get(n)).map(String::as_str);
                    let path_value = value(used.path);
                    match filter.keeps(path_value, value(Some("size")), value(used.time)) {
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
        Filter::check(&owned(include), &owned(exclude), Bounds::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a filter"))
    }

    #[test]
    fn a_pattern_without_a_slash_matches_the_name_and_one_with_a_slash_the_path() {
        let f = filter(&["*.json"], &["tmp/**"]);
        assert_eq!(f.keeps(Some("a/b/x.json"), None, None), Ok(true));
        assert_eq!(f.keeps(Some("a/b/x.txt"), None, None), Ok(false));
        assert_eq!(f.keeps(Some("tmp/deep/x.json"), None, None), Ok(false));
        let f = filter(&["logs/*.gz"], &[]);
        assert_eq!(f.keeps(Some("logs/a.gz"), None, None), Ok(true));
        assert_eq!(
            f.keeps(Some("logs/2026/a.gz"), None, None),
            Ok(false),
            "`*` stays in a segment"
        );
    }

    #[test]
    fn sizes_bound_the_size_field_and_bad_input_is_named() {
        let ten = toml::Value::String("10KiB".to_owned());
        let sizes = |min, max| Bounds {
            min_size: min,
            max_size: max,
            ..Bounds::default()
        };
        let f = Filter::check(
            &[],
            &[],
            sizes(Some(&toml::Value::Integer(100)), Some(&ten)),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a filter"));
        assert_eq!(f.keeps(None, Some("99"), None), Ok(false));
        assert_eq!(f.keeps(None, Some("100"), None), Ok(true));
        assert_eq!(f.keeps(None, Some("10241"), None), Ok(false));
        assert!(f.keeps(None, Some("big"), None).is_err());
        let ten_words = toml::Value::String("ten".to_owned());
        let bad = Filter::check(&[], &[], sizes(Some(&ten_words), None));
        assert!(bad.is_err_and(|e| e.contains("`min_size` is a size")));
        let one = toml::Value::Integer(1);
        let crossed = Filter::check(&[], &[], sizes(Some(&ten), Some(&one)));
        assert!(crossed.is_err_and(|e| e.contains("larger than `max_size`")));
        let pattern = Filter::check(&["[".to_owned()], &[], Bounds::default());
        assert!(pattern.is_err_and(|e| e.contains("not a glob pattern")));
        assert!(Filter::check(&[], &[], Bounds::default()).is_ok_and(|f| f.is_none()));
    }

    #[test]
    fn times_bound_the_modification_time_and_bad_input_is_named() {
        let text = |s: &str| toml::Value::String(s.to_owned());
        let (day, week) = (text("2026-11-30"), text("2w"));
        let f = Filter::check(
            &[],
            &[],
            Bounds {
                newer_than: Some(&day),
                ..Bounds::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a filter"));
        assert_eq!(
            f.keeps(None, None, Some("2026-11-30T00:00:01.000Z")),
            Ok(true)
        );
        assert_eq!(f.keeps(None, None, Some("2026-11-29T23:59:59Z")), Ok(false));
        // An HTTP date, as a Last-Modified header or an Azure listing writes it.
        assert_eq!(
            f.keeps(None, None, Some("Mon, 30 Nov 2026 00:00:01 GMT")),
            Ok(true)
        );
        assert!(f.keeps(None, None, Some("yesterday")).is_err());
        let recent = Filter::check(
            &[],
            &[],
            Bounds {
                older_than: Some(&week),
                ..Bounds::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a filter"));
        let now = jiff::Timestamp::now().to_string();
        assert_eq!(recent.keeps(None, None, Some(&now)), Ok(false));
        assert_eq!(
            recent.keeps(None, None, Some("2020-01-01T00:00:00Z")),
            Ok(true)
        );
        let bad = text("last tuesday");
        let wrong = Filter::check(
            &[],
            &[],
            Bounds {
                newer_than: Some(&bad),
                ..Bounds::default()
            },
        );
        assert!(wrong.is_err_and(|e| e.contains("`newer_than` is an age")));
        let crossed = Filter::check(
            &[],
            &[],
            Bounds {
                newer_than: Some(&day),
                older_than: Some(&week),
                ..Bounds::default()
            },
        );
        assert!(crossed.is_err_and(|e| e.contains("is not before `older_than`")));
    }
}
