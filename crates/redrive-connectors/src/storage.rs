//! URLs to OpenDAL operators: the one place that knows how `s3://`, `az://`, `gs://`,
//! `https://ACCOUNT.blob.core.windows.net/…`, `file://` and plain paths are reached.
//!
//! Operators are built once per bucket or container and cached. Endpoints and credentials come
//! from a matching `[store."PREFIX"]` table first, then the environment, read the way each
//! cloud's own tools read it. Each operator retries a failed call on the spot (OpenDAL's
//! `RetryLayer`, `CALL_RETRIES` times, jittered), so one failed part is sent again alone;
//! what still fails reaches the engine, which retries the whole step with its backoff and
//! honours Retry-After (see `redrive_core::retry`). A call retried for throttling tells the
//! step's adaptive limit (`redrive_core::throttle`).

use crate::azure_account;
use crate::gcs_sign::GcsCredential;
use redrive_core::env_vars;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::local_file::{LocalDirs, LocalFile};

use opendal::{ErrorKind, Operator, services};
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::job::StoreSpec;
use redrive_core::secrets;

/// Bound on cached operators; past it the cache starts over (operators are cheap to rebuild).
/// Store-level retries are routine: logged at debug, not as warnings (`-vv` shows them).
struct QuietRetries;

/// Storage calls retried on the spot by the store layer, in this process.
static CALL_RETRIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many storage calls (a request, a part) were retried on the spot so far: throttling and
/// resets the steps never saw, for `--metrics`.
pub fn calls_retried() -> u64 {
    CALL_RETRIED.load(std::sync::atomic::Ordering::Relaxed)
}

impl opendal::layers::RetryInterceptor for QuietRetries {
    fn intercept(&self, event: opendal::layers::RetryEvent<'_>) {
        CALL_RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if is_throttling(event.err) {
            redrive_core::throttle::report_throttled();
        }
        tracing::debug!(operation = %event.op, attempt = event.attempt, delay = ?event.retry_after, error = %secrets::redact(&event.err.to_string()), "Retrying a storage call.");
    }
}

/// Retries of one storage call (a request, a part) before its step fails.
const CALL_RETRIES: usize = 2;
const CACHE_LIMIT: usize = 4_096;
/// Deadline of a call that moves no body (stat, list page, delete).
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Deadline of one read or write of a body (one chunk or part).
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `path` with `.` and `..` resolved by their text (no file is looked at), and a trailing `/`
/// kept when `written` had one (it marks a prefix to list). The file-system service lists
/// `dir/../in/` forever; `in/` it lists once.
fn normalized(path: &Path, written: &str) -> PathBuf {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !clean.pop() {
                    clean.push("/");
                }
            }
            other => clean.push(other.as_os_str()),
        }
    }
    if written.ends_with('/') && !clean.as_os_str().is_empty() && clean != Path::new("/") {
        let mut text = clean.into_os_string();
        text.push("/");
        clean = PathBuf::from(text);
    }
    clean
}

/// The URL schemes a storage URL may have.
const SCHEMES: &[&str] = &["s3", "gs", "az", "azure", "https", "http", "file"];

/// Checks the start of a storage location as a plan writes it (pure): a typo in a scheme
/// (`s3:/bucket`, `gs:bucket`, `s4://bucket`) would otherwise be taken for a local path, or
/// fail every item later. `key` names the plan key in the message. Only the part before the
/// first `{` is checked; a location that is all template (`{url}`) is checked when used.
pub fn check_location(key: &str, location: &str) -> Result<(), String> {
    let literal = location.split('{').next().unwrap_or_default();
    match scheme_error(literal) {
        Some(message) => Err(format!("`{key}` = `{location}`: {message}")),
        None => Ok(()),
    }
}

/// What is wrong with the scheme `text` starts with, if anything.
fn scheme_error(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once(':')?;
    let looks_like_scheme = scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !looks_like_scheme {
        return None;
    }
    let known = SCHEMES.contains(&scheme.to_ascii_lowercase().as_str());
    if rest.starts_with("//") {
        return (!known).then(|| {
            format!(
                "`{scheme}://` is not a store redrive knows; use s3://BUCKET/KEY, az://CONTAINER/PATH, gs://BUCKET/KEY, https://…, file:///PATH or a plain path"
            )
        });
    }
    known.then(|| {
        format!(
            "`{scheme}:` must be followed by `//`; write `{scheme}://{}`",
            rest.trim_start_matches('/')
        )
    })
}

