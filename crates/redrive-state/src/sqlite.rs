//! The SQLite state store: WAL, one writer thread that batches every caller's writes into
//! one transaction (group commit), and a separate connection for reads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use crate::change::{Change, Dialect, ItemRow, Value};
use async_trait::async_trait;
use redrive_core::item::{Fields, ItemId, NewItem, Status, StoredItem};
use redrive_core::state::{
    ChildCounts, Inserted, JobInfo, Requeue, StateError, StateStore, Summary, TargetClaim,
    Transition,
};
use redrive_core::step::Produced;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

const SCHEMA: &str = include_str!("schema.sql");
const SCHEMA_VERSION: i64 = 1;
/// Most writes folded into one transaction.
const MAX_BATCH: usize = 8_192;
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

thread_local! {
    /// The writer's clock for the batch it is writing, in the form `NOW` gives: read and
    /// formatted once per transaction, where `NOW` costs a strftime in every statement (4% of a
    /// run's CPU for items whose steps do little). Set by `write_loop`.
    static BATCH_NOW: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The time of the batch being written (on the writer thread).
fn batch_now() -> String {
    BATCH_NOW.with(|now| now.borrow().clone())
}

/// Now, as `NOW` writes it: `2026-11-23T16:55:01.123Z`.
fn now_text() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

type Write = Box<dyn FnOnce(&Transaction<'_>) -> rusqlite::Result<u64> + Send>;

struct Command {
    /// `None`: after this batch commits, checkpoint the WAL into the database file.
    write: Option<Write>,
    done: oneshot::Sender<Result<u64, String>>,
}

/// A state store in one SQLite file.
pub struct SqliteStateStore {
    location: String,
    writer: Mutex<Option<mpsc::Sender<Command>>>,
    /// Closed first when the store is dropped, so that the writer is the last connection and
    /// SQLite removes the (checkpointed) log as it closes.
    reader: Arc<Mutex<Option<Connection>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// A run began on this store (and marked `run_open`): closing the store records that the
    /// run closed the state.
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for SqliteStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStateStore")
            .field("location", &self.location)
            .finish()
    }
}

impl SqliteStateStore {
    /// Opens the state file, creating it (and its directory) when missing.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let location = path.display().to_string();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| backend(&location, e))?;
        }
        Self::open_with(path.to_path_buf(), location, true)
    }

    /// Opens an existing state file; `StateError::Missing` when there is none.
    pub fn open_existing(path: &Path) -> Result<Self, StateError> {
        let location = path.display().to_string();
        if !path.exists() {
            return Err(StateError::Missing { location });
        }
        Self::open_with(path.to_path_buf(), location, false)
    }

    fn open_with(path: PathBuf, location: String, create: bool) -> Result<Self, StateError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let err = |e: rusqlite::Error| backend(&location, e);
        // Looked at before SQLite opens the file (which creates a log when there is none).
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let had_wal = wal.exists();
        refuse_truncated(&path, &location)?;
        let writer = Connection::open_with_flags(&path, flags).map_err(err)?;
        // A 4 MiB page cache: each COMMIT makes SQLite scan the cache's whole hash table (a page
        // moved through the lock-byte page number by a B-tree balance leaves the cache's largest
        // key there), so a bigger cache costs every commit more than the reads it saves
        // (bench/README.md, "Per-transition costs").
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -4096;
                 PRAGMA wal_autocheckpoint = 10000;",
            )
            .map_err(err)?;
        writer.execute_batch(SCHEMA).map_err(err)?;
        // The writer writes statuses only from `Status::as_str`: SQLite checking `status IN
        // (…)` on every update built a throwaway B-tree each time (`OpenEphemeral`, ~5% of the
        // writer's time). The CHECK stays in the schema for anyone who edits the file by hand.
        writer
            .execute_batch("PRAGMA ignore_check_constraints = ON;")
            .map_err(err)?;
        let open: Option<(i64, i64)> = writer
            .query_row(
                "SELECT running, commits FROM run_open WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        if open == Some((1, 0)) && !had_wal {
            return Err(StateError::Damaged {
                location: location.clone(),
                message: format!(
                    "it was not closed cleanly (its last run was killed or crashed) and its \
                     write-ahead log `{}` is gone: what that run recorded may be lost with it, \
                     and resuming would redo work whose side effects already happened. Put the \
                     log back if it was moved, or start over with `redrive run PLAN --restart` \
                     (create-only copies skip the targets that exist)",
                    wal.display()
                ),
            });
        }
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;

        let (sender, receiver) = mpsc::channel::<Command>();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("redrive-state-writer".to_owned())
            .spawn(move || write_loop(writer, receiver))
            .map_err(|e| backend(&location, e))?;
        Ok(Self {
            location,
            writer: Mutex::new(Some(sender)),
            reader: Arc::new(Mutex::new(Some(reader))),
            thread: Mutex::new(Some(thread)),
            running,
        })
    }

    /// The file, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    async fn write(&self, write: Write) -> Result<u64, StateError> {
        self.send(Some(write)).await
    }

    async fn send(&self, write: Option<Write>) -> Result<u64, StateError> {
        self.enqueue(write).await
    }

    /// Hands `write` to the writer now (behind every write handed over before it); the
    /// returned future waits for its commit.
    fn enqueue(
        &self,
        write: Option<Write>,
    ) -> impl std::future::Future<Output = Result<u64, StateError>> + Send + 'static {
        let (done, wait) = oneshot::channel();
        let sent = match self.writer.lock() {
            Ok(writer) => writer
                .as_ref()
                .map(|sender| sender.send(Command { write, done }).is_ok())
                .unwrap_or(false),
            Err(_) => false,
        };
        let location = self.location.clone();
        async move {
            let failed = |message: String| StateError::Backend { location, message };
            if !sent {
                return Err(failed("the writer has stopped".to_owned()));
            }
            match wait.await {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(message)) => Err(failed(message)),
                Err(_) => Err(failed("the writer has stopped".to_owned())),
            }
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StateError> {
        let reader = Arc::clone(&self.reader);
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || {
            let connection = reader
                .lock()
                .map_err(|_| backend(&location, "the reader lock is poisoned"))?;
            let connection = connection
                .as_ref()
                .ok_or_else(|| backend(&location, "the state is closed"))?;
            read(connection).map_err(|e| backend(&location, e))
        })
        .await
        .map_err(|e| backend(&self.location, e))?
    }

    fn failed(&self, message: String) -> StateError {
        StateError::Backend {
            location: self.location.clone(),
            message,
        }
    }
}

