//! A [`StateStore`] in memory: the contract without a database, for the engine's own tests
//! (and for anything that wants a throwaway state). Nothing survives the process; it passes
//! `redrive_state::conformance` like the durable stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;

use crate::item::{Fields, ItemId, NewItem, Status, StoredItem};
use crate::state::{
    ChildCounts, Inserted, JobInfo, Requeue, StateError, StateStore, Summary, TargetClaim,
    Transition,
};
use crate::step::Produced;

const LOCATION: &str = "memory";

/// One item as the store keeps it: what [`StoredItem`] shows, and its bookkeeping.
#[derive(Clone, Debug)]
struct Row {
    item: StoredItem,
    step_name: Option<String>,
    started: Option<Instant>,
    finished: Option<Instant>,
    outputs: BTreeMap<usize, Produced>,
}

#[derive(Debug, Default)]
struct Tables {
    job: Option<JobInfo>,
    source_complete: bool,
    source_revision: Option<String>,
    items: BTreeMap<ItemId, Row>,
    /// (parent, key) → id: keys are unique among a parent's children, or among top-level items.
    keys: HashMap<(Option<ItemId>, String), ItemId>,
    /// (step, target) → the key that claimed it first.
    targets: HashMap<(usize, String), String>,
    next_id: ItemId,
}

impl Tables {
    fn add(&mut self, parent: Option<ItemId>, item: NewItem) -> Option<NewItem> {
        let slot = (parent, item.key.clone());
        if self.keys.contains_key(&slot) {
            return Some(item);
        }
        self.next_id += 1;
        let id = self.next_id;
        let parent_key = parent.and_then(|p| self.items.get(&p).map(|r| r.item.key.clone()));
        self.keys.insert(slot, id);
        self.items.insert(
            id,
            Row {
                item: StoredItem {
                    id,
                    parent,
                    parent_key,
                    expanded: false,
                    key: item.key,
                    fields: item.fields,
                    step: 0,
                    status: Status::Pending,
                    attempts: 0,
                    error: None,
                    bytes: 0,
                },
                step_name: None,
                started: None,
                finished: None,
                outputs: BTreeMap::new(),
            },
        );
        None
    }

    fn top(&self, key: &str) -> Option<ItemId> {
        self.keys.get(&(None, key.to_owned())).copied()
    }

    fn children(&self, parent: ItemId) -> impl Iterator<Item = &Row> {
        // Children are added after their parent: their ids are greater.
        self.items
            .range(parent + 1..)
            .map(|(_, row)| row)
            .filter(move |row| row.item.parent == Some(parent))
    }

    fn child_counts(&self, parent: ItemId) -> ChildCounts {
        let mut counts = ChildCounts::default();
        for row in self.children(parent) {
            counts.total += 1;
            match row.item.status {
                Status::Done => counts.done += 1,
                Status::Skipped => counts.skipped += 1,
                Status::Failed => counts.failed += 1,
                _ => {}
            }
        }
        counts
    }

    fn runnable(&self, parent: Option<ItemId>, after: ItemId, limit: usize) -> Vec<StoredItem> {
        self.items
            .range(after + 1..)
            .map(|(_, row)| &row.item)
            .filter(|item| item.parent == parent && runnable(item))
            .take(limit)
            .cloned()
            .collect()
    }
}

fn runnable(item: &StoredItem) -> bool {
    match item.status {
        Status::Pending | Status::Running => true,
        Status::Skipped => item.error.as_deref() == Some("no input"),
        _ => false,
    }
}

/// Back to the first step, as `reset` does.
fn restart(row: &mut Row) {
    row.item.status = Status::Pending;
    row.item.error = None;
    row.item.step = 0;
    row.item.attempts = 0;
    row.item.bytes = 0;
    row.step_name = None;
    row.finished = None;
}

