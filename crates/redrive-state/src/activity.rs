//! The SQL behind [`StateStore::activity`](redrive_core::state::StateStore::activity), for both
//! stores: each query aggregates in the database (a 10M-item state answers in the memory of a
//! few rows), and only the clocks and the expanded flag differ between the dialects.

use redrive_core::state::{Activity, Bucket, DURATION_BOUNDS, SlowItem, StepTimes};

/// What differs between SQLite and PostgreSQL in these queries.
pub(crate) struct Clocks {
    /// The SQL for a timestamp column's seconds since the Unix epoch.
    pub(crate) epoch: fn(&str) -> String,
    /// Rows that did work themselves: not an expanded parent (whose clocks span its children).
    pub(crate) leaf: &'static str,
    /// The SQL for a non-negative float's whole part, as a 64-bit integer.
    pub(crate) whole: fn(&str) -> String,
}

pub(crate) const SQLITE: Clocks = Clocks {
    epoch: |column| format!("((julianday({column}) - 2440587.5) * 86400.0)"),
    leaf: "NOT (parent IS NULL AND expanded = 1)",
    whole: |x| format!("CAST({x} AS INTEGER)"),
};

pub(crate) const POSTGRES: Clocks = Clocks {
    epoch: |column| format!("extract(epoch FROM {column})::float8"),
    leaf: "NOT (parent IS NULL AND expanded)",
    whole: |x| format!("floor({x})::bigint"),
};

impl Clocks {
    /// The first start and the last finish: two nullable floats.
    pub(crate) fn span(&self) -> String {
        format!(
            "SELECT min({}), max({}) FROM items
             WHERE started_at IS NOT NULL AND finished_at IS NOT NULL AND {}",
            (self.epoch)("started_at"),
            (self.epoch)("finished_at"),
            self.leaf
        )
    }

    /// Items finished `done` per bucket of `width` seconds from `start`: index, items, bytes.
    pub(crate) fn timeline(&self, start: f64, width: f64) -> String {
        // Both numbers are the store's own (from `span`), never input: written as literals.
        format!(
            "SELECT {index} AS b, count(*), {bytes}
             FROM items WHERE status = 'done' AND finished_at IS NOT NULL AND {leaf}
             GROUP BY b ORDER BY b",
            index = (self.whole)(&format!(
                "({} - {start:?}) / {width:?}",
                (self.epoch)("finished_at")
            )),
            bytes = (self.whole)("coalesce(sum(bytes), 0)"),
            leaf = self.leaf
        )
    }

    /// Items finished `done` per duration bucket ([`DURATION_BOUNDS`]): index, items.
    pub(crate) fn durations(&self) -> String {
        let mut case = String::from("CASE");
        for (i, bound) in DURATION_BOUNDS.iter().enumerate() {
            case.push_str(&format!(" WHEN d < {bound:?} THEN {i}"));
        }
        case.push_str(&format!(" ELSE {} END", DURATION_BOUNDS.len()));
        format!(
            "SELECT {case} AS b, count(*) FROM ({}) t GROUP BY b",
            self.durations_of("status = 'done'", "d")
        )
    }

    /// The `limit` items whose last attempt took longest: key, status, seconds, bytes.
    pub(crate) fn slowest(&self, limit: usize) -> String {
        format!(
            "SELECT key, status, d, bytes FROM ({}) t ORDER BY d DESC LIMIT {limit}",
            self.durations_of("1 = 1", "d")
        )
    }

    fn durations_of(&self, which: &str, name: &str) -> String {
        format!(
            "SELECT key, status, bytes, {} - {} AS {name} FROM items
             WHERE {which} AND started_at IS NOT NULL AND finished_at IS NOT NULL AND {}",
            (self.epoch)("finished_at"),
            (self.epoch)("started_at"),
            self.leaf
        )
    }
}

