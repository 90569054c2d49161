//! The `StateStore` trait: where every item's progress lives.

use async_trait::async_trait;

use crate::item::{Fields, ItemId, NewItem, Status, StoredItem};
use crate::step::Produced;

pub mod commits;
pub mod memory;

/// The state store failed; the run stops, since progress can no longer be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state belongs to a different plan.
    #[error(
        "the state `{location}` was written by a different plan (fingerprint {stored}, this plan {current})"
    )]
    PlanChanged {
        /// The state's path or URL.
        location: String,
        /// The fingerprint recorded.
        stored: String,
        /// This plan's fingerprint.
        current: String,
    },
    /// The state was written for another job name.
    #[error("the state `{location}` belongs to job `{stored}`, not `{current}`")]
    OtherJob {
        /// The state's path or URL.
        location: String,
        /// The job recorded.
        stored: String,
        /// This plan's job.
        current: String,
    },
    /// Another process is running this job on the same state.
    #[error("the state `{location}` is in use by another `redrive run` (lock file `{lock}`)")]
    Locked {
        /// The state's path or URL.
        location: String,
        /// The lock file.
        lock: String,
    },
    /// The state does not exist (for commands that only read it).
    #[error("no state at `{location}`: the job has not run yet")]
    Missing {
        /// The state's path or URL.
        location: String,
    },
    /// The database failed (disk full, read-only, locked, corrupt).
    #[error("state store `{location}` failed: {message}")]
    Backend {
        /// The state's path or URL.
        location: String,
        /// The database's message.
        message: String,
    },
    /// The state's files were changed by hand in a way that loses what it recorded (its log
    /// deleted after a crash, the file emptied): refused rather than taken for a new job.
    #[error("the state `{location}` is damaged: {message}")]
    Damaged {
        /// The state's path.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Another worker took over the item: this process's lease on it expired (a pause, a lost
    /// connection) and someone else claimed it. The item is theirs now; this process must not
    /// start another step of it.
    #[error("the lease on item {id} was taken over by another worker")]
    LeaseLost {
        /// The item.
        id: ItemId,
    },
}

/// A transition on its way to the state: resolves once it is committed
/// ([`StateStore::queue`]).
pub type Committing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StateError>> + Send + 'a>>;

/// The job a state belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// `job.name` of the plan.
    pub name: String,
    /// A hash of what decides the items and what is done to them (not the limits).
    pub fingerprint: String,
    /// Hashes earlier releases gave the same plan. A state that records one of them belongs to
    /// this plan: [`StateStore::begin`] accepts it and records `fingerprint` instead.
    pub earlier_fingerprints: Vec<String>,
}

/// One change of an item, committed before the item's next step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The item starts (or restarts) at `step`: status `running`, attempts + 1.
    Started {
        /// The item.
        id: ItemId,
        /// The step it starts at.
        step: usize,
        /// That step's name.
        step_name: String,
    },
    /// Step `step - 1` finished; the item goes on at `step`.
    Advanced {
        /// The item.
        id: ItemId,
        /// The next step.
        step: usize,
        /// The next step's name.
        step_name: String,
        /// Bytes the finished step moved.
        bytes: u64,
        /// The file the finished step produced, recorded against it.
        output: Option<Produced>,
    },
    /// The item's start was recorded ahead of a free slot, and the run stopped before it
    /// ran: back to `pending` at that step, its attempt not counted.
    Unstarted {
        /// The item.
        id: ItemId,
    },
    /// The item is done (every step ran) or skipped (a step said so).
    Finished {
        /// The item.
        id: ItemId,
        /// `Done` or `Skipped`.
        status: Status,
        /// Bytes the last step moved.
        bytes: u64,
        /// Why it was skipped.
        reason: Option<String>,
        /// The file the last step produced, recorded against it.
        output: Option<Produced>,
    },
    /// The run stopped for a reason that is not the item's (a fatal error such as a missing
    /// bucket): the item goes back to `pending` at its current step, the error kept.
    Released {
        /// The item.
        id: ItemId,
        /// The error chain, secrets masked.
        error: String,
    },
    /// A step failed; the item stays at that step so `--retry-failed` resumes there.
    Failed {
        /// The item.
        id: ItemId,
        /// The error chain, secrets masked.
        error: String,
    },
}

/// An item's claim on the one object a step writes for it (see [`StateStore::claim_targets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetClaim {
    /// The step's index.
    pub step: usize,
    /// The target, rendered.
    pub target: String,
    /// The item's key.
    pub key: String,
}

