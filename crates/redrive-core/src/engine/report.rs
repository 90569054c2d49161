//! What a run tells: progress events as they happen ([`Reporter`], [`StepEvent`]) and the
//! totals at the end ([`RunReport`]).

use std::time::Duration;

use crate::error::ErrorClass;
use crate::item::Status;
use crate::step::ObjectProgress;
use crate::throttle::LimitReport;

/// Receives progress events. Called from many tasks at once.
pub trait Reporter: Send + Sync {
    /// `n` new items were added to the state by the source.
    fn loaded(&self, n: u64);
    /// An item reached a final status in this run.
    fn finished(&self, status: Status);
    /// Bytes moved.
    fn bytes(&self, n: u64);
    /// A large object starts moving (see [`ByteCounter::object`]).
    fn object(&self, _name: &str, _size: Option<u64>) -> Option<Box<dyn ObjectProgress>> {
        None
    }
    /// `step` is retried (`expand` for an expansion); `throttled` when the store asked to slow
    /// down.
    fn retried(&self, step: &str, throttled: bool);
    /// The run starts; these are the steps' adaptive limits on calls in flight (read them at
    /// any time: they move as endpoints throttle).
    fn limits(&self, _limits: &[(String, std::sync::Arc<crate::throttle::AdaptiveLimit>)]) {}
    /// A step of an item finished (done, skipped or failed), after it was recorded.
    fn step(&self, _event: &StepEvent<'_>) {}
    /// `n` new children were recorded by an expansion.
    fn children_loaded(&self, _n: u64) {}
    /// A child reached a final status in this run.
    fn child_finished(&self, _status: Status) {}
}

/// One step of one item, as `--telemetry` writes it.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// The item's key.
    pub key: &'a str,
    /// The parent's key, for children.
    pub parent: Option<&'a str>,
    /// The step's name.
    pub step: &'a str,
    /// The step starts, or how it ended.
    pub status: StepStatus,
    /// Wall time of the step, retries included.
    pub seconds: f64,
    /// Bytes moved.
    pub bytes: u64,
    /// A file the step produced.
    pub output: Option<&'a str>,
    /// Where the step wrote or sent.
    pub target: Option<&'a str>,
    /// The class of the error, for failures.
    pub error_class: Option<ErrorClass>,
    /// The error (failed) or the reason (skipped), secrets masked.
    pub error: Option<&'a str>,
}

/// Where a step of an item is, in a [`StepEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// The step starts.
    Running,
    /// It did its work.
    Done,
    /// It skipped the item (the reason is the event's `error`).
    Skipped,
    /// It failed the item.
    Failed,
}

impl StepStatus {
    /// As written in telemetry: `running`, `done`, `skipped`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
        }
    }
}

/// A reporter that ignores everything.
#[derive(Debug, Default)]
pub struct NoReport;

impl Reporter for NoReport {
    fn loaded(&self, _: u64) {}
    fn finished(&self, _: Status) {}
    fn bytes(&self, _: u64) {}
    fn retried(&self, _: &str, _: bool) {}
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// Items that finished `done` in this run.
    pub done: u64,
    /// Items skipped in this run.
    pub skipped: u64,
    /// Items failed in this run.
    pub failed: u64,
    /// Children done, skipped and failed in this run (under `[expand]`).
    pub children: Tally,
    /// Bytes moved in this run.
    pub bytes: u64,
    /// Targets a step found there already and left as they were (create-only copies that
    /// copied nothing), children's included.
    pub kept: u64,
    /// Step retries.
    pub retries: u64,
    /// Retries caused by throttling.
    pub throttled: u64,
    /// Each step's adaptive concurrency limit: how low throttling drove it, and the throttled
    /// responses it saw (those retried on the spot included). Steps that pace themselves have
    /// none.
    pub limits: Vec<(String, LimitReport)>,
    /// Wall time of the run.
    pub duration: Duration,
    /// Stopped by a signal before every item was run.
    pub interrupted: bool,
    /// Rows of the source, on its first load, that were not added because an earlier row had
    /// the same key and other fields: the plan's `key` does not tell them apart, and their
    /// work is not done.
    pub duplicate_keys: u64,
    /// Rows of the source, on its first load, that repeated an earlier row exactly (same key,
    /// same fields): their work is the same item's, done once.
    pub repeated_rows: u64,
    /// Rows of the source with the key of an earlier row and other fields, left out because
    /// the plan says `duplicates = "first"`.
    pub dropped_duplicates: u64,
    /// `--max-errors` failed items were reached: the run started no more.
    pub max_errors_reached: bool,
    /// Items this process claimed but another worker took over (this one's lease had expired):
    /// left to that worker, neither finished nor failed here.
    pub taken_over: u64,
}

/// Counts of final statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Done.
    pub done: u64,
    /// Skipped.
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
}

impl Tally {
    pub(super) fn add(&mut self, status: Option<Status>) {
        match status {
            Some(Status::Done) => self.done += 1,
            Some(Status::Skipped) => self.skipped += 1,
            Some(Status::Failed) => self.failed += 1,
            _ => {}
        }
    }
}

#[derive(Default)]
pub(super) struct ItemReport {
    pub(super) status: Option<Status>,
    pub(super) children: Tally,
    pub(super) bytes: u64,
    /// Steps that found their target there already (children's included).
    pub(super) kept: u64,
    pub(super) retries: u64,
    pub(super) throttled: u64,
    pub(super) taken_over: bool,
}
