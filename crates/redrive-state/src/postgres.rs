//! The PostgreSQL state store: one schema per job (`redrive_<job>`) holding the same tables
//! and views as the SQLite store, so a job can be shared by many hosts: any number of
//! `redrive run` processes cooperate through leases (see `lease.rs`). Every call commits on
//! its own (durable when it returns); the schema is created and migrated by redrive itself,
//! under an advisory lock so that workers starting together do not race.

use async_trait::async_trait;
use redrive_core::item::{Fields, ItemId, NewItem, Status, StoredItem};
use redrive_core::state::{
    ChildCounts, Inserted, JobInfo, Requeue, StateError, StateStore, Summary, TargetClaim,
    Transition,
};
use redrive_core::step::Produced;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Row};

use crate::change::ItemRow;
use crate::lease::{self, Worker};
use crate::pg_writer;
use std::sync::Arc;
use std::time::Duration;

const SCHEMA_VERSION: i32 = 1;

/// A state store in a PostgreSQL schema.
pub struct PostgresStateStore {
    pool: PgPool,
    location: String,
    /// This process as a worker of the job: its id and lease.
    worker: Arc<Worker>,
    /// Renews this worker's leases; started by its first claim.
    heartbeat: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The connection holding the loader role's advisory lock, while this process loads.
    loader: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    /// Applies transitions in groups, one transaction each; started by the first.
    writer: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<pg_writer::Pending>>,
}

impl Drop for PostgresStateStore {
    fn drop(&mut self) {
        if let Ok(mut heartbeat) = self.heartbeat.lock()
            && let Some(task) = heartbeat.take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStateStore")
            .field("location", &self.location)
            .finish()
    }
}

/// Holds a job's run lock (see [`PostgresStateStore::lock_run`]).
pub struct PgRunLock {
    _connection: sqlx::PgConnection,
}

impl std::fmt::Debug for PgRunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgRunLock")
    }
}

