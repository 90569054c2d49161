//! Local → local copies, each a few plain file system calls in one blocking task, made
//! durable in groups.
//!
//! OpenDAL's fs service sends each of its file system calls through tokio's blocking pool
//! (create the folder, check the target, open, write, flush, fsync, rename, stat: about ten
//! hand-offs, and an `fsync`, per file). For small files those hand-offs are the copy's whole
//! cost, and they grow worse with concurrency. Here a copy is:
//!
//! 1. in one blocking task: stop if a create-only target exists; write the bytes to a new
//!    file without a name (`O_TMPFILE`) in the target's folder — or, to overwrite a target
//!    or where the file system cannot, to a temporary file in redrive's partial folder;
//! 2. a group sync: one `syncfs` makes every temporary file written before it durable, for all
//!    the copies waiting at once;
//! 3. in one blocking task: give the file the target's name (`linkat`, which refuses an
//!    existing name), or rename the temporary file (refusing to replace one,
//!    `RENAME_NOREPLACE`, unless the plan overwrites);
//! 4. a group sync again, so the name is durable too before the item is recorded done.
//!
//! The item's slot is held for step 1 only: steps 2 to 4 ([`Placing`]) are handed to the
//! engine to settle ([`redrive_core::step::Settle`]) while the slot goes to the next item, so
//! a copy in flight never waits for a sync (at most [`UNPLACED`] files a file system wait
//! for their names, each an open descriptor).
//!
//! So an item recorded done has its bytes and its name on disk, at the cost of two shared
//! `syncfs` calls per group of copies in flight instead of an `fsync` per file; and a copy
//! cut off by a crash leaves nothing (a file without a name is gone with the process) or a
//! `.partial` file in redrive's own folder, never a stray file beside the targets.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redrive_core::error::{ErrorClass, StepError};
use tokio::sync::mpsc;

use crate::checksum::Hasher;

/// A local file a copy reads or writes.
#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    /// Its absolute path.
    pub path: PathBuf,
    /// Where a write puts its temporary file (a folder on the same file system).
    pub temp_dir: PathBuf,
    /// The group sync of the file system it is on (for writes).
    pub sync: Option<Arc<GroupSync>>,
}

/// Makes files durable in groups: [`GroupSync::barrier`] returns once a `syncfs` that
/// started after it was called has finished, and one `syncfs` serves every caller waiting.
#[derive(Debug)]
pub(crate) struct GroupSync {
    /// Any descriptor on the file system (its folder).
    fd: std::fs::File,
    /// One sync at a time; callers queue here (first come, first served).
    turn: tokio::sync::Mutex<()>,
    /// Barriers asked for so far (a ticket each).
    asked: AtomicU64,
    /// Every ticket up to this one is covered by a finished sync.
    covered: AtomicU64,
    /// Syncs run (for tests).
    runs: AtomicU64,
    /// Files written and not yet given their names, each an open descriptor.
    unplaced: Arc<tokio::sync::Semaphore>,
    /// Files waiting to be given their names.
    naming: Arc<Naming>,
}

/// Gives files their names in batches: the names asked for while a batch is being given go
/// in the next one, one local_io call for the batch. A call a name, after each group sync,
/// put hundreds of calls at once in the queue ahead of the copies in flight.
#[derive(Debug, Default)]
struct Naming {
    queue: Mutex<NamingQueue>,
    /// Batches given (for tests).
    batches: AtomicU64,
}

#[derive(Debug, Default)]
struct NamingQueue {
    waiting: Vec<ToName>,
    /// A local_io call is giving names (and takes what is queued before it ends).
    busy: bool,
}

/// A file to give its name to, and who waits for the answer.
struct ToName {
    pending: Pending,
    target: PathBuf,
    how: Arc<LocalCopy>,
    answer: tokio::sync::oneshot::Sender<Result<bool, StepError>>,
}

