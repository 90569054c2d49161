//! `dates = { from, to, step }`.

use std::path::Path;
use std::sync::Arc;

use redrive_core::source::{Source, SourceError};
use serde::{Deserialize, Serialize};

use super::DatesSource;
use crate::plan::unless_default;
use crate::sources::{SourceBuildContext, SourceConfig, SourceKindConfig, SourceOptions};

/// A UTC date range, inclusive, by days or hours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatesSpec {
    /// First day.
    pub from: jiff::civil::Date,
    /// Last day (inclusive).
    pub to: jiff::civil::Date,
    /// Hours between items: 24 for days (the default), 1 for hours.
    pub step_hours: u32,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDates {
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
}

impl SourceKindConfig for DatesSpec {
    type Raw = RawDates;

    fn check(dates: &RawDates, _options: &SourceOptions, _base_dir: &Path) -> Result<Self, String> {
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
        Ok(DatesSpec {
            from,
            to,
            step_hours,
        })
    }

    fn canonicalize(dates: &mut RawDates, _options: &mut SourceOptions) {
        unless_default(&mut dates.step, |s| s.trim() == "1d");
    }
}

impl SourceConfig for DatesSpec {
    fn default_key(&self) -> Option<String> {
        Some(if self.step_hours.is_multiple_of(24) {
            "{date}".to_owned()
        } else {
            "{date}T{hour}".to_owned()
        })
    }

    fn build(&self, _cx: &SourceBuildContext<'_>) -> Result<Arc<dyn Source>, SourceError> {
        Ok(Arc::new(DatesSource::new(
            self.from,
            self.to,
            self.step_hours,
        )))
    }
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
