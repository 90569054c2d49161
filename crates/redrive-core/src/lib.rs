//! redrive's core: items, the job model of a plan, templates, the engine, and the traits that
//! sources, steps and state stores implement. No CLI, no storage client, no database, and no
//! source's or step's options here (those are each component's own, in `redrive-connectors`).

#![warn(missing_docs, unreachable_pub)]

pub mod engine;
pub mod env_vars;
pub mod error;
pub mod fingerprint;
pub mod item;
pub mod job;
pub mod retry;
pub mod secrets;
pub mod source;
pub mod state;
pub mod step;
pub mod template;
pub mod throttle;

pub use error::{BoxError, ErrorClass, StepError};
pub use item::{Fields, ItemId, NewItem, Status, StoredItem};
pub use source::{Shard, Source, SourceError};
pub use state::{ChildCounts, JobInfo, Requeue, StateError, StateStore, Summary, Transition};
pub use step::{
    ByteCounter, Done, NO_INPUT, ObjectProgress, Outcome, Produced, Step, StepContext, StepTraits,
};
pub use template::{Template, TemplateError};
