//! State stores for redrive: [`SqliteStateStore`], [`PostgresStateStore`], and the
//! [`conformance`] suite every store implementation must pass.

#![warn(missing_docs, unreachable_pub)]

pub mod conformance;
mod lease;
mod postgres;
mod sqlite;

pub use postgres::{PgRunLock, PostgresStateStore, schema_for};
pub use sqlite::{RunLock, SqliteStateStore};