/// What [`StateStore::insert_reporting`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Items added.
    pub added: u64,
    /// Rows that may not have been added because their key was known (at least every one
    /// that was not, and perhaps one row of a key repeated within the batch that was).
    pub candidates: Vec<NewItem>,
}

/// Which items to put back to `pending`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Failed items, at the step that failed (`--retry-failed`).
    Failed,
    /// Items with these keys, from the first step (`reset KEY…`).
    Keys(Vec<String>),
    /// Items with this status, from the first step (`reset --status S`).
    Status(Status),
}

/// A parent's children by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildCounts {
    /// All children.
    pub total: u64,
    /// Done.
    pub done: u64,
    /// Skipped.
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
}

/// Counts for `status` and the end-of-run summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Whether the whole source has been loaded into the state.
    pub source_complete: bool,
    /// Top-level items by status, in `Status::ALL` order.
    pub by_status: Vec<(Status, u64)>,
    /// Children (of expanded items) by status, in `Status::ALL` order; all zero without `[expand]`.
    pub children_by_status: Vec<(Status, u64)>,
    /// Unfinished and failed items by step name and status.
    pub by_step: Vec<(String, Status, u64)>,
    /// Items skipped for `no input`, tried again on the next run (counted in `skipped` too).
    pub no_input: u64,
    /// Bytes moved over all items.
    pub bytes: u64,
    /// Seconds between the first start and the last finish recorded.
    pub active_seconds: f64,
}

impl Summary {
    /// Items with `status`.
    pub fn count(&self, status: Status) -> u64 {
        self.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// All top-level items.
    pub fn total(&self) -> u64 {
        self.by_status.iter().map(|(_, n)| n).sum()
    }

    /// Children with `status`.
    pub fn children(&self, status: Status) -> u64 {
        self.children_by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// All children.
    pub fn children_total(&self) -> u64 {
        self.children_by_status.iter().map(|(_, n)| n).sum()
    }
}

/// Upper bounds (seconds) of [`Activity::durations`]' buckets; the last bucket has none.
pub const DURATION_BOUNDS: [f64; 6] = [0.01, 0.1, 1.0, 10.0, 60.0, 600.0];

/// When a job's items ran, aggregated by the store (for `redrive report`): nothing here grows
/// with the number of items.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Activity {
    /// Seconds since the Unix epoch of the first start and the last finish; `None` before any
    /// item finished.
    pub span: Option<(f64, f64)>,
    /// Width of one timeline bucket in seconds.
    pub bucket_seconds: f64,
    /// Items finished `done` and their bytes, per bucket from the span's start (empty buckets
    /// left out), in order.
    pub timeline: Vec<Bucket>,
    /// Items finished `done`, counted by how long their last attempt took: one count per
    /// bucket of [`DURATION_BOUNDS`], and one for longer.
    pub durations: Vec<u64>,
    /// The items whose last attempt took longest, longest first.
    pub slowest: Vec<SlowItem>,
    /// How long each step took, per step in plan order (see [`StepTimes`]).
    pub steps: Vec<StepTimes>,
}

/// How long one step took, over every item that step ended (done, skipped or failed), retries
/// included: counts per bucket of [`DURATION_BOUNDS`] (and one for longer), and the seconds
/// they add up to. Engines add what they measured ([`StateStore::add_step_times`]); the store
/// keeps the sums, so workers and runs add up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimes {
    /// The step's index in the plan.
    pub step: usize,
    /// Its name.
    pub name: String,
    /// Steps ended, per duration bucket: `DURATION_BOUNDS.len() + 1` counts.
    pub counts: Vec<u64>,
    /// Their seconds, summed.
    pub seconds: f64,
}

impl StepTimes {
    /// Nothing counted yet for step `step` named `name`.
    pub fn new(step: usize, name: &str) -> Self {
        StepTimes {
            step,
            name: name.to_owned(),
            counts: vec![0; DURATION_BOUNDS.len() + 1],
            seconds: 0.0,
        }
    }

    /// The bucket of [`StepTimes::counts`] a duration falls in.
    pub fn bucket_of(seconds: f64) -> usize {
        DURATION_BOUNDS
            .iter()
            .position(|bound| seconds < *bound)
            .unwrap_or(DURATION_BOUNDS.len())
    }

    /// Counts one step that took `seconds`.
    pub fn add(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(count) = self.counts.get_mut(Self::bucket_of(seconds)) {
            *count += 1;
        }
        self.seconds += seconds;
    }

