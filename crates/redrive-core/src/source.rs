//! The `Source` trait: where items come from.

use std::collections::BTreeSet;
use std::fmt::Debug;

use futures::stream::BoxStream;

use crate::item::Fields;

/// A source that failed to produce an item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The input could not be read or parsed at a known place (file and line, URL).
    #[error("{location}: {message}")]
    Input {
        /// Where: `file.csv:12`, a URL.
        location: String,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// The store or server behind the source failed.
    #[error("failed to read `{location}`")]
    Io {
        /// Where.
        location: String,
        /// The cause.
        #[source]
        source: crate::error::BoxError,
    },
}

/// Streams items' fields. The stream must not hold the whole work list in memory, and must
/// yield the same items in the same order for the same configuration (resume relies on keys).
pub trait Source: Send + Sync + Debug {
    /// The names of the fields every item has; templates are checked against them before a run.
    fn fields(&self) -> BTreeSet<String>;

    /// The items. `context` holds the fields the source's location templates may use: none
    /// for the plan's source, the parent's under `[expand]`. An error ends the stream.
    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>>;
}