/// Held by the one `redrive run` that works on a state file; released when dropped (or when
/// the process dies, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct RunLock {
    file: std::fs::File,
}

/// How long a held run lock is tried again before it is another run's.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl RunLock {
    /// Takes the lock `STATE.lock` beside the state file, or says who holds it. The lock is
    /// beside the file's canonical path: two plans that reach one state by different paths
    /// (a symlink, `./` and an absolute path) take the same lock.
    pub fn acquire(state: &Path) -> Result<Self, StateError> {
        let location = state.display().to_string();
        if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| backend(&location, e))?;
        }
        let lock = lock_path(state);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|e| backend(&location, e))?;
        // A run killed a moment ago may still hold the lock for a few milliseconds: a child it
        // was starting holds a copy of the descriptor until that child's exec closes it. So a
        // lock whose taker is gone is tried again for a short while before it is called
        // another run's; one whose taker lives is another run's at once.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { file }),
                Err(std::fs::TryLockError::WouldBlock)
                    if std::time::Instant::now() < deadline
                        && !lock_holder(&file).is_some_and(alive) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StateError::Locked {
                        location,
                        lock: lock.display().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(backend(&location, e)),
            }
        }
    }
}

/// The process that took the `flock` on `file`, as Linux's `/proc/locks` names it (`None`
/// elsewhere, or when it does not say).
fn lock_holder(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = file.metadata().ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (waiters have `->` after the number).
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, _, pid, place, ..] = fields.as_slice() else {
            return None;
        };
        let on_this = place.rsplit(':').next()?.parse::<u64>().ok()? == inode;
        (*kind == "FLOCK" && on_this)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// Whether process `pid` is running (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

impl RunLock {
    /// Records, in the lock file, that its state file has been written: a state file of 0
    /// bytes beside a marked lock was truncated, while one beside an unmarked lock belongs to
    /// a first run killed before SQLite wrote anything (not refused).
    pub fn mark_used(&self) {
        use std::io::Write as _;
        if self.file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = (&self.file).write_all(b"used\n");
        }
    }
}

/// Where the run lock of the state file `state` is: `STATE.lock` beside its canonical path
/// (symlinks resolved; a file not created yet: its folder's canonical path).
pub(crate) fn lock_path(state: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(state).ok().or_else(|| {
        let dir = match state.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Some(std::fs::canonicalize(dir).ok()?.join(state.file_name()?))
    });
    let state = canonical.unwrap_or_else(|| state.to_path_buf());
    PathBuf::from(format!("{}.lock", state.display()))
}