/// A URL that cannot be turned into an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The scheme is not one redrive reaches.
    #[error(
        "`{url}` is not a storage URL redrive knows; use s3://BUCKET/KEY, az://CONTAINER/PATH, gs://BUCKET/KEY, https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH, file:///PATH or a plain path"
    )]
    Unsupported {
        /// The URL, secrets masked.
        url: String,
    },
    /// The URL lacks its bucket or container.
    #[error("`{url}` has no {what}; write it as {example}")]
    Incomplete {
        /// The URL, secrets masked.
        url: String,
        /// What is missing.
        what: &'static str,
        /// The expected form.
        example: &'static str,
    },
    /// The key cannot be reached as written: the storage layer would read or write another
    /// object (OpenDAL merges `a//k` and `a/./k` into `a/k`), or it names a folder.
    #[error("`{url}` {why}")]
    Unaddressable {
        /// The URL, secrets masked.
        url: String,
        /// What is wrong with it and what to do.
        why: &'static str,
    },
    /// Settings are missing (e.g. which Azure account `az://` means).
    #[error("cannot reach `{url}`: {hint}")]
    Settings {
        /// The URL, secrets masked.
        url: String,
        /// What to set.
        hint: String,
    },
    /// A local target's folder cannot be made (a file has its name, or a folder above it is
    /// not writable): that item's problem, not the run's.
    #[error("cannot make the folder for `{url}`: {why}")]
    TargetFolder {
        /// The target, as written.
        url: String,
        /// What is in the way and what to do.
        why: String,
    },
    /// OpenDAL refused the configuration.
    #[error("cannot configure storage for `{url}`")]
    Config {
        /// The URL, secrets masked.
        url: String,
        /// The cause.
        #[source]
        source: opendal::Error,
    },
}

/// Why `target` cannot be used as written, if it cannot. An object key is taken as it is:
/// one with an empty segment (`a//k`), or a `.` or `..` segment, is one OpenDAL would turn into
/// another key (`a/k`), reading or overwriting a different object, so the item fails instead.
/// A target to write must name an object or a file, not a folder (`pfx/`, `out/.`, empty).
fn unaddressable(target: &Target, url: &str, write: bool) -> Option<&'static str> {
    let key = match target {
        Target::S3 { key, .. } | Target::Gcs { key, .. } => key.as_str(),
        Target::Azure { path, .. } => path.as_str(),
        Target::Local(_) => {
            let text = url.split_once('?').map_or(url, |(path, _)| path);
            let last = text.rsplit('/').next().unwrap_or(text);
            return (write && matches!(last, "" | "." | "..")).then_some(
                "names a folder, not a file to write: the value that ends it is empty, `.` or `..`",
            );
        }
    };
    let inner = key.strip_suffix('/').unwrap_or(key);
    if !inner.is_empty()
        && inner
            .split('/')
            .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Some(
            "has an empty, `.` or `..` segment in its key (`//`, `/./`): the storage layer would \
             take it for another key and read or write a different object; rename the object or \
             fix the value that builds the key",
        );
    }
    (write && (key.is_empty() || key.ends_with('/')))
        .then_some("names a folder (its key is empty or ends with `/`), not an object to write")
}

/// A local target's folder that could not be made, said as what is in the way.
fn target_folder(display: &str, error: &std::io::Error) -> StorageError {
    let why = match error.kind() {
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
            "a file has the name of one of its folders; rename or move that file, or change the target"
                .to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied; make the folder above it writable".to_owned()
        }
        _ => error.to_string(),
    };
    StorageError::TargetFolder {
        url: display.to_owned(),
        why,
    }
}

impl From<StorageError> for StepError {
    fn from(error: StorageError) -> Self {
        let class = match &error {
            StorageError::Unsupported { .. }
            | StorageError::Incomplete { .. }
            | StorageError::Unaddressable { .. }
            | StorageError::TargetFolder { .. } => ErrorClass::Permanent,
            StorageError::Settings { .. } | StorageError::Config { .. } => ErrorClass::Fatal,
        };
        let message = error.to_string();
        match error {
            StorageError::Config { source, .. } => {
                StepError::new(class, message).with_source(source)
            }
            _ => StepError::new(class, message),
        }
    }
}

/// An object: the operator that reaches it and its path there.
#[derive(Clone, Debug)]
pub struct Location {
    /// The configured operator.
    pub operator: Operator,
    /// The object's path inside the operator's root.
    pub path: String,
    /// The URL as given, secrets masked, for messages.
    pub display: String,
    /// True for local files.
    pub local: bool,
    /// The slowest a body read from or written to it may move.
    pub floor: RateFloor,
    /// For a local file: its path, and (for a write) where its temporary file goes and its
    /// file system's group sync (see `local_file`).
    pub(crate) file: Option<LocalFile>,
}

