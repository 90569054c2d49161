//! Loading the source into the state: one process holds the loader role and streams the
//! items in batches; the others wait for it, or take the role over when it dies.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Duplicates, EngineError, LOAD_BATCH, Shared};
use crate::item::{Fields, NewItem};
use crate::state::TargetClaim;

/// How often a process without the loader role looks whether the source is complete.
const LOADER_POLL: Duration = Duration::from_millis(250);

/// How long a row may wait in a batch for the rows after it while the source makes the loader
/// wait.
const HAND_OVER: Duration = Duration::from_millis(20);

/// `Ok(true)` once this process holds the loader role; `Ok(false)` when another process
/// completed the source first.
pub(super) async fn load_or_wait(
    shared: &Shared,
    loaded: &Notify,
    mut stop: watch::Receiver<bool>,
) -> Result<bool, EngineError> {
    loop {
        if shared.state.take_loader_role().await? {
            return Ok(true);
        }
        if shared.state.source_complete().await? {
            return Ok(false);
        }
        // Items the loader adds meanwhile are claimed by the runner's polling.
        loaded.notify_waiters();
        tokio::select! {
            _ = tokio::time::sleep(LOADER_POLL) => {}
            _ = stop.changed() => return Err(EngineError::Stopped),
        }
    }
}

pub(super) async fn load(
    shared: &Shared,
    loaded: &Notify,
    mut stop: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    // A source that can seek resumes after the last item recorded; others are read again.
    let source = &shared.pipeline.source;
    // Taken before reading: a source that changes while it is read is read again next time.
    let revision = source.revision();
    let last = shared.state.last_item().await?;
    // A load that stopped on a key conflict reads the source from its start again, so the
    // conflicting row, recorded before the rows after it, is met again (never lost in silence).
    let again = shared.state.source_revision().await?.as_deref() == Some(READ_AGAIN);
    let first = last.is_none();
    let resumed = match last {
        Some(last) if !again => source.items_after(&last.fields),
        _ => None,
    };
    // A first load, or one that continues after the last recorded row, sees each row once: a
    // row the state ignores has the key of an earlier row. Repeated exactly it is counted; with
    // other fields the plan's `key` does not tell the two apart.
    let fresh = first || resumed.is_some();
    let check = Check {
        repeats: fresh && !again,
        conflicts: fresh || again,
    };
    let mut items = resumed.unwrap_or_else(|| source.items(&Fields::new()));
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    // When the batch got its first row.
    let mut since: Option<Instant> = None;
    let result = loop {
        // Hand over what we have when the source makes us wait longer than the batch may sit
        // (a slow listing's next page), so the runner never idles while items sit in this
        // batch. A source that makes us wait a little for every row (a local folder's listing
        // stats each file) still fills batches: handed over at each wait, it was a load
        // transaction, and a target claim, a row.
        let next = match items.next().now_or_never() {
            Some(next) => next,
            None => {
                let waited = match since {
                    Some(since) => tokio::select! {
                        next = items.next() => Some(next),
                        () = tokio::time::sleep_until(since + HAND_OVER) => None,
                        _ = stop.changed() => break Err(EngineError::Stopped),
                    },
                    None => None,
                };
                match waited {
                    Some(next) => next,
                    None => {
                        flush(shared, loaded, &mut batch, check).await?;
                        since = None;
                        tokio::select! {
                            next = items.next() => next,
                            _ = stop.changed() => break Err(EngineError::Stopped),
                        }
                    }
                }
            }
        };
        let fields = match next {
            None => break Ok(()),
            Some(Err(error)) => break Err(EngineError::Source(error)),
            Some(Ok(fields)) => fields,
        };
        match shared.pipeline.key.render(&fields) {
            Ok(key) => batch.push(NewItem { key, fields }),
            Err(error) => break Err(EngineError::Key(error)),
        }
        since = since.or_else(|| Some(Instant::now()));
        if batch.len() >= LOAD_BATCH {
            flush(shared, loaded, &mut batch, check).await?;
            since = None;
        }
    };
    // The items read before an error are recorded (and run): fixing the input resumes.
    flush(shared, loaded, &mut batch, check).await?;
    result?;
    shared.state.set_source_complete().await?;
    if let Some(revision) = revision {
        shared.state.set_source_revision(revision).await?;
    }
    Ok(())
}

/// The source revision recorded when a load stopped on a key conflict: the next load reads
/// the source from its start (a completed load records the source's own revision over it).
const READ_AGAIN: &str = "!read-again: a load stopped on a key conflict";

/// What a load checks of the rows the state ignores (their key was known).
#[derive(Clone, Copy, Debug)]
pub(super) struct Check {
    /// Count rows repeated exactly (a load that sees each row once).
    pub(super) repeats: bool,
    /// Look for rows with a known key and other fields.
    pub(super) conflicts: bool,
}

pub(super) async fn flush(
    shared: &Shared,
    loaded: &Notify,
    batch: &mut Vec<NewItem>,
    check: Check,
) -> Result<(), EngineError> {
    if batch.is_empty() {
        return Ok(());
    }
    let rows = batch.len() as u64;
    claim_targets(shared, batch, None).await?;
    let inserted = shared.state.insert_reporting(std::mem::take(batch)).await?;
    let added = inserted.added;
    if check.conflicts && added < rows {
        repeated(shared, rows - added, inserted.candidates, check).await?;
    }
    shared.reporter.loaded(added);
    loaded.notify_waiters();
    Ok(())
}

