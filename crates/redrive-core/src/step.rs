//! The `Step` trait: one action per item.

use std::borrow::Cow;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::error::StepError;
use crate::item::Fields;
use crate::template::TemplateError;

/// What a step decided for an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The step did its work (or found it already done, e.g. a create-only copy whose target
    /// exists); the item goes on to its next step.
    Done(Done),
    /// The item needs no more work; no later step runs. The reason is recorded (`exists`).
    /// The reason [`NO_INPUT`] is not final: the item is tried again on the next run.
    Skipped(Cow<'static, str>),
}

/// The reason of a skip that is not final: a step's `require` found nothing yet.
pub const NO_INPUT: &str = "no input";

/// What a finished step reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// Bytes moved.
    pub bytes: u64,
    /// A local file the step produced (`output = …`): if it disappears before the item is
    /// done, the step is redone.
    pub output: Option<Produced>,
    /// Where the step wrote or sent (a URL), for telemetry.
    pub target: Option<String>,
    /// The target was there already and was left as it was (a create-only copy): counted
    /// apart in the run's summary, so a rerun says what it did not replace.
    pub kept: bool,
    /// Fields the step computed (`xml`'s `into`), for later steps. Not recorded in the state:
    /// a step that returns fields says so in [`StepTraits::binds_fields`] and is run again on resume.
    pub fields: Fields,
    /// What the step left to settle before the item may be recorded (a local copy's file
    /// given its name and made durable): it resolves to the step's outcome. It holds nothing
    /// the item's slot bounds, so after an item's last step the slot goes to the next item
    /// while it is awaited.
    pub settle: Option<Settle>,
}

/// A step's unfinished end (see [`Done::settle`]); awaited once.
#[derive(Clone)]
pub struct Settle(Arc<Mutex<Option<Rest>>>);

/// The rest of a step's work.
type Rest = BoxFuture<'static, Result<Outcome, StepError>>;

impl Settle {
    /// `rest` finishes the step's work and says how it went.
    pub fn new(rest: impl Future<Output = Result<Outcome, StepError>> + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Some(Box::pin(rest)))))
    }

    /// Finishes the step's work.
    pub async fn wait(self) -> Result<Outcome, StepError> {
        let rest = self.0.lock().ok().and_then(|mut rest| rest.take());
        match rest {
            Some(rest) => rest.await,
            None => Err(StepError::permanent("a step's end was awaited twice")),
        }
    }
}

impl PartialEq for Settle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Settle {}

impl Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settle")
    }
}

/// A file a step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Produced {
    /// Its path.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

impl Outcome {
    /// Done, having moved `bytes`.
    pub fn done(bytes: u64) -> Self {
        Outcome::Done(Done {
            bytes,
            ..Done::default()
        })
    }

    /// Done without writing: the target `target` was there and is left as it was.
    pub fn kept(target: impl Into<String>) -> Self {
        Outcome::Done(Done {
            target: Some(target.into()),
            kept: true,
            ..Done::default()
        })
    }

    /// Done, with where it went.
    pub fn done_to(bytes: u64, target: impl Into<String>) -> Self {
        Outcome::Done(Done {
            bytes,
            output: None,
            target: Some(target.into()),
            ..Done::default()
        })
    }
}

/// Counts bytes as they move, for progress.
pub trait ByteCounter: Send + Sync {
    /// `n` more bytes moved.
    fn add(&self, n: u64);

    /// A large object is moving: its own progress (bytes, rate, ETA) is shown while the
    /// returned handle lives. `size` when known. `None` when nobody shows it.
    fn object(&self, _name: &str, _size: Option<u64>) -> Option<Box<dyn ObjectProgress>> {
        None
    }
}

/// The progress of one large object, from [`ByteCounter::object`]; dropped when it ends.
pub trait ObjectProgress: Send + Sync {
    /// `n` more bytes of this object moved (they are counted in the total separately).
    fn add(&self, n: u64);
}

/// What a step gets besides the item.
pub struct StepContext<'a> {
    /// Where to report bytes as they move.
    pub bytes: &'a dyn ByteCounter,
    /// The item's key (for log file names and messages).
    pub key: &'a str,
    /// The step's throttle signal: a storage call retried on the spot because the endpoint
    /// throttled reports it here. Work the step spawns must run under
    /// [`Throttle::scope`](crate::throttle::Throttle::scope), or its throttling goes unseen.
    pub throttle: crate::throttle::Throttle,
}

/// What a step needs from the engine, decided when the pipeline is built (from the step's
/// configuration, not asked of the runtime object, so that a wrapper such as `require` cannot
/// hide it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTraits {
    /// True for a step that paces its own requests (a batching `http` or `sql_insert` step:
    /// one request carries many items, with its own rate and concurrency). The engine's
    /// adaptive concurrency and `--rate` apply to the other steps, one call per item.
    pub paces_itself: bool,
    /// True for a step that computes fields for later steps ([`Done::fields`]) and has no
    /// other effect (`xml`). Its fields are not in the state, so an item resumed after it
    /// starts again at this step, and `--dry-run` runs it.
    pub binds_fields: bool,
    /// For a step that sends items in batches: how many per batch, and the longest an item
    /// waits for its batch to fill.
    pub batch: Option<(usize, std::time::Duration)>,
}

impl StepTraits {
    /// A step that sends `batch` items per request (waiting at most `max_wait` for a batch to
    /// fill) and paces its own requests.
    pub fn batching(batch: usize, max_wait: std::time::Duration) -> Self {
        StepTraits {
            paces_itself: true,
            binds_fields: false,
            batch: (batch > 1).then_some((batch, max_wait)),
        }
    }
}

/// One action of a plan's pipeline.
#[async_trait]
pub trait Step: Send + Sync + Debug {
    /// Runs the action for one item. Must be idempotent: after a crash the engine repeats a
    /// step that ran but whose completion was not recorded. On cancellation (the future is
    /// dropped) nothing half-written may become visible.
    async fn run(&self, fields: &Fields, cx: &StepContext<'_>) -> Result<Outcome, StepError>;

    /// What the step would do for this item, for `--dry-run`. Touches nothing.
    fn describe(&self, fields: &Fields) -> Result<String, TemplateError>;

    /// What the step needs before it runs (`require = …`): `Ok(Some(fields))` when present,
    /// with fields it binds for this and later steps (e.g. `input`, the matched path);
    /// `Ok(None)` when missing: the item is skipped with [`NO_INPUT`] until a later run.
    async fn require(&self, _fields: &Fields) -> Result<Option<Fields>, StepError> {
        Ok(Some(Fields::new()))
    }

    /// The requests this step would make for the item, for `--dry-run`'s estimate: what
    /// (`GET`, `PUT`, `HEAD`, `COPY`, `message`, `HTTP request`, `SQL row`, `process`) and
    /// how many. A batching step counts per item; the dry run divides by its batch. Touches
    /// nothing. Default: none.
    fn calls(&self, _fields: &Fields) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The requests made for an item that [`Step::check`] says this step skips (a `require`
    /// that finds nothing looks, and runs nothing). Default: [`Step::calls`].
    fn calls_when_skipped(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        self.calls(fields)
    }

    /// For `--dry-run --check-targets`: what the store says now, asked without changing
    /// anything (a stat). Default: nothing asked.
    async fn check(&self, _fields: &Fields) -> Result<Check, StepError> {
        Ok(Check::Unknown)
    }
}

/// What [`Step::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing to say: the step would run.
    Unknown,
    /// The step would skip the item, for this reason (no later step runs).
    Skips(Cow<'static, str>),
    /// The step's target is already there (a create-only copy keeps it).
    TargetPresent,
}