/// A state file of 0 bytes beside a lock file marked used ([`RunLock::mark_used`]) was used
/// and then emptied (SQLite would take it for a new state and start the job over). Beside an
/// unmarked lock it is a first run's, killed between creating the file and writing to it.
fn refuse_truncated(path: &Path, location: &str) -> Result<(), StateError> {
    let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    let used = std::fs::metadata(lock_path(path)).is_ok_and(|m| m.len() > 0);
    if empty && used {
        return Err(StateError::Damaged {
            location: location.to_owned(),
            message: "it is empty (0 bytes) though a run has used it (its lock file says so): \
                      it was truncated, and opening it would start the job over as if nothing \
                      had been done. Restore it from a copy, or delete it to start over"
                .to_owned(),
        });
    }
    Ok(())
}

impl Drop for SqliteStateStore {
    fn drop(&mut self) {
        if let Ok(mut reader) = self.reader.lock() {
            reader.take();
        }
        if let Ok(mut writer) = self.writer.lock() {
            // The run closes the state: recorded, and checkpointed into the file, before the
            // writer stops (a run killed before this leaves `running` set, and its log).
            if self.running.load(std::sync::atomic::Ordering::SeqCst)
                && let Some(sender) = writer.as_ref()
            {
                let (done, _) = oneshot::channel();
                let close: Write = Box::new(|tx| {
                    tx.execute("UPDATE run_open SET running = 0 WHERE id = 1", [])
                        .map(|n| n as u64)
                });
                let _ = sender.send(Command {
                    write: Some(close),
                    done,
                });
                let (done, _) = oneshot::channel();
                let _ = sender.send(Command { write: None, done });
            }
            writer.take();
        }
        if let Ok(mut thread) = self.thread.lock()
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
    }
}

fn backend(location: &str, error: impl std::fmt::Display) -> StateError {
    StateError::Backend {
        location: location.to_owned(),
        message: error.to_string(),
    }
}

/// Takes every write waiting, applies them in one transaction, commits, then answers each.
fn write_loop(mut connection: Connection, receiver: mpsc::Receiver<Command>) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        let checkpoint = batch.iter().any(|command| command.write.is_none());
        let (started, writes) = (std::time::Instant::now(), batch.len());
        BATCH_NOW.with(|now| *now.borrow_mut() = now_text());
        let committed = connection.transaction().and_then(|tx| {
            let mut commands = batch.into_iter();
            for command in commands.by_ref() {
                let Some(write) = command.write else {
                    answers.push((command.done, Ok(0)));
                    continue;
                };
                match write(&tx) {
                    Ok(n) => answers.push((command.done, Ok(n))),
                    // The file itself refuses writes (locked past the busy timeout, full,
                    // read-only): every write of the batch would wait and fail the same way.
                    Err(error) if refuses_writes(&error) => {
                        answers.push((command.done, Err(error.to_string())));
                        for rest in commands.by_ref() {
                            answers.push((rest.done, Err(error.to_string())));
                        }
                        return Err(error);
                    }
                    Err(error) => answers.push((command.done, Err(error.to_string()))),
                }
            }
            tx.commit()
        });
        match committed {
            Ok(()) => {
                redrive_core::state::commits::committed(started, writes);
                if checkpoint {
                    // Best effort: a checkpoint that cannot finish now (a reader in the
                    // middle of a read) is done by a later one, or by SQLite when it closes.
                    let _ = connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                }
                for (done, result) in answers {
                    let _ = done.send(result);
                }
            }
            Err(error) => {
                let message = format!("commit failed: {error}");
                for (done, _) in answers {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }
}

/// An error of the database file rather than of one write.
fn refuses_writes(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, ReadOnly, SystemIoFailure,
    };
    matches!(
        error.sqlite_error_code(),
        Some(DatabaseBusy | DatabaseLocked | DiskFull | ReadOnly | CannotOpen | SystemIoFailure)
    )
}

fn row_to_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredItem> {
    // By position, in `ITEM_COLUMNS` order (a name is looked up in every row).
    ItemRow {
        id: row.get(0)?,
        parent: row.get(1)?,
        parent_key: row.get(2)?,
        expanded: row.get::<_, i64>(3)? != 0,
        key: row.get(4)?,
        fields: row.get(5)?,
        step_index: row.get(6)?,
        status: row.get(7)?,
        attempts: row.get(8)?,
        error: row.get(9)?,
        bytes: row.get(10)?,
    }
    .decode()
    .map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The columns `row_to_item` reads, in its order.
const ITEM_COLUMNS: &str = "i.id, i.parent, (SELECT p.key FROM items p WHERE p.id = i.parent) AS parent_key, \
     i.expanded, i.key, i.fields, i.step_index, i.status, i.attempts, i.error, i.bytes";

fn record_output(
    tx: &Transaction<'_>,
    id: ItemId,
    step: i64,
    output: &Produced,
) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT OR REPLACE INTO outputs (item, step_index, path, bytes, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, step, output.path, bytes_i64(output.bytes), batch_now()],
    )?;
    Ok(())
}