impl std::fmt::Debug for ToName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToName")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Naming {
    /// Gives `pending` the name `target` ([`commit`]), in the next batch.
    async fn name(
        self: &Arc<Self>,
        pending: Pending,
        target: PathBuf,
        how: Arc<LocalCopy>,
    ) -> Result<bool, StepError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let start = {
            let mut queue = self
                .queue
                .lock()
                .map_err(|_| StepError::permanent("a local copy stopped: naming failed"))?;
            queue.waiting.push(ToName {
                pending,
                target,
                how,
                answer,
            });
            !std::mem::replace(&mut queue.busy, true)
        };
        if start {
            let naming = Arc::clone(self);
            let _ = blocking(move || {
                naming.give_names();
                Ok(())
            })
            .await;
        }
        answered
            .await
            .map_err(|_| StepError::permanent("a local copy stopped before its file was named"))?
    }

    /// Names every file queued, batch after batch, until none is left.
    fn give_names(&self) {
        let _unwinding = Unwinding(self);
        loop {
            let batch = match self.queue.lock() {
                Ok(mut queue) => {
                    if queue.waiting.is_empty() {
                        queue.busy = false;
                        return;
                    }
                    std::mem::take(&mut queue.waiting)
                }
                Err(_) => return,
            };
            self.batches.fetch_add(1, Ordering::Relaxed);
            for ToName {
                pending,
                target,
                how,
                answer,
            } in batch
            {
                let _ = answer.send(commit(pending, &target, &how));
            }
        }
    }
}

/// Should a naming call panic, the copies waiting are answered (their answers dropped: "stopped
/// before its file was named") and the next name starts a new call, instead of every later
/// copy waiting for a call that is gone.
struct Unwinding<'a>(&'a Naming);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut queue = match self.0.queue.lock() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        };
        queue.waiting.clear();
        queue.busy = false;
    }
}

/// Files written and waiting for their names, on one file system, at most: past it, copies
/// wait before writing (a slow sync holds back the copies, not the descriptors).
const UNPLACED: usize = 512;

impl GroupSync {
    fn open(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            fd: std::fs::File::open(dir)?,
            turn: tokio::sync::Mutex::new(()),
            asked: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            unplaced: Arc::new(tokio::sync::Semaphore::new(UNPLACED)),
            naming: Arc::default(),
        })
    }

    /// Waits until everything written before this call is durable.
    pub(crate) async fn barrier(self: &Arc<Self>) -> std::io::Result<()> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.turn.lock().await;
        if self.covered.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket handed out until now is written before this sync starts.
        let upto = self.asked.load(Ordering::SeqCst);
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || rustix::fs::syncfs(&this.fd))
            .await
            .map_err(std::io::Error::other)??;
        self.covered.fetch_max(upto, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The local target folders seen: where their temporary files go, and the group sync of
/// each file system (one per device).
#[derive(Debug, Default)]
pub(crate) struct LocalDirs {
    folders: Mutex<HashMap<PathBuf, Folder>>,
    syncs: Mutex<HashMap<u64, Arc<GroupSync>>>,
}

#[derive(Clone, Debug)]
struct Folder {
    temp_dir: PathBuf,
    sync: Option<Arc<GroupSync>>,
}

/// Bound on the folders remembered; past it the memory starts over.
const FOLDERS: usize = 4096;

impl LocalDirs {
    /// `file` as a copy's target. The first time its folder is seen, `prepare` creates it and
    /// says where its temporary files go.
    pub(crate) fn target(
        &self,
        file: &Path,
        prepare: impl FnOnce(&Path) -> std::io::Result<PathBuf>,
    ) -> std::io::Result<LocalFile> {
        let dir = file.parent().unwrap_or(Path::new("/"));
        let known = self.folders.lock().ok().and_then(|f| f.get(dir).cloned());
        let folder = match known {
            Some(folder) => folder,
            None => {
                let folder = Folder {
                    temp_dir: prepare(dir)?,
                    sync: self.sync_of(dir),
                };
                if let Ok(mut folders) = self.folders.lock() {
                    if folders.len() >= FOLDERS {
                        folders.clear();
                    }
                    folders.insert(dir.to_path_buf(), folder.clone());
                }
                folder
            }
        };
        Ok(LocalFile {
            path: file.to_path_buf(),
            temp_dir: folder.temp_dir,
            sync: folder.sync,
        })
    }

    /// The group sync of the file system `dir` is on.
    fn sync_of(&self, dir: &Path) -> Option<Arc<GroupSync>> {
        use std::os::unix::fs::MetadataExt as _;
        let device = std::fs::metadata(dir).ok()?.dev();
        let mut syncs = self.syncs.lock().ok()?;
        if let Some(sync) = syncs.get(&device) {
            return Some(Arc::clone(sync));
        }
        let sync = Arc::new(GroupSync::open(dir).ok()?);
        syncs.insert(device, Arc::clone(&sync));
        Some(sync)
    }
}

impl LocalFile {
    /// A file to read.
    pub(crate) fn read(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            temp_dir: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
            sync: None,
        }
    }
}

