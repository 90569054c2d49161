//! Leases: how several processes share one job in PostgreSQL (the pattern of River, Oban and
//! pg-boss). A worker claims a batch of runnable items with `FOR UPDATE SKIP LOCKED`, marking
//! them `running` under its id until `lease_until`; a heartbeat renews its leases every third
//! of the lease and records the worker in `workers`. A worker that dies stops renewing: once
//! its leases expire, its unfinished items are runnable again for the others. One worker at a
//! time holds the loader role (a session advisory lock) and reads the source into the state.
//!
//! Leases are fenced: every claim gives the item a new `lease_epoch`, and every progress write
//! of this worker names the owner and epoch it claimed with, in the same statement. A worker
//! paused past its lease (SIGSTOP, a frozen VM, a lost connection) whose items were taken over
//! finds its next write refused, and starts no further step of them: what it repeats is at most
//! the step calls it had in flight when it was paused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redrive_core::state::WorkerInfo;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};

/// Items claimed at once: a worker does not hoard what the others could run.
pub(crate) const CLAIM_BATCH: usize = 128;

/// Tables and columns the leases need (added to a schema of an earlier version in place).
pub(crate) const DDL: &str = r#"
ALTER TABLE items ADD COLUMN IF NOT EXISTS lease_owner TEXT;
ALTER TABLE items ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ;
ALTER TABLE items ADD COLUMN IF NOT EXISTS lease_epoch BIGINT NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS items_leased;
DROP INDEX IF EXISTS items_top_running;
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    in_flight    BIGINT NOT NULL DEFAULT 0,
    finished     BIGINT NOT NULL DEFAULT 0
);
"#;

/// An item this worker claimed: the epoch of its claim, and whether another worker has taken
/// it over since.
#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: i64,
    lost: bool,
}

/// This process as a worker of the job.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) id: String,
    host: String,
    pid: u32,
    pub(crate) lease: Duration,
    /// Items this worker finished (reported by the heartbeat).
    pub(crate) finished: AtomicU64,
    /// The epoch of each item this worker claimed and has not finished: its fencing token.
    held: Mutex<HashMap<i64, Held>>,
}

impl Worker {
    pub(crate) fn new(lease: Duration) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        let pid = std::process::id();
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Self {
            id: format!("{host}:{pid}:{nonce:08x}"),
            host,
            pid,
            lease,
            finished: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The epoch this worker claimed item `id` with; `None` for items it did not claim
    /// (children of an expanded item, which their parent's lease covers). An item taken over
    /// keeps its old epoch here, so that every later write for it stays fenced (and refused).
    pub(crate) fn epoch(&self, id: i64) -> Option<i64> {
        self.held.lock().ok()?.get(&id).map(|held| held.epoch)
    }

    /// The item is finished, failed or given back: its epoch is no longer needed.
    pub(crate) fn forget(&self, id: i64) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&id);
        }
    }

    /// Another worker took the item over: this one's writes for it stay refused until it
    /// claims it again.
    pub(crate) fn lost(&self, id: i64) {
        if let Ok(mut held) = self.held.lock()
            && let Some(held) = held.get_mut(&id)
        {
            held.lost = true;
        }
    }

    /// Records the epochs of a claim and returns the items new to this worker: an item it
    /// already runs (claimed again after its own lease lapsed) keeps running once, under the
    /// new epoch; one it lost to another worker is new again.
    fn hold(&self, claimed: Vec<(i64, i64)>) -> Vec<i64> {
        let Ok(mut held) = self.held.lock() else {
            return Vec::new();
        };
        claimed
            .into_iter()
            .filter_map(|(id, epoch)| {
                let before = held.insert(id, Held { epoch, lost: false });
                before.is_none_or(|held| held.lost).then_some(id)
            })
            .collect()
    }

    /// The items this worker holds and has not lost, with their epochs (side by side).
    fn leases(&self) -> (Vec<i64>, Vec<i64>) {
        let Ok(held) = self.held.lock() else {
            return (Vec::new(), Vec::new());
        };
        held.iter()
            .filter(|(_, held)| !held.lost)
            .map(|(id, held)| (*id, held.epoch))
            .unzip()
    }

    pub(crate) fn lease_seconds(&self) -> f64 {
        self.lease.as_secs_f64()
    }
}