/// Runs a statement through the connection's statement cache: the writer runs the same few
/// statements for every transition, and preparing one costs more than running it.
fn exec(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// How this store writes a [`Change`]: `?1` the item, `?2` the batch's clock.
const DIALECT: Dialect = Dialect {
    marker: '?',
    first: 3,
    now: "?2",
    filter: "id = ?1",
    renew: "",
    free: "",
};

/// One transition's update, in the writer's transaction; the rows it changed.
fn apply(tx: &Transaction<'_>, transition: Transition) -> rusqlite::Result<usize> {
    let change = Change::of(&transition);
    BATCH_NOW.with(|now| apply_at(tx, &change, &now.borrow()))
}

/// [`apply`], at the batch's clock `now`.
fn apply_at(tx: &Transaction<'_>, change: &Change<'_>, now: &str) -> rusqlite::Result<usize> {
    // Only an output needs the step index back; a plain update is cheaper.
    let (sql, values) = change.update(&DIALECT, change.output.is_some());
    let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&change.id, &now];
    bound.extend(values.iter().map(|value| match value {
        Value::Int(n) => n as &dyn rusqlite::ToSql,
        Value::Text(text) => text as &dyn rusqlite::ToSql,
    }));
    let mut statement = tx.prepare_cached(&sql)?;
    let Some((output, of)) = change.output else {
        return statement.execute(bound.as_slice());
    };
    let step: Option<i64> = statement
        .query_row(bound.as_slice(), |row| row.get(0))
        .optional()?;
    let Some(step) = step else {
        return Ok(0);
    };
    record_output(tx, change.id, Change::output_step(of, step), output)?;
    Ok(1)
}

/// One text column of the top-level items with these keys (those that exist), each read by
/// `parse`.
fn of_keys<T>(
    c: &Connection,
    column: &'static str,
    keys: Vec<String>,
    parse: impl Fn(String) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<(String, T)>> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {column} FROM items WHERE parent IS NULL AND key = ?1"
    ))?;
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        let value: Option<String> = statement
            .query_row(params![key], |row| row.get(0))
            .optional()?;
        if let Some(value) = value {
            found.push((key, parse(value)?));
        }
    }
    Ok(found)
}

