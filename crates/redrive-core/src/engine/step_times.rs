//! How long each step takes, gathered while a run goes and added to the state every few
//! seconds and at the end ([`StateStore::add_step_times`]), for `redrive report`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::state::{StateStore, StepTimes};

/// How often the durations gathered are added to the state.
pub(super) const EVERY: Duration = Duration::from_secs(5);

/// The durations of the steps ended since they were last taken, one entry per step.
#[derive(Debug)]
pub(super) struct Gathered {
    steps: Mutex<Vec<StepTimes>>,
}

impl Gathered {
    /// Nothing gathered yet for these steps (their names, in plan order).
    pub(super) fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        Gathered {
            steps: Mutex::new(
                names
                    .enumerate()
                    .map(|(i, name)| StepTimes::new(i, name))
                    .collect(),
            ),
        }
    }

    /// Step `step` ended after `seconds`.
    pub(super) fn note(&self, step: usize, seconds: f64) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(times) = steps.get_mut(step) {
            times.add(seconds);
        }
    }

    /// What was gathered since the last call (steps that ended at least once), reset to none.
    pub(super) fn take(&self) -> Vec<StepTimes> {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps
            .iter_mut()
            .filter(|times| times.total() > 0)
            .map(|times| {
                let fresh = StepTimes::new(times.step, &times.name);
                std::mem::replace(times, fresh)
            })
            .collect()
    }

    /// Adds what was gathered to the state; a store that fails here is said at `-v` (these
    /// are statistics: the items' own state is recorded on its own path).
    pub(super) async fn add_to(&self, state: &dyn StateStore) {
        let times = self.take();
        if times.is_empty() {
            return;
        }
        if let Err(error) = state.add_step_times(times).await {
            tracing::info!(%error, "Could not add the steps' durations to the state.");
        }
    }
}

/// Adds the durations gathered to the state every [`EVERY`] while a run goes; stops when
/// finished or dropped (a run that ends on an error).
pub(super) struct Adding {
    gathered: Arc<Gathered>,
    state: Arc<dyn StateStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Adding {
    pub(super) fn start(gathered: Arc<Gathered>, state: Arc<dyn StateStore>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let (gathered, state) = (Arc::clone(&gathered), Arc::clone(&state));
            tokio::spawn(async move {
                let first = tokio::time::Instant::now() + EVERY;
                let mut every = tokio::time::interval_at(first, EVERY);
                loop {
                    tokio::select! {
                        _ = every.tick() => gathered.add_to(state.as_ref()).await,
                        _ = &mut stopped => return,
                    }
                }
            })
        };
        Adding {
            gathered,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Stops adding every few seconds (an addition under way is let finish) and adds what is
    /// left.
    pub(super) async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.gathered.add_to(self.state.as_ref()).await;
    }
}

impl Drop for Adding {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_counted_per_step_and_taken_once() {
        let gathered = Gathered::new(["copy", "notify"].into_iter());
        gathered.note(0, 0.005);
        gathered.note(0, 2.0);
        gathered.note(0, 2.5);
        let taken = gathered.take();
        assert_eq!(taken.len(), 1, "a step that never ended is left out");
        assert_eq!(taken[0].name, "copy");
        assert_eq!(taken[0].counts, vec![1, 0, 0, 2, 0, 0, 0]);
        assert!((taken[0].seconds - 4.505).abs() < 1e-9);
        assert!(gathered.take().is_empty(), "taken once");
        gathered.note(1, 700.0);
        assert_eq!(gathered.take()[0].counts, vec![0, 0, 0, 0, 0, 0, 1]);
    }
}