/// Stops a load on rows the plan cannot tell apart: no item is started from here on, and
/// (`read_again`) the next load reads the source from its start, so it meets them again.
async fn halt(shared: &Shared, read_again: bool) -> Result<(), EngineError> {
    shared.halt.store(true, std::sync::atomic::Ordering::SeqCst);
    if read_again {
        shared
            .state
            .set_source_revision(READ_AGAIN.to_owned())
            .await?;
    }
    Ok(())
}

/// Claims the target each row's steps write, before the rows are recorded (so no item whose
/// target another item holds is ever started): two keys that render one object stop the load
/// and the run, as a key conflict does, and the next load meets them again.
pub(super) async fn claim_targets(
    shared: &Shared,
    batch: &[NewItem],
    parent: Option<&str>,
) -> Result<(), EngineError> {
    // Under `[expand]` the steps run for the children, whose targets are claimed as they are
    // listed (named `parent/child`), not for the top-level items.
    if shared.pipeline.expand.is_some() != parent.is_some() {
        return Ok(());
    }
    let mut claims = Vec::new();
    for (index, step) in shared.pipeline.steps.iter().enumerate() {
        let Some(target) = step.target.as_ref().filter(|t| !t.bound) else {
            continue;
        };
        // A row whose target does not render fails at its step, saying why.
        claims.extend(batch.iter().filter_map(|row| {
            Some(TargetClaim {
                step: index,
                target: target.of(&row.fields)?,
                key: claimant(parent, &row.key),
            })
        }));
    }
    if claims.is_empty() {
        return Ok(());
    }
    let taken = shared.state.claim_targets(claims).await?;
    let Some((claim, first)) = taken.into_iter().next() else {
        return Ok(());
    };
    // A child's parent is listed again by the next run anyway (it is not marked expanded).
    halt(shared, parent.is_none()).await?;
    Err(same_target(shared, &claim, &first))
}

/// The key an item claims its targets under: a child's is `parent/child`.
pub(super) fn claimant(parent: Option<&str>, key: &str) -> String {
    match parent {
        Some(parent) => format!("{parent}/{key}"),
        None => key.to_owned(),
    }
}

/// `claim`'s target is held by `first`: the error that names both, secrets masked.
pub(super) fn same_target(shared: &Shared, claim: &TargetClaim, first: &str) -> EngineError {
    let masked = |text: &str| crate::secrets::redact(text).into_owned();
    EngineError::SameTarget {
        step: shared
            .pipeline
            .steps
            .get(claim.step)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        target: masked(&claim.target),
        first: masked(first),
        again: masked(&claim.key),
    }
}

/// A first load whose batch had `ignored` rows with a key already recorded: a row that repeats
/// the recorded one exactly is counted (its work runs once); one with other fields is work the
/// plan's `key` cannot tell apart, and stops the load and the run before it goes further.
async fn repeated(
    shared: &Shared,
    ignored: u64,
    candidates: Vec<NewItem>,
    check: Check,
) -> Result<(), EngineError> {
    use std::sync::atomic::Ordering;
    if candidates.is_empty() && check.repeats {
        // The store cannot say which rows: every one counts as a key conflict.
        shared.duplicate_keys.fetch_add(ignored, Ordering::Relaxed);
        return Ok(());
    }
    let keys: Vec<String> = candidates.iter().map(|item| item.key.clone()).collect();
    let stored: std::collections::HashMap<String, Fields> =
        shared.state.fields_of(keys).await?.into_iter().collect();
    let conflict = candidates
        .iter()
        .filter(|row| {
            stored
                .get(&row.key)
                .is_some_and(|first| *first != row.fields)
        })
        .collect::<Vec<_>>();
    let conflicts = conflict.len() as u64;
    if check.repeats {
        shared
            .repeated_rows
            .fetch_add(ignored.saturating_sub(conflicts), Ordering::Relaxed);
    }
    if shared.pipeline.duplicates == Duplicates::First {
        shared
            .dropped_duplicates
            .fetch_add(conflicts, Ordering::Relaxed);
        return Ok(());
    }
    shared
        .duplicate_keys
        .fetch_add(conflicts, Ordering::Relaxed);
    match conflict.first() {
        Some(row) => {
            halt(shared, true).await?;
            let first = stored.get(&row.key);
            let source = &shared.pipeline.source;
            let at = |place: Option<String>| place.map(|p| format!(" ({p})")).unwrap_or_default();
            let first_at = match first {
                Some(first) => at(source.place_of(first).await),
                None => String::new(),
            };
            let again_at = at(source.place_of(&row.fields).await);
            Err(EngineError::DuplicateKey {
                key: crate::secrets::redact(&row.key).into_owned(),
                first: shown(first) + &crate::secrets::redact(&first_at),
                again: shown(Some(&row.fields)) + &crate::secrets::redact(&again_at),
            })
        }
        None => Ok(()),
    }
}

/// `{JobId=J1, WorkItemId=A}`, secrets masked, long values cut.
fn shown(fields: Option<&Fields>) -> String {
    let Some(fields) = fields else {
        return "{}".to_owned();
    };
    let parts: Vec<String> = fields
        .iter()
        .map(|(name, value)| {
            let value: String = if value.chars().count() > 60 {
                value.chars().take(60).chain("…".chars()).collect()
            } else {
                value.clone()
            };
            format!("{name}={value}")
        })
        .collect();
    crate::secrets::redact(&format!("{{{}}}", parts.join(", "))).into_owned()
}