/// How one local copy goes.
pub(crate) struct LocalCopy {
    pub create_only: bool,
    pub checksum: Option<crate::checksum::Checksum>,
    /// The size the source listed.
    pub size: Option<u64>,
    /// Shown in messages.
    pub source_display: String,
    pub target_display: String,
}

/// What a local copy did.
pub(crate) enum Copied {
    /// The target exists and the copy is create-only: nothing was written.
    Exists,
    /// Written: bytes, the checksum when one was asked, and the file, to give its name.
    Written(u64, Option<Hasher>, Box<Placing>),
}

/// A copy's file, written, to be given the target's name.
pub(crate) struct Placing {
    pending: Pending,
    target: LocalFile,
    how: Arc<LocalCopy>,
    /// Its place among the files waiting for their names.
    unplaced: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Placing {
    /// Makes the bytes durable, gives the file the target's name and makes the name durable
    /// (see the module's documentation); `false` when a create-only target exists.
    pub(crate) async fn finish(self) -> Result<bool, StepError> {
        let Placing {
            pending,
            target,
            how,
            unplaced,
        } = self;
        if let Some(sync) = &target.sync
            && let Err(error) = durable(sync, &how.target_display, "its bytes").await
        {
            pending.discard();
            return Err(error);
        }
        let named = match &target.sync {
            Some(sync) => {
                (sync.naming)
                    .name(pending, target.path.clone(), Arc::clone(&how))
                    .await?
            }
            None => {
                let (job, to) = (Arc::clone(&how), target.path.clone());
                blocking(move || commit(pending, &to, &job)).await?
            }
        };
        if !named {
            return Ok(false);
        }
        drop(unplaced);
        if let Some(sync) = &target.sync {
            durable(sync, &how.target_display, "its name").await?;
        }
        Ok(true)
    }
}

/// Bytes read and written at a time.
const CHUNK: usize = 1024 * 1024;

/// A file this small is copied without looking for its target first.
const SMALL: u64 = 64 * 1024;

/// Copies `source` to a file without the target's name (see the module's documentation).
pub(crate) async fn copy(
    source: LocalFile,
    target: LocalFile,
    how: LocalCopy,
    cancelled: Arc<AtomicBool>,
    progress: mpsc::UnboundedSender<u64>,
) -> Result<Copied, StepError> {
    let unplaced = match &target.sync {
        Some(sync) => Some(
            Arc::clone(&sync.unplaced)
                .acquire_owned()
                .await
                .map_err(|e| StepError::permanent(format!("a local copy stopped: {e}")))?,
        ),
        None => None,
    };
    let how = Arc::new(how);
    let (src, dst, job) = (source.path.clone(), target.clone(), Arc::clone(&how));
    let written = blocking(move || write_temp(&src, &dst, &job, &cancelled, &progress)).await?;
    let Some((pending, bytes, hasher)) = written else {
        return Ok(Copied::Exists);
    };
    let placing = Placing {
        pending,
        target,
        how,
        unplaced,
    };
    Ok(Copied::Written(bytes, hasher, Box::new(placing)))
}

/// Waits until what was written to `sync`'s file system is durable.
async fn durable(sync: &Arc<GroupSync>, target: &str, what: &str) -> Result<(), StepError> {
    sync.barrier()
        .await
        .map_err(|error| io_error(format!("cannot make `{target}` durable ({what})"), error))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    // A few file system calls at a time, however many copies are in flight (local_io's
    // fixed threads): hundreds of threads creating files in one folder spin on its lock
    // (`perf`: rwsem_spin_on_owner), and a small queue keeps the disk as busy for less CPU.
    crate::local_io::run(work)
        .await
        .map_err(|e| StepError::permanent(format!("a local copy stopped: {e}")))?
}

fn io_error(what: String, error: std::io::Error) -> StepError {
    use std::io::ErrorKind::{
        IsADirectory, NotADirectory, NotFound, PermissionDenied, ReadOnlyFilesystem, StorageFull,
    };
    let class = match error.kind() {
        NotFound | PermissionDenied | ReadOnlyFilesystem | IsADirectory | NotADirectory => {
            ErrorClass::Permanent
        }
        StorageFull => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    };
    // Said as the storage errors are (`not found`), the OS's words after.
    let said = match error.kind() {
        NotFound => format!("not found ({error})"),
        IsADirectory => format!("it is a folder, not a file ({error})"),
        PermissionDenied => format!("permission denied ({error})"),
        ReadOnlyFilesystem => format!("read-only file system ({error})"),
        StorageFull => format!("no space left on the device ({error})"),
        _ => error.to_string(),
    };
    StepError::new(class, format!("{what}: {said}"))
}

thread_local! {
    /// Each local_io thread's copy buffer, kept between copies: a buffer of 1 MiB made and
    /// dropped per copy cost an `madvise` each, and the TLB shootdowns it sends every core.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes the source to a new temporary file; `None` when a create-only target exists.
fn write_temp(
    source: &Path,
    target: &LocalFile,
    how: &LocalCopy,
    cancelled: &AtomicBool,
    progress: &mpsc::UnboundedSender<u64>,
) -> Result<Option<(Pending, u64, Option<Hasher>)>, StepError> {
    BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() < CHUNK {
            buffer.resize(CHUNK, 0);
        }
        write_temp_with(source, target, how, cancelled, progress, buffer)
    })
}

