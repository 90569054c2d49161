//! Local file system calls on a few threads of redrive's own, each with its own queue.
//!
//! tokio's blocking pool grows a thread per call in flight (64 items in flight: 64 threads),
//! and every hand-off takes the pool's one mutex and wakes a parked thread: with calls as
//! short as a `stat`, the hand-offs were most of the work (`perf`: the pool's
//! `lock_contended` and futex wake-ups, ~4 context switches an item; bench/README.md,
//! "The hot path (issue 17, session 16)"). Here a fixed set of threads, 2 per core, takes
//! calls from one queue: a busy thread takes the next call without being woken, and a long
//! call (a big local copy) holds up only its own thread, never the calls queued after it.
//!
//! A call that panics answers [`Stopped`] and its thread goes on. A call that cannot be queued
//! (no thread could be started) runs on tokio's blocking pool instead.

use std::sync::{Arc, Mutex, OnceLock, mpsc};

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    /// `None`: no thread could be started.
    queue: Option<mpsc::Sender<Job>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for i in 0..(2 * cores).max(4) {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new()
                .name(format!("redrive-local-io-{i}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(queue) => match queue.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            },
                            Err(_) => return,
                        };
                        // A panic drops the call's answer (the caller gets `Stopped`); the
                        // thread takes the next call.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        Pool {
            queue: (started > 0).then_some(sender),
        }
    })
}

/// The call panicked: its result is lost.
#[derive(Debug, thiserror::Error)]
#[error("a local file system call stopped before it answered")]
pub(crate) struct Stopped;

/// Runs `work` on one of the local threads and waits for its answer without blocking the
/// runtime.
pub(crate) async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stopped> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = answer.send(work());
    });
    let queued = match &pool().queue {
        Some(queue) => queue.send(job).map_err(|refused| refused.0),
        None => Err(job),
    };
    if let Err(job) = queued {
        return tokio::task::spawn_blocking(job)
            .await
            .map_err(|_| Stopped)
            .and(answered.await.map_err(|_| Stopped));
    }
    answered.await.map_err(|_| Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_answer_in_any_number_and_a_panic_is_an_error() {
        let answers = futures::future::join_all((0..1000u64).map(|i| run(move || i * 2))).await;
        let sum: u64 = answers.into_iter().map(|a| a.unwrap_or(0)).sum();
        assert_eq!(sum, 999 * 1000);
        let panicked = run(|| -> u8 { panic!("boom") }).await;
        assert!(panicked.is_err());
        // The pool still answers, on all its threads.
        let after = futures::future::join_all((0..100u64).map(|i| run(move || i))).await;
        assert!(after.iter().all(Result::is_ok));
    }

    /// A long call (a big local copy) holds up its own thread only: the calls queued after it
    /// are answered by the others while it still runs.
    #[tokio::test]
    async fn a_long_call_does_not_hold_up_the_calls_queued_after_it() {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let long = tokio::spawn(run(move || {
            // Runs until the test releases it (or, were the short calls stuck behind it,
            // gives up after a while so the test fails instead of hanging).
            let _ = released.recv_timeout(std::time::Duration::from_secs(30));
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let short = futures::future::join_all((0..64u64).map(|i| run(move || i))).await;
        assert!(short.iter().all(Result::is_ok));
        assert!(
            !long.is_finished(),
            "the short calls were answered only after the long one"
        );
        let _ = release.send(());
        assert!(long.await.is_ok_and(|r| r.is_ok()));
    }
}
