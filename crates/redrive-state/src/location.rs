//! The front door: where a job's state is (a SQLite file, the default, or a PostgreSQL
//! database, one schema per job), its shards' states, and opening it for a run (run lock
//! taken, `--restart` honoured) or for reading. Every command opens a state through here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redrive_core::source::Shard;
use redrive_core::state::{StateError, StateStore};

use crate::{PostgresStateStore, RunLock, SqliteStateStore};

/// A state's place.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateLocation {
    /// A SQLite file.
    File(PathBuf),
    /// A job's schema in a PostgreSQL database.
    Postgres {
        /// `postgres://…` (may hold a password: display it masked).
        url: String,
        /// The job (its schema is derived from it).
        job: String,
    },
}

/// A state location that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// A PostgreSQL state without a job to pick its schema.
    #[error("a PostgreSQL state holds many jobs: redrive needs the plan to know which")]
    NeedsJob,
    /// A URL that is not PostgreSQL.
    #[error("state `{0}` is neither a file nor a PostgreSQL URL")]
    Unsupported(String),
}

/// Why a state could not be opened for a run.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E> {
    /// The state refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// `--restart` was not confirmed.
    #[error("the restart was not confirmed")]
    Declined(E),
}

/// A run lock (`RunLock` or `PgRunLock`), held for its `Drop`.
type Lock = Box<dyn std::any::Any + Send + Sync>;

/// An open state and what holds it (the run lock, for a run).
pub struct OpenState {
    /// The store.
    pub store: Arc<dyn StateStore>,
    /// Where it is, for people (secrets masked).
    pub location: String,
    _lock: Option<Lock>,
}

impl StateLocation {
    /// `path` or `postgres://…`; `job` (the plan's name) picks a PostgreSQL state's schema.
    pub fn parse(text: &str, job: Option<&str>) -> Result<Self, LocationError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let job = job.ok_or(LocationError::NeedsJob)?;
            return Ok(StateLocation::Postgres {
                url: text.to_owned(),
                job: job.to_owned(),
            });
        }
        if text.contains("://") {
            return Err(LocationError::Unsupported(
                redrive_core::secrets::redact(text).into_owned(),
            ));
        }
        Ok(StateLocation::File(PathBuf::from(text)))
    }

    /// The state of one shard: `STATE.shard-I-of-N.EXT` beside the file, or the job's schema
    /// with `-shard-I-of-N`.
    pub fn for_shard(&self, shard: Shard) -> StateLocation {
        let suffix = format!("shard-{}-of-{}", shard.index, shard.count);
        match self {
            StateLocation::File(path) => {
                let stem = path
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                let name = match path.extension() {
                    Some(ext) => format!("{stem}.{suffix}.{}", ext.to_string_lossy()),
                    None => format!("{stem}.{suffix}"),
                };
                StateLocation::File(path.with_file_name(name))
            }
            StateLocation::Postgres { url, job } => StateLocation::Postgres {
                url: url.clone(),
                job: format!("{job}-{suffix}"),
            },
        }
    }

    /// Every shard's state at once, for people: `STATE.shard-*` or the PostgreSQL job's.
    pub fn shards_display(&self) -> String {
        match self {
            StateLocation::File(path) => format!("{}.shard-*", path.display()),
            StateLocation::Postgres { job, .. } => format!("PostgreSQL, job {job}-shard-*"),
        }
    }

    /// The shard states that exist beside a file state, with their shard, in shard order.
    pub fn shard_files(&self) -> Vec<(Shard, PathBuf)> {
        let StateLocation::File(path) = self else {
            return Vec::new();
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let stem = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let ext = path
            .extension()
            .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
        let prefix = format!("{stem}.shard-");
        let mut found: Vec<(Shard, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let middle = name.strip_prefix(&prefix)?.strip_suffix(&ext)?;
                let (index, count) = middle.split_once("-of-")?;
                let shard = Shard::parse(&format!("{index}/{count}")).ok()?;
                Some((shard, dir.join(&name)))
            })
            .collect();
        found.sort_by_key(|(shard, _)| (shard.count, shard.index));
        found
    }

    /// Opens (or creates) the state for a run, taking the run lock; `restart` discards it
    /// first, once `confirm` (given what would be discarded) agrees. `lease`: how long a
    /// PostgreSQL state leases the items this run claims.
    pub async fn open_for_run<E>(
        &self,
        lease: std::time::Duration,
        restart: bool,
        confirm: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<OpenState, OpenError<E>> {
        match self {
            StateLocation::File(path) => {
                let lock = RunLock::acquire(path)?;
                if restart && path.exists() {
                    confirm(&path.display().to_string()).map_err(OpenError::Declined)?;
                    SqliteStateStore::remove(path)?;
                }
                let store = SqliteStateStore::open(path)?;
                // The file holds its schema now: from here on, a 0-byte file is a truncated one.
                lock.mark_used();
                let location = store.location().to_owned();
                Ok(OpenState {
                    store: Arc::new(store),
                    location,
                    _lock: Some(Box::new(lock) as Lock),
                })
            }
            StateLocation::Postgres { url, job } => {
                // Runs share the job (each holds the run lock shared and claims items under
                // leases); `--restart` needs it alone, so it never drops the state under a
                // worker.
                let mut store = PostgresStateStore::connect(url, job).await?;
                if restart {
                    confirm(store.location()).map_err(OpenError::Declined)?;
                    let alone = store.lock_run(true).await?;
                    PostgresStateStore::discard(url, job).await?;
                    drop(alone);
                    store = PostgresStateStore::connect(url, job).await?;
                }
                let store = store.with_lease(lease);
                let lock = store.lock_run(false).await?;
                let location = store.location().to_owned();
                Ok(OpenState {
                    store: Arc::new(store),
                    location,
                    _lock: Some(Box::new(lock) as Lock),
                })
            }
        }
    }

    /// Opens an existing state for reading or hand edits; [`StateError::Missing`] when there
    /// is none.
    pub async fn open_existing(&self) -> Result<OpenState, StateError> {
        match self {
            StateLocation::File(path) => {
                let store = SqliteStateStore::open_existing(path)?;
                let location = store.location().to_owned();
                Ok(OpenState {
                    store: Arc::new(store),
                    location,
                    _lock: None,
                })
            }
            StateLocation::Postgres { url, job } => {
                let store = PostgresStateStore::connect(url, job).await?;
                let location = store.location().to_owned();
                Ok(OpenState {
                    store: Arc::new(store),
                    location,
                    _lock: None,
                })
            }
        }
    }
}