/// Claims up to `limit` runnable top-level items for `worker`: pending ones no live lease
/// holds, running ones whose lease expired (or that no lease covers: a run before leases, or
/// given back), and those skipped for `no input` after `after`. Each gets a new epoch and a
/// lease; its status stays as it was until the item's start is recorded (a claimed item
/// waiting for a slot is not running yet). Returns the rows of the items new to this worker,
/// in id order.
///
/// One round trip: the claiming `UPDATE` returns the claimed rows themselves (`columns`, read
/// from the updated row `i`), so a claim is not followed by a read of what it claimed. It
/// changes no indexed column, so PostgreSQL updates each row in place (HOT).
pub(crate) async fn claim(
    pool: &PgPool,
    worker: &Worker,
    after: i64,
    limit: usize,
    columns: &str,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let limit = i64::try_from(limit.min(CLAIM_BATCH)).unwrap_or(1);
    let sql = format!(
        // Each status is its own index walk that skips rows another claim is locking, so
        // workers claiming at once get different items instead of waiting or getting none.
        // The pending walk passes over the items claimed and not yet started (a few pages
        // at the front of the index), the running walk over every running item.
        "WITH pending AS (
           SELECT id FROM items WHERE parent IS NULL AND status = 'pending'
             AND (lease_until IS NULL OR lease_until < now())
           ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED),
         expired AS (
           SELECT id FROM items WHERE parent IS NULL AND status = 'running'
             AND (lease_until IS NULL OR lease_until < now())
           ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED),
         no_input AS (
           SELECT id FROM items WHERE parent IS NULL AND status = 'skipped' AND error = 'no input'
             AND id > $1 AND (lease_until IS NULL OR lease_until < now())
           ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED),
         picked AS (
           SELECT id FROM (SELECT id FROM pending UNION ALL SELECT id FROM expired
                           UNION ALL SELECT id FROM no_input) AS runnable
           ORDER BY id LIMIT $2)
         UPDATE items i SET lease_owner = $3, lease_epoch = i.lease_epoch + 1,
                lease_until = now() + make_interval(secs => $4), updated_at = now()
         FROM picked WHERE i.id = picked.id
         RETURNING i.lease_epoch AS claimed_epoch, {columns}"
    );
    // Each walk in id order from the front of its index, stopping at `limit`. A new job's
    // statistics say its table is nearly empty until autovacuum analyzes it, and then the
    // planner read every pending row through a bitmap and sorted them all, for every claim
    // (17 ms a claim at 45,000 pending: slower than the walk by 20×); so no bitmap here.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL enable_bitmapscan = off")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(limit)
        .bind(&worker.id)
        .bind(worker.lease_seconds())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let claimed = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("id")?,
                r.try_get::<i64, _>("claimed_epoch")?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let new: std::collections::HashSet<i64> = worker.hold(claimed).into_iter().collect();
    let mut rows: Vec<PgRow> = rows
        .into_iter()
        .filter(|r| r.try_get::<i64, _>("id").is_ok_and(|id| new.contains(&id)))
        .collect();
    rows.sort_unstable_by_key(|r| r.try_get::<i64, _>("id").unwrap_or_default());
    Ok(rows)
}

/// Whether `worker` still holds item `id` under the epoch it claimed it with (items it did not
/// claim: yes).
pub(crate) async fn holds(pool: &PgPool, worker: &Worker, id: i64) -> Result<bool, sqlx::Error> {
    let Some(epoch) = worker.epoch(id) else {
        return Ok(true);
    };
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM items WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3)",
    )
    .bind(id)
    .bind(&worker.id)
    .bind(epoch)
    .fetch_one(pool)
    .await
}

/// Whether other workers hold live leases on unfinished items (claimed, started or not).
pub(crate) async fn others_busy(pool: &PgPool, worker: &Worker) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM items WHERE parent IS NULL AND status = 'running'
                          AND lease_until >= now() AND lease_owner IS DISTINCT FROM $1)
             OR EXISTS (SELECT 1 FROM items WHERE parent IS NULL AND status = 'pending'
                          AND lease_until >= now() AND lease_owner IS DISTINCT FROM $1)",
    )
    .bind(&worker.id)
    .fetch_one(pool)
    .await
}

