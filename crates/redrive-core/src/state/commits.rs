//! How long the state store's commits take, for whoever watches them (the metrics endpoint):
//! a store's writer reports each transaction it committed; nothing is kept when no one
//! watches.

use std::sync::OnceLock;
use std::time::Instant;

/// Told of each transaction a state store committed.
pub trait CommitObserver: Send + Sync {
    /// A transaction of `writes` writes committed in `seconds`, from its start.
    fn committed(&self, seconds: f64, writes: usize);
}

static OBSERVER: OnceLock<Box<dyn CommitObserver>> = OnceLock::new();

/// Sends every commit of this process to `observer`; false when one was set before.
pub fn observe(observer: Box<dyn CommitObserver>) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// A store's writer committed a transaction of `writes` writes begun at `started`.
pub fn committed(started: Instant, writes: usize) {
    if let Some(observer) = OBSERVER.get() {
        observer.committed(started.elapsed().as_secs_f64(), writes);
    }
}
