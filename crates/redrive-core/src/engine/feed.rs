//! Feeding the slots: the starter takes runnable items from the state and records their
//! starts in groups; the run loop gives each started item a free slot.
//!
//! An item's start is committed before its first step runs, as every transition is. Waiting
//! for that commit when a slot frees was most of a short item's time (an `exists` over
//! 20,000 items: 0.69 s at 16 in flight, 0.35 s without the wait). So while items hold their
//! slots briefly (under [`SHORT`] on average), the starter records up to one slot's worth of
//! further starts ahead of free slots ([`Credits`]), and a slot that frees takes an item whose
//! start is already committed. Items that hold their slots longer are started only when a
//! slot is about to free, so a recorded start is never early by more than about [`SHORT`].
//!
//! An item started ahead that never got a slot (the run stopped or reached `--limit`) is put
//! back to `pending` with its attempt not counted ([`Transition::Unstarted`]); a crash leaves
//! it `running`, and the next run takes it like any item that was running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::item::begin;
use super::{EngineError, LOADING, PAGE, Shared};
use crate::item::StoredItem;
use crate::state::{StateError, Transition};

/// Items that hold their slots this long or less, on average, have their starts recorded
/// ahead of free slots.
const SHORT: Duration = Duration::from_millis(10);
/// Items that hold their slots longer than this, on average, are started only when a slot is
/// about to free (between the two: as before, so the mode does not flap).
const LONG: Duration = Duration::from_millis(20);

/// Starts recorded and not yet done with their slots, at most: one per slot, plus one per
/// slot ahead while items are short. Each started item holds a credit until it frees its slot.
pub(super) struct Credits {
    semaphore: Arc<Semaphore>,
    /// Credits added while items are short (the slots; 0: never ahead).
    ahead: usize,
    /// The `ahead` credits are given.
    extra: AtomicBool,
    /// Credits still to take back since the items became long (taken as they are returned).
    owed: AtomicUsize,
    /// How long an item holds its slot, on average (µs; `u64::MAX`: not known yet).
    hold_us: AtomicU64,
    /// One change of mode at a time.
    switching: std::sync::Mutex<()>,
}

impl Credits {
    /// Credits for `slots` slots; `ahead` further starts may be recorded while items are short.
    pub(super) fn new(slots: usize, ahead: usize) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(slots.max(1))),
            ahead,
            extra: AtomicBool::new(false),
            owed: AtomicUsize::new(0),
            hold_us: AtomicU64::new(u64::MAX),
            switching: std::sync::Mutex::new(()),
        })
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).acquire_owned().await.ok()
    }

    fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }

    /// Notes that an item held its slot for `held`, and starts (or stops) recording starts
    /// ahead when the average crosses [`SHORT`] (or [`LONG`]).
    fn held(&self, held: Duration) {
        let sample = u64::try_from(held.as_micros()).unwrap_or(u64::MAX / 2);
        let before = self.hold_us.load(Ordering::Relaxed);
        let average = if before == u64::MAX {
            sample
        } else {
            // Racy between items, which is fine for an average: an eighth of each sample.
            before - before / 8 + sample / 8
        };
        self.hold_us.store(average, Ordering::Relaxed);
        if self.ahead == 0 {
            return;
        }
        let owed = self.owed.load(Ordering::Relaxed);
        if owed > 0 {
            let taken = self.semaphore.forget_permits(owed);
            self.owed.fetch_sub(taken, Ordering::Relaxed);
        }
        let extra = self.extra.load(Ordering::Relaxed);
        let short = average <= SHORT.as_micros() as u64;
        let long = average > LONG.as_micros() as u64;
        let switch = (short && !extra) || (long && extra);
        if !switch {
            return;
        }
        let Ok(_switching) = self.switching.lock() else {
            return;
        };
        if short && !self.extra.load(Ordering::Relaxed) {
            self.semaphore.add_permits(self.ahead);
            self.extra.store(true, Ordering::Relaxed);
        } else if long && self.extra.load(Ordering::Relaxed) {
            let taken = self.semaphore.forget_permits(self.ahead);
            self.owed.fetch_add(self.ahead - taken, Ordering::Relaxed);
            self.extra.store(false, Ordering::Relaxed);
        }
    }
}

/// An item's place among those in flight: given back when its task ends, or earlier, once
/// its last transition is queued (it makes no further side effect), so the next item's start
/// can share that transition's commit instead of waiting for one of its own.
pub(super) struct Slot(std::sync::Mutex<Option<Held>>);