impl StateLocation {
    /// Opens an existing state to change it by hand (`reset`, `skip`), holding the run lock
    /// alone: [`StateError::Locked`] while a run (or any worker of a shared job) uses it, so a
    /// hand edit never races a run's own writes.
    pub async fn open_alone(&self) -> Result<OpenState, StateError> {
        match self {
            StateLocation::File(path) => {
                if !path.exists() {
                    return Err(StateError::Missing {
                        location: path.display().to_string(),
                    });
                }
                let lock = RunLock::acquire(path)?;
                let mut opened = self.open_existing().await?;
                opened._lock = Some(Box::new(lock) as Lock);
                Ok(opened)
            }
            StateLocation::Postgres { url, job } => {
                let store = PostgresStateStore::connect(url, job).await?;
                let lock = store.lock_run(true).await?;
                let location = store.location().to_owned();
                Ok(OpenState {
                    store: Arc::new(store),
                    location,
                    _lock: Some(Box::new(lock) as Lock),
                })
            }
        }
    }
}

impl SqliteStateStore {
    /// Deletes a state file and its WAL and shared-memory files (what `--restart` discards).
    pub fn remove(path: &Path) -> Result<(), StateError> {
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StateError::Backend {
                        location: file.display().to_string(),
                        message: format!("cannot remove it: {e}"),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_shard() {
        assert_eq!(
            StateLocation::parse("a/state.db", None).ok(),
            Some(StateLocation::File(PathBuf::from("a/state.db")))
        );
        assert!(matches!(
            StateLocation::parse("postgres://u@h/db", None),
            Err(LocationError::NeedsJob)
        ));
        assert!(matches!(
            StateLocation::parse("s3://b/state.db", Some("j")),
            Err(LocationError::Unsupported(_))
        ));
        let shard = Shard { index: 1, count: 4 };
        assert_eq!(
            StateLocation::File(PathBuf::from("a/state.db")).for_shard(shard),
            StateLocation::File(PathBuf::from("a/state.shard-1-of-4.db"))
        );
        let pg = StateLocation::parse("postgres://u@h/db", Some("job")).ok();
        assert_eq!(
            pg.map(|p| p.for_shard(shard)),
            Some(StateLocation::Postgres {
                url: "postgres://u@h/db".to_owned(),
                job: "job-shard-1-of-4".to_owned()
            })
        );
    }
}