/// The steps' durations kept: step index, name, bucket, steps ended, seconds.
pub(crate) const STEP_TIMES: &str =
    "SELECT step_index, step, bucket, ended, seconds FROM step_times ORDER BY step_index, bucket";

/// Adds one bucket of one step's durations (`$1` step index, `$2` name, `$3` bucket, `$4`
/// steps ended, `$5` seconds) to the sums kept; PostgreSQL's placeholders, SQLite's are `?N`.
pub(crate) const ADD_STEP_TIMES: &str =
    "INSERT INTO step_times (step_index, step, bucket, ended, seconds) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (step_index, bucket) DO UPDATE SET step = excluded.step,
       ended = step_times.ended + excluded.ended, seconds = step_times.seconds + excluded.seconds";

/// The rows of [`ADD_STEP_TIMES`] for `times`: the buckets with a count.
pub(crate) fn step_time_rows(times: &[StepTimes]) -> Vec<(i64, &str, i64, i64, f64)> {
    let mut rows = Vec::new();
    for step in times {
        let mut first = true;
        for (bucket, ended) in step.counts.iter().enumerate() {
            if *ended == 0 {
                continue;
            }
            // A step's seconds are kept on the first bucket it has rows in: only their sum
            // over the step is read.
            let seconds = if first { step.seconds } else { 0.0 };
            first = false;
            rows.push((
                i64::try_from(step.step).unwrap_or(i64::MAX),
                step.name.as_str(),
                i64::try_from(bucket).unwrap_or(i64::MAX),
                i64::try_from(*ended).unwrap_or(i64::MAX),
                seconds,
            ));
        }
    }
    rows
}

/// The steps' durations from [`STEP_TIMES`]' rows, one entry per step in order.
fn step_times(rows: Vec<(i64, String, i64, i64, f64)>) -> Vec<StepTimes> {
    let mut steps: Vec<StepTimes> = Vec::new();
    for (step, name, bucket, ended, seconds) in rows {
        let step = usize::try_from(step).unwrap_or(usize::MAX);
        if steps.last().is_none_or(|last| last.step != step) {
            steps.push(StepTimes::new(step, &name));
        }
        if let Some(last) = steps.last_mut() {
            if let Some(count) = usize::try_from(bucket)
                .ok()
                .and_then(|b| last.counts.get_mut(b))
            {
                *count += u64::try_from(ended).unwrap_or(0);
            }
            last.seconds += seconds;
        }
    }
    steps
}

/// The width of one of `buckets` slices of `span`: at least 10 ms.
pub(crate) fn bucket_seconds((start, end): (f64, f64), buckets: u32) -> f64 {
    ((end - start) / f64::from(buckets.max(1))).max(0.01)
}

/// Builds the answer from the queries' rows.
pub(crate) fn assemble(
    span: Option<(f64, f64)>,
    bucket_seconds: f64,
    timeline: Vec<(i64, i64, i64)>,
    durations: Vec<(i64, i64)>,
    slowest: Vec<(String, String, f64, i64)>,
    steps: Vec<(i64, String, i64, i64, f64)>,
) -> Activity {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let mut by_duration = vec![0; DURATION_BOUNDS.len() + 1];
    for (bucket, n) in durations {
        if let Some(slot) = usize::try_from(bucket)
            .ok()
            .and_then(|b| by_duration.get_mut(b))
        {
            *slot += count(n);
        }
    }
    Activity {
        span,
        bucket_seconds,
        timeline: timeline
            .into_iter()
            .map(|(index, items, bytes)| Bucket {
                index: count(index),
                items: count(items),
                bytes: count(bytes),
            })
            .collect(),
        durations: by_duration,
        slowest: slowest
            .into_iter()
            .filter_map(|(key, status, seconds, bytes)| {
                Some(SlowItem {
                    key,
                    status: status.parse().ok()?,
                    seconds: seconds.max(0.0),
                    bytes: count(bytes),
                })
            })
            .collect(),
        steps: step_times(steps),
    }
}