fn bytes_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl SqliteStateStore {
    /// The state belongs to this job and plan (a state fingerprinted by an earlier release is
    /// given the canonical fingerprint); a new state records them.
    async fn check_job(&self, job: &JobInfo) -> Result<(), StateError> {
        let stored: Option<(String, String)> = self
            .read(|c| {
                c.query_row(
                    "SELECT name, fingerprint FROM job WHERE id = 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
            })
            .await?;
        match stored {
            Some((name, _)) if name != job.name => Err(StateError::OtherJob {
                location: self.location.clone(),
                stored: name,
                current: job.name.clone(),
            }),
            Some((_, fingerprint)) if job.earlier_fingerprints.contains(&fingerprint) => {
                // The same plan, fingerprinted by an earlier release: it now has its canonical one.
                let current = job.fingerprint.clone();
                self.write(Box::new(move |tx| {
                    tx.execute(
                        "UPDATE job SET fingerprint = ?1 WHERE id = 1 AND fingerprint = ?2",
                        params![current, fingerprint],
                    )
                    .map(|n| n as u64)
                }))
                .await
                .map(|_| ())
            }
            Some((_, fingerprint)) if fingerprint != job.fingerprint => {
                Err(StateError::PlanChanged {
                    location: self.location.clone(),
                    stored: fingerprint,
                    current: job.fingerprint.clone(),
                })
            }
            Some(_) => Ok(()),
            None => {
                let job = job.clone();
                self.write(Box::new(move |tx| {
                    tx.execute(
                        &format!(
                            "INSERT INTO job (id, name, fingerprint, schema_version, created_at)
                             VALUES (1, ?1, ?2, ?3, {NOW})"
                        ),
                        params![job.name, job.fingerprint, SCHEMA_VERSION],
                    )
                    .map(|n| n as u64)
                }))
                .await
                .map(|_| ())
            }
        }
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn begin(&self, job: &JobInfo) -> Result<(), StateError> {
        self.check_job(job).await?;
        // A run has the state open, as of now, in the file itself (not only in its log).
        self.write(Box::new(|tx| {
            tx.execute(
                "INSERT INTO run_open (id, running, commits) VALUES (1, 1, 0)
                 ON CONFLICT (id) DO UPDATE SET running = 1, commits = 0",
                [],
            )
            .map(|n| n as u64)
        }))
        .await?;
        self.flush().await?;
        // Then, in the log only, that the run has committed since: at once, not with the run's
        // first write. A log SQLite folds into the file (any connection's clean close, a
        // person's `sqlite3` included, does) brings it here; a log deleted takes it away. Left
        // to the first write, a run killed before it (a slow listing) had its log folded in by
        // whoever looked next, and the state, which had lost nothing, was refused.
        self.write(Box::new(|tx| {
            tx.execute("UPDATE run_open SET commits = 1 WHERE id = 1", [])
                .map(|n| n as u64)
        }))
        .await?;
        self.running
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    async fn insert(&self, items: Vec<NewItem>) -> Result<u64, StateError> {
        Ok(self.insert_reporting(items).await?.added)
    }

    async fn insert_reporting(&self, items: Vec<NewItem>) -> Result<Inserted, StateError> {
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            let fields =
                serde_json::to_string(&item.fields).map_err(|e| self.failed(e.to_string()))?;
            rows.push((item.key, fields));
        }
        // Rows ignored for a known key (rare): handed back, to be told apart.
        let ignored = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&ignored);
        let added = self
            .write(Box::new(move |tx| {
                let mut statement = tx.prepare_cached(
                    "INSERT OR IGNORE INTO items (key, fields, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?3)",
                )?;
                let now = batch_now();
                let mut added = 0;
                for (key, fields) in rows {
                    match statement.execute(params![key, fields, now])? {
                        0 => {
                            if let Ok(mut seen) = seen.lock() {
                                seen.push((key, fields));
                            }
                        }
                        n => added += n as u64,
                    }
                }
                Ok(added)
            }))
            .await?;
        let ignored = ignored
            .lock()
            .map(|mut i| std::mem::take(&mut *i))
            .unwrap_or_default();
        let candidates = ignored
            .into_iter()
            .map(|(key, fields)| NewItem {
                key,
                fields: serde_json::from_str(&fields).unwrap_or_default(),
            })
            .collect();
        Ok(Inserted { added, candidates })
    }

    async fn statuses_of(&self, keys: Vec<String>) -> Result<Vec<(String, Status)>, StateError> {
        self.read(move |c| {
            of_keys(c, "status", keys, |status| {
                status.parse().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
        })
        .await
    }

    async fn fields_of(&self, keys: Vec<String>) -> Result<Vec<(String, Fields)>, StateError> {
        self.read(move |c| {
            of_keys(c, "fields", keys, |fields| {
                Ok(serde_json::from_str(&fields).unwrap_or_default())
            })
        })
        .await
    }

    async fn insert_children(
        &self,
        parent: ItemId,
        items: Vec<NewItem>,
    ) -> Result<u64, StateError> {
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            let fields =
                serde_json::to_string(&item.fields).map_err(|e| self.failed(e.to_string()))?;
            rows.push((item.key, fields));
        }
        self.write(Box::new(move |tx| {
            let mut statement = tx.prepare_cached(
                "INSERT OR IGNORE INTO items (parent, key, fields, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )?;
            let now = batch_now();
            let mut added = 0;
            for (key, fields) in &rows {
                added += statement.execute(params![parent, key, fields, now])? as u64;
            }
            Ok(added)
        }))
        .await
    }

    /// In the writer's transaction: each claim added where free, then its target's owner read.
    async fn claim_targets(
        &self,
        claims: Vec<TargetClaim>,
    ) -> Result<Vec<(TargetClaim, String)>, StateError> {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let found = Arc::clone(&taken);
        self.write(Box::new(move |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO targets (step_index, target, key) VALUES (?1, ?2, ?3)",
            )?;
            let mut owner =
                tx.prepare_cached("SELECT key FROM targets WHERE step_index = ?1 AND target = ?2")?;
            let mut conflicts = Vec::new();
            for claim in claims {
                let step = i64::try_from(claim.step).unwrap_or(i64::MAX);
                if insert.execute(params![step, claim.target, claim.key])? == 1 {
                    continue;
                }
                let first: String = owner.query_row(params![step, claim.target], |r| r.get(0))?;
                if first != claim.key {
                    conflicts.push((claim, first));
                }
            }
            if let Ok(mut found) = found.lock() {
                *found = conflicts;
            }
            Ok(0)
        }))
        .await?;
        let mut taken = taken
            .lock()
            .map_err(|_| self.failed("the state writer panicked".to_owned()))?;
        Ok(std::mem::take(&mut *taken))
    }

    async fn set_expanded(&self, parent: ItemId) -> Result<(), StateError> {
        self.write(Box::new(move |tx| {
            tx.execute(
                &format!("UPDATE items SET expanded = 1, updated_at = {NOW} WHERE id = ?1"),
                params![parent],
            )
            .map(|n| n as u64)
        }))
        .await
        .map(|_| ())
    }

    async fn runnable_children(
        &self,
        parent: ItemId,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut statement = c.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items i WHERE i.id IN (
                   SELECT id FROM (SELECT id FROM items WHERE parent = ?1 AND status = 'pending' AND id > ?2 ORDER BY id LIMIT ?3)
                   UNION ALL
                   SELECT id FROM (SELECT id FROM items WHERE parent = ?1 AND status = 'running' AND id > ?2 ORDER BY id LIMIT ?3)
                   UNION ALL
                   SELECT id FROM (SELECT id FROM items INDEXED BY items_child_no_input WHERE parent = ?1 AND status = 'skipped' AND error = 'no input'
                                   AND id > ?2 ORDER BY id LIMIT ?3))
                 ORDER BY i.id LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![parent, after, limit], row_to_item)?;
            rows.collect()
        })
        .await
    }

    async fn outputs(&self, id: ItemId) -> Result<Vec<(usize, Produced)>, StateError> {
        self.read(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT step_index, path, bytes FROM outputs WHERE item = ?1 ORDER BY step_index",
            )?;
            let rows = statement.query_map(params![id], |row| {
                Ok((
                    usize::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                    Produced {
                        path: row.get(1)?,
                        bytes: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    },
                ))
            })?;
            rows.collect()
        })
        .await
    }

    async fn child_counts(&self, parent: ItemId) -> Result<ChildCounts, StateError> {
        self.read(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT status, count(*) FROM items WHERE parent = ?1 GROUP BY status",
            )?;
            let mut counts = ChildCounts::default();
            let rows = statement.query_map(params![parent], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (status, n) = row?;
                let n = u64::try_from(n).unwrap_or(0);
                counts.total += n;
                match status.as_str() {
                    "done" => counts.done += n,
                    "skipped" => counts.skipped += n,
                    "failed" => counts.failed += n,
                    _ => {}
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn set_source_complete(&self) -> Result<(), StateError> {
        self.write(Box::new(|tx| {
            tx.execute("UPDATE job SET source_complete = 1 WHERE id = 1", [])
                .map(|n| n as u64)
        }))
        .await
        .map(|_| ())
    }

    async fn source_revision(&self) -> Result<Option<String>, StateError> {
        self.read(|c| {
            c.query_row(
                "SELECT revision FROM source_revision WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn set_source_revision(&self, revision: String) -> Result<(), StateError> {
        self.write(Box::new(move |tx| {
            tx.execute(
                "INSERT INTO source_revision (id, revision) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET revision = ?1",
                params![revision],
            )
            .map(|n| n as u64)
        }))
        .await
        .map(|_| ())
    }

    async fn source_complete(&self) -> Result<bool, StateError> {
        self.read(|c| {
            c.query_row("SELECT source_complete FROM job WHERE id = 1", [], |row| {
                row.get::<_, i64>(0)
            })
            .optional()
            .map(|flag| flag == Some(1))
        })
        .await
    }

    async fn runnable(&self, after: ItemId, limit: usize) -> Result<Vec<StoredItem>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut statement = c.prepare_cached(&format!(
"SELECT {ITEM_COLUMNS} FROM items i WHERE i.id IN (
                   SELECT id FROM (SELECT id FROM items WHERE parent IS NULL AND status = 'pending' AND id > ?1 ORDER BY id LIMIT ?2)
                   UNION ALL
                   SELECT id FROM (SELECT id FROM items WHERE parent IS NULL AND status = 'running' AND id > ?1 ORDER BY id LIMIT ?2)
                   UNION ALL
                   SELECT id FROM (SELECT id FROM items INDEXED BY items_top_no_input WHERE parent IS NULL AND status = 'skipped' AND error = 'no input'
                                   AND id > ?1 ORDER BY id LIMIT ?2))
                 ORDER BY i.id LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![after, limit], row_to_item)?;
            rows.collect()
        })
        .await
    }

    async fn last_item(&self) -> Result<Option<StoredItem>, StateError> {
        self.read(move |c| {
            let mut statement = c.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items i
                 WHERE i.id = (SELECT max(id) FROM items WHERE parent IS NULL)"
            ))?;
            let mut rows = statement.query_map([], row_to_item)?;
            rows.next().transpose()
        })
        .await
    }

    async fn record(&self, transition: Transition) -> Result<(), StateError> {
        self.queue(transition).await
    }

    fn queue(&self, transition: Transition) -> redrive_core::state::Committing<'_> {
        let committed = self.enqueue(Some(Box::new(move |tx| {
            apply(tx, transition).map(|changed| changed as u64)
        })));
        Box::pin(async move { committed.await.map(|_| ()) })
    }

    /// One write for all: the writer commits them in one transaction (and a failure, always
    /// the file's, is every one's).
    async fn record_all(&self, transitions: Vec<Transition>) -> Vec<Result<(), StateError>> {
        let n = transitions.len();
        if n == 0 {
            return Vec::new();
        }
        let written = self
            .write(Box::new(move |tx| {
                for transition in transitions {
                    apply(tx, transition)?;
                }
                Ok(0)
            }))
            .await;
        match written {
            Ok(_) => (0..n).map(|_| Ok(())).collect(),
            Err(error) => {
                let message = match &error {
                    StateError::Backend { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                std::iter::once(Err(error))
                    .chain((1..n).map(|_| Err(self.failed(message.clone()))))
                    .collect()
            }
        }
    }

    async fn requeue(&self, which: Requeue) -> Result<u64, StateError> {
        self.write(Box::new(move |tx| {
            let reset = "status = 'pending', error = NULL, finished_at = NULL";
            let restart = format!(
                "{reset}, step_index = 0, step = NULL, attempts = 0, bytes = 0, updated_at = {NOW}"
            );
            let changed = match which {
                Requeue::Failed => tx.execute(
                    &format!(
                        "UPDATE items SET {reset}, updated_at = {NOW} WHERE status = 'failed'"
                    ),
                    [],
                )?,
                Requeue::Status(status) => tx.execute(
                    &format!("UPDATE items SET {restart} WHERE status = ?1"),
                    params![status.as_str()],
                )?,
                Requeue::Keys(keys) => {
                    let mut statement = tx.prepare_cached(&format!(
                        "UPDATE items SET {restart} WHERE key = ?1 AND parent IS NULL"
                    ))?;
                    // A reset work item redoes all its children (its listing is kept).
                    let mut children = tx.prepare_cached(&format!(
                        "UPDATE items SET {restart}
                         WHERE parent IN (SELECT id FROM items WHERE key = ?1 AND parent IS NULL)"
                    ))?;
                    let mut changed = 0;
                    for key in &keys {
                        changed += statement.execute(params![key])?;
                        children.execute(params![key])?;
                    }
                    changed
                }
            };
            Ok(changed as u64)
        }))
        .await
    }

    async fn skip(&self, keys: Vec<String>, reason: String) -> Result<u64, StateError> {
        self.write(Box::new(move |tx| {
            let mut statement = tx.prepare_cached(&format!(
                "UPDATE items SET status = 'skipped', error = ?2, updated_at = {NOW}, finished_at = {NOW}
                 WHERE key = ?1 AND parent IS NULL"
            ))?;
            let mut changed = 0;
            for key in &keys {
                changed += statement.execute(params![key, reason])? as u64;
            }
            Ok(changed)
        }))
        .await
    }

    async fn items_with_status(
        &self,
        status: Status,
        after: ItemId,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut statement = c.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items i
                 WHERE i.status = ?1 AND i.id > ?2 AND NOT (i.parent IS NULL AND i.expanded = 1)
                 ORDER BY i.id LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![status.as_str(), after, limit], row_to_item)?;
            rows.collect()
        })
        .await
    }

    async fn parents(
        &self,
        statuses: &[Status],
        limit: usize,
    ) -> Result<Vec<(StoredItem, ChildCounts)>, StateError> {
        let statuses: Vec<&'static str> = statuses.iter().map(|s| s.as_str()).collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let placeholders = vec!["?"; statuses.len()].join(", ");
            let mut statement = c.prepare(&format!(
                "SELECT {ITEM_COLUMNS},
                        (SELECT count(*) FROM items c WHERE c.parent = i.id) AS c_total,
                        (SELECT count(*) FROM items c WHERE c.parent = i.id AND c.status = 'done') AS c_done,
                        (SELECT count(*) FROM items c WHERE c.parent = i.id AND c.status = 'skipped') AS c_skipped,
                        (SELECT count(*) FROM items c WHERE c.parent = i.id AND c.status = 'failed') AS c_failed
                 FROM items i
                 WHERE i.parent IS NULL AND i.expanded = 1 AND i.status IN ({placeholders})
                 ORDER BY i.id LIMIT {limit}"
            ))?;
            let rows = statement.query_map(rusqlite::params_from_iter(statuses.iter()), |row| {
                let count = |name: &str| row.get::<_, i64>(name).map(|n| u64::try_from(n).unwrap_or(0));
                Ok((
                    row_to_item(row)?,
                    ChildCounts { total: count("c_total")?, done: count("c_done")?, skipped: count("c_skipped")?, failed: count("c_failed")? },
                ))
            })?;
            rows.collect()
        })
        .await
    }

    async fn activity(
        &self,
        buckets: u32,
        slowest: usize,
    ) -> Result<redrive_core::state::Activity, StateError> {
        use crate::activity::{SQLITE, STEP_TIMES, assemble, bucket_seconds};
        self.read(move |c| {
            let (start, end): (Option<f64>, Option<f64>) =
                c.query_row(&SQLITE.span(), [], |row| Ok((row.get(0)?, row.get(1)?)))?;
            let Some(span) = start.zip(end) else {
                return Ok(redrive_core::state::Activity::default());
            };
            let width = bucket_seconds(span, buckets);
            let timeline = c
                .prepare(&SQLITE.timeline(span.0, width))?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let durations = c
                .prepare(&SQLITE.durations())?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let slowest = c
                .prepare(&SQLITE.slowest(slowest))?
                .query_map([], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let steps = c
                .prepare(STEP_TIMES)?
                .query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(assemble(
                Some(span),
                width,
                timeline,
                durations,
                slowest,
                steps,
            ))
        })
        .await
    }

    async fn add_step_times(
        &self,
        times: Vec<redrive_core::state::StepTimes>,
    ) -> Result<(), StateError> {
        if times.is_empty() {
            return Ok(());
        }
        self.write(Box::new(move |tx| {
            let mut add = tx.prepare_cached(&crate::activity::ADD_STEP_TIMES.replace('$', "?"))?;
            for (step, name, bucket, ended, seconds) in crate::activity::step_time_rows(&times) {
                add.execute(params![step, name, bucket, ended, seconds])?;
            }
            Ok(0)
        }))
        .await
        .map(|_| ())
    }

    async fn summary(&self) -> Result<Summary, StateError> {
        self.read(|c| {
            let source_complete = c
                .query_row("SELECT source_complete FROM job WHERE id = 1", [], |row| row.get::<_, i64>(0))
                .optional()?
                == Some(1);
            let mut by_status = Vec::new();
            let mut children_by_status = Vec::new();
            for status in Status::ALL {
                let (top, children): (i64, i64) = c.query_row(
                    "SELECT coalesce(sum(parent IS NULL), 0), coalesce(sum(parent IS NOT NULL), 0)
                     FROM items WHERE status = ?1",
                    params![status.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                by_status.push((status, top.try_into().unwrap_or(0)));
                children_by_status.push((status, children.try_into().unwrap_or(0)));
            }
            let mut statement = c.prepare(
                "SELECT coalesce(step, '-'), status, count(*) FROM items
                 WHERE status IN ('pending', 'running', 'failed') AND NOT (parent IS NULL AND expanded = 1)
                 GROUP BY step, status ORDER BY min(step_index), step, status",
            )?;
            let by_step = statement
                .query_map([], |row| {
                    let status: String = row.get(1)?;
                    Ok((row.get::<_, String>(0)?, status, row.get::<_, i64>(2)?))
                })?
                .filter_map(|row| match row {
                    Ok((step, status, n)) => Some(Ok((step, status.parse().ok()?, n.try_into().unwrap_or(0)))),
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (bytes, active_seconds): (i64, f64) = c.query_row(
                "SELECT coalesce(sum(bytes), 0),
                        coalesce((julianday(max(finished_at)) - julianday(min(started_at))) * 86400.0, 0)
                 FROM items",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let no_input: i64 = c.query_row(
                "SELECT count(*) FROM items WHERE status = 'skipped' AND error = 'no input'",
                [],
                |row| row.get(0),
            )?;
            Ok(Summary {
                no_input: u64::try_from(no_input).unwrap_or(0),
                source_complete,
                by_status,
                children_by_status,
                by_step,
                bytes: bytes.try_into().unwrap_or(0),
                active_seconds,
            })
        })
        .await
    }

    /// Also moves what the WAL holds into the database file (the engine flushes when a run
    /// ends), so that after a run the file alone is the whole state: a state copied without
    /// its `-wal`, or whose `-wal` was lost, keeps every item.
    async fn flush(&self) -> Result<(), StateError> {
        self.send(None).await.map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    /// The batch clock writes what SQLite's `NOW` writes, so timestamps of both kinds sort and
    /// compare as text.
    #[test]
    fn batch_time_has_the_form_of_sqlite_now() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let sqlite: String = db
            .query_row(&format!("SELECT {}", super::NOW), [], |row| row.get(0))
            .unwrap();
        let ours = super::now_text();
        assert_eq!(ours.len(), sqlite.len(), "{ours} vs {sqlite}");
        let shape = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect::<String>()
        };
        assert_eq!(shape(&ours), shape(&sqlite));
        assert_eq!(&ours[..13], &sqlite[..13], "same hour, in UTC");
    }
}
