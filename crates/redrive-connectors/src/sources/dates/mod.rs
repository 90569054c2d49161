//! `dates = { from, to, step }`: one item per UTC day (or per `step` hours), inclusive.

pub(crate) mod config;

use std::collections::BTreeSet;

use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::civil::{Date, DateTime};
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

/// A date range; fields `date` (YYYY-MM-DD), `yyyymmdd`, `yyyy`, `mm`, `dd`, `doy` (001–366),
/// and `hour` (00–23) when the step is in hours.
#[derive(Debug)]
pub struct DatesSource {
    from: Date,
    to: Date,
    step_hours: u32,
}

impl DatesSource {
    /// The range `from..=to`, every `step_hours` hours.
    pub fn new(from: Date, to: Date, step_hours: u32) -> Self {
        Self {
            from,
            to,
            step_hours: step_hours.max(1),
        }
    }

    fn hourly(&self) -> bool {
        !self.step_hours.is_multiple_of(24)
    }
}

fn fields(at: DateTime, hourly: bool) -> Fields {
    let date = at.date();
    let mut fields = Fields::new();
    fields.insert("date".to_owned(), date.to_string());
    fields.insert("yyyymmdd".to_owned(), date.strftime("%Y%m%d").to_string());
    fields.insert("yyyy".to_owned(), date.strftime("%Y").to_string());
    fields.insert("mm".to_owned(), date.strftime("%m").to_string());
    fields.insert("dd".to_owned(), date.strftime("%d").to_string());
    fields.insert("doy".to_owned(), format!("{:03}", date.day_of_year()));
    if hourly {
        fields.insert("hour".to_owned(), format!("{:02}", at.hour()));
    }
    fields
}

impl Source for DatesSource {
    fn fields(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = ["date", "yyyymmdd", "yyyy", "mm", "dd", "doy"]
            .map(str::to_owned)
            .into();
        if self.hourly() {
            names.insert("hour".to_owned());
        }
        names
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        let end = self.to.to_datetime(jiff::civil::time(23, 59, 59, 0));
        let step = jiff::Span::new().hours(i64::from(self.step_hours));
        let hourly = self.hourly();
        let start = self.from.to_datetime(jiff::civil::time(0, 0, 0, 0));
        futures::stream::unfold(Some(start), move |at| async move {
            let at = at.filter(|at| *at <= end)?;
            let next = at.checked_add(step).ok();
            Some((Ok(fields(at, hourly)), next))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(source: &DatesSource) -> Vec<Fields> {
        source
            .items(&Fields::new())
            .filter_map(|f| async move { f.ok() })
            .collect()
            .await
    }

    #[tokio::test]
    async fn days_inclusive_across_a_month_and_a_leap_day() {
        let source = DatesSource::new(
            jiff::civil::date(2024, 2, 28),
            jiff::civil::date(2024, 3, 1),
            24,
        );
        let days = all(&source).await;
        let dates: Vec<&str> = days.iter().map(|f| f["date"].as_str()).collect();
        assert_eq!(dates, ["2024-02-28", "2024-02-29", "2024-03-01"]);
        assert_eq!(
            (days[1]["yyyymmdd"].as_str(), days[1]["doy"].as_str()),
            ("20240229", "060")
        );
        assert_eq!(
            (
                days[2]["yyyy"].as_str(),
                days[2]["mm"].as_str(),
                days[2]["dd"].as_str()
            ),
            ("2024", "03", "01")
        );
        assert!(!days[0].contains_key("hour"));
    }

    #[tokio::test]
    async fn hours() {
        let source = DatesSource::new(
            jiff::civil::date(2026, 1, 1),
            jiff::civil::date(2026, 1, 1),
            6,
        );
        let hours: Vec<String> = all(&source)
            .await
            .iter()
            .map(|f| f["hour"].clone())
            .collect();
        assert_eq!(hours, ["00", "06", "12", "18"]);
    }
}
