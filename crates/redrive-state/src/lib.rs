//! State stores for redrive: [`SqliteStateStore`] and the [`conformance`] suite every store
//! implementation must pass.

#![warn(missing_docs, unreachable_pub)]

pub mod conformance;
mod sqlite;

pub use sqlite::{RunLock, SqliteStateStore};