    /// Steps counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One slice of [`Activity::timeline`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    /// Its index: it starts `index × bucket_seconds` after the span's start.
    pub index: u64,
    /// Items finished `done` in it.
    pub items: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One of [`Activity::slowest`].
#[derive(Clone, Debug, PartialEq)]
pub struct SlowItem {
    /// The item's key (a child's own key).
    pub key: String,
    /// Its status.
    pub status: Status,
    /// Seconds its last attempt took.
    pub seconds: f64,
    /// Bytes it moved.
    pub bytes: u64,
}

/// Where item progress lives. Implementations: SQLite (one file, one host) and PostgreSQL
/// (one job shared by many hosts, items claimed under leases). Every implementation passes
/// `redrive_state::conformance`.
///
/// Contract: when `record` returns `Ok`, the transition is durable (committed); the engine
/// runs an item's next step only after that. Writes may be batched into transactions with
/// other callers' writes, never reordered for one item.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Opens the job: creates it, or checks that the state belongs to the same job and plan.
    async fn begin(&self, job: &JobInfo) -> Result<(), StateError>;

    /// Adds items as `pending` at step 0; keys already present are left as they are.
    /// Returns how many were new.
    async fn insert(&self, items: Vec<NewItem>) -> Result<u64, StateError>;

    /// Adds children of `parent` as `pending` at step 0; keys already present under that
    /// parent are left as they are. Returns how many were new.
    async fn insert_children(&self, parent: ItemId, items: Vec<NewItem>)
    -> Result<u64, StateError>;

    /// Records that every child of `parent` is recorded: a resumed run does not expand it again.
    async fn set_expanded(&self, parent: ItemId) -> Result<(), StateError>;

    /// Up to `limit` children of `parent` with status `pending` or `running` and id greater
    /// than `after`, in id order.
    async fn runnable_children(
        &self,
        parent: ItemId,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError>;

    /// The files an item's finished steps produced, by step index.
    async fn outputs(&self, id: ItemId) -> Result<Vec<(usize, Produced)>, StateError>;

    /// `parent`'s children by status.
    async fn child_counts(&self, parent: ItemId) -> Result<ChildCounts, StateError>;

    /// Records that the whole source has been loaded (a resumed run does not read it again).
    async fn set_source_complete(&self) -> Result<(), StateError>;

    /// Whether the whole source has been loaded.
    async fn source_complete(&self) -> Result<bool, StateError>;

    /// Up to `limit` items with status `pending` or `running` (or skipped for `no input`) and
    /// id greater than `after`, in id order.
    async fn runnable(&self, after: ItemId, limit: usize) -> Result<Vec<StoredItem>, StateError>;

    /// The top-level item recorded last (the highest id), where a seekable source resumes.
    async fn last_item(&self) -> Result<Option<StoredItem>, StateError>;

    /// Commits one transition (durably, before returning).
    async fn record(&self, transition: Transition) -> Result<(), StateError>;

    /// [`StateStore::record`] in two halves: when `queue` returns, the transition is queued
    /// behind every write queued before it (a write queued later commits with it or after
    /// it); the returned future resolves once it is committed. The engine frees an item's
    /// slot between the two, once its last transition is queued: the next item's start then
    /// shares that commit instead of waiting for one of its own. The default queues nothing
    /// early: the whole record happens when the future is awaited.
    fn queue(&self, transition: Transition) -> Committing<'_> {
        self.record(transition)
    }

    /// Commits transitions of several items together (durably, before returning) and answers
    /// for each, in order: the engine starts the items it admits at once this way, one commit
    /// for all. The default records them one by one, concurrently.
    async fn record_all(&self, transitions: Vec<Transition>) -> Vec<Result<(), StateError>> {
        futures::future::join_all(transitions.into_iter().map(|t| self.record(t))).await
    }

    /// Puts items back to `pending`; returns how many.
    async fn requeue(&self, which: Requeue) -> Result<u64, StateError>;

    /// Marks items with these keys `skipped` by hand; returns how many.
    async fn skip(&self, keys: Vec<String>, reason: String) -> Result<u64, StateError>;