struct Held {
    _permit: OwnedSemaphorePermit,
    /// The item's start credit, and since when it holds the slot.
    credit: Option<(OwnedSemaphorePermit, Instant, Arc<Credits>)>,
}

impl Slot {
    /// A place among a parent's children in flight.
    pub(super) fn new(permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(Some(Held {
            _permit: permit,
            credit: None,
        }))))
    }

    /// A top-level item's place, with the credit its start took.
    fn started(
        permit: OwnedSemaphorePermit,
        credit: OwnedSemaphorePermit,
        credits: Arc<Credits>,
    ) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(Some(Held {
            _permit: permit,
            credit: Some((credit, Instant::now(), credits)),
        }))))
    }

    /// Gives the place back (again: nothing).
    pub(super) fn free(&self) {
        let held = self.0.lock().ok().and_then(|mut held| held.take());
        if let Some(Held {
            credit: Some((credit, since, credits)),
            ..
        }) = held
        {
            credits.held(since.elapsed());
            drop(credit);
        }
    }
}

/// How a started item goes on.
pub(super) enum First {
    /// Its start at this step is recorded.
    Step(usize),
    /// Every step already ran: it is recorded done when it runs.
    AllRan,
    /// A parent of `[expand]`: it records its own start.
    Parent,
}

/// An item the starter took: its start recorded (or why not), waiting for a slot.
pub(super) struct Ready {
    pub(super) item: StoredItem,
    pub(super) first: Result<First, EngineError>,
    credit: OwnedSemaphorePermit,
}

impl Ready {
    /// The item, how it goes on, and its slot (given `permit`; its credit goes with it).
    pub(super) fn into_slot(
        self,
        permit: OwnedSemaphorePermit,
        credits: &Arc<Credits>,
    ) -> (StoredItem, Result<First, EngineError>, Arc<Slot>) {
        let slot = Slot::started(permit, self.credit, Arc::clone(credits));
        (self.item, self.first, slot)
    }
}

