//! Sources: where items come from. Each streams; none holds the work list in memory.

mod csv;
mod dates;
mod glob;
mod kusto;
mod lines;
mod list;
mod shard;
mod sql;

pub use self::csv::CsvSource;
pub use self::dates::DatesSource;
pub use self::glob::GlobSource;
pub use self::kusto::KustoSource;
pub use self::lines::LinesSource;
pub use self::list::ListSource;
pub use self::shard::Sharded;
pub use self::sql::SqlSource;

use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::SourceError;
use tokio::sync::mpsc;

/// Items buffered between a blocking reader thread and the engine.
const CHANNEL: usize = 1_024;

/// Runs a blocking producer on tokio's blocking pool and streams what it sends. The producer
/// stops when the stream is dropped (its `send` fails).
fn blocking_stream(
    produce: impl FnOnce(&mpsc::Sender<Result<Fields, SourceError>>) + Send + 'static,
) -> BoxStream<'static, Result<Fields, SourceError>> {
    let (sender, receiver) = mpsc::channel(CHANNEL);
    tokio::task::spawn_blocking(move || produce(&sender));
    Box::pin(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

fn input(location: impl Into<String>, message: impl Into<String>) -> SourceError {
    SourceError::Input {
        location: location.into(),
        message: message.into(),
    }
}
