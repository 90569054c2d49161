//! Local file system calls on a few threads of redrive's own, each with its own queue.
//!
//! tokio's blocking pool grows a thread per call in flight (64 items in flight: 64 threads),
//! and every hand-off takes the pool's one mutex and wakes a parked thread: with calls as
//! short as a `stat`, the hand-offs were most of the work (`perf`: the pool's
//! `lock_contended` and futex wake-ups, ~4 context switches an item; bench/README.md,
//! "Local calls on threads of their own"). Here a fixed set of threads, 2 per core, each
//! takes calls from its own queue in turn: a busy thread takes the next call without being
//! woken, and nothing is shared between threads but the round-robin counter.
//!
//! A call that cannot be queued (a thread could not be started, or died) runs on tokio's
//! blocking pool instead.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let queues = (0..(2 * cores).max(4))
            .filter_map(|i| {
                let (sender, receiver) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("redrive-local-io-{i}"))
                    .spawn(move || {
                        while let Ok(job) = receiver.recv() {
                            job();
                        }
                    })
                    .ok()
                    .map(|_| sender)
            })
            .collect();
        Pool {
            queues,
            next: AtomicUsize::new(0),
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
    let pool = pool();
    let queued = match pool.queues.len() {
        0 => Err(job),
        n => {
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % n;
            pool.queues[i].send(job).map_err(|refused| refused.0)
        }
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
        // The pool still answers (a dead thread's calls go to tokio's pool).
        let after = futures::future::join_all((0..100u64).map(|i| run(move || i))).await;
        assert!(after.iter().all(Result::is_ok));
    }
}
