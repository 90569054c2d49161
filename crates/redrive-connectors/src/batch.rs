//! Gathers the calls of many items into batches, for steps that send many items at once (an
//! API call, a multi-row insert). Needs nothing from the engine: each item's step call joins
//! the current batch and waits for its own result; a batch is sent when it holds `size` items
//! or its first item has waited `max_wait`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// Sends one batch; returns one result per item, in order.
pub(crate) type Send<T, E> =
    Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, Vec<Result<(), E>>> + std::marker::Send + Sync>;

struct Waiting<T, E> {
    item: T,
    done: oneshot::Sender<Result<(), E>>,
}

struct Queue<T, E> {
    items: Vec<Waiting<T, E>>,
    /// Bumped at every flush, so a timer only flushes the batch it was started for.
    generation: u64,
}

struct Inner<T, E> {
    size: usize,
    max_wait: Duration,
    queue: Mutex<Queue<T, E>>,
    send: Send<T, E>,
}

/// A batcher of items of type `T` whose results are `Result<(), E>`.
pub(crate) struct Batcher<T, E> {
    inner: Arc<Inner<T, E>>,
}

impl<T, E> std::fmt::Debug for Batcher<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("size", &self.inner.size)
            .field("max_wait", &self.inner.max_wait)
            .finish_non_exhaustive()
    }
}

impl<T, E> Batcher<T, E>
where
    T: std::marker::Send + 'static,
    E: std::marker::Send + 'static,
{
    /// Batches of at most `size` items, none waiting longer than `max_wait` for its batch.
    pub(crate) fn new(size: usize, max_wait: Duration, send: Send<T, E>) -> Self {
        Self {
            inner: Arc::new(Inner {
                size: size.max(1),
                max_wait,
                queue: Mutex::new(Queue {
                    items: Vec::new(),
                    generation: 0,
                }),
                send,
            }),
        }
    }

    /// Joins the current batch; returns this item's result. `lost` is the result when the
    /// batch is dropped before it is sent (it cannot be, short of a panic).
    pub(crate) async fn submit(&self, item: T, lost: impl FnOnce() -> E) -> Result<(), E> {
        let (done, outcome) = oneshot::channel();
        let (full, timer) = {
            let Ok(mut queue) = self.inner.queue.lock() else {
                return Err(lost());
            };
            queue.items.push(Waiting { item, done });
            if queue.items.len() >= self.inner.size {
                queue.generation += 1;
                (Some(std::mem::take(&mut queue.items)), None)
            } else if queue.items.len() == 1 {
                (None, Some(queue.generation))
            } else {
                (None, None)
            }
        };
        if let Some(batch) = full {
            tokio::spawn(flush(Arc::clone(&self.inner), batch));
        }
        if let Some(generation) = timer {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(inner.max_wait).await;
                let batch = match inner.queue.lock() {
                    Ok(mut queue) if queue.generation == generation && !queue.items.is_empty() => {
                        queue.generation += 1;
                        std::mem::take(&mut queue.items)
                    }
                    _ => return,
                };
                flush(inner, batch).await;
            });
        }
        outcome.await.unwrap_or_else(|_| Err(lost()))
    }
}

/// Sends `batch` and tells each of its items its result.
async fn flush<T, E>(inner: Arc<Inner<T, E>>, batch: Vec<Waiting<T, E>>) {
    let (items, senders): (Vec<T>, Vec<_>) = batch.into_iter().map(|w| (w.item, w.done)).unzip();
    let results = (inner.send)(items).await;
    for (sender, result) in senders.into_iter().zip(results) {
        let _ = sender.send(result);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn batches_fill_up_or_time_out_and_each_item_gets_its_result() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let send: Send<u32, String> = {
            let sent = Arc::clone(&sent);
            let calls = Arc::clone(&calls);
            Arc::new(move |items: Vec<u32>| {
                calls.fetch_add(1, Ordering::SeqCst);
                sent.lock().unwrap().push(items.clone());
                Box::pin(async move {
                    items
                        .iter()
                        .map(|n| {
                            if n % 5 == 0 {
                                Err(format!("bad {n}"))
                            } else {
                                Ok(())
                            }
                        })
                        .collect()
                })
            })
        };
        let batcher = Arc::new(Batcher::new(3, Duration::from_secs(1), send));
        let mut tasks = Vec::new();
        for n in 1..=7u32 {
            let batcher = Arc::clone(&batcher);
            tasks.push(tokio::spawn(async move {
                batcher.submit(n, || "lost".into()).await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two full batches and one timed out"
        );
        assert_eq!(results[4], Err("bad 5".to_owned()));
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 6);
        let mut all: Vec<u32> = sent.lock().unwrap().concat();
        all.sort_unstable();
        assert_eq!(all, (1..=7).collect::<Vec<_>>());
    }
}