/// `redrive_<job>`: lowercase letters, digits and `_`, at most 63 bytes.
pub fn schema_for(job: &str) -> String {
    let mut schema: String = format!("redrive_{job}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    schema.truncate(63);
    schema
}

fn ddl(schema: &str) -> String {
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS "{schema}";
SET LOCAL search_path TO "{schema}";
CREATE TABLE IF NOT EXISTS job (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    name            TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    source_complete BOOLEAN NOT NULL DEFAULT false,
    schema_version  INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS source_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id          BIGSERIAL PRIMARY KEY,
    parent      BIGINT REFERENCES items(id),
    key         TEXT    NOT NULL,
    fields      JSONB   NOT NULL,
    expanded    BOOLEAN NOT NULL DEFAULT false,
    step_index  INTEGER NOT NULL DEFAULT 0,
    step        TEXT,
    status      TEXT    NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'skipped', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    bytes       BIGINT  NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at  TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
-- Room in each page for a row's next versions: a claim, a lease's renewal and an advance to
-- the next step change no indexed column, and with room beside it PostgreSQL updates the row
-- in place (HOT: no new index entries, a fraction of the WAL). So no index names `status`
-- except partial ones for the few statuses a claim or a listing looks for: an index on
-- `status` itself would take every update out of place (bench/README.md, session 21).
ALTER TABLE items SET (fillfactor = 40);
CREATE TABLE IF NOT EXISTS targets (
    step_index  INTEGER NOT NULL,
    target      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    PRIMARY KEY (step_index, target)
);
CREATE TABLE IF NOT EXISTS outputs (
    item        BIGINT  NOT NULL REFERENCES items(id),
    step_index  INTEGER NOT NULL,
    path        TEXT    NOT NULL,
    bytes       BIGINT  NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (item, step_index)
);
CREATE TABLE IF NOT EXISTS step_times (
    step_index  INTEGER NOT NULL,
    step        TEXT    NOT NULL,
    bucket      INTEGER NOT NULL,
    ended       BIGINT  NOT NULL,
    seconds     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (step_index, bucket)
);
CREATE UNIQUE INDEX IF NOT EXISTS items_top_key   ON items(key)         WHERE parent IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS items_child_key ON items(parent, key) WHERE parent IS NOT NULL;
DROP INDEX IF EXISTS items_status;
DROP INDEX IF EXISTS items_top_status;
CREATE INDEX IF NOT EXISTS items_top_pending    ON items(id)                 WHERE parent IS NULL AND status = 'pending';
CREATE INDEX IF NOT EXISTS items_top_running_id ON items(id)                 WHERE parent IS NULL AND status = 'running';
CREATE INDEX IF NOT EXISTS items_failed         ON items(id)                 WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS items_top_no_input   ON items(id)                 WHERE parent IS NULL AND status = 'skipped' AND error = 'no input';
CREATE INDEX IF NOT EXISTS items_child_status   ON items(parent, status, id) WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_child_no_input ON items(parent, id)         WHERE parent IS NOT NULL AND status = 'skipped' AND error = 'no input';
CREATE OR REPLACE VIEW failed AS
    SELECT id, parent, key, step, attempts, error, updated_at
    FROM items WHERE status = 'failed' AND NOT (parent IS NULL AND expanded);
CREATE OR REPLACE VIEW workitems AS
    SELECT p.id, p.key, p.fields, p.status, p.error, p.attempts,
           count(c.id) AS files_total,
           count(c.id) FILTER (WHERE c.status = 'done')    AS files_done,
           count(c.id) FILTER (WHERE c.status = 'skipped') AS files_skipped,
           count(c.id) FILTER (WHERE c.status = 'failed')  AS files_failed,
           coalesce(sum(c.bytes), 0) AS bytes, p.started_at, p.finished_at
    FROM items p LEFT JOIN items c ON c.parent = p.id
    WHERE p.parent IS NULL GROUP BY p.id;
CREATE OR REPLACE VIEW files AS
    SELECT c.id, p.key AS workitem, c.key, c.fields, c.step, c.status, c.error, c.attempts,
           c.bytes, c.started_at, c.finished_at
    FROM items c JOIN items p ON p.id = c.parent;
"#
    )
}

/// Creates or migrates `schema`, unless it is already this version's: its DDL's MD5 is the
/// schema's comment. Run against a live job, the DDL is not free: its `ALTER TABLE` and
/// `CREATE INDEX` lock `items` against every worker's writes until it commits, and every
/// `status`, `report` and joining worker connects; so only a schema that needs it is migrated.
async fn migrate(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let ddl = ddl(schema) + lease::DDL;
    let current =
        "SELECT coalesce(obj_description(n.oid, 'pg_namespace') = 'redrive ' || md5($1), false)
         FROM pg_namespace n WHERE n.nspname = $2";
    let up_to_date: Option<bool> = sqlx::query_scalar(current)
        .bind(&ddl)
        .bind(schema)
        .fetch_optional(pool)
        .await?;
    if up_to_date == Some(true) {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('redrive-migrate:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.clone()))
        .execute(&mut *tx)
        .await?;
    let digest: String = sqlx::query_scalar("SELECT md5($1)")
        .bind(&ddl)
        .fetch_one(&mut *tx)
        .await?;
    // The digest is hex and the schema's name is quoted as in the DDL itself.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "COMMENT ON SCHEMA \"{schema}\" IS 'redrive {digest}'"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

const ITEM_COLUMNS: &str = "i.id, i.parent, (SELECT p.key FROM items p WHERE p.id = i.parent) AS parent_key, \
     i.expanded, i.key, i.fields::text AS fields, i.step_index, i.status, i.attempts, i.error, i.bytes";

impl PostgresStateStore {
    /// Connects to `url` and creates or migrates the job's schema.
    pub async fn connect(url: &str, job: &str) -> Result<Self, StateError> {
        Self::connect_schema(url, &schema_for(job)).await
    }

    /// Connects to `url`, using (and creating) `schema`.
    pub async fn connect_schema(url: &str, schema: &str) -> Result<Self, StateError> {
        let location = format!(
            "{}#{schema}",
            redrive_core::secrets::redact(&display_url(url))
        );
        let err = |e: sqlx::Error| StateError::Backend {
            location: location.clone(),
            message: e.to_string(),
        };
        let options: PgConnectOptions = url.parse().map_err(err)?;
        let options = options
            .options([("search_path", schema)])
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(err)?;
        migrate(&pool, schema).await.map_err(err)?;
        Ok(Self {
            pool,
            location,
            worker: Arc::new(Worker::new(redrive_core::job::DEFAULT_LEASE)),
            heartbeat: std::sync::Mutex::new(None),
            loader: tokio::sync::Mutex::new(None),
            writer: std::sync::OnceLock::new(),
        })
    }

    /// The lease this process takes on the items it claims (`[limits] lease`): the time a
    /// dead worker's items wait before others take them over. Set before the first claim.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.worker = Arc::new(Worker::new(lease.max(Duration::from_secs(1))));
        self
    }

    /// This process's worker id (`host:pid:nonce`).
    pub fn worker_id(&self) -> &str {
        &self.worker.id
    }

    /// Registers this worker and starts renewing its leases, once.
    async fn ensure_heartbeat(&self) -> Result<(), StateError> {
        let started = self.heartbeat.lock().map(|h| h.is_some()).unwrap_or(true);
        if started {
            return Ok(());
        }
        lease::heartbeat(&self.pool, &self.worker, None)
            .await
            .map_err(|e| self.failed(e))?;
        if let Ok(mut heartbeat) = self.heartbeat.lock()
            && heartbeat.is_none()
        {
            *heartbeat = Some(lease::start_heartbeat(
                self.pool.clone(),
                Arc::clone(&self.worker),
            ));
        }
        Ok(())
    }

    /// The URL and schema, password masked, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Takes the job's run lock: a session advisory lock held on a connection of its own,
    /// released when the lock is dropped or the process dies. Runs take it shared (any number
    /// of workers cooperate); `--restart` takes it exclusive, so it never drops the schema
    /// under a running worker.
    pub async fn lock_run(&self, exclusive: bool) -> Result<PgRunLock, StateError> {
        let mut connection = self.dedicated_connection().await?;
        let sql = if exclusive {
            "SELECT pg_try_advisory_lock(hashtext('redrive-run:' || current_schema()))"
        } else {
            "SELECT pg_try_advisory_lock_shared(hashtext('redrive-run:' || current_schema()))"
        };
        let locked: bool = sqlx::query_scalar(sql)
            .fetch_one(&mut connection)
            .await
            .map_err(|e| self.failed(e))?;
        if !locked {
            return Err(StateError::Locked {
                location: self.location.clone(),
                lock: "a PostgreSQL advisory lock".to_owned(),
            });
        }
        Ok(PgRunLock {
            _connection: connection,
        })
    }

    /// Drops the job's schema: `--restart`.
    pub async fn discard(url: &str, job: &str) -> Result<(), StateError> {
        let schema = schema_for(job);
        let location = format!(
            "{}#{schema}",
            redrive_core::secrets::redact(&display_url(url))
        );
        let err = |e: sqlx::Error| StateError::Backend {
            location: location.clone(),
            message: e.to_string(),
        };
        let options: PgConnectOptions = url.parse().map_err(err)?;
        let mut connection = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(err)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut connection)
        .await
        .map_err(err)?;
        Ok(())
    }

    /// A connection out of the pool, for a session lock: closing it releases the lock.
    async fn dedicated_connection(&self) -> Result<sqlx::PgConnection, StateError> {
        Ok(self
            .pool
            .acquire()
            .await
            .map_err(|e| self.failed(e))?
            .detach())
    }

    fn failed(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Backend {
            location: self.location.clone(),
            message: e.to_string(),
        }
    }
}

/// The URL without its password.
fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn row_to_item(row: &PgRow) -> Result<StoredItem, sqlx::Error> {
    ItemRow {
        id: row.try_get("id")?,
        parent: row.try_get("parent")?,
        parent_key: row.try_get("parent_key")?,
        expanded: row.try_get("expanded")?,
        key: row.try_get("key")?,
        fields: row.try_get("fields")?,
        step_index: row.try_get::<i32, _>("step_index")?.into(),
        status: row.try_get("status")?,
        attempts: row.try_get::<i32, _>("attempts")?.into(),
        error: row.try_get("error")?,
        bytes: row.try_get("bytes")?,
    }
    .decode()
    .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(crate) fn i32_of(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Adds top-level items (`$1` keys, `$2` fields as JSON); a known key is ignored.
const INSERT_TOP: &str = "INSERT INTO items (key, fields)
     SELECT k, f::jsonb FROM UNNEST($1::text[], $2::text[]) AS t(k, f)
     ON CONFLICT (key) WHERE parent IS NULL DO NOTHING";

#[async_trait]
impl StateStore for PostgresStateStore {
    async fn begin(&self, job: &JobInfo) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO job (id, name, fingerprint, schema_version) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&job.name)
        .bind(&job.fingerprint)
        .bind(SCHEMA_VERSION)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let row = sqlx::query("SELECT name, fingerprint FROM job WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        let (name, fingerprint): (String, String) = (
            row.try_get(0).map_err(|e| self.failed(e))?,
            row.try_get(1).map_err(|e| self.failed(e))?,
        );
        if name != job.name {
            return Err(StateError::OtherJob {
                location: self.location.clone(),
                stored: name,
                current: job.name.clone(),
            });
        }
        if job.earlier_fingerprints.contains(&fingerprint) {
            // The same plan, fingerprinted by an earlier release: it now has its canonical one.
            sqlx::query("UPDATE job SET fingerprint = $1 WHERE id = 1 AND fingerprint = $2")
                .bind(&job.fingerprint)
                .bind(&fingerprint)
                .execute(&self.pool)
                .await
                .map_err(|e| self.failed(e))?;
            return Ok(());
        }
        if fingerprint != job.fingerprint {
            return Err(StateError::PlanChanged {
                location: self.location.clone(),
                stored: fingerprint,
                current: job.fingerprint.clone(),
            });
        }
        Ok(())
    }

    async fn insert(&self, items: Vec<NewItem>) -> Result<u64, StateError> {
        let (keys, fields) = columns(items).map_err(|e| self.failed(e))?;
        let done = sqlx::query(INSERT_TOP)
            .bind(keys)
            .bind(fields)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(done.rows_affected())
    }

    async fn insert_reporting(&self, items: Vec<NewItem>) -> Result<Inserted, StateError> {
        let (keys, fields) = columns(items).map_err(|e| self.failed(e))?;
        let inserted: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{INSERT_TOP} RETURNING key")))
                .bind(&keys)
                .bind(&fields)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.failed(e))?;
        let added = inserted.len() as u64;
        if added == keys.len() as u64 {
            return Ok(Inserted {
                added,
                candidates: Vec::new(),
            });
        }
        // Which row of a key repeated within the batch was the one added is not said: every
        // row of such a key is a candidate, as is each row whose key was known before.
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let mut times: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for key in &keys {
            *times.entry(key.as_str()).or_default() += 1;
        }
        let candidates = keys
            .iter()
            .zip(&fields)
            .filter(|(key, _)| !inserted.contains(*key) || times[key.as_str()] > 1)
            .map(|(key, fields)| NewItem {
                key: key.clone(),
                fields: serde_json::from_str(fields).unwrap_or_default(),
            })
            .collect();
        Ok(Inserted { added, candidates })
    }

    async fn fields_of(&self, keys: Vec<String>) -> Result<Vec<(String, Fields)>, StateError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, fields::text FROM items WHERE parent IS NULL AND key = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(rows
            .into_iter()
            .map(|(key, fields)| (key, serde_json::from_str(&fields).unwrap_or_default()))
            .collect())
    }

    /// Two statements: the claims added where free, then each claimed target's owner read.
    async fn claim_targets(
        &self,
        claims: Vec<TargetClaim>,
    ) -> Result<Vec<(TargetClaim, String)>, StateError> {
        let steps: Vec<i32> = claims.iter().map(|c| i32_of(c.step)).collect();
        let targets: Vec<&str> = claims.iter().map(|c| c.target.as_str()).collect();
        let keys: Vec<&str> = claims.iter().map(|c| c.key.as_str()).collect();
        // Rows of one statement do not see each other's inserts: a target claimed twice in
        // this batch keeps its first claim (ordinality), and the owners are read after.
        sqlx::query(
            "INSERT INTO targets (step_index, target, key)
             SELECT DISTINCT ON (s, t) s, t, k
             FROM UNNEST($1::int[], $2::text[], $3::text[]) WITH ORDINALITY AS c(s, t, k, n)
             ORDER BY s, t, n
             ON CONFLICT (step_index, target) DO NOTHING",
        )
        .bind(&steps)
        .bind(&targets)
        .bind(&keys)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let owners: Vec<(i32, String, String)> = sqlx::query_as(
            // `= ANY` bounds the rows read to the batch's (as in `Change::update_many`).
            "SELECT t.step_index, t.target, t.key FROM targets t
             JOIN UNNEST($1::int[], $2::text[]) AS c(s, tg) ON t.step_index = c.s AND t.target = c.tg
             WHERE t.step_index = ANY($1::int[]) AND t.target = ANY($2::text[])",
        )
        .bind(&steps)
        .bind(&targets)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let owners: std::collections::HashMap<(i32, String), String> = owners
            .into_iter()
            .map(|(step, target, key)| ((step, target), key))
            .collect();
        Ok(claims
            .into_iter()
            .filter_map(|claim| {
                let owner = owners.get(&(i32_of(claim.step), claim.target.clone()))?;
                (*owner != claim.key).then(|| {
                    let owner = owner.clone();
                    (claim, owner)
                })
            })
            .collect())
    }

    async fn statuses_of(&self, keys: Vec<String>) -> Result<Vec<(String, Status)>, StateError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, status FROM items WHERE parent IS NULL AND key = ANY($1)")
                .bind(keys)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.failed(e))?;
        rows.into_iter()
            .map(|(key, status)| {
                let status = status.parse().map_err(|e| self.failed(e))?;
                Ok((key, status))
            })
            .collect()
    }

    async fn insert_children(
        &self,
        parent: ItemId,
        items: Vec<NewItem>,
    ) -> Result<u64, StateError> {
        let (keys, fields) = columns(items).map_err(|e| self.failed(e))?;
        let done = sqlx::query(
            "INSERT INTO items (parent, key, fields)
             SELECT $1, k, f::jsonb FROM UNNEST($2::text[], $3::text[]) AS t(k, f)
             ON CONFLICT (parent, key) WHERE parent IS NOT NULL DO NOTHING",
        )
        .bind(parent)
        .bind(keys)
        .bind(fields)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(done.rows_affected())
    }

    async fn set_expanded(&self, parent: ItemId) -> Result<(), StateError> {
        sqlx::query("UPDATE items SET expanded = true, updated_at = now() WHERE id = $1")
            .bind(parent)
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn runnable_children(
        &self,
        parent: ItemId,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError> {
        self.items(
            "WHERE i.id IN (
               (SELECT id FROM items WHERE parent = $1 AND status = 'pending' AND id > $2 ORDER BY id LIMIT $3)
               UNION ALL
               (SELECT id FROM items WHERE parent = $1 AND status = 'running' AND id > $2 ORDER BY id LIMIT $3)
               UNION ALL
               (SELECT id FROM items WHERE parent = $1 AND status = 'skipped' AND error = 'no input'
                AND id > $2 ORDER BY id LIMIT $3))
             ORDER BY i.id LIMIT $3",
            |q| q.bind(parent).bind(after).bind(limit_of(limit)),
        )
        .await
    }

    async fn outputs(&self, id: ItemId) -> Result<Vec<(usize, Produced)>, StateError> {
        let rows = sqlx::query(
            "SELECT step_index, path, bytes FROM outputs WHERE item = $1 ORDER BY step_index",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(|row| {
                Ok((
                    usize::try_from(row.try_get::<i32, _>(0)?).unwrap_or(0),
                    Produced {
                        path: row.try_get(1)?,
                        bytes: u64::try_from(row.try_get::<i64, _>(2)?).unwrap_or(0),
                    },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.failed(e))
    }

    async fn child_counts(&self, parent: ItemId) -> Result<ChildCounts, StateError> {
        let row = sqlx::query(
            "SELECT count(*), count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'skipped'),
                    count(*) FILTER (WHERE status = 'failed')
             FROM items WHERE parent = $1",
        )
        .bind(parent)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let get = |i: usize| {
            row.try_get::<i64, _>(i)
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(|e| self.failed(e))
        };
        Ok(ChildCounts {
            total: get(0)?,
            done: get(1)?,
            skipped: get(2)?,
            failed: get(3)?,
        })
    }

    async fn set_source_complete(&self) -> Result<(), StateError> {
        sqlx::query("UPDATE job SET source_complete = true WHERE id = 1")
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        // The loader role is no longer needed: closing its session releases the lock.
        if let Some(connection) = self.loader.lock().await.take() {
            let _ = connection.close().await;
        }
        Ok(())
    }

    async fn source_revision(&self) -> Result<Option<String>, StateError> {
        sqlx::query_scalar("SELECT revision FROM source_revision WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn set_source_revision(&self, revision: String) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO source_revision (id, revision) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET revision = $1",
        )
        .bind(revision)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|e| self.failed(e))
    }

    async fn source_complete(&self) -> Result<bool, StateError> {
        let row = sqlx::query("SELECT source_complete FROM job WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(row
            .map(|r| r.try_get::<bool, _>(0).unwrap_or(false))
            .unwrap_or(false))
    }

    async fn runnable(&self, after: ItemId, limit: usize) -> Result<Vec<StoredItem>, StateError> {
        // One index walk per status, each stopping at `limit`; no sort of everything runnable.
        self.items(
            "WHERE i.id IN (
               (SELECT id FROM items WHERE parent IS NULL AND status = 'pending' AND id > $1 ORDER BY id LIMIT $2)
               UNION ALL
               (SELECT id FROM items WHERE parent IS NULL AND status = 'running' AND id > $1 ORDER BY id LIMIT $2)
               UNION ALL
               (SELECT id FROM items WHERE parent IS NULL AND status = 'skipped' AND error = 'no input'
                AND id > $1 ORDER BY id LIMIT $2))
             ORDER BY i.id LIMIT $2",
            |q| q.bind(after).bind(limit_of(limit)),
        )
        .await
    }

    async fn last_item(&self) -> Result<Option<StoredItem>, StateError> {
        let mut items = self
            .items(
                "WHERE i.id = (SELECT max(id) FROM items WHERE parent IS NULL)",
                |q| q,
            )
            .await?;
        Ok(items.pop())
    }

    /// Through the writer: committed with the transitions recorded meanwhile, fenced each.
    async fn record(&self, transition: Transition) -> Result<(), StateError> {
        let writer = self.writer.get_or_init(|| {
            pg_writer::start(
                self.pool.clone(),
                Arc::clone(&self.worker),
                self.location.clone(),
            )
        });
        let (done, answer) = tokio::sync::oneshot::channel();
        if writer
            .send(pg_writer::Pending { transition, done })
            .is_err()
        {
            return Err(self.failed("the state writer has stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(self.failed("the state writer has stopped")))
    }

    /// Through the writer, all queued at once: the starts go in one statement of the
    /// writer's next group (each row fenced by its own epoch; a start another worker's claim
    /// overtook is `LeaseLost`), and share its commit with the finishes queued meanwhile.
    async fn record_all(&self, transitions: Vec<Transition>) -> Vec<Result<(), StateError>> {
        futures::future::join_all(transitions.into_iter().map(|t| self.record(t))).await
    }

    async fn requeue(&self, which: Requeue) -> Result<u64, StateError> {
        // Runnable again, under no lease: any worker takes them at once (a lease left by a
        // worker that stopped would hold them back until it expired).
        let restart = "status = 'pending', error = NULL, finished_at = NULL, step_index = 0, step = NULL, attempts = 0, bytes = 0, updated_at = now(), lease_until = NULL";
        let done = match which {
            Requeue::Failed => {
                sqlx::query(
                    "UPDATE items SET status = 'pending', error = NULL, finished_at = NULL, updated_at = now(), lease_until = NULL WHERE status = 'failed'",
                )
                .execute(&self.pool)
                .await
            }
            Requeue::Status(status) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE items SET {restart} WHERE status = $1")))
                    .bind(status.as_str())
                    .execute(&self.pool)
                    .await
            }
            Requeue::Keys(keys) => {
                let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
                let top = sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE items SET {restart} WHERE parent IS NULL AND key = ANY($1)")))
                    .bind(&keys)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.failed(e))?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE items SET {restart} WHERE parent IN (SELECT id FROM items WHERE parent IS NULL AND key = ANY($1))"
                )))
                .bind(&keys)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.failed(e))?;
                tx.commit().await.map_err(|e| self.failed(e))?;
                Ok(top)
            }
        };
        done.map(|d| d.rows_affected()).map_err(|e| self.failed(e))
    }

    async fn skip(&self, keys: Vec<String>, reason: String) -> Result<u64, StateError> {
        let done = sqlx::query(
            "UPDATE items SET status = 'skipped', error = $2, updated_at = now(), finished_at = now()
             WHERE parent IS NULL AND key = ANY($1)",
        )
        .bind(&keys)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(done.rows_affected())
    }

    async fn items_with_status(
        &self,
        status: Status,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError> {
        self.items(
            "WHERE i.status = $1 AND i.id > $2 AND NOT (i.parent IS NULL AND i.expanded) ORDER BY i.id LIMIT $3",
            |q| q.bind(status.as_str()).bind(after).bind(limit_of(limit)),
        )
        .await
    }

    async fn parents(
        &self,
        statuses: &[Status],
        limit: usize,
    ) -> Result<Vec<(StoredItem, ChildCounts)>, StateError> {
        let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ITEM_COLUMNS},
                    (SELECT count(*) FROM items c WHERE c.parent = i.id) AS c_total,
                    (SELECT count(*) FROM items c WHERE c.parent = i.id AND c.status = 'done') AS c_done,
                    (SELECT count(*) FROM items c WHERE c.parent = i.id AND c.status = 'skipped') AS c_skipped,
                    (SELECT count(*) FROM items c WHERE c.parent = i.id AND c.status = 'failed') AS c_failed
             FROM items i WHERE i.parent IS NULL AND i.expanded AND i.status = ANY($1) ORDER BY i.id LIMIT $2"
        )))
        .bind(&names)
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(|row| {
                let count = |name: &str| {
                    row.try_get::<i64, _>(name)
                        .map(|n| u64::try_from(n).unwrap_or(0))
                };
                Ok((
                    row_to_item(row)?,
                    ChildCounts {
                        total: count("c_total")?,
                        done: count("c_done")?,
                        skipped: count("c_skipped")?,
                        failed: count("c_failed")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.failed(e))
    }

    async fn activity(
        &self,
        buckets: u32,
        slowest: usize,
    ) -> Result<redrive_core::state::Activity, StateError> {
        use crate::activity::{POSTGRES, STEP_TIMES, assemble, bucket_seconds};
        let err = |e: sqlx::Error| self.failed(e);
        let (start, end): (Option<f64>, Option<f64>) =
            sqlx::query_as(sqlx::AssertSqlSafe(POSTGRES.span()))
                .fetch_one(&self.pool)
                .await
                .map_err(err)?;
        let Some(span) = start.zip(end) else {
            return Ok(redrive_core::state::Activity::default());
        };
        let width = bucket_seconds(span, buckets);
        let timeline = sqlx::query_as(sqlx::AssertSqlSafe(POSTGRES.timeline(span.0, width)))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let durations: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(POSTGRES.durations()))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let slowest = sqlx::query_as(sqlx::AssertSqlSafe(POSTGRES.slowest(slowest)))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let durations = durations
            .into_iter()
            .map(|(b, n)| (i64::from(b), n))
            .collect();
        let steps: Vec<(i32, String, i32, i64, f64)> = sqlx::query_as(STEP_TIMES)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let steps = steps
            .into_iter()
            .map(|(step, name, bucket, ended, seconds)| {
                (i64::from(step), name, i64::from(bucket), ended, seconds)
            })
            .collect();
        Ok(assemble(
            Some(span),
            width,
            timeline,
            durations,
            slowest,
            steps,
        ))
    }

    /// One transaction for all the buckets; each adds to the sums (workers add concurrently).
    async fn add_step_times(
        &self,
        times: Vec<redrive_core::state::StepTimes>,
    ) -> Result<(), StateError> {
        let rows = crate::activity::step_time_rows(&times);
        if rows.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await.map_err(|e| self.failed(e))?;
        for (step, name, bucket, ended, seconds) in rows {
            sqlx::query(crate::activity::ADD_STEP_TIMES)
                .bind(i32::try_from(step).unwrap_or(i32::MAX))
                .bind(name)
                .bind(i32::try_from(bucket).unwrap_or(i32::MAX))
                .bind(ended)
                .bind(seconds)
                .execute(&mut *transaction)
                .await
                .map_err(|e| self.failed(e))?;
        }
        transaction.commit().await.map_err(|e| self.failed(e))
    }

    async fn summary(&self) -> Result<Summary, StateError> {
        let err = |e: sqlx::Error| self.failed(e);
        let source_complete = self.source_complete().await?;
        let rows = sqlx::query(
            "SELECT status, count(*) FILTER (WHERE parent IS NULL), count(*) FILTER (WHERE parent IS NOT NULL)
             FROM items GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut by_status = Vec::new();
        let mut children_by_status = Vec::new();
        for status in Status::ALL {
            let row = rows
                .iter()
                .find(|r| r.try_get::<String, _>(0).ok().as_deref() == Some(status.as_str()));
            let count = |i: usize| {
                row.and_then(|r| r.try_get::<i64, _>(i).ok())
                    .map_or(0, |n| u64::try_from(n).unwrap_or(0))
            };
            by_status.push((status, count(1)));
            children_by_status.push((status, count(2)));
        }
        let by_step = sqlx::query(
            "SELECT coalesce(step, '-'), status, count(*) FROM items
             WHERE status IN ('pending', 'running', 'failed') AND NOT (parent IS NULL AND expanded)
             GROUP BY step, status ORDER BY min(step_index), 1, 2",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(err)?
        .iter()
        .filter_map(|row| {
            let status: String = row.try_get(1).ok()?;
            Some((
                row.try_get::<String, _>(0).ok()?,
                status.parse().ok()?,
                u64::try_from(row.try_get::<i64, _>(2).ok()?).ok()?,
            ))
        })
        .collect();
        let totals = sqlx::query(
            "SELECT coalesce(sum(bytes), 0)::bigint,
                    coalesce(extract(epoch FROM max(finished_at) - min(started_at)), 0)::float8,
                    count(*) FILTER (WHERE status = 'skipped' AND error = 'no input')
             FROM items",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        Ok(Summary {
            source_complete,
            by_status,
            children_by_status,
            by_step,
            no_input: u64::try_from(totals.try_get::<i64, _>(2).map_err(err)?).unwrap_or(0),
            bytes: u64::try_from(totals.try_get::<i64, _>(0).map_err(err)?).unwrap_or(0),
            active_seconds: totals.try_get::<f64, _>(1).map_err(err)?,
        })
    }

    async fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn claim(&self, after: ItemId, limit: usize) -> Result<Vec<StoredItem>, StateError> {
        self.ensure_heartbeat().await?;
        let rows = lease::claim(&self.pool, &self.worker, after, limit, ITEM_COLUMNS)
            .await
            .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(row_to_item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))
    }

    async fn holds(&self, id: ItemId) -> Result<bool, StateError> {
        lease::holds(&self.pool, &self.worker, id)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn others_busy(&self) -> Result<bool, StateError> {
        lease::others_busy(&self.pool, &self.worker)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn take_loader_role(&self) -> Result<bool, StateError> {
        let mut loader = self.loader.lock().await;
        if loader.is_some() {
            return Ok(true);
        }
        let mut connection = self.dedicated_connection().await?;
        if lease::try_loader_lock(&mut connection)
            .await
            .map_err(|e| self.failed(e))?
        {
            *loader = Some(connection);
            Ok(true)
        } else {
            let _ = connection.close().await;
            Ok(false)
        }
    }

    async fn release_claims(&self) -> Result<(), StateError> {
        lease::release(&self.pool, &self.worker)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn workers(&self) -> Result<Vec<redrive_core::state::WorkerInfo>, StateError> {
        lease::workers(&self.pool).await.map_err(|e| self.failed(e))
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl PostgresStateStore {
    async fn items(
        &self,
        clause: &str,
        bind: impl for<'q> FnOnce(Query<'q>) -> Query<'q>,
    ) -> Result<Vec<StoredItem>, StateError> {
        let sql = format!("SELECT {ITEM_COLUMNS} FROM items i {clause}");
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(row_to_item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failed(e))
    }
}

fn columns(items: Vec<NewItem>) -> Result<(Vec<String>, Vec<String>), serde_json::Error> {
    let mut keys = Vec::with_capacity(items.len());
    let mut fields = Vec::with_capacity(items.len());
    for item in items {
        fields.push(serde_json::to_string(&item.fields)?);
        keys.push(item.key);
    }
    Ok((keys, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_safe() {
        assert_eq!(
            schema_for("reupload-failed WorkItems"),
            "redrive_reupload_failed_workitems"
        );
        assert_eq!(schema_for(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            display_url("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(display_url("postgres://h/db"), "postgres://h/db");
    }
}