fn write_temp_with(
    source: &Path,
    target: &LocalFile,
    how: &LocalCopy,
    cancelled: &AtomicBool,
    progress: &mpsc::UnboundedSender<u64>,
    buffer: &mut [u8],
) -> Result<Option<(Pending, u64, Option<Hasher>)>, StepError> {
    // An existing target is not read over for nothing, unless the file is small: then the
    // check would cost more than the copy that `linkat` refuses anyway.
    // A folder with the target's name is not the target existing: the copy goes on and its
    // naming says so (below, `commit`).
    let exists = || {
        how.create_only
            && std::fs::symlink_metadata(&target.path).is_ok_and(|found| !found.is_dir())
    };
    if how.size.is_some_and(|size| size > SMALL) && exists() {
        return Ok(None);
    }
    let read_error = |e| io_error(format!("cannot read `{}`", how.source_display), e);
    let mut input = std::fs::File::open(source).map_err(read_error)?;
    let mut read = |buffer: &mut [u8]| loop {
        match input.read(buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.map_err(read_error),
        }
    };
    // A file of unknown size is small if its first read takes it whole.
    let first = read(buffer)?;
    if how.size.is_none() && first == buffer.len() && exists() {
        return Ok(None);
    }
    let pending = create(target, how.create_only)
        .or_else(|e| {
            // The folder went away (removed by hand): make it again, once.
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
            if let Some(dir) = target.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::create_dir_all(&target.temp_dir)?;
            create(target, how.create_only)
        })
        .map_err(|e| io_error(format!("cannot write `{}`", how.target_display), e))?;
    let mut output = match &pending {
        Pending::Unnamed(file) => file,
        Pending::Named(file, _) => file,
    };
    let fail = |error: StepError| {
        pending.discard();
        error
    };
    let write_error = |e| io_error(format!("cannot write `{}`", how.target_display), e);
    let mut hasher = how.checksum.map(Hasher::new);
    let mut bytes = 0u64;
    let mut n = first;
    while n > 0 {
        if cancelled.load(Ordering::SeqCst) {
            return Err(fail(StepError::new(ErrorClass::Transient, "cancelled")));
        }
        let chunk = &buffer[..n];
        if let Some(hasher) = &mut hasher {
            hasher.update(chunk);
        }
        output.write_all(chunk).map_err(|e| fail(write_error(e)))?;
        bytes += n as u64;
        let _ = progress.send(n as u64);
        n = read(buffer).map_err(fail)?;
    }
    // A file system without a group sync (its folder cannot be opened): this file alone.
    if target.sync.is_none() {
        output.sync_data().map_err(|e| fail(write_error(e)))?;
    }
    // A file that changed size since it was listed is copied as it is now, said at -v.
    if let Some(listed) = how.size
        && listed != bytes
    {
        tracing::debug!(source = %how.source_display, read = bytes, listed, "The file changed since it was listed.");
    }
    Ok(Some((pending, bytes, hasher)))
}

