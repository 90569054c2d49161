//! How hard redrive pushes an endpoint: an adaptive concurrency limit (AIMD) and a fixed
//! request rate.
//!
//! [`AdaptiveLimit`] halves the calls in flight when the endpoint throttles (429, S3
//! `SlowDown`, Azure `ServerBusy`) and adds one back per limit's worth of successes, the way
//! TCP shares a link. Throttling is seen at two depths: a step that fails throttled (the engine
//! sees it) and a storage call retried on the spot by the store layer (which calls
//! [`report_throttled`] from inside the step, reaching the limit through a task-local).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// After a cut, further throttling is taken as the echo of the same overload for this long:
/// calls already in flight when the limit dropped answer throttled too.
const COOL_DOWN: Duration = Duration::from_millis(500);

/// An AIMD limit on calls in flight to one endpoint.
#[derive(Debug)]
pub struct AdaptiveLimit {
    max: usize,
    state: Mutex<LimitState>,
    freed: Notify,
}

#[derive(Debug)]
struct LimitState {
    limit: f64,
    in_flight: usize,
    lowest: usize,
    throttled: u64,
    last_cut: Option<Instant>,
}

/// What a limit went through, for the summary and `--metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitReport {
    /// The configured ceiling (the run's concurrency).
    pub max: usize,
    /// The lowest the limit went.
    pub lowest: usize,
    /// The limit at the end.
    pub now: usize,
    /// Throttled responses seen (including those retried on the spot).
    pub throttled: u64,
}

impl AdaptiveLimit {
    /// A limit starting at (and never above) `max`.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            state: Mutex::new(LimitState {
                limit: max as f64,
                in_flight: 0,
                lowest: max,
                throttled: 0,
                last_cut: None,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LimitState> {
        // The state is a few numbers, consistent after every statement: a panic elsewhere
        // while the lock was held leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a call may start; the call holds the returned permit while it runs.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.current() {
                    state.in_flight += 1;
                    return Permit {
                        limit: Arc::clone(self),
                    };
                }
            }
            freed.await;
        }
    }

    /// The endpoint answered: one more success towards raising the limit by one.
    pub fn succeeded(&self) {
        let raised = {
            let mut state = self.lock();
            let before = state.current();
            state.limit = (state.limit + 1.0 / state.limit).min(self.max as f64);
            state.current() > before
        };
        if raised {
            self.freed.notify_waiters();
        }
    }

    /// The endpoint asked to slow down: halve the limit (once per cool-down).
    pub fn throttled(&self) {
        let mut state = self.lock();
        state.throttled += 1;
        let now = Instant::now();
        if state
            .last_cut
            .is_some_and(|cut| now.duration_since(cut) < COOL_DOWN)
        {
            return;
        }
        state.last_cut = Some(now);
        state.limit = (state.limit / 2.0).max(1.0);
        state.lowest = state.lowest.min(state.current());
        tracing::debug!(limit = state.current(), "Throttled: fewer calls in flight.");
    }

    /// What the limit went through so far.
    pub fn report(&self) -> LimitReport {
        let state = self.lock();
        LimitReport {
            max: self.max,
            lowest: state.lowest,
            now: state.current(),
            throttled: state.throttled,
        }
    }
}

impl LimitState {
    fn current(&self) -> usize {
        (self.limit.floor() as usize).max(1)
    }
}

/// A call in flight under an [`AdaptiveLimit`]; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<AdaptiveLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut state = self.limit.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        self.limit.freed.notify_waiters();
    }
}

tokio::task_local! {
    static CURRENT: Throttle;
}

/// A step's throttle signal, carried in its [`StepContext`](crate::StepContext): where a
/// throttled call made for the step is reported (its adaptive limit), or nowhere.
///
/// Storage calls are retried on the spot by the store layer, deep inside a client library that
/// knows no step; [`report_throttled`] finds the signal of the task it runs in. A step's own
/// task has it; a task the step spawns has it only when its work runs under [`Throttle::scope`]
/// (task-locals do not cross `tokio::spawn`), so every spawn in a step wraps its future.
#[derive(Clone, Debug, Default)]
pub struct Throttle(Option<Arc<AdaptiveLimit>>);