/// The slowest a body may move: fewer than `bytes_per_s × window` bytes over a whole `window`
/// fails the attempt. A per-call timeout never trips on a body that trickles a byte a second
/// (100 KB would take a day); this does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateFloor {
    /// Bytes per second, at the least.
    pub bytes_per_s: u64,
    /// Over how long the rate is measured (the store's `timeout`).
    pub window: std::time::Duration,
}

/// `min_rate` unless a `[store]` table says otherwise: a link far slower than this is broken.
const DEFAULT_MIN_RATE: u64 = 1024;

impl RateFloor {
    fn of(spec: Option<&StoreSpec>) -> Self {
        Self {
            bytes_per_s: spec
                .and_then(StoreSpec::min_rate)
                .unwrap_or(DEFAULT_MIN_RATE),
            window: spec.and_then(StoreSpec::timeout).unwrap_or(IO_TIMEOUT),
        }
    }

    /// Watches one body against the floor.
    pub fn watch(self) -> RateWatch {
        RateWatch {
            floor: self,
            since: tokio::time::Instant::now(),
            bytes: 0,
        }
    }
}

/// One body's progress against its [`RateFloor`], window by window.
#[derive(Debug)]
pub struct RateWatch {
    floor: RateFloor,
    since: tokio::time::Instant,
    bytes: u64,
}

impl RateWatch {
    /// When the current window ends.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.since + self.floor.window
    }

    /// `n` bytes moved.
    pub fn add(&mut self, n: u64) {
        self.bytes += n;
    }

    /// At the end of a window: an error when too little moved in it, else a new window.
    pub fn check(&mut self) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        if now < self.deadline() {
            return Ok(());
        }
        let seconds = now.duration_since(self.since).as_secs_f64();
        let rate = self.bytes as f64 / seconds.max(0.001);
        if rate < self.floor.bytes_per_s as f64 {
            return Err(format!(
                "{} bytes in {seconds:.0} s ({rate:.0} B/s), below the floor of {} B/s: the \
                 transfer is stalled or trickling (`min_rate` and `timeout` in [store.\"…\"] \
                 set the floor)",
                self.bytes, self.floor.bytes_per_s
            ));
        }
        self.since = now;
        self.bytes = 0;
        Ok(())
    }
}

/// Resolves URLs to operators, with the plan's `[store]` tables and the environment.
#[derive(Debug)]
pub struct Stores {
    base_dir: PathBuf,
    specs: Vec<(String, StoreSpec)>,
    env: Env,
    cache: Mutex<HashMap<String, Operator>>,
    /// Where local copies are written before they are renamed into place (see
    /// [`Stores::with_partial_dir`]).
    partial: Option<Partial>,
    /// Local target folders seen (for local → local copies).
    local_dirs: LocalDirs,
    /// The job's own files (its state, its logs), which a local listing leaves out.
    own: Option<OwnFiles>,
}

/// The files a job writes for itself while it runs: a listing of a folder that holds them
/// (`list = "."` beside the plan) would copy a torn copy of the state database.
#[derive(Debug)]
struct OwnFiles {
    /// The logs folder (and the `.partial` copies in it).
    logs: PathBuf,
    /// The state file's folder, and how the names of its files there start: `job.db` (with
    /// `-wal`, `-shm`, `.lock` beside it) and `job.shard-` for shards. `None`: no state file.
    state: Option<(PathBuf, [String; 2])>,
}

/// redrive's own folder for local files being written: a copy cut off by a crash leaves its
/// temporary file here, not beside the targets in a folder another program reads.
#[derive(Debug)]
struct Partial {
    dir: PathBuf,
    /// Its file system, once it has been created (at the first local write, when its stale
    /// files of a run that died are removed too); `None` if it cannot be. A target on another
    /// file system is written beside itself (a rename cannot cross file systems).
    device: std::sync::OnceLock<Option<u64>>,
}

/// A temporary file not written to for this long belongs to no live copy (the rate floor
/// fails a transfer long before): it is removed.
const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

impl Partial {
    /// The folder for a write into `dir`: this one when it is on the same file system.
    fn for_target(&self, dir: &Path) -> Option<&Path> {
        use std::os::unix::fs::MetadataExt as _;
        let ours = *self.device.get_or_init(|| {
            std::fs::create_dir_all(&self.dir).ok()?;
            remove_stale(&self.dir);
            Some(std::fs::metadata(&self.dir).ok()?.dev())
        });
        let theirs = std::fs::metadata(dir).ok()?.dev();
        (ours == Some(theirs)).then_some(self.dir.as_path())
    }
}

