//! The PostgreSQL store's one writer: the transitions recorded while a transaction commits are
//! applied together in the next one, so a commit (a WAL flush on the server) serves a group of
//! items instead of one, as the SQLite writer does. Every write stays fenced row by row: a
//! transition for an item another worker took over changes nothing (its output row neither)
//! and is answered `LeaseLost`, without holding back the rest of its group. A group that fails
//! as a whole (a statement error aborts a PostgreSQL transaction) is applied again one
//! transition per transaction, so each is answered for itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redrive_core::state::{StateError, Transition};
use redrive_core::step::Produced;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tokio::sync::{mpsc, oneshot};

use crate::change::{Change, Dialect, Value};
use crate::lease::Worker;

/// Transitions applied in one transaction at most.
const GROUP: usize = 512;

/// A transition waiting for its commit.
pub(crate) struct Pending {
    pub(crate) transition: Transition,
    pub(crate) done: oneshot::Sender<Result<(), StateError>>,
}

/// Starts the writer of `pool` for `worker`; it ends when the sender is dropped.
pub(crate) fn start(
    pool: PgPool,
    worker: Arc<Worker>,
    location: String,
) -> mpsc::UnboundedSender<Pending> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(pool, worker, location, receiver));
    sender
}

async fn write_loop(
    pool: PgPool,
    worker: Arc<Worker>,
    location: String,
    mut receiver: mpsc::UnboundedReceiver<Pending>,
) {
    let failed = |e: &dyn std::fmt::Display| StateError::Backend {
        location: location.clone(),
        message: e.to_string(),
    };
    while let Some(first) = receiver.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match receiver.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let landed = match apply_group(&pool, &worker, &group).await {
            Ok(landed) => landed.into_iter().map(Ok).collect(),
            // Each on its own, so that one bad write fails only itself.
            Err(_) => {
                let mut each = Vec::with_capacity(group.len());
                for pending in &group {
                    each.push(apply_one(&pool, &worker, &pending.transition).await);
                }
                each
            }
        };
        for (pending, landed) in group.into_iter().zip(landed) {
            let id = item_of(&pending.transition);
            let answer = match landed {
                Ok(true) => {
                    settled(&worker, &pending.transition);
                    Ok(())
                }
                Ok(false) => {
                    worker.lost(id);
                    Err(StateError::LeaseLost { id })
                }
                Err(error) => Err(failed(&error)),
            };
            let _ = pending.done.send(answer);
        }
    }
}

/// The group in one transaction: whether each transition landed (`false`: fenced out).
async fn apply_group(
    pool: &PgPool,
    worker: &Worker,
    group: &[Pending],
) -> Result<Vec<bool>, sqlx::Error> {
    let started = std::time::Instant::now();
    let changes: Vec<Change<'_>> = group.iter().map(|p| Change::of(&p.transition)).collect();
    let mut landed = vec![false; group.len()];
    // A change that records an output goes on its own (its output row follows its update);
    // the others, one statement per kind of change: a round trip per transition was most of
    // a group's time.
    let mut alone = Vec::new();
    let mut kinds: Vec<Vec<usize>> = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        if change.output.is_some() {
            alone.push(i);
        } else if let Some(kind) = kinds.iter_mut().find(|k| {
            changes[k[0]].same_kind(change) && k.iter().all(|&j| changes[j].id != change.id)
        }) {
            kind.push(i);
        } else {
            kinds.push(vec![i]);
        }
    }
    let mut connection = pool.acquire().await?;
    if let ([], [kind]) = (alone.as_slice(), kinds.as_slice()) {
        // One statement is atomic on its own: no BEGIN and COMMIT round trips around it (with
        // few items in flight, most groups are one kind of transition).
        apply_kind(&mut *connection, worker, &changes, kind, &mut landed).await?;
        redrive_core::state::commits::committed(started, group.len());
        return Ok(landed);
    }
    let mut tx = connection.begin().await?;
    for i in alone {
        landed[i] = apply(&mut tx, worker, &group[i].transition).await?;
    }
    for kind in &kinds {
        apply_kind(&mut *tx, worker, &changes, kind, &mut landed).await?;
    }
    tx.commit().await?;
    redrive_core::state::commits::committed(started, group.len());
    Ok(landed)
}