/// A file written, not yet under the target's name.
#[derive(Debug)]
pub(crate) enum Pending {
    /// Without a name (`O_TMPFILE`): nothing is left of it if the process dies.
    Unnamed(std::fs::File),
    /// A temporary file (in redrive's partial folder, or beside the target).
    Named(std::fs::File, PathBuf),
}

impl Pending {
    fn discard(&self) {
        if let Pending::Named(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Files without a name are linked into place through `/proc/self/fd` (linking the
/// descriptor itself needs a capability a user does not have).
fn unnamed_files() -> bool {
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// A new file to write the copy to.
fn create(target: &LocalFile, create_only: bool) -> std::io::Result<Pending> {
    use rustix::fs::{Mode, OFlags};
    if create_only && unnamed_files() {
        let dir = target.path.parent().unwrap_or(Path::new("/"));
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        match rustix::fs::openat(rustix::fs::CWD, dir, flags, Mode::from_raw_mode(0o666)) {
            Ok(fd) => return Ok(Pending::Unnamed(std::fs::File::from(fd))),
            // A file system without O_TMPFILE: a named temporary file instead.
            Err(
                rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::ISDIR
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS,
            ) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    let temp = temp_name(&target.temp_dir, &target.path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    Ok(Pending::Named(file, temp))
}

/// Puts the file in place; `false` when a create-only target appeared meanwhile.
fn commit(pending: Pending, target: &Path, how: &LocalCopy) -> Result<bool, StepError> {
    let place = || -> std::io::Result<()> {
        let temp = match &pending {
            Pending::Unnamed(file) => {
                use std::os::fd::AsRawFd as _;
                let fd = format!("/proc/self/fd/{}", file.as_raw_fd());
                let cwd = rustix::fs::CWD;
                let follow = rustix::fs::AtFlags::SYMLINK_FOLLOW;
                return rustix::fs::linkat(cwd, fd.as_str(), cwd, target, follow)
                    .map_err(Into::into);
            }
            Pending::Named(_, temp) => temp.as_path(),
        };
        if !how.create_only {
            return std::fs::rename(temp, target);
        }
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, temp, cwd, target, rustix::fs::RenameFlags::NOREPLACE)
        {
            Ok(()) => Ok(()),
            // A file system without RENAME_NOREPLACE: a hard link refuses an existing name too.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                std::fs::hard_link(temp, target)?;
                std::fs::remove_file(temp)
            }
            Err(errno) => Err(errno.into()),
        }
    };
    let placed = place().or_else(|e| {
        // The target's folder went away (removed by hand): make it again, once.
        match (e.kind(), target.parent()) {
            (std::io::ErrorKind::NotFound, Some(dir)) if !dir.exists() => {
                std::fs::create_dir_all(dir)?;
                place()
            }
            _ => Err(e),
        }
    });
    match placed {
        Ok(()) => Ok(true),
        Err(e) => {
            pending.discard();
            if how.create_only && e.kind() == std::io::ErrorKind::AlreadyExists {
                if is_folder(target) {
                    return Err(folder_in_the_way(&how.target_display));
                }
                return Ok(false);
            }
            Err(io_error(
                format!("cannot write `{}`", how.target_display),
                e,
            ))
        }
    }
}

/// Whether a folder has the name `path` (which is then not "the target exists").
pub(crate) fn is_folder(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|found| found.is_dir())
}

/// The error of a copy whose target's name is a folder's.
pub(crate) fn folder_in_the_way(target: &str) -> StepError {
    StepError::permanent(format!(
        "`{target}` is a folder: the file cannot be written there; move the folder or change the target"
    ))
}

/// A new name in `dir` for a temporary copy of `target`: its name, a random part, and
/// `.partial` (what a resumed run recognises and removes).
fn temp_name(dir: &Path, target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Names are limited to 255 bytes: a long one is cut (at a character boundary).
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    dir.join(format!(
        "{}.{:016x}.partial",
        &name[..cut],
        fastrand::u64(..)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn how(create_only: bool) -> LocalCopy {
        LocalCopy {
            create_only,
            checksum: None,
            size: None,
            source_display: "src".into(),
            target_display: "dst".into(),
        }
    }

    /// The bytes written, or `None` when a create-only target exists.
    async fn copy_to(dirs: &LocalDirs, from: &Path, to: &Path, create_only: bool) -> Option<u64> {
        let partial = to.parent().unwrap().parent().unwrap().join(".partial");
        let target = dirs
            .target(to, |dir| {
                std::fs::create_dir_all(dir)?;
                std::fs::create_dir_all(&partial)?;
                Ok(partial.clone())
            })
            .unwrap();
        let (progress, _moved) = mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let copied = copy(
            LocalFile::read(from),
            target,
            how(create_only),
            cancelled,
            progress,
        )
        .await
        .unwrap();
        match copied {
            Copied::Exists => None,
            Copied::Written(bytes, _, placing) => placing.finish().await.unwrap().then_some(bytes),
        }
    }

    #[tokio::test]
    async fn barriers_waiting_together_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(GroupSync::open(dir.path()).unwrap());
        let waits = (0..64).map(|_| sync.barrier());
        for done in futures::future::join_all(waits).await {
            done.unwrap();
        }
        // The first caller's sync covers itself; every caller queued behind it shares the next.
        assert_eq!(sync.runs.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_waiting_for_their_names_are_named_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = LocalDirs::default();
        let copies = (0..300).map(|i| {
            let (from, to) = (
                dir.path().join(format!("{i}.txt")),
                dir.path().join(format!("out/{i}.txt")),
            );
            std::fs::write(&from, i.to_string()).unwrap();
            let dirs = &dirs;
            async move { copy_to(dirs, &from, &to, true).await }
        });
        let copied = futures::future::join_all(copies).await;
        assert!(copied.iter().all(Option::is_some));
        for i in [0, 150, 299] {
            let named = std::fs::read_to_string(dir.path().join(format!("out/{i}.txt")));
            assert_eq!(named.unwrap(), i.to_string());
        }
        let sync = dirs.sync_of(&dir.path().join("out")).unwrap();
        let batches = sync.naming.batches.load(Ordering::Relaxed);
        assert!(
            (1..300).contains(&batches),
            "300 files named in {batches} batches"
        );
    }

    #[tokio::test]
    async fn a_naming_call_that_panics_answers_the_waiting_copies_and_lets_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Arc::new(Naming::default());
        let (answer, answered) = tokio::sync::oneshot::channel();
        {
            let mut queue = naming.queue.lock().unwrap();
            let file = std::fs::File::create(dir.path().join("a.partial")).unwrap();
            queue.waiting.push(ToName {
                pending: Pending::Named(file, dir.path().join("a.partial")),
                target: dir.path().join("a"),
                how: Arc::new(how(true)),
                answer,
            });
            queue.busy = true;
        }
        let during = Arc::clone(&naming);
        let panicked = std::thread::spawn(move || {
            let _unwinding = Unwinding(&during);
            panic!("a naming call panics");
        })
        .join();
        assert!(panicked.is_err());
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), answered).await;
        assert!(
            answer.is_ok_and(|a| a.is_err()),
            "the waiting copy is answered (stopped)"
        );
        let queue = naming.queue.lock().unwrap();
        assert!(
            !queue.busy && queue.waiting.is_empty(),
            "the next name starts a call"
        );
    }

    #[tokio::test]
    async fn a_create_only_copy_keeps_an_existing_target_and_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a.txt"), dir.path().join("out/a.txt"));
        std::fs::write(&from, "new").unwrap();
        let dirs = LocalDirs::default();
        assert_eq!(copy_to(&dirs, &from, &to, true).await, Some(3));
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "new");
        std::fs::write(&from, "newer").unwrap();
        assert_eq!(copy_to(&dirs, &from, &to, true).await, None);
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "new", "kept");
        // Overwriting replaces it, through a temporary file that is gone afterwards.
        assert_eq!(copy_to(&dirs, &from, &to, false).await, Some(5));
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "newer");
        let names = |d: &str| std::fs::read_dir(dir.path().join(d)).unwrap().count();
        assert_eq!((names("out"), names(".partial")), (1, 0));
    }