/// The state of one run, held in memory.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    tables: Mutex<Tables>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> Result<MutexGuard<'_, Tables>, StateError> {
        self.tables.lock().map_err(|_| StateError::Backend {
            location: LOCATION.to_owned(),
            message: "a writer panicked while it held the state".to_owned(),
        })
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn claim_targets(
        &self,
        claims: Vec<TargetClaim>,
    ) -> Result<Vec<(TargetClaim, String)>, StateError> {
        let mut tables = self.tables()?;
        let mut taken = Vec::new();
        for claim in claims {
            let owner = tables
                .targets
                .entry((claim.step, claim.target.clone()))
                .or_insert_with(|| claim.key.clone());
            if *owner != claim.key {
                let owner = owner.clone();
                taken.push((claim, owner));
            }
        }
        Ok(taken)
    }

    async fn begin(&self, job: &JobInfo) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        match &tables.job {
            None => tables.job = Some(job.clone()),
            Some(stored) if stored.name != job.name => {
                return Err(StateError::OtherJob {
                    location: LOCATION.to_owned(),
                    stored: stored.name.clone(),
                    current: job.name.clone(),
                });
            }
            Some(stored) if stored.fingerprint == job.fingerprint => {}
            Some(stored) if job.earlier_fingerprints.contains(&stored.fingerprint) => {
                tables.job = Some(job.clone());
            }
            Some(stored) => {
                return Err(StateError::PlanChanged {
                    location: LOCATION.to_owned(),
                    stored: stored.fingerprint.clone(),
                    current: job.fingerprint.clone(),
                });
            }
        }
        Ok(())
    }

    async fn insert(&self, items: Vec<NewItem>) -> Result<u64, StateError> {
        Ok(self.insert_reporting(items).await?.added)
    }

    async fn insert_reporting(&self, items: Vec<NewItem>) -> Result<Inserted, StateError> {
        let mut tables = self.tables()?;
        let mut inserted = Inserted::default();
        for item in items {
            match tables.add(None, item) {
                Some(known) => inserted.candidates.push(known),
                None => inserted.added += 1,
            }
        }
        Ok(inserted)
    }

    async fn fields_of(&self, keys: Vec<String>) -> Result<Vec<(String, Fields)>, StateError> {
        let tables = self.tables()?;
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let id = tables.top(&key)?;
                let fields = tables.items.get(&id)?.item.fields.clone();
                Some((key, fields))
            })
            .collect())
    }

    async fn statuses_of(&self, keys: Vec<String>) -> Result<Vec<(String, Status)>, StateError> {
        let tables = self.tables()?;
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let id = tables.top(&key)?;
                let status = tables.items.get(&id)?.item.status;
                Some((key, status))
            })
            .collect())
    }

    async fn insert_children(
        &self,
        parent: ItemId,
        items: Vec<NewItem>,
    ) -> Result<u64, StateError> {
        let mut tables = self.tables()?;
        Ok(items
            .into_iter()
            .map(|item| u64::from(tables.add(Some(parent), item).is_none()))
            .sum())
    }

    async fn set_expanded(&self, parent: ItemId) -> Result<(), StateError> {
        if let Some(row) = self.tables()?.items.get_mut(&parent) {
            row.item.expanded = true;
        }
        Ok(())
    }

    async fn runnable_children(
        &self,
        parent: ItemId,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError> {
        Ok(self.tables()?.runnable(Some(parent), after, limit))
    }

    async fn outputs(&self, id: ItemId) -> Result<Vec<(usize, Produced)>, StateError> {
        Ok(self
            .tables()?
            .items
            .get(&id)
            .map(|row| {
                row.outputs
                    .iter()
                    .map(|(step, produced)| (*step, produced.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn child_counts(&self, parent: ItemId) -> Result<ChildCounts, StateError> {
        Ok(self.tables()?.child_counts(parent))
    }

    async fn set_source_complete(&self) -> Result<(), StateError> {
        self.tables()?.source_complete = true;
        Ok(())
    }

    async fn source_complete(&self) -> Result<bool, StateError> {
        Ok(self.tables()?.source_complete)
    }

    async fn source_revision(&self) -> Result<Option<String>, StateError> {
        Ok(self.tables()?.source_revision.clone())
    }

    async fn set_source_revision(&self, revision: String) -> Result<(), StateError> {
        self.tables()?.source_revision = Some(revision);
        Ok(())
    }

    async fn runnable(&self, after: ItemId, limit: usize) -> Result<Vec<StoredItem>, StateError> {
        Ok(self.tables()?.runnable(None, after, limit))
    }

    async fn last_item(&self) -> Result<Option<StoredItem>, StateError> {
        Ok(self
            .tables()?
            .items
            .values()
            .rev()
            .find(|row| row.item.parent.is_none())
            .map(|row| row.item.clone()))
    }

    async fn record(&self, transition: Transition) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let now = Instant::now();
        let id = match &transition {
            Transition::Started { id, .. }
            | Transition::Advanced { id, .. }
            | Transition::Finished { id, .. }
            | Transition::Released { id, .. }
            | Transition::Unstarted { id }
            | Transition::Failed { id, .. } => *id,
        };
        let Some(row) = tables.items.get_mut(&id) else {
            return Ok(());
        };
        match transition {
            Transition::Started {
                step, step_name, ..
            } => {
                row.item.status = Status::Running;
                row.item.step = step;
                row.item.attempts += 1;
                row.item.error = None;
                row.step_name = Some(step_name);
                row.started = Some(now);
            }
            Transition::Advanced {
                step,
                step_name,
                bytes,
                output,
                ..
            } => {
                if let Some(output) = output {
                    row.outputs.insert(step.saturating_sub(1), output);
                }
                row.item.step = step;
                row.item.bytes += bytes;
                row.step_name = Some(step_name);
            }
            Transition::Finished {
                status,
                bytes,
                reason,
                output,
                ..
            } => {
                if let Some(output) = output {
                    row.outputs.insert(row.item.step, output);
                }
                row.item.status = status;
                row.item.bytes += bytes;
                row.item.error = reason;
                row.finished = Some(now);
            }
            Transition::Unstarted { .. } => {
                row.item.status = Status::Pending;
                row.item.attempts = row.item.attempts.saturating_sub(1);
            }
            Transition::Released { error, .. } => {
                row.item.status = Status::Pending;
                row.item.error = Some(error);
            }
            Transition::Failed { error, .. } => {
                row.item.status = Status::Failed;
                row.item.error = Some(error);
                row.finished = Some(now);
            }
        }
        Ok(())
    }

    async fn requeue(&self, which: Requeue) -> Result<u64, StateError> {
        let mut tables = self.tables()?;
        let mut changed = 0;
        match which {
            Requeue::Failed => {
                for row in tables.items.values_mut() {
                    if row.item.status == Status::Failed {
                        row.item.status = Status::Pending;
                        row.item.error = None;
                        row.finished = None;
                        changed += 1;
                    }
                }
            }
            Requeue::Status(status) => {
                for row in tables.items.values_mut() {
                    if row.item.status == status {
                        restart(row);
                        changed += 1;
                    }
                }
            }
            Requeue::Keys(keys) => {
                for key in keys {
                    let Some(id) = tables.top(&key) else { continue };
                    // A reset work item redoes all its children (its listing is kept).
                    for row in tables.items.range_mut(id..).map(|(_, row)| row) {
                        if row.item.id == id || row.item.parent == Some(id) {
                            restart(row);
                        }
                    }
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    async fn skip(&self, keys: Vec<String>, reason: String) -> Result<u64, StateError> {
        let mut tables = self.tables()?;
        let mut changed = 0;
        for key in keys {
            let Some(id) = tables.top(&key) else { continue };
            if let Some(row) = tables.items.get_mut(&id) {
                row.item.status = Status::Skipped;
                row.item.error = Some(reason.clone());
                row.finished = Some(Instant::now());
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn items_with_status(
        &self,
        status: Status,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError> {
        Ok(self
            .tables()?
            .items
            .range(after + 1..)
            .map(|(_, row)| &row.item)
            .filter(|item| item.status == status && !(item.parent.is_none() && item.expanded))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn parents(
        &self,
        statuses: &[Status],
        limit: usize,
    ) -> Result<Vec<(StoredItem, ChildCounts)>, StateError> {
        let tables = self.tables()?;
        Ok(tables
            .items
            .values()
            .map(|row| &row.item)
            .filter(|item| {
                item.parent.is_none() && item.expanded && statuses.contains(&item.status)
            })
            .take(limit)
            .map(|item| (item.clone(), tables.child_counts(item.id)))
            .collect())
    }

    async fn summary(&self) -> Result<Summary, StateError> {
        let tables = self.tables()?;
        let mut top: BTreeMap<Status, u64> = BTreeMap::new();
        let mut children: BTreeMap<Status, u64> = BTreeMap::new();
        // (first step index, step name, status) → count.
        let mut by_step: BTreeMap<(String, Status), (usize, u64)> = BTreeMap::new();
        let mut summary = Summary {
            source_complete: tables.source_complete,
            ..Summary::default()
        };
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        for row in tables.items.values() {
            let item = &row.item;
            let counts = if item.parent.is_none() {
                &mut top
            } else {
                &mut children
            };
            *counts.entry(item.status).or_default() += 1;
            let unfinished = matches!(
                item.status,
                Status::Pending | Status::Running | Status::Failed
            );
            if unfinished && !(item.parent.is_none() && item.expanded) {
                let name = row.step_name.clone().unwrap_or_else(|| "-".to_owned());
                let entry = by_step.entry((name, item.status)).or_insert((item.step, 0));
                entry.0 = entry.0.min(item.step);
                entry.1 += 1;
            }
            if item.status == Status::Skipped && item.error.as_deref() == Some("no input") {
                summary.no_input += 1;
            }
            summary.bytes += item.bytes;
            first = match (first, row.started) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            last = last.max(row.finished);
        }
        summary.by_status = Status::ALL
            .iter()
            .map(|s| (*s, top.get(s).copied().unwrap_or(0)))
            .collect();
        summary.children_by_status = Status::ALL
            .iter()
            .map(|s| (*s, children.get(s).copied().unwrap_or(0)))
            .collect();
        let mut steps: Vec<_> = by_step.into_iter().collect();
        steps.sort_by(|a, b| (a.1.0, &a.0).cmp(&(b.1.0, &b.0)));
        summary.by_step = steps
            .into_iter()
            .map(|((name, status), (_, n))| (name, status, n))
            .collect();
        if let (Some(first), Some(last)) = (first, last) {
            summary.active_seconds = last.saturating_duration_since(first).as_secs_f64();
        }
        Ok(summary)
    }

    async fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }
}