impl Throttle {
    /// Reports to `limit`, or nowhere.
    pub fn of(limit: Option<Arc<AdaptiveLimit>>) -> Self {
        Self(limit)
    }

    /// Reports nowhere (a step the engine does not pace, a dry run).
    pub fn none() -> Self {
        Self(None)
    }

    /// An endpoint throttled a call made for this step.
    pub fn throttled(&self) {
        if let Some(limit) = &self.0 {
            limit.throttled();
        }
    }

    /// Runs `future` so that [`report_throttled`] inside it reaches this signal: the step's
    /// own call, and any work it spawns.
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        CURRENT.scope(self.clone(), future).await
    }

    /// [`Throttle::scope`] for a future handed to `tokio::spawn`.
    pub fn scope_owned<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

/// A call made for the current step was throttled and retried on the spot: tells the step's
/// limit. Does nothing outside [`Throttle::scope`].
pub fn report_throttled() {
    let _ = CURRENT.try_with(Throttle::throttled);
}

/// At most one call per interval, across every task that shares it.
#[derive(Debug)]
pub struct Rate {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Rate {
    /// `per_second` calls a second at most; `None` for a rate that is not positive and finite.
    pub fn per_second(per_second: f64) -> Option<Self> {
        (per_second > 0.0 && per_second.is_finite()).then(|| Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(Instant::now()),
        })
    }

    /// Waits for this call's turn.
    pub async fn wait(&self) {
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttling_halves_the_limit_and_successes_add_one_back_per_round() {
        let limit = AdaptiveLimit::new(16);
        limit.throttled();
        assert_eq!(limit.report().now, 8);
        // The echo of the same overload does not cut again.
        limit.throttled();
        assert_eq!(limit.report().now, 8);
        tokio::time::sleep(COOL_DOWN).await;
        limit.throttled();
        assert_eq!(limit.report().now, 4);
        // About `limit` successes raise it by one (each adds 1/limit).
        for _ in 0..5 {
            limit.succeeded();
        }
        assert_eq!(limit.report().now, 5);
        for _ in 0..200 {
            limit.succeeded();
        }
        let report = limit.report();
        assert_eq!(
            (report.now, report.lowest, report.max, report.throttled),
            (16, 4, 16, 3)
        );
    }

    #[tokio::test]
    async fn the_limit_never_drops_below_one() {
        let limit = AdaptiveLimit::new(2);
        for _ in 0..3 {
            limit.throttled();
            tokio::time::sleep(COOL_DOWN).await;
        }
        assert_eq!(limit.report().now, 1);
        assert_eq!(limit.report().lowest, 1);
    }

    #[tokio::test]
    async fn permits_wait_for_a_free_slot_under_the_current_limit() {
        let limit = Arc::new(AdaptiveLimit::new(4));
        limit.throttled(); // 2
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let waiting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third call waits at limit 2");
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a freed slot lets the waiting call start")
            .unwrap();
    }

    #[tokio::test]
    async fn throttling_reported_inside_a_scope_reaches_its_limit() {
        let limit = Arc::new(AdaptiveLimit::new(8));
        let throttle = Throttle::of(Some(Arc::clone(&limit)));
        throttle.scope(async { report_throttled() }).await;
        report_throttled(); // outside: nobody to tell, no panic
        assert_eq!(limit.report().throttled, 1);
        assert_eq!(limit.report().now, 4);
    }

    #[tokio::test]
    async fn a_spawned_task_reports_only_under_its_steps_scope() {
        let limit = Arc::new(AdaptiveLimit::new(8));
        let throttle = Throttle::of(Some(Arc::clone(&limit)));
        throttle
            .scope(async {
                // A bare spawn loses the step's signal (task-locals do not cross spawn) ...
                tokio::spawn(async { report_throttled() }).await.unwrap();
                assert_eq!(limit.report().throttled, 0);
                // ... the scoped one keeps it.
                tokio::spawn(throttle.clone().scope_owned(async { report_throttled() }))
                    .await
                    .unwrap();
            })
            .await;
        assert_eq!(limit.report().throttled, 1);
    }

    #[tokio::test]
    async fn the_rate_spaces_calls() {
        let rate = Rate::per_second(10.0).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            rate.wait().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        assert!(Rate::per_second(0.0).is_none());
        assert!(Rate::per_second(f64::NAN).is_none());
    }
}
