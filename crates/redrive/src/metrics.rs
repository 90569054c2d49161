//! `--metrics FILE`: what one run did, as JSON, and what `--workers` sums from its workers'
//! files. One typed struct is written and read, so the two cannot drift apart.

use std::path::Path;

use redrive_core::engine::RunReport;
use serde::{Deserialize, Serialize};

/// One run's metrics (`--metrics FILE`; each `--workers` worker writes one).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunMetrics {
    /// Items that ended in this run: done, skipped and failed.
    pub(crate) processed: u64,
    pub(crate) done: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    pub(crate) bytes: u64,
    pub(crate) duration_s: f64,
    pub(crate) items_per_sec: f64,
    /// The same as `items_per_sec` (the SQL seed's name for it).
    pub(crate) rows_per_sec: f64,
    /// `I/N` for a shard's run.
    pub(crate) shard: Option<String>,
    /// Step retries, throttling included.
    pub(crate) retries: u64,
    /// Step retries for throttling.
    pub(crate) throttled: u64,
    /// Storage calls (a request, a part) the store layer retried on the spot.
    pub(crate) storage_calls_retried: u64,
    /// Throttled answers counted by the steps' adaptive limits.
    pub(crate) throttled_responses: u64,
    /// Each engine-paced step's in-flight limit.
    pub(crate) concurrency: Vec<StepConcurrency>,
    pub(crate) children: ChildMetrics,
    pub(crate) interrupted: bool,
    /// Rows of a first load not added: an earlier row had the same key.
    #[serde(default)]
    pub(crate) duplicate_keys: u64,
    /// Rows of a first load that repeated an earlier row exactly.
    #[serde(default)]
    pub(crate) repeated_rows: u64,
    /// Rows with a known key and other fields left out by `duplicates = "first"`.
    #[serde(default)]
    pub(crate) dropped_duplicates: u64,
    /// Items another worker took over from this one after its lease expired.
    #[serde(default)]
    pub(crate) taken_over: u64,
    /// Targets a create-only copy found there already and left as they were.
    #[serde(default)]
    pub(crate) kept: u64,
    /// Peak resident memory, MiB.
    pub(crate) peak_rss_mb: Option<f64>,
    pub(crate) finished_at: String,
}

/// One step's adaptive in-flight limit over the run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StepConcurrency {
    pub(crate) step: String,
    pub(crate) max: usize,
    pub(crate) lowest: usize,
    pub(crate) end: usize,
    pub(crate) throttled_responses: u64,
}

/// Children (under `[expand]`) that ended in this run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ChildMetrics {
    pub(crate) done: u64,
    pub(crate) skipped: u64,
    pub(crate) failed: u64,
}

impl RunMetrics {
    /// The metrics of a run that ended with `report`; `retries` as the progress counted them
    /// (it also sees retries of items a stop cut short).
    pub(crate) fn of(report: &RunReport, retries: u64, shard: Option<String>) -> Self {
        let seconds = report.duration.as_secs_f64();
        let processed = report.done + report.skipped + report.failed;
        RunMetrics {
            processed,
            done: report.done,
            failed: report.failed,
            skipped: report.skipped,
            bytes: report.bytes,
            duration_s: (seconds * 1000.0).round() / 1000.0,
            items_per_sec: per_second(processed, seconds),
            rows_per_sec: per_second(processed, seconds),
            shard,
            retries: report.retries.max(retries),
            throttled: report.throttled,
            storage_calls_retried: redrive_connectors::storage::calls_retried(),
            throttled_responses: report.limits.iter().map(|(_, l)| l.throttled).sum(),
            concurrency: report
                .limits
                .iter()
                .map(|(step, l)| StepConcurrency {
                    step: step.clone(),
                    max: l.max,
                    lowest: l.lowest,
                    end: l.now,
                    throttled_responses: l.throttled,
                })
                .collect(),
            children: ChildMetrics {
                done: report.children.done,
                skipped: report.children.skipped,
                failed: report.children.failed,
            },
            interrupted: report.interrupted,
            duplicate_keys: report.duplicate_keys,
            repeated_rows: report.repeated_rows,
            dropped_duplicates: report.dropped_duplicates,
            taken_over: report.taken_over,
            kept: report.kept,
            peak_rss_mb: peak_rss_mb(),
            finished_at: jiff::Timestamp::now().to_string(),
        }
    }

    /// Reads a file [`write`] wrote; `None` when it is missing or not such a file.
    pub(crate) fn read(path: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }
}

/// `--workers`: the workers' counts summed, the rate over the wall time of all of them.
#[derive(Debug, Serialize)]
pub(crate) struct AggregateMetrics {
    pub(crate) workers: usize,
    pub(crate) processed: u64,
    pub(crate) done: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    pub(crate) bytes: u64,
    pub(crate) retries: u64,
    /// Items other workers took over after a worker's leases lapsed.
    pub(crate) taken_over: u64,
    /// Targets a create-only copy found there already and left as they were.
    pub(crate) kept: u64,
    pub(crate) duration_s: f64,
    pub(crate) rows_per_sec: f64,
    pub(crate) items_per_sec: f64,
    /// Shards whose worker died.
    pub(crate) died: Vec<u32>,
    pub(crate) finished_at: String,
    pub(crate) per_worker: Vec<WorkerMetrics>,
}

/// One worker, in [`AggregateMetrics`].
#[derive(Debug, Serialize)]
pub(crate) struct WorkerMetrics {
    pub(crate) shard: String,
    /// Its own metrics file.
    pub(crate) metrics: String,
    pub(crate) died: bool,
    pub(crate) processed: Option<u64>,
    pub(crate) rows_per_sec: Option<f64>,
}

/// Writes `metrics` as pretty JSON, secrets masked.
pub(crate) fn write(path: &Path, metrics: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(metrics)?;
    std::fs::write(
        path,
        redrive_core::secrets::redact(&text).into_owned() + "\n",
    )?;
    Ok(())
}

/// `n` per second over `seconds`, to one decimal.
pub(crate) fn per_second(n: u64, seconds: f64) -> f64 {
    (n as f64 / seconds.max(0.001) * 10.0).round() / 10.0
}

/// The process's peak resident memory (Linux `VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}
