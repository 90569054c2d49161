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

/// First Ctrl-C (or SIGTERM): drain, for at most `grace`. Second, or the grace over: abort.
/// (Kubernetes sends SIGKILL 30 s after SIGTERM: a drain must not outlast that.)
pub(crate) async fn watch_signals(stop: watch::Sender<StopLevel>, grace: std::time::Duration) {
    let mut terminate = terminate_signal();
    next_stop_signal(&mut terminate).await;
    eprintln!(
        "\nStopping: no new items; finishing those in flight for up to {} (Ctrl-C again to abort them).",
        shown(grace)
    );
    let _ = stop.send(StopLevel::Drain);
    tokio::select! {
        _ = next_stop_signal(&mut terminate) => {
            eprintln!("\nAborting the items in flight; they will be redone on the next run.");
        }
        _ = tokio::time::sleep(grace) => {
            eprintln!(
                "\nThe grace period ({}) is over: abandoning the items still in flight; they will be redone on the next run.",
                shown(grace)
            );
        }
    }
    let _ = stop.send(StopLevel::Abort);
}

/// `10s`, `2.5s`.
fn shown(duration: std::time::Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}