/// Removes the files in `dir` that nothing has written to for `STALE_PARTIAL`.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if stale {
            tracing::info!(file = %entry.path().display(), "Removing the temporary file of a copy a crash cut off.");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The environment variables storage reads, captured once.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment from pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    pub(crate) fn first(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|name| self.vars.get(*name).filter(|v| !v.is_empty()).cloned())
    }
}

/// One GCS object as redrive's own requests reach it (`Stores::gcs_object`).
pub(crate) struct GcsObject {
    /// `https://storage.googleapis.com`, the `[store]` table's endpoint or the emulator's,
    /// without a trailing `/`.
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) key: String,
    pub(crate) credential: crate::gcs_sign::GcsCredential,
    /// The URL, secrets masked.
    pub(crate) display: String,
}

/// One S3 object as redrive's own requests reach it (`Stores::s3_object`).
pub(crate) struct S3Object {
    pub(crate) access: crate::s3_bucket::S3Access,
    pub(crate) key: String,
    /// The URL, secrets masked.
    pub(crate) display: String,
}

/// A parsed storage URL.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Local(PathBuf),
    S3 {
        bucket: String,
        key: String,
    },
    Azure {
        account: Option<String>,
        endpoint: Option<String>,
        container: String,
        path: String,
        sas: Option<String>,
    },
    Gcs {
        bucket: String,
        key: String,
    },
}

impl Stores {
    /// Resolver for a plan whose relative paths are relative to `base_dir`.
    pub fn new(base_dir: &Path, specs: Vec<(String, StoreSpec)>, env: Env) -> Self {
        // OpenDAL 0.59 needs its HTTP transport installed once per process; idempotent.
        opendal::install_default();
        Self {
            base_dir: base_dir.to_path_buf(),
            specs,
            env,
            cache: Mutex::new(HashMap::new()),
            partial: None,
            local_dirs: LocalDirs::default(),
            own: None,
        }
    }

    /// The job's own files, left out of local listings: its logs folder and, for a state in
    /// a file, that file and the files SQLite and redrive keep beside it.
    pub fn with_own_files(mut self, logs: PathBuf, state: Option<&Path>) -> Self {
        let state = state.and_then(|file| {
            let name = file.file_name()?.to_string_lossy().into_owned();
            let stem = file.file_stem()?.to_string_lossy();
            let shards = format!("{stem}.shard-");
            Some((file.parent()?.to_path_buf(), [name, shards]))
        });
        self.own = Some(OwnFiles { logs, state });
        self
    }

