//! redrive's core: items, plans, templates, the engine, and the traits that sources, steps and
//! state stores implement. No CLI, no storage client, no database here.

#![warn(missing_docs, unreachable_pub)]

pub mod engine;
pub mod error;
mod fingerprint;
pub mod item;
pub mod plan;
pub mod retry;
pub mod secrets;
pub mod source;
pub mod state;
pub mod step;
pub mod template;
pub mod throttle;

pub use error::{BoxError, ErrorClass, StepError};
pub use item::{Fields, ItemId, NewItem, Status, StoredItem};
pub use plan::Plan;
pub use source::{Shard, Source, SourceError};
pub use state::{ChildCounts, JobInfo, Requeue, StateError, StateStore, Summary, Transition};
pub use step::{
    ByteCounter, Done, NO_INPUT, ObjectProgress, Outcome, Produced, Step, StepContext, StepTraits,
};
pub use template::{Template, TemplateError};