    /// Items with `status` and id greater than `after`, up to `limit`, in id order. Parents
    /// that were expanded are left out: their status sums up their children's, which are listed.
    async fn items_with_status(
        &self,
        status: Status,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError>;

    /// Up to `limit` expanded top-level items with one of `statuses`, with their children
    /// counted, in id order (for `status`: work items in progress or failed).
    async fn parents(
        &self,
        statuses: &[Status],
        limit: usize,
    ) -> Result<Vec<(StoredItem, ChildCounts)>, StateError>;

    /// Counts by status and step.
    async fn summary(&self) -> Result<Summary, StateError>;

    /// Waits until every transition handed over so far is committed.
    async fn flush(&self) -> Result<(), StateError>;

    /// [`StateStore::insert`], saying which rows it may have ignored for a known key, so a
    /// load can tell a row repeated exactly from one whose key another row already has. The
    /// default says only how many were added.
    async fn insert_reporting(&self, items: Vec<NewItem>) -> Result<Inserted, StateError> {
        Ok(Inserted {
            added: self.insert(items).await?,
            candidates: Vec::new(),
        })
    }

    /// The fields of the top-level items with these keys (those that exist).
    async fn fields_of(&self, _keys: Vec<String>) -> Result<Vec<(String, Fields)>, StateError> {
        Ok(Vec::new())
    }

    /// Records that the top-level item `key` writes `target` at step `step` (its rendered
    /// `copy.to`), for each claim; a target already claimed by another key keeps its first
    /// claim. Answers the claims whose target belongs to another key, with that key: two
    /// items that would write one object. The default records nothing and finds nothing.
    async fn claim_targets(
        &self,
        _claims: Vec<TargetClaim>,
    ) -> Result<Vec<(TargetClaim, String)>, StateError> {
        Ok(Vec::new())
    }

    /// The status of the top-level items with these keys (those that exist): what a dry run
    /// reads to tell the work left from the work done.
    async fn statuses_of(&self, _keys: Vec<String>) -> Result<Vec<(String, Status)>, StateError> {
        Ok(Vec::new())
    }

    /// The source's revision recorded when its load last completed (see
    /// `Source::revision`).
    async fn source_revision(&self) -> Result<Option<String>, StateError> {
        Ok(None)
    }

    /// Records the source's revision (after its load completed).
    async fn set_source_revision(&self, _revision: String) -> Result<(), StateError> {
        Ok(())
    }

    /// Takes up to `limit` runnable items (as [`StateStore::runnable`]) for this process to
    /// run. A store shared by several processes leases them: no other process takes them while
    /// the lease is renewed, and an expired lease (a worker that died) makes them runnable
    /// again, whatever their id. A store used by one process returns `runnable`.
    async fn claim(&self, after: ItemId, limit: usize) -> Result<Vec<StoredItem>, StateError> {
        self.runnable(after, limit).await
    }

    /// Whether this process still holds the item it claimed: `false` once another worker has
    /// taken it over. Checked before a retry, so a worker that was paused past its lease does
    /// not repeat a step someone else now runs. A store used by one process: always `true`.
    async fn holds(&self, _id: ItemId) -> Result<bool, StateError> {
        Ok(true)
    }

    /// True while other processes hold live leases on unfinished items: a worker that finds
    /// nothing to claim waits for them (to take over their items if their leases expire)
    /// rather than ending.
    async fn others_busy(&self) -> Result<bool, StateError> {
        Ok(false)
    }

    /// Takes the loader role: the one process that reads the source into the state. `false`
    /// when another live process holds it; that one's death frees it.
    async fn take_loader_role(&self) -> Result<bool, StateError> {
        Ok(true)
    }

    /// Gives back the leases of items this process claimed and did not finish (a run ending
    /// early): others may take them at once instead of waiting for the leases to expire.
    async fn release_claims(&self) -> Result<(), StateError> {
        Ok(())
    }

    /// The processes working on this job, for `status` (a store used by one process: none).
    async fn workers(&self) -> Result<Vec<WorkerInfo>, StateError> {
        Ok(Vec::new())
    }

    /// When the items ran, in `buckets` slices of the job's span, and its `slowest` items (for
    /// `redrive report`). A store that keeps no clocks answers nothing.
    async fn activity(&self, _buckets: u32, _slowest: usize) -> Result<Activity, StateError> {
        Ok(Activity::default())
    }

    /// Adds steps' durations measured by a run to the sums kept (for `redrive report`).
    /// Statistics, not item state: a run killed between two additions loses the last few
    /// seconds' worth. A store that keeps no clocks ignores them.
    async fn add_step_times(&self, _times: Vec<StepTimes>) -> Result<(), StateError> {
        Ok(())
    }
}

/// One process working on a shared job, as its heartbeats describe it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WorkerInfo {
    /// `host:pid:nonce`.
    pub id: String,
    /// The host name.
    pub host: String,
    /// The process id on that host.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: f64,
    /// Items it holds leases on, at its last heartbeat.
    pub in_flight: u64,
    /// Items it finished.
    pub finished: u64,
    /// Items finished per second since it started.
    pub rate: f64,
}