    #[tokio::test]
    async fn a_target_folder_removed_during_a_run_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a.txt");
        std::fs::write(&from, "x").unwrap();
        let dirs = LocalDirs::default();
        let (first, second) = (dir.path().join("out/1.txt"), dir.path().join("out/2.txt"));
        copy_to(&dirs, &from, &first, true).await;
        std::fs::remove_dir_all(dir.path().join("out")).unwrap();
        assert_eq!(copy_to(&dirs, &from, &second, true).await, Some(1));
        assert_eq!(std::fs::read_to_string(&second).unwrap(), "x");
    }

    /// A missing source, and a source that is a folder (a link to one, say), fail at once:
    /// trying again cannot help (a folder was retried as a passing error, five times an item).
    #[tokio::test]
    async fn a_missing_source_or_a_folder_is_a_permanent_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a-folder")).unwrap();
        let dirs = LocalDirs::default();
        for (source, said) in [
            ("missing", "cannot read `src`: not found"),
            ("a-folder", "cannot read `src`: it is a folder, not a file"),
        ] {
            let target = dirs
                .target(&dir.path().join("out/a"), |d| {
                    std::fs::create_dir_all(d)?;
                    Ok(d.to_path_buf())
                })
                .unwrap();
            let (progress, _moved) = mpsc::unbounded_channel();
            let error = copy(
                LocalFile::read(&dir.path().join(source)),
                target,
                how(true),
                Arc::new(AtomicBool::new(false)),
                progress,
            )
            .await
            .err()
            .unwrap();
            assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
            assert!(error.to_string().contains(said), "{error}");
        }
    }
}