/// The changes at `kind` (indexes into `changes`) in one statement; each one's answer into
/// `landed` at its index.
async fn apply_kind(
    executor: impl sqlx::PgExecutor<'_>,
    worker: &Worker,
    changes: &[Change<'_>],
    kind: &[usize],
    landed: &mut [bool],
) -> Result<(), sqlx::Error> {
    let of_kind: Vec<&Change<'_>> = kind.iter().map(|&i| &changes[i]).collect();
    for (&i, ok) in kind
        .iter()
        .zip(apply_many(executor, worker, &of_kind).await?)
    {
        landed[i] = ok;
    }
    Ok(())
}

/// Changes of one kind, without outputs, of distinct items, in one fenced statement
/// ([`Change::update_many`]): whether each landed (`false`: fenced out).
async fn apply_many(
    executor: impl sqlx::PgExecutor<'_>,
    worker: &Worker,
    changes: &[&Change<'_>],
) -> Result<Vec<bool>, sqlx::Error> {
    let Some(first) = changes.first() else {
        return Ok(Vec::new());
    };
    let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
    let epochs: Vec<Option<i64>> = ids.iter().map(|id| worker.epoch(*id)).collect();
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(first.update_many()))
        .bind(worker.id.clone())
        .bind(worker.lease_seconds())
        .bind(ids.clone())
        .bind(epochs.clone());
    let rows: Vec<Vec<&Value<'_>>> = changes.iter().map(|c| c.values().collect()).collect();
    for (column, value) in first.values().enumerate() {
        query = match value {
            Value::Int(_) => query.bind(
                rows.iter()
                    .map(|row| match row.get(column).copied() {
                        Some(Value::Int(n)) => *n,
                        _ => 0,
                    })
                    .collect::<Vec<i64>>(),
            ),
            Value::Text(_) => query.bind(
                rows.iter()
                    .map(|row| match row.get(column).copied() {
                        Some(Value::Text(text)) => text.map(str::to_owned),
                        _ => None,
                    })
                    .collect::<Vec<Option<String>>>(),
            ),
        };
    }
    let changed: std::collections::HashSet<i64> =
        query.fetch_all(executor).await?.into_iter().collect();
    // No row changed: fenced out when the item is claimed; else the id is unknown, which
    // changes nothing either way (as `apply` answers).
    Ok(ids
        .iter()
        .zip(&epochs)
        .map(|(id, epoch)| epoch.is_none() || changed.contains(id))
        .collect())
}

async fn apply_one(
    pool: &PgPool,
    worker: &Worker,
    transition: &Transition,
) -> Result<bool, sqlx::Error> {
    let started = std::time::Instant::now();
    let mut connection = pool.acquire().await?;
    let mut tx = connection.begin().await?;
    let landed = apply(&mut tx, worker, transition).await?;
    tx.commit().await?;
    redrive_core::state::commits::committed(started, 1);
    Ok(landed)
}

/// What this worker keeps of an item once its transition is committed.
fn settled(worker: &Worker, transition: &Transition) {
    let id = item_of(transition);
    if matches!(
        transition,
        Transition::Finished { .. }
            | Transition::Failed { .. }
            | Transition::Released { .. }
            | Transition::Unstarted { .. }
    ) {
        worker.forget(id);
    }
    if matches!(
        transition,
        Transition::Finished { .. } | Transition::Failed { .. }
    ) {
        worker.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The item a transition changes.
pub(crate) fn item_of(transition: &Transition) -> i64 {
    match transition {
        Transition::Started { id, .. }
        | Transition::Advanced { id, .. }
        | Transition::Finished { id, .. }
        | Transition::Released { id, .. }
        | Transition::Unstarted { id }
        | Transition::Failed { id, .. } => *id,
    }
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How this store writes a [`Change`]: a claimed item's write names the owner and epoch it
/// was claimed with (`$1`, `$2`; no epoch: not claimed by this process, as children are, and
/// not fenced), `$3` the lease in seconds, `$4` the item.
const DIALECT: Dialect = Dialect {
    marker: '$',
    first: 5,
    now: "now()",
    filter: "id = $4 AND ($2::bigint IS NULL OR (lease_owner = $1 AND lease_epoch = $2))",
    renew: "lease_until = CASE WHEN $2::bigint IS NULL THEN lease_until ELSE now() + make_interval(secs => $3) END",
    free: "lease_until = NULL",
};

/// One transition, fenced: the item's row first, then its output row only if the row
/// changed. `false` when the fence refused it.
async fn apply(
    tx: &mut PgConnection,
    worker: &Worker,
    transition: &Transition,
) -> Result<bool, sqlx::Error> {
    let change = Change::of(transition);
    let epoch = worker.epoch(change.id);
    // The text is the thread's shared copy: owned here, since this future crosses awaits.
    let (sql, values) = {
        let (sql, values) = change.update(&DIALECT, true);
        (sql.to_string(), values)
    };
    let mut query = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(sql))
        .bind(worker.id.clone())
        .bind(epoch)
        .bind(worker.lease_seconds())
        .bind(change.id);
    for value in values {
        query = match value {
            // The integer columns (step_index, attempts) are `int`, bytes `bigint`: bound as
            // bigint, PostgreSQL casts the assignment.
            Value::Int(n) => query.bind(*n),
            Value::Text(text) => query.bind(text.map(str::to_owned)),
        };
    }
    let Some(step) = query.fetch_optional(&mut *tx).await? else {
        // No row changed: fenced out when the item is claimed; else the id is unknown, which
        // changes nothing either way.
        return Ok(epoch.is_none());
    };
    if let Some((output, of)) = change.output {
        let step = Change::output_step(of, i64::from(step));
        record_output(
            tx,
            change.id,
            i32::try_from(step).unwrap_or(i32::MAX),
            output,
        )
        .await?;
    }
    Ok(true)
}

async fn record_output(
    tx: &mut PgConnection,
    id: i64,
    step: i32,
    output: &Produced,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outputs (item, step_index, path, bytes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (item, step_index) DO UPDATE SET path = EXCLUDED.path, bytes = EXCLUDED.bytes, recorded_at = now()",
    )
    .bind(id)
    .bind(step)
    .bind(&output.path)
    .bind(i64_of(output.bytes))
    .execute(tx)
    .await?;
    Ok(())
}