/// Returns once the run loop says stop (or is gone).
async fn told_to_stop(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// A group of items whose starts are being recorded together, as the run loop receives it.
pub(super) type Group = tokio::task::JoinHandle<Vec<Ready>>;

/// What the starter reads and tells.
pub(super) struct Starter {
    pub(super) shared: Arc<Shared>,
    pub(super) credits: Arc<Credits>,
    pub(super) loaded: Arc<Notify>,
    pub(super) loader_end: Arc<AtomicU8>,
    pub(super) ready: mpsc::UnboundedSender<Group>,
    pub(super) stop: watch::Receiver<bool>,
}

impl Starter {
    /// Takes runnable items from the state in id order, records their starts in groups as
    /// credits allow, and hands them to the run loop; ends when nothing is left, at
    /// `--limit`, when the run halts, or when told to stop.
    pub(super) async fn run(mut self) -> Result<(), EngineError> {
        let shared = Arc::clone(&self.shared);
        let mut cursor = 0;
        let mut taken = 0u64;
        loop {
            if self.stopping() {
                return Ok(());
            }
            let loader_was = self.loader_end.load(Ordering::SeqCst);
            let page = shared.state.claim(cursor, PAGE).await?;
            if page.is_empty() {
                if loader_was != LOADING && !shared.state.others_busy().await? {
                    // Complete: nothing is left. Stopped early (an error, or `--limit`
                    // reached elsewhere): its error is reported by the run.
                    return Ok(());
                }
                tokio::select! {
                    _ = self.loaded.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = told_to_stop(&mut self.stop) => {}
                }
                continue;
            }
            // Large fields left out of the state (an SQL row's XML) are read a few items at
            // a time, just before the items start: memory stays at (in flight + ahead +
            // chunk) rows.
            let mut page = page.into_iter();
            let chunk = shared.options.concurrency.clamp(16, PAGE);
            loop {
                let mut items: Vec<StoredItem> = page.by_ref().take(chunk).collect();
                if items.is_empty() {
                    break;
                }
                shared.pipeline.source.hydrate(&mut items).await?;
                let mut items = items.into_iter().peekable();
                while items.peek().is_some() {
                    let room = |taken: u64| shared.options.limit.is_none_or(|l| taken < l);
                    if !room(taken) {
                        return Ok(());
                    }
                    let credit = tokio::select! {
                        credit = self.credits.acquire() => credit,
                        _ = told_to_stop(&mut self.stop) => None,
                    };
                    let Some(credit) = credit else {
                        return Ok(());
                    };
                    if self.stopping() {
                        return Ok(());
                    }
                    // The items that find a credit now start together: one commit.
                    let mut group = Vec::new();
                    let mut credit = Some(credit);
                    while let Some(c) = credit.take().or_else(|| self.credits.try_acquire()) {
                        let Some(item) = items.next() else { break };
                        cursor = item.id;
                        group.push((item, c));
                        if !room(taken + group.len() as u64) || items.peek().is_none() {
                            break;
                        }
                    }
                    taken += group.len() as u64;
                    // The next group need not wait for this one's commit; the run loop takes
                    // the groups in order.
                    let group = tokio::spawn(start(Arc::clone(&self.shared), group));
                    if self.ready.send(group).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.shared.halt.load(Ordering::SeqCst)
    }
}

/// Records the starts of a group of items together (one commit) and hands them over.
async fn start(shared: Arc<Shared>, group: Vec<(StoredItem, OwnedSemaphorePermit)>) -> Vec<Ready> {
    let shared = &shared;
    if shared.pipeline.expand.is_some() {
        return group
            .into_iter()
            .map(|(item, credit)| Ready {
                item,
                first: Ok(First::Parent),
                credit,
            })
            .collect();
    }
    let mut begun = Vec::with_capacity(group.len());
    let mut starts = Vec::with_capacity(group.len());
    for (item, credit) in group {
        let first = match begin(shared, &item).await {
            Ok(Some((first, start))) => {
                starts.push(start);
                Ok(First::Step(first))
            }
            Ok(None) => Ok(First::AllRan),
            Err(error) => Err(error),
        };
        begun.push((item, credit, first));
    }
    let mut recorded = shared.state.record_all(starts).await.into_iter();
    let mut ready = Vec::with_capacity(begun.len());
    for (item, credit, first) in begun {
        let first = match first {
            Ok(First::Step(first)) => match recorded.next() {
                Some(Ok(())) => Ok(First::Step(first)),
                Some(Err(error)) => Err(EngineError::State(error)),
                None => Err(EngineError::State(StateError::Backend {
                    location: String::new(),
                    message: "a start was not answered".to_owned(),
                })),
            },
            other => other,
        };
        ready.push(Ready {
            item,
            first,
            credit,
        });
    }
    ready
}

/// Puts back items whose start was recorded ahead and that never got a slot: `pending`, their
/// attempt not counted.
pub(super) async fn unstart(shared: &Shared, left: Vec<Ready>) -> Result<(), StateError> {
    let back: Vec<Transition> = left
        .iter()
        .filter(|ready| matches!(ready.first, Ok(First::Step(_))))
        .map(|ready| Transition::Unstarted { id: ready.item.id })
        .collect();
    if back.is_empty() {
        return Ok(());
    }
    tracing::debug!(
        items = back.len(),
        "Putting back items started ahead of a slot."
    );
    shared
        .state
        .record_all(back)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn credits_go_ahead_while_items_are_short_and_come_back_when_they_are_long() {
        let credits = Credits::new(4, 4);
        assert_eq!(
            credits.semaphore.available_permits(),
            4,
            "nothing known yet"
        );
        credits.held(Duration::from_millis(1));
        assert_eq!(credits.semaphore.available_permits(), 8, "short: 4 ahead");
        // Six credits out (items running or started) when the items turn long: the two free
        // are taken back at once, the other two owed as credits are returned.
        let out: Vec<_> = (0..6).map(|_| credits.try_acquire().unwrap()).collect();
        for _ in 0..64 {
            credits.held(Duration::from_millis(100));
        }
        assert_eq!(credits.semaphore.available_permits(), 0);
        drop(out);
        credits.held(Duration::from_millis(100));
        assert_eq!(credits.semaphore.available_permits(), 4, "long: one a slot");
        // Between the two thresholds the mode stays as it is.
        for _ in 0..64 {
            credits.held(Duration::from_millis(15));
        }
        assert_eq!(credits.semaphore.available_permits(), 4);
    }

    #[test]
    fn credits_never_go_ahead_for_parents() {
        let credits = Credits::new(4, 0);
        credits.held(Duration::from_micros(10));
        assert_eq!(credits.semaphore.available_permits(), 4);
    }
}
