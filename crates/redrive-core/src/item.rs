//! Items: records of named string fields, and their status in the state store.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// An item's fields, by name. Sorted, so the JSON stored for an item is stable.
pub type Fields = BTreeMap<String, String>;

/// The state store's identifier of an item (a row id).
pub type ItemId = i64;

/// An item as a source yields it, before it is stored: its key and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItem {
    /// Unique within its parent (or the job), rendered from the plan's `key` template.
    pub key: String,
    /// The fields the source produced.
    pub fields: Fields,
}

/// An item as the state store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    /// Row id.
    pub id: ItemId,
    /// The parent item, for children of an expansion.
    pub parent: Option<ItemId>,
    /// The parent's key, for children.
    pub parent_key: Option<String>,
    /// For a parent: its children are all recorded (it is not listed again on resume).
    pub expanded: bool,
    /// The item's key.
    pub key: String,
    /// The item's fields.
    pub fields: Fields,
    /// Index of the first step not yet finished (the step to run next).
    pub step: usize,
    /// Current status.
    pub status: Status,
    /// How many times the item was started.
    pub attempts: u32,
    /// The last error, for failed items; the reason, for skipped ones.
    pub error: Option<String>,
    /// Bytes moved for this item so far.
    pub bytes: u64,
}

/// Where an item is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Not started, or put back by `reset`/`--retry-failed`.
    Pending,
    /// Started; after a crash, a running item is redone from its current step.
    Running,
    /// Every step finished.
    Done,
    /// A step decided the item needs no work (e.g. `exists`), or a person skipped it.
    Skipped,
    /// A step failed permanently or ran out of retries.
    Failed,
}

impl Status {
    /// All statuses, in display order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Done,
        Status::Skipped,
        Status::Failed,
    ];

    /// The name stored in the state and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }

    /// True for the statuses a run will not pick up again by itself.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::Skipped | Status::Failed)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of `pending|running|done|skipped|failed`.
#[derive(Debug, thiserror::Error)]
#[error("unknown status `{0}`; expected one of pending, running, done, skipped, failed")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}
