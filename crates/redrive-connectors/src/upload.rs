//! An upload that cleans up after itself. A copy cancelled in the middle (a second Ctrl-C
//! drops the in-flight items) drops its writer; without an abort, S3 keeps the multipart
//! upload and its parts (billed, invisible) until a lifecycle rule removes them. Dropped
//! unfinished, an [`Upload`] starts the abort on the runtime, and [`finish_aborts`] lets the
//! program wait for those aborts before it exits.

use std::sync::Mutex;
use std::time::Duration;

use opendal::Writer;
use tokio::task::JoinHandle;

/// Aborts started by dropped uploads, not yet awaited.
static PENDING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// A writer that is closed, aborted, or aborted when dropped.
pub(crate) struct Upload {
    writer: Option<Writer>,
    what: String,
}

impl Upload {
    pub(crate) fn new(writer: Writer, what: String) -> Self {
        Self {
            writer: Some(writer),
            what,
        }
    }

    /// The writer, while the upload is open.
    pub(crate) fn writer(&mut self) -> Option<&mut Writer> {
        self.writer.as_mut()
    }

    /// Completes the upload; on failure it is aborted.
    pub(crate) async fn close(mut self) -> opendal::Result<opendal::Metadata> {
        let Some(mut writer) = self.writer.take() else {
            return Err(opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                "the upload was already finished",
            ));
        };
        match writer.close().await {
            Ok(metadata) => Ok(metadata),
            Err(error) => {
                let _ = writer.abort().await;
                Err(error)
            }
        }
    }

    /// Gives the upload up (its parts are removed where the store keeps them).
    pub(crate) async fn abort(mut self) {
        if let Some(mut writer) = self.writer.take() {
            let _ = writer.abort().await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        tracing::debug!(target = %self.what, "Aborting an interrupted upload.");
        track(async move {
            let _ = writer.abort().await;
        });
    }
}

/// Keeps `work` (the end of a cancelled copy) for [`finish_aborts`] to wait for.
pub(crate) fn track(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let task = runtime.spawn(work);
    if let Ok(mut pending) = PENDING.lock() {
        pending.retain(|task| !task.is_finished());
        pending.push(task);
    }
}

/// Waits (at most `limit`) for the aborts of interrupted uploads; returns how many did not
/// finish in time.
pub async fn finish_aborts(limit: Duration) -> usize {
    let tasks: Vec<JoinHandle<()>> = match PENDING.lock() {
        Ok(mut pending) => std::mem::take(&mut *pending),
        Err(_) => return 0,
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut late = 0;
    for task in tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            late += 1;
        }
    }
    late
}
