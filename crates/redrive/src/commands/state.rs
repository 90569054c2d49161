//! Where a job's state is: a SQLite file (the default) or a PostgreSQL database
//! (`state = "postgres://…"`, one schema per job), opened for a run or for reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redrive_connectors::Plan;
use redrive_core::source::Shard;
use redrive_core::state::{StateError, StateStore};
use redrive_state::{PostgresStateStore, RunLock, SqliteStateStore};

use crate::cli::StateArg;
use crate::exit::Hinted;

/// A state's place.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    File(PathBuf),
    Postgres { url: String, job: String },
}

impl Target {
    /// The state of one shard: `STATE.shard-I-of-N.EXT` beside the file, or the job's schema
    /// with `-shard-I-of-N`.
    pub(crate) fn for_shard(&self, shard: Shard) -> Target {
        let suffix = format!("shard-{}-of-{}", shard.index, shard.count);
        match self {
            Target::File(path) => {
                let stem = path
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                let name = match path.extension() {
                    Some(ext) => format!("{stem}.{suffix}.{}", ext.to_string_lossy()),
                    None => format!("{stem}.{suffix}"),
                };
                Target::File(path.with_file_name(name))
            }
            Target::Postgres { url, job } => Target::Postgres {
                url: url.clone(),
                job: format!("{job}-{suffix}"),
            },
        }
    }

    /// The shard states that exist beside a file state, with their shard, in shard order.
    pub(crate) fn shard_files(&self) -> Vec<(Shard, PathBuf)> {
        let Target::File(path) = self else {
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
}

fn is_postgres(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// `--state`, else the plan's `[job] state`.
pub(crate) fn target(plan: Option<&Plan>, arg: &StateArg) -> anyhow::Result<Target> {
    let text = match (&arg.state, plan) {
        (Some(state), _) => state.display().to_string(),
        (None, Some(plan)) => plan.state.clone(),
        (None, None) => {
            anyhow::bail!("no plan and no --state: give the plan file, or the state with --state")
        }
    };
    if is_postgres(&text) {
        let Some(plan) = plan else {
            return Err(Hinted {
                message: "a PostgreSQL state holds many jobs: redrive needs the plan to know which"
                    .to_owned(),
                hint: "give the plan file too".to_owned(),
            }
            .into());
        };
        return Ok(Target::Postgres {
            url: text,
            job: plan.name.clone(),
        });
    }
    if text.contains("://") {
        return Err(Hinted {
            message: format!(
                "state `{}` is neither a file nor a PostgreSQL URL",
                redrive_core::secrets::redact(&text)
            ),
            hint: "use a file path, or postgres://USER@HOST:PORT/DATABASE".to_owned(),
        }
        .into());
    }
    Ok(Target::File(PathBuf::from(text)))
}

/// A run lock (`RunLock` or `PgRunLock`), held for its `Drop`.
type Lock = Box<dyn std::any::Any + Send + Sync>;

/// An open state and what holds it.
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) location: String,
    _lock: Option<Lock>,
}

/// Opens (or creates) the state for a run, taking the run lock; `restart` discards it first
/// (after `confirm`). `lease`: how long a PostgreSQL state leases the items this run claims.
pub(crate) async fn open_for_run(
    target: &Target,
    lease: std::time::Duration,
    restart: bool,
    confirm: impl FnOnce(&str) -> anyhow::Result<()>,
    plan_path: &Path,
) -> anyhow::Result<Opened> {
    let fail = |e: StateError| super::state_error(e, plan_path);
    match target {
        Target::File(path) => {
            let lock = RunLock::acquire(path).map_err(fail)?;
            if restart && path.exists() {
                confirm(&path.display().to_string())?;
                super::remove_state(path)?;
            }
            let store = SqliteStateStore::open(path).map_err(fail)?;
            let location = store.location().to_owned();
            Ok(Opened {
                store: Arc::new(store),
                location,
                _lock: Some(Box::new(lock) as Lock),
            })
        }
        Target::Postgres { url, job } => {
            // Runs share the job (each holds the run lock shared and claims items under
            // leases); `--restart` needs it alone, so it never drops the state under a worker.
            let mut store = PostgresStateStore::connect(url, job).await.map_err(fail)?;
            if restart {
                confirm(store.location())?;
                let alone = store.lock_run(true).await.map_err(fail)?;
                PostgresStateStore::discard(url, job).await.map_err(fail)?;
                drop(alone);
                store = PostgresStateStore::connect(url, job).await.map_err(fail)?;
            }
            let store = store.with_lease(lease);
            let lock = store.lock_run(false).await.map_err(fail)?;
            let location = store.location().to_owned();
            Ok(Opened {
                store: Arc::new(store),
                location,
                _lock: Some(Box::new(lock) as Lock),
            })
        }
    }
}

/// Opens an existing state for reading or hand edits.
pub(crate) async fn open_existing(target: &Target, plan_path: &Path) -> anyhow::Result<Opened> {
    let missing = |error: StateError| match error {
        StateError::Missing { .. } => anyhow::Error::new(Hinted {
            message: error.to_string(),
            hint: format!("run `redrive run {}` first", plan_path.display()),
        }),
        other => super::state_error(other, plan_path),
    };
    match target {
        Target::File(path) => {
            let store = SqliteStateStore::open_existing(path).map_err(missing)?;
            let location = store.location().to_owned();
            Ok(Opened {
                store: Arc::new(store),
                location,
                _lock: None,
            })
        }
        Target::Postgres { url, job } => {
            let store = PostgresStateStore::connect(url, job)
                .await
                .map_err(missing)?;
            let location = store.location().to_owned();
            Ok(Opened {
                store: Arc::new(store),
                location,
                _lock: None,
            })
        }
    }
}