/// Gives back this worker's leases on unfinished items.
pub(crate) async fn release(pool: &PgPool, worker: &Worker) -> Result<(), sqlx::Error> {
    let (ids, epochs) = worker.leases();
    sqlx::query(
        "UPDATE items i SET lease_until = NULL FROM UNNEST($2::bigint[], $3::bigint[]) AS h(id, epoch)
         WHERE i.id = ANY($2::bigint[]) AND i.id = h.id
           AND i.lease_owner = $1 AND i.lease_epoch = h.epoch",
    )
    .bind(&worker.id)
    .bind(ids)
    .bind(epochs)
    .execute(pool)
    .await?;
    heartbeat(pool, worker, Some(0)).await
}

/// Renews this worker's leases and records it in `workers`. `in_flight` given: record that
/// instead of the leases renewed.
pub(crate) async fn heartbeat(
    pool: &PgPool,
    worker: &Worker,
    in_flight: Option<i64>,
) -> Result<(), sqlx::Error> {
    // The items this worker holds, by id (no index names a lease's owner: a claim would not
    // be updated in place). Rows locked right now are skipped: the writer is recording their
    // next transition (which renews a running item's lease itself, or ends it), or another
    // worker is taking them over. Waiting for them instead, in whatever order the table
    // yields them, while a writer's group holds some and waits for others, is a deadlock.
    let (ids, epochs) = worker.leases();
    let renewed = sqlx::query(
        "UPDATE items SET lease_until = now() + make_interval(secs => $2)
         WHERE id IN (SELECT i.id FROM items i JOIN UNNEST($3::bigint[], $4::bigint[]) AS h(id, epoch)
                        ON i.id = h.id
                      WHERE i.id = ANY($3::bigint[]) AND i.lease_owner = $1
                        AND i.lease_epoch = h.epoch AND i.lease_until IS NOT NULL
                      FOR UPDATE OF i SKIP LOCKED)",
    )
    .bind(&worker.id)
    .bind(worker.lease_seconds())
    .bind(ids)
    .bind(epochs)
    .execute(pool)
    .await?
    .rows_affected();
    let in_flight = in_flight.unwrap_or_else(|| i64::try_from(renewed).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO workers (id, host, pid, in_flight, finished) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), in_flight = $4, finished = $5",
    )
    .bind(&worker.id)
    .bind(&worker.host)
    .bind(i32::try_from(worker.pid).unwrap_or(i32::MAX))
    .bind(in_flight)
    .bind(i64::try_from(worker.finished.load(Ordering::Relaxed)).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Renews the leases every third of the lease until dropped. The first beat is a period
/// away: the caller has just beaten (an immediate second beat would renew, at an unknown
/// instant, leases that the caller's next statements and the tests reason about).
pub(crate) fn start_heartbeat(pool: PgPool, worker: Arc<Worker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = worker.lease / 3;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            every.tick().await;
            if let Err(error) = heartbeat(&pool, &worker, None).await {
                tracing::warn!(%error, "lease heartbeat failed; retrying");
            }
        }
    })
}

/// Tries to take the loader role on `connection` (a session advisory lock, held as long as the
/// connection stays open).
pub(crate) async fn try_loader_lock(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('redrive-load:' || current_schema()))")
        .fetch_one(connection)
        .await
}

/// The workers of the job, latest heartbeat first.
pub(crate) async fn workers(pool: &PgPool) -> Result<Vec<WorkerInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, host, pid, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                extract(epoch FROM now() - heartbeat_at)::float8, in_flight, finished,
                extract(epoch FROM heartbeat_at - started_at)::float8
         FROM workers ORDER BY heartbeat_at DESC, id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let finished = u64::try_from(r.try_get::<i64, _>(6)?).unwrap_or(0);
            let active: f64 = r.try_get(7)?;
            Ok(WorkerInfo {
                id: r.try_get(0)?,
                host: r.try_get(1)?,
                pid: u32::try_from(r.try_get::<i32, _>(2)?).unwrap_or(0),
                started_at: r.try_get(3)?,
                heartbeat_age_s: r.try_get(4)?,
                in_flight: u64::try_from(r.try_get::<i64, _>(5)?).unwrap_or(0),
                finished,
                rate: if active > 0.0 {
                    finished as f64 / active
                } else {
                    0.0
                },
            })
        })
        .collect()
}
