//! State stores for redrive: [`SqliteStateStore`], [`PostgresStateStore`], the front door
//! that opens either from a path or URL ([`StateLocation`]), and the `conformance` suite every
//! store implementation must pass (feature `conformance`, for tests).

#![warn(missing_docs, unreachable_pub)]

mod activity;
mod change;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod lease;
mod location;
mod pg_writer;
mod postgres;
mod sqlite;

pub use location::{LocationError, OpenError, OpenState, StateLocation};
pub use postgres::{PgRunLock, PostgresStateStore, schema_for};
pub use sqlite::{RunLock, SqliteStateStore};