    /// Whether `path` (absolute) is one of the job's own files.
    pub(crate) fn is_own(&self, path: &Path) -> bool {
        let Some(own) = &self.own else {
            return false;
        };
        if path.starts_with(&own.logs) {
            return true;
        }
        let Some((dir, starts)) = &own.state else {
            return false;
        };
        path.parent() == Some(dir.as_path())
            && path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                starts.iter().any(|start| name.starts_with(start.as_str()))
            })
    }

    /// Writes local files in `dir` (created at the first local write) before renaming them into place, rather than
    /// beside their targets: after a kill -9 no temporary file is left in a target folder.
    /// A target on another file system is still written beside itself.
    pub fn with_partial_dir(mut self, dir: PathBuf) -> Self {
        self.partial = Some(Partial {
            dir,
            device: std::sync::OnceLock::new(),
        });
        self
    }

    /// The S3 bucket `url` is in and the object's key, with where and as whom the bucket is
    /// reached, when its credentials are given as keys (a `[store]` table or
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`); `None` for other stores, or credentials
    /// from a profile or an instance role (redrive signs its own requests only with keys).
    pub(crate) fn s3_object(&self, url: &str) -> Option<S3Object> {
        let display = secrets::redact(url).into_owned();
        let Ok(Target::S3 { bucket, key }) = self.parse(url, &display) else {
            return None;
        };
        let spec = self.spec_for(url).cloned().unwrap_or_default();
        let keys = crate::aws_sign::AwsKeys::of(&spec, &self.env)?;
        let endpoint = spec
            .endpoint
            .clone()
            .or_else(|| self.env.first(env_vars::AWS_S3_ENDPOINT));
        Some(S3Object {
            access: crate::s3_bucket::S3Access {
                bucket,
                region: crate::aws_sign::region(&spec, &self.env),
                endpoint,
                virtual_host: spec.virtual_host_style,
                keys,
            },
            key,
            display,
        })
    }

    /// The GCS bucket `url` is in and the object's key, with where and as whom the bucket is
    /// reached (`gcs_access`).
    pub(crate) fn gcs_object(&self, url: &str) -> Option<GcsObject> {
        let display = secrets::redact(url).into_owned();
        let Ok(Target::Gcs { bucket, key }) = self.parse(url, &display) else {
            return None;
        };
        let spec = self.spec_for(url).cloned().unwrap_or_default();
        let (endpoint, credential) = gcs_access(&spec, &self.env);
        Some(GcsObject {
            endpoint,
            bucket,
            key,
            credential,
            display,
        })
    }

    /// A client for the unfinished multipart uploads of the S3 bucket `url` is in (see
    /// [`Stores::s3_object`] for when there is one).
    pub(crate) fn s3_uploads(&self, url: &str) -> Option<crate::s3_bucket::S3Bucket> {
        let object = self.s3_object(url)?;
        Some(crate::s3_bucket::S3Bucket::new(
            &object.access,
            crate::http_client::client(std::time::Duration::from_secs(60)),
        ))
    }

    /// The operator and path for reading or stat-ing `url`.
    pub fn resolve(&self, url: &str) -> Result<Location, StorageError> {
        self.locate(url, false)
    }

    /// The operator and path for writing `url`. Local files are written to a temporary name
    /// (in the partial folder, or beside the target) and renamed into place on close, so an
    /// interrupted copy never leaves a partial file under the target's name.
    pub fn resolve_for_write(&self, url: &str) -> Result<Location, StorageError> {
        self.locate(url, true)
    }

    /// The one name of the object `url` names, for telling two targets apart: a local path
    /// made absolute with `//`, `.` and `..` resolved (`out//a` and `./out/a` are one file); any
    /// other URL as it is (object keys are taken as they are: `a//k` and `a/k` are two).
    pub fn target_name(&self, url: &str) -> String {
        match self.parse(url, url) {
            Ok(Target::Local(path)) => path.display().to_string(),
            _ => url.to_owned(),
        }
    }

    fn locate(&self, url: &str, write: bool) -> Result<Location, StorageError> {
        let display = secrets::redact(url).into_owned();
        let target = self.parse(url, &display)?;
        if let Some(why) = unaddressable(&target, url, write) {
            return Err(StorageError::Unaddressable { url: display, why });
        }
        let spec = self.spec_for(url);
        let file = match &target {
            Target::Local(file) => Some(self.local_file(file, write, &display)?),
            _ => None,
        };
        let (cache_key, path, local) = match &target {
            Target::Local(file) if write => {
                let dir = file.parent().unwrap_or(Path::new("/"));
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (format!("file-write://{}", dir.display()), name, true)
            }
            Target::Local(file) => ("file://".to_owned(), file.display().to_string(), true),
            Target::S3 { bucket, key } => (format!("s3://{bucket}"), key.clone(), false),
            Target::Azure {
                account,
                endpoint,
                container,
                path,
                ..
            } => (
                format!(
                    "az://{}@{}/{container}",
                    account.as_deref().unwrap_or(""),
                    endpoint.as_deref().unwrap_or("")
                ),
                path.clone(),
                false,
            ),
            Target::Gcs { bucket, key } => (format!("gs://{bucket}"), key.clone(), false),
        };
        if let Some(operator) = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(&cache_key).cloned())
        {
            return Ok(Location {
                operator,
                path,
                display,
                local,
                floor: RateFloor::of(spec),
                file,
            });
        }
        // Every call has a deadline: a stalled server fails the call (a temporary error)
        // instead of hanging the run. A temporary error is retried right here, a few times:
        // a failed part of a multipart upload is sent again alone, not the whole object.
        // What still fails goes to the engine, which retries the whole step.
        let timeout = spec.and_then(StoreSpec::timeout);
        let operator = self
            .build(&target, spec, &display, write)?
            .layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(timeout.unwrap_or(CONTROL_TIMEOUT))
                    .with_io_timeout(timeout.unwrap_or(IO_TIMEOUT)),
            )
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(CALL_RETRIES)
                    .with_min_delay(std::time::Duration::from_millis(200))
                    .with_max_delay(std::time::Duration::from_secs(5))
                    .with_jitter()
                    .with_notify(QuietRetries),
            );
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(cache_key, operator.clone());
        }
        Ok(Location {
            operator,
            path,
            display,
            local,
            floor: RateFloor::of(spec),
            file,
        })
    }

    /// A local file as the copy step reaches it: for a write, its folder is created and its
    /// temporary files' folder found (once per folder).
    fn local_file(
        &self,
        file: &Path,
        write: bool,
        display: &str,
    ) -> Result<LocalFile, StorageError> {
        if !write {
            return Ok(LocalFile::read(file));
        }
        self.local_dirs
            .target(file, |dir| {
                std::fs::create_dir_all(dir)?;
                Ok(self
                    .partial
                    .as_ref()
                    .and_then(|partial| partial.for_target(dir))
                    .unwrap_or(dir)
                    .to_path_buf())
            })
            .map_err(|error| target_folder(display, &error))
    }

    /// `url` as an Azure blob a request outside OpenDAL can reach (a server-side copy), with
    /// the credentials the plan and the environment give its account; `None` for other
    /// stores.
    pub(crate) fn azure_blob(&self, url: &str) -> Option<azure_account::AzureBlob> {
        let display = secrets::redact(url).into_owned();
        let Ok(Target::Azure {
            account,
            endpoint,
            container,
            path,
            sas,
        }) = self.parse(url, &display)
        else {
            return None;
        };
        let spec = self.spec_for(url).cloned().unwrap_or_default();
        let connection = azure_account::ConnectionString::of(&spec, &self.env);
        let account = azure_account::account(account.as_deref(), &spec, &connection, &self.env)?;
        Some(azure_account::AzureBlob {
            endpoint: azure_account::blob_endpoint(
                endpoint.as_deref(),
                &spec,
                &connection,
                &account,
            ),
            key: azure_account::key(&account, &spec, &connection, &self.env),
            sas: azure_account::sas(sas.as_deref(), &spec, &connection, &self.env),
            account,
            container,
            path,
            display,
        })
    }

    /// The environment captured when the plan was built.
    pub(crate) fn env(&self) -> &Env {
        &self.env
    }

    /// The `[store."PREFIX"]` settings for `url` (longest prefix).
    pub(crate) fn spec_for(&self, url: &str) -> Option<&StoreSpec> {
        self.specs
            .iter()
            .find(|(prefix, _)| url.starts_with(prefix.as_str()))
            .map(|(_, spec)| spec)
    }

    fn parse(&self, url: &str, display: &str) -> Result<Target, StorageError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            // `s3:/bucket/key` is a typo, not a local folder named `s3:`.
            if scheme_error(url).is_some() {
                return Err(StorageError::Unsupported {
                    url: display.to_owned(),
                });
            }
            return Ok(Target::Local(normalized(&self.base_dir.join(url), url)));
        };
        let split =
            |what: &'static str, example: &'static str| -> Result<(String, String), StorageError> {
                let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
                if head.is_empty() {
                    return Err(StorageError::Incomplete {
                        url: display.to_owned(),
                        what,
                        example,
                    });
                }
                Ok((head.to_owned(), tail.to_owned()))
            };
        match scheme {
            "file" => Ok(Target::Local(normalized(
                Path::new(&format!("/{}", rest.trim_start_matches('/'))),
                rest,
            ))),
            "s3" => {
                let (bucket, key) = split("bucket", "s3://BUCKET/KEY")?;
                Ok(Target::S3 { bucket, key })
            }
            "gs" => {
                let (bucket, key) = split("bucket", "gs://BUCKET/KEY")?;
                Ok(Target::Gcs { bucket, key })
            }
            "az" | "azure" => {
                let (container, path) = split("container", "az://CONTAINER/PATH")?;
                Ok(Target::Azure {
                    account: None,
                    endpoint: None,
                    container,
                    path,
                    sas: None,
                })
            }
            "https" | "http" => self.parse_http(url, rest, display),
            _ => Err(StorageError::Unsupported {
                url: display.to_owned(),
            }),
        }
    }

    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH[?SAS]`, or any http(s) URL under a
    /// `[store."PREFIX"]` table that names an Azure account (Azurite, private clouds).
    fn parse_http(&self, url: &str, rest: &str, display: &str) -> Result<Target, StorageError> {
        let (without_query, sas) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query.to_owned())),
            None => (url, None),
        };
        let host = rest.split('/').next().unwrap_or_default();
        if let Some(account) = host.strip_suffix(".blob.core.windows.net") {
            let scheme_len = url.len() - rest.len();
            let path_part = &without_query[scheme_len + host.len()..];
            let (container, path) = path_part
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or((path_part.trim_start_matches('/'), ""));
            if container.is_empty() {
                return Err(StorageError::Incomplete {
                    url: display.to_owned(),
                    what: "container",
                    example: "https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH",
                });
            }
            if let Some(sas) = &sas {
                secrets::register(sas);
            }
            return Ok(Target::Azure {
                account: Some(account.to_owned()),
                endpoint: Some(format!("{}{host}", &url[..scheme_len])),
                container: decode(container),
                path: decode(path),
                sas,
            });
        }
        // An endpoint-style URL under a [store] prefix: PREFIX names the account's endpoint.
        if let Some((prefix, spec)) = self
            .specs
            .iter()
            .find(|(prefix, _)| url.starts_with(prefix.as_str()))
            && (spec.account_name.is_some() || spec.connection_string.is_some())
        {
            let tail = without_query[prefix.len()..].trim_start_matches('/');
            let (container, path) = tail.split_once('/').unwrap_or((tail, ""));
            if !container.is_empty() {
                return Ok(Target::Azure {
                    account: spec.account_name.clone(),
                    endpoint: Some(
                        spec.endpoint
                            .clone()
                            .unwrap_or_else(|| prefix.trim_end_matches('/').to_owned()),
                    ),
                    container: decode(container),
                    path: decode(path),
                    sas,
                });
            }
        }
        Err(StorageError::Unsupported {
            url: display.to_owned(),
        })
    }

    fn build(
        &self,
        target: &Target,
        spec: Option<&StoreSpec>,
        display: &str,
        write: bool,
    ) -> Result<Operator, StorageError> {
        let config = |source: opendal::Error| StorageError::Config {
            url: display.to_owned(),
            source,
        };
        let env = &self.env;
        let operator = match target {
            Target::Local(file) => {
                let mut builder = services::Fs::default();
                if write {
                    let dir = file.parent().unwrap_or(Path::new("/"));
                    std::fs::create_dir_all(dir).map_err(|e| target_folder(display, &e))?;
                    let partial = self
                        .partial
                        .as_ref()
                        .and_then(|partial| partial.for_target(dir))
                        .unwrap_or(dir);
                    builder = builder
                        .root(&dir.display().to_string())
                        .atomic_write_dir(&partial.display().to_string());
                } else {
                    builder = builder.root("/");
                }
                Operator::new(builder).map_err(config)?
            }
            Target::S3 { bucket, .. } => {
                let spec = spec.cloned().unwrap_or_default();
                let region = crate::aws_sign::region(&spec, env);
                let mut builder = services::S3::default().bucket(bucket).region(&region);
                if let Some(endpoint) = spec
                    .endpoint
                    .or_else(|| env.first(env_vars::AWS_S3_ENDPOINT))
                {
                    builder = builder.endpoint(&endpoint);
                }
                if let Some(id) = &spec.access_key_id {
                    builder = builder.access_key_id(id);
                }
                if let Some(secret) = &spec.secret_access_key {
                    builder = builder.secret_access_key(secret);
                }
                if let Some(token) = &spec.session_token {
                    builder = builder.session_token(token);
                }
                if spec.virtual_host_style {
                    builder = builder.enable_virtual_host_style();
                }
                Operator::new(builder).map_err(config)?
            }
            Target::Gcs { bucket, .. } => {
                let spec = spec.cloned().unwrap_or_default();
                let (endpoint, credential) = gcs_access(&spec, env);
                let mut builder = services::Gcs::default().bucket(bucket).endpoint(&endpoint);
                match credential {
                    GcsCredential::Anonymous => builder = builder.skip_signature(),
                    GcsCredential::File(path) => builder = builder.credential_path(&path),
                    GcsCredential::Default => {}
                }
                Operator::new(builder).map_err(config)?
            }
            Target::Azure {
                account,
                endpoint,
                container,
                sas,
                ..
            } => self.azure(
                spec,
                account.as_deref(),
                endpoint.as_deref(),
                container,
                sas.as_deref(),
                display,
            )?,
        };
        Ok(operator)
    }

    fn azure(
        &self,
        spec: Option<&StoreSpec>,
        url_account: Option<&str>,
        url_endpoint: Option<&str>,
        container: &str,
        url_sas: Option<&str>,
        display: &str,
    ) -> Result<Operator, StorageError> {
        let config = |source: opendal::Error| StorageError::Config {
            url: display.to_owned(),
            source,
        };
        let env = &self.env;
        let spec = spec.cloned().unwrap_or_default();
        let connection = azure_account::ConnectionString::of(&spec, env);
        let mut builder = match connection.text() {
            Some(text) => services::Azblob::from_connection_string(text).map_err(config)?,
            None => services::Azblob::default(),
        };
        let Some(account) = azure_account::account(url_account, &spec, &connection, env) else {
            return Err(StorageError::Settings {
                url: display.to_owned(),
                hint: "no Azure storage account is set; export AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME (with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN), or add a [store.\"az://CONTAINER\"] table with account_name".to_owned(),
            });
        };
        builder = builder.container(container).account_name(&account);
        // The endpoint: the URL's own host, then the [store] table, then the connection
        // string's (already set), then the public cloud's.
        match url_endpoint.map(str::to_owned).or(spec.endpoint.clone()) {
            Some(endpoint) => builder = builder.endpoint(&endpoint),
            None if connection.text().is_none() => {
                builder = builder.endpoint(&format!("https://{account}.blob.core.windows.net"));
            }
            None => {}
        }
        if let Some(key) = azure_account::key(&account, &spec, &connection, env) {
            builder = builder.account_key(&key);
        }
        if let Some(sas) = azure_account::sas(url_sas, &spec, &connection, env) {
            builder = builder.sas_token(&sas);
        }
        Operator::new(builder).map_err(config)
    }
}

/// Google's GCS endpoint.
const GCS_ENDPOINT: &str = "https://storage.googleapis.com";

/// Where and as whom a GCS bucket is reached, for OpenDAL and for redrive's own requests
/// alike: the `[store]` table's endpoint and `credential_path`, else `STORAGE_EMULATOR_HOST`
/// (`host:port` or a URL; no credentials, as Google's client libraries do), else Google's
/// own endpoint with `GOOGLE_APPLICATION_CREDENTIALS` or the default chain (gcloud's
/// application default credentials, the VM's metadata server).
fn gcs_access(spec: &StoreSpec, env: &Env) -> (String, GcsCredential) {
    let emulator = env.first(env_vars::GCS_EMULATOR_HOST);
    let file = spec
        .credential_path
        .clone()
        .or_else(|| env.first(env_vars::GOOGLE_CREDENTIALS));
    let credential = match (file, &spec.endpoint, &emulator) {
        (Some(path), _, _) => GcsCredential::File(path),
        (None, None, Some(_)) => GcsCredential::Anonymous,
        (None, _, _) => GcsCredential::Default,
    };
    let endpoint = match (&spec.endpoint, emulator) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(host)) if host.contains("://") => host,
        (None, Some(host)) => format!("http://{host}"),
        (None, None) => GCS_ENDPOINT.to_owned(),
    };
    (endpoint.trim_end_matches('/').to_owned(), credential)
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The store asked to slow down: 429 or S3 `SlowDown` (OpenDAL's `RateLimited`), or Azure's
/// 503 `ServerBusy` (which OpenDAL leaves `Unexpected`).
fn is_throttling(error: &opendal::Error) -> bool {
    error.kind() == ErrorKind::RateLimited || error.to_string().contains("ServerBusy")
}

/// Classifies an OpenDAL error for the engine.
pub fn classify(error: &opendal::Error) -> ErrorClass {
    if is_throttling(error) {
        return ErrorClass::Throttled;
    }
    match error.kind() {
        ErrorKind::ConfigInvalid => ErrorClass::Fatal,
        // What no retry can change.
        ErrorKind::NotFound
        | ErrorKind::PermissionDenied
        | ErrorKind::AlreadyExists
        | ErrorKind::ConditionNotMatch
        | ErrorKind::IsADirectory
        | ErrorKind::NotADirectory
        | ErrorKind::Unsupported
        | ErrorKind::IsSameFile
        | ErrorKind::RangeNotSatisfied => ErrorClass::Permanent,
        // The store layer marks every error that leaves it `persistent` (retried there, or
        // not retryable): an unexpected one may still pass later, so the engine retries the
        // step with its longer backoff.
        _ if error.is_temporary() || error.is_persistent() => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// A step error for an OpenDAL failure: `message` names the object, then the failure as a
/// person reads it (the service's code and message, or what failed on the wire, and a hint);
/// the class follows the kind. OpenDAL's own dump is logged at `-v`, not recorded.
pub fn step_error(message: String, error: opendal::Error) -> StepError {
    let described = readable::describe(&error);
    tracing::info!(error = %secrets::redact(&error.to_string()), "{}", secrets::redact(&message));
    let step = StepError::new(classify(&error), format!("{message}: {}", described.text));
    if described.systemic {
        step.systemic()
    } else {
        step
    }
}

/// An OpenDAL failure as a person reads it: the service's code and message, or what failed
/// on the wire, and a hint.
pub(crate) fn describe(error: &opendal::Error) -> String {
    tracing::info!(error = %secrets::redact(&error.to_string()), "store error");
    readable::describe(error).text
}

mod readable;

#[cfg(test)]
mod tests;
