//! Ctrl-C and SIGTERM: the first drains (no new items; those in flight finish), the second
//! aborts what is in flight. Shared by `run` and by `--workers`, which passes them on.

use redrive_core::engine::StopLevel;
use tokio::sync::watch;

/// SIGTERM, when it can be watched.
pub(crate) fn terminate_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

/// Waits for the next Ctrl-C or SIGTERM. Without signal handling, waits forever (no stop is
/// ever reported).
pub(crate) async fn next_stop_signal(terminate: &mut Option<tokio::signal::unix::Signal>) {
    let terminated = async {
        match terminate.as_mut() {
            Some(signal) => signal.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => if result.is_err() {
            std::future::pending::<()>().await;
        },
        _ = terminated => {}
    }
}

/// First Ctrl-C (or SIGTERM): drain. Second: abort.
pub(crate) async fn watch_signals(stop: watch::Sender<StopLevel>) {
    let mut terminate = terminate_signal();
    let mut level = StopLevel::Run;
    loop {
        next_stop_signal(&mut terminate).await;
        level = match level {
            StopLevel::Run => {
                eprintln!(
                    "\nStopping: no new items; finishing those in flight (Ctrl-C again to abort them)."
                );
                StopLevel::Drain
            }
            _ => {
                eprintln!("\nAborting the items in flight; they will be redone on the next run.");
                StopLevel::Abort
            }
        };
        let _ = stop.send(level);
    }
}
