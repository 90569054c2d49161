//! The `Step` trait: one action per item.

use std::borrow::Cow;
use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::StepError;
use crate::item::Fields;
use crate::template::TemplateError;

/// What a step decided for an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The step did its work (or found it already done, e.g. a create-only copy whose target
    /// exists); the item goes on to its next step.
    Done {
        /// Bytes moved.
        bytes: u64,
    },
    /// The item needs no more work; no later step runs. The reason is recorded (`exists`).
    Skipped(Cow<'static, str>),
}

/// Counts bytes as they move, for progress.
pub trait ByteCounter: Send + Sync {
    /// `n` more bytes moved.
    fn add(&self, n: u64);
}

/// What a step gets besides the item.
pub struct StepContext<'a> {
    /// Where to report bytes as they move.
    pub bytes: &'a dyn ByteCounter,
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
}
