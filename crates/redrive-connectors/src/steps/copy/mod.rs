//! `copy = { from, to, if_exists, content_type, part_size, parts, checksum, manifest }`: one
//! object, streamed from source to target in bounded memory.
//!
//! Reads and writes go `part_size` at a time; above one part the target is uploaded in parts
//! (S3 multipart, Azure blocks), `parts` at once, so peak memory is about `parts × part_size`
//! whatever the object's size. `if_exists = "skip"` is a conditional create (If-None-Match: *),
//! sent with the completing request of a multipart upload too. A failed or interrupted upload
//! is aborted: nothing half-written becomes visible. Between Azure blobs, between S3 objects
//! and between GCS objects the service copies the object itself (`server_side`), and local →
//! local copies are plain file system calls (`local_file`).

pub(crate) mod config;
mod manifest;
mod server_side;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use self::config::{CopyMode, CopySpec, IfExists};
use self::manifest::Manifest;
use self::server_side::{AzureCopier, GcsCopier, PartPlan, Refusals, Route, S3Copier, Server};
use async_trait::async_trait;
use futures::{FutureExt as _, TryStreamExt};
use opendal::ErrorKind;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Check, Done, ObjectProgress, Outcome, Settle, Step, StepContext};
use redrive_core::template::TemplateError;

use crate::checksum::{Hasher, PartMd5s, StoreMd5, hex, store_md5};
use tokio::sync::mpsc;

use crate::local_file::{self, Copied, LocalCopy, LocalFile, Placing};
use crate::storage::{Location, Stores, step_error};
use crate::upload::Upload;

/// Copies one object.
#[derive(Debug)]
pub struct CopyStep {
    spec: CopySpec,
    stores: Arc<Stores>,
    /// The manifest (`manifest = "…"`).
    manifest: Option<Arc<Manifest>>,
    azure: AzureCopier,
    s3: S3Copier,
    gcs: GcsCopier,
    refusals: Refusals,
}

impl CopyStep {
    /// A copy as the plan describes it.
    pub fn new(spec: CopySpec, stores: Arc<Stores>) -> Self {
        let manifest = spec
            .manifest
            .clone()
            .map(|path| Arc::new(Manifest::new(path)));
        Self {
            spec,
            stores,
            manifest,
            azure: AzureCopier::default(),
            s3: S3Copier::default(),
            gcs: GcsCopier::default(),
            refusals: Refusals::default(),
        }
    }

    /// A server-side copy where the stores allow one: `Some` once the target is complete,
    /// `None` to stream the object instead (`mode = "auto"`).
    async fn server_side(
        &self,
        (from, to): (&str, &str),
        source: &Location,
        target: &Location,
        how: &Transfer,
    ) -> Result<Option<ServerCopy>, Failure> {
        let mode = self.spec.mode;
        let not_here = |why: String| -> Result<Option<ServerCopy>, Failure> {
            match mode {
                CopyMode::Server => Err(Failure::Step(StepError::permanent(format!(
                    "no server-side copy of `{}` to `{}` (mode = \"server\"): {why}; use mode = \"auto\" to stream it instead",
                    source.display, target.display
                )))),
                _ => Ok(None),
            }
        };
        let route =
            server_side::route(&self.spec, &self.stores, &self.refusals, from, to, how.size);
        if let Route::Stream(why) = &route {
            return not_here(why.clone());
        }
        // `checksum = "md5"`: the source's MD5 as it reports it, to compare the target's with.
        let md5 = match how.checksum {
            Some(_) => match source_md5(source).await.map_err(Failure::Step)? {
                Some(md5) => Some(md5),
                None => {
                    return not_here(format!(
                        "`{}` reports no whole-object MD5 to check the service's copy against",
                        source.display
                    ));
                }
            },
            None => None,
        };
        let mut copied_in_parts = None;
        let answer = match &route {
            Route::Stream(why) => return not_here(why.clone()),
            Route::Azure {
                source: from,
                target: to,
                parts: None,
            } => self.azure.copy(from, to, how.create_only).await,
            Route::Azure {
                source: from,
                target: to,
                parts: Some(plan),
            } => {
                copied_in_parts = Some(*plan);
                self.azure
                    .copy_in_blocks(from, to, *plan, self.spec.parts, how.create_only)
                    .await
            }
            Route::S3 {
                source: from,
                target: to,
                parts: None,
            } => match self.s3.copy(from, to, how.create_only).await {
                Ok(Server::TooLarge) if md5.is_some() => {
                    return not_here(server_side::IN_PARTS.to_owned());
                }
                // Larger than one CopyObject takes, and its size not listed: look it up.
                Ok(Server::TooLarge) => {
                    let size = source
                        .operator
                        .stat(&source.path)
                        .await
                        .map_err(|e| {
                            Failure::Step(step_error(
                                format!("cannot look up the size of `{}`", source.display),
                                e,
                            ))
                        })?
                        .content_length();
                    let plan = PartPlan::new(size, self.spec.part_size as u64);
                    copied_in_parts = Some(plan);
                    self.s3
                        .copy_in_parts(from, to, plan, self.spec.parts, how.create_only)
                        .await
                }
                other => other,
            },
            Route::S3 {
                source: from,
                target: to,
                parts: Some(plan),
            } => {
                copied_in_parts = Some(*plan);
                self.s3
                    .copy_in_parts(from, to, *plan, self.spec.parts, how.create_only)
                    .await
            }
            Route::Gcs {
                source: from,
                target: to,
            } => self.gcs.copy(from, to, how.create_only).await,
        };
        let reported = match answer {
            Ok(Server::Copied(size)) => size,
            Ok(Server::Exists) => return Err(Failure::Exists),
            Ok(Server::Unsupported(why)) => {
                if mode == CopyMode::Auto
                    && let Some((from, to)) = server_side::pair_of(&route)
                    && self.refusals.insert(&from, &to)
                {
                    tracing::info!(%from, %to, %why, "Server-side copies between these stores are refused: streaming them instead.");
                }
                return not_here(why);
            }
            Ok(Server::TooLarge) => {
                return not_here("the object is too large for one copy request".to_owned());
            }
            Err(error) => return Err(Failure::Step(error)),
        };
        if let Some(plan) = copied_in_parts {
            self.abort_earlier_uploads(to, target).await;
            return Ok(Some(ServerCopy {
                bytes: plan.size,
                md5: None,
            }));
        }
        if let Some(expected) = &md5 {
            let bytes = check_server_copy(target, expected)
                .await
                .map_err(Failure::Step)?;
            return Ok(Some(ServerCopy {
                bytes: how.size.or(reported).unwrap_or(bytes),
                md5,
            }));
        }
        let bytes = match how.size.or(reported) {
            Some(size) => size,
            None => target
                .operator
                .stat(&target.path)
                .await
                .map_or(0, |meta| meta.content_length()),
        };
        Ok(Some(ServerCopy { bytes, md5: None }))
    }

    /// A multipart copy is done: an earlier attempt's upload of the same key, cut off by a
    /// kill -9, would stay in the bucket (invisible, billed) forever. Abort it.
    async fn abort_earlier_uploads(&self, to: &str, target: &Location) {
        let Some(uploads) = self.stores.s3_uploads(to) else {
            return;
        };
        match uploads.abort_unfinished(&target.path).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target = %target.display, n, "Aborted the unfinished uploads an earlier attempt left.")
            }
            Err(error) => {
                tracing::warn!(target = %target.display, error = %redrive_core::secrets::redact(&error), "Cannot clean up the unfinished uploads of an earlier attempt; the bucket's lifecycle rule will.")
            }
        }
    }

    fn record(&self, line: &serde_json::Value) -> Result<(), StepError> {
        self.manifest.as_ref().map_or(Ok(()), |m| m.record(line))
    }
}

/// The target exists: a conditional create was refused.
fn target_exists(error: &opendal::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists
    )
}

/// How to move one object.
struct Transfer {
    part_size: usize,
    parts: usize,
    create_only: bool,
    content_type: Option<String>,
    checksum: Option<crate::checksum::Checksum>,
    /// The source's size, when the source listed it (the `size` field).
    size: Option<u64>,
}

/// What a finished transfer knows.
struct Transferred {
    bytes: u64,
    /// What the store says of the new object.
    metadata: opendal::Metadata,
    /// The object's checksum, when the plan asks for one.
    hasher: Option<Hasher>,
    /// Each part's MD5, to check an S3 multipart ETag (with `checksum = "md5"`).
    parts: Option<PartMd5s>,
    /// A local copy's file, still to be given the target's name.
    placing: Option<Box<Placing>>,
}

enum Failure {
    /// A create-only target exists.
    Exists,
    Step(StepError),
}

/// Tells a cancelled copy's task to stop, and lets the program wait for its abort.
struct CancelOnDrop {
    cancelled: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<Result<Transferred, Failure>>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.cancelled.store(true, Ordering::SeqCst);
            crate::upload::track(async move {
                let _ = task.await;
            });
        }
    }
}

/// Streams `source` into `target`, checking `cancelled` between writes (an upload is never
/// dropped in the middle of a request: it is aborted).
async fn transfer(
    source: Location,
    target: Location,
    how: Transfer,
    cancelled: Arc<AtomicBool>,
    progress: mpsc::UnboundedSender<u64>,
) -> Result<Transferred, Failure> {
    let reader = read_plan(&source.operator, &source.path, how.part_size, how.size)
        .await
        .map_err(|e| Failure::Step(step_error(format!("cannot read `{}`", source.display), e)))?;
    let mut stream = reader
        .into_bytes_stream(..)
        .await
        .map_err(|e| Failure::Step(step_error(format!("cannot read `{}`", source.display), e)))?;

    let mut writer = target
        .operator
        .writer_with(&target.path)
        .chunk(how.part_size)
        .concurrent(how.parts)
        .if_not_exists(how.create_only);
    if let Some(content_type) = &how.content_type {
        writer = writer.content_type(content_type);
    }
    let mut upload = match writer.await {
        Ok(writer) => Upload::new(writer, target.display.clone()),
        Err(e) if how.create_only && target_exists(&e) => return Err(Failure::Exists),
        Err(e) => {
            return Err(Failure::Step(step_error(
                format!("cannot write `{}`", target.display),
                e,
            )));
        }
    };

    let mut hasher = how.checksum.map(Hasher::new);
    let mut parts = (how.checksum == Some(crate::checksum::Checksum::Md5))
        .then(|| PartMd5s::new(effective_part_size(&target.operator, how.part_size)));
    let mut bytes = 0u64;
    let mut watch = source.floor.watch();
    loop {
        if cancelled.load(Ordering::SeqCst) {
            upload.abort().await;
            return Err(Failure::Step(StepError::new(
                redrive_core::error::ErrorClass::Transient,
                "cancelled",
            )));
        }
        // Each wait for the body ends with the floor's window: a stalled or trickling body
        // fails the attempt however often a byte arrives.
        let next = loop {
            match tokio::time::timeout_at(watch.deadline(), stream.try_next()).await {
                Ok(next) => break next,
                Err(_) => {
                    if let Err(slow) = watch.check() {
                        upload.abort().await;
                        return Err(Failure::Step(too_slow(&source, &slow)));
                    }
                }
            }
        };
        let chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                upload.abort().await;
                let e = opendal::Error::new(ErrorKind::Unexpected, "read failed")
                    .set_source(e)
                    .set_temporary();
                return Err(Failure::Step(step_error(
                    format!("cannot read `{}`", source.display),
                    e,
                )));
            }
        };
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk);
        }
        if let Some(parts) = &mut parts {
            parts.update(&chunk);
        }
        let n = chunk.len() as u64;
        watch.add(n);
        if let Err(slow) = watch.check() {
            upload.abort().await;
            return Err(Failure::Step(too_slow(&source, &slow)));
        }
        let Some(writer) = upload.writer() else {
            break;
        };
        if let Err(e) = writer.write(chunk).await {
            upload.abort().await;
            if how.create_only && target_exists(&e) {
                return Err(Failure::Exists);
            }
            return Err(Failure::Step(step_error(
                format!("cannot write `{}`", target.display),
                e,
            )));
        }
        bytes += n;
        let _ = progress.send(n);
    }
    if cancelled.load(Ordering::SeqCst) {
        upload.abort().await;
        return Err(Failure::Step(StepError::new(
            redrive_core::error::ErrorClass::Transient,
            "cancelled",
        )));
    }
    // Nothing is committed that is not the whole object: a body cut short (or run long) that
    // the transport did not notice is caught by the size the source listed.
    if let Some(listed) = how.size
        && listed != bytes
        && let Err(error) = check_length(&source, bytes, listed).await
    {
        upload.abort().await;
        return Err(Failure::Step(error));
    }
    // With `checksum = "md5"`, the bytes read are checked against the source's own MD5 (a
    // single-part ETag, Azure's Content-MD5) before anything is committed: a body that lost
    // bytes on the way is never the target.
    if let (Some(hasher @ Hasher::Md5(_)), false) = (&hasher, source.local)
        && let Err(error) = check_source_md5(&source, hasher.clone().finish()).await
    {
        upload.abort().await;
        return Err(Failure::Step(error));
    }
    match upload.close().await {
        Ok(metadata) => Ok(Transferred {
            bytes,
            metadata,
            hasher,
            parts,
            placing: None,
        }),
        Err(e) if how.create_only && target_exists(&e) => Err(Failure::Exists),
        Err(e) => Err(Failure::Step(step_error(
            format!("cannot write `{}`", target.display),
            e,
        ))),
    }
}

/// What a copy to an existing target comes to.
fn exists(if_exists: IfExists, target: &str) -> Result<Outcome, StepError> {
    match if_exists {
        // An existing target counts as success; it is never touched.
        IfExists::Skip | IfExists::Overwrite => Ok(Outcome::kept(target)),
        IfExists::Fail => Err(StepError::permanent(format!(
            "target `{target}` exists (if_exists = \"fail\"); remove it or use if_exists = \"skip\""
        ))),
    }
}

/// [`local_file::copy`] as a transfer.
async fn local_transfer(
    source: LocalFile,
    target: LocalFile,
    how: LocalCopy,
    cancelled: Arc<AtomicBool>,
    progress: mpsc::UnboundedSender<u64>,
) -> Result<Transferred, Failure> {
    match local_file::copy(source, target, how, cancelled, progress).await {
        Ok(Copied::Exists) => Err(Failure::Exists),
        Ok(Copied::Written(bytes, hasher, placing)) => Ok(Transferred {
            bytes,
            metadata: opendal::MetadataBuilder::file(bytes).build(),
            hasher,
            parts: None,
            placing: Some(placing),
        }),
        Err(error) => Err(Failure::Step(error)),
    }
}

/// The body read is not as long as the source listed: the object may have changed since it
/// was listed (its size now says so: fine), or the body was cut short or ran long (an error,
/// tried again).
async fn check_length(source: &Location, read: u64, listed: u64) -> Result<(), StepError> {
    match source.operator.stat(&source.path).await {
        Ok(meta) if meta.content_length() == read => {
            tracing::debug!(source = %source.display, read, listed, "The object changed since it was listed.");
            Ok(())
        }
        Ok(meta) => Err(StepError::new(
            redrive_core::error::ErrorClass::Transient,
            format!(
                "read {read} bytes of `{}`, which is {} bytes long (listed as {listed}): the body \
                 was cut short or ran long; nothing was written and the copy will be tried again",
                source.display,
                meta.content_length()
            ),
        )),
        Err(e) => Err(step_error(
            format!(
                "read {read} bytes of `{}`, listed as {listed} bytes, and cannot check its size",
                source.display
            ),
            e,
        )),
    }
}

/// The MD5 of the bytes read against what the source says of itself. Only a whole-object MD5
/// is compared: the parts of a multipart source ETag were cut where its uploader cut them,
/// which this copy does not know (and an encrypted bucket's ETag is no MD5 at all).
async fn check_source_md5(source: &Location, ours: Vec<u8>) -> Result<(), StepError> {
    match source_md5(source).await? {
        Some(theirs) if theirs != ours => Err(StepError::new(
            redrive_core::error::ErrorClass::Transient,
            format!(
                "the body read from `{}` is not the object ({}); nothing was written and the \
                 copy will be tried again (a bucket with SSE-KMS or SSE-C encryption has ETags \
                 that are not MD5s: use checksum = \"crc32c\" or \"sha256\" there)",
                source.display,
                format_args!("read md5 {}, the source says {}", hex(&ours), hex(&theirs))
            ),
        )),
        _ => Ok(()),
    }
}

/// A copy the service made: its size and, when the copy asked for one, its MD5 (checked).
struct ServerCopy {
    bytes: u64,
    md5: Option<Vec<u8>>,
}

/// The MD5 the source reports of itself as a whole (Azure's Content-MD5, GCS's md5Hash, a
/// single-part S3 ETag), if it does.
async fn source_md5(source: &Location) -> Result<Option<Vec<u8>>, StepError> {
    let meta =
        source.operator.stat(&source.path).await.map_err(|e| {
            step_error(format!("cannot look up the MD5 of `{}`", source.display), e)
        })?;
    Ok(match store_md5(meta.content_md5(), meta.etag()) {
        Some(StoreMd5::Whole(md5)) => Some(md5),
        _ => None,
    })
}

/// The service's copy against the source's MD5, from what the target reports (no bytes
/// read): its size when it matches. A copy that differs is removed and tried again; one that
/// reports no MD5 is removed too, and the item fails: it cannot be checked that way.
async fn check_server_copy(target: &Location, expected: &[u8]) -> Result<u64, StepError> {
    let meta =
        target.operator.stat(&target.path).await.map_err(|e| {
            step_error(format!("cannot look up the MD5 of `{}`", target.display), e)
        })?;
    match store_md5(meta.content_md5(), meta.etag()) {
        Some(StoreMd5::Whole(md5)) if md5 == expected => Ok(meta.content_length()),
        Some(StoreMd5::Whole(md5)) => Err(remove_corrupted(
            target,
            &format!(
                "the service's copy has md5 {}, the source {}",
                hex(&md5),
                hex(expected)
            ),
        )
        .await),
        _ => {
            let removed = target.operator.delete(&target.path).await.is_ok();
            Err(StepError::permanent(format!(
                "the service's copy `{}` reports no MD5 to check against the source's{}; use \
                 mode = \"stream\" to check the bytes while they are copied",
                target.display,
                if removed { " (it was removed)" } else { "" }
            )))
        }
    }
}

/// The source's body moves too slowly to ever finish: the attempt fails (and is retried).
fn too_slow(source: &Location, why: &str) -> StepError {
    StepError::new(
        redrive_core::error::ErrorClass::Transient,
        format!("reading `{}`: {why}", source.display),
    )
}

/// Bytes read at a time from local files: the writer gathers them into parts (without
/// copying), so a local read need not hold a whole part of its own (8 MiB less at 8 MiB parts).
const LOCAL_READ: usize = 1024 * 1024;

/// How the source is read. An object that the listing says is larger than a part is read a
/// part at a time, each part its own ranged request (retried alone), after a HEAD request for
/// its exact size (the `size` field only chooses the way: a wrong one cannot cut an object
/// short). Any other object is one streamed GET: for small objects the HEAD would be a third of
/// the copy's requests (HEAD, GET, PUT).
async fn read_plan(
    operator: &opendal::Operator,
    path: &str,
    part_size: usize,
    size: Option<u64>,
) -> opendal::Result<opendal::Reader> {
    let reader = operator.reader_with(path);
    if operator.info().scheme() == "fs" {
        return reader.chunk(LOCAL_READ.min(part_size)).await;
    }
    match size {
        Some(size) if size > part_size as u64 => reader.chunk(part_size).await,
        _ => reader.await,
    }
}

/// The part size the store's writer really uses: OpenDAL clamps the asked size to the
/// service's limits (S3: 5 MiB to 5 GiB), and the part MD5s must be cut at the same places.
fn effective_part_size(operator: &opendal::Operator, asked: usize) -> usize {
    let capability = operator.info().capability();
    let mut size = asked;
    if let Some(max) = capability.write_multi_max_size {
        size = size.min(max);
    }
    if let Some(min) = capability.write_multi_min_size {
        size = size.max(min);
    }
    size
}

/// How the MD5 read differs from what the store holds, if it does. A multipart ETag with
/// another part count than ours cannot be compared (another part size): no verdict.
fn md5_mismatch(ours: &[u8], parts: PartMd5s, theirs: &StoreMd5) -> Option<String> {
    match theirs {
        StoreMd5::Whole(theirs) => (theirs.as_slice() != ours)
            .then(|| format!("read md5 {}, the store holds {}", hex(ours), hex(theirs))),
        StoreMd5::Parts(theirs, n) => {
            let (expected, count) = parts.finish();
            (count == *n && expected != *theirs).then(|| {
                format!(
                    "the parts read make the multipart ETag {}-{count}, the store holds {}-{n}",
                    hex(&expected),
                    hex(theirs)
                )
            })
        }
    }
}

/// The store holds other bytes than were read (corrupted in transit): the object this copy
/// just wrote is removed, so no wrong object stays visible, and the copy is tried again.
async fn remove_corrupted(target: &Location, mismatch: &str) -> StepError {
    match target.operator.delete(&target.path).await {
        Ok(()) => StepError::new(
            redrive_core::error::ErrorClass::Transient,
            format!(
                "checksum mismatch for `{}`: {mismatch}; the target was removed and the copy \
                 will be tried again (a bucket with SSE-KMS or SSE-C encryption has ETags that \
                 are not MD5s: use checksum = \"crc32c\" or \"sha256\" there)",
                target.display
            ),
        ),
        Err(e) => StepError::new(
            redrive_core::error::ErrorClass::Fatal,
            format!(
                "checksum mismatch for `{}`: {mismatch}, and the wrong object could not be \
                 removed: delete it by hand before running again",
                target.display
            ),
        )
        .with_source(e),
    }
}

#[async_trait]
impl Step for CopyStep {
    async fn run(&self, fields: &Fields, cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let started = Instant::now();
        let render = |t: &redrive_core::Template| {
            t.render(fields)
                .map_err(|e| StepError::permanent(e.to_string()))
        };
        let from = render(&self.spec.from)?;
        let to = self
            .spec
            .to
            .render_target(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let content_type = self.spec.content_type.as_ref().map(render).transpose()?;
        let source = self.stores.resolve(&from)?;
        let target = self.stores.resolve_for_write(&to)?;

        let create_only = self.spec.if_exists != IfExists::Overwrite;
        let size = fields.get("size").and_then(|s| s.parse::<u64>().ok());
        // A local target's name taken by a folder is not the target existing (a conditional
        // create is refused for it all the same).
        let existing = || match &target.file {
            Some(file) if local_file::is_folder(&file.path) => {
                Err(local_file::folder_in_the_way(&target.display))
            }
            _ => exists(self.spec.if_exists, &target.display),
        };

        let how = Transfer {
            part_size: self.spec.part_size,
            parts: self.spec.parts,
            create_only,
            content_type,
            checksum: self.spec.checksum,
            size,
        };
        match self.server_side((&from, &to), &source, &target, &how).await {
            Ok(Some(ServerCopy { bytes, md5 })) => {
                cx.bytes.add(bytes);
                self.record(&serde_json::json!({
                    "source": source.display,
                    "target": target.display,
                    "size": bytes,
                    "checksum": md5.map(|value| serde_json::json!({"algorithm": "md5", "value": hex(&value)})),
                    "server_side": true,
                    "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                }))?;
                return Ok(Outcome::done_to(bytes, target.display.clone()));
            }
            Ok(None) => {}
            Err(Failure::Exists) => return existing(),
            Err(Failure::Step(error)) => return Err(error),
        }

        // The transfer runs as its own task: when this step is cancelled (a second Ctrl-C
        // drops the item), the task is told to stop and stops between two writes, then aborts
        // its upload. Dropping the writer in the middle of a request instead could lose the
        // id of a multipart upload the store has just created, leaving it orphaned.
        let cancelled = Arc::new(AtomicBool::new(false));
        let (progress, mut moved) = mpsc::unbounded_channel();
        // The task reports throttled storage calls to this step's limit, as the step would.
        let work = match (&source.file, &target.file) {
            // Local to local: plain file system calls, made durable in groups.
            (Some(from), Some(to)) => local_transfer(
                from.clone(),
                to.clone(),
                LocalCopy {
                    create_only,
                    checksum: self.spec.checksum,
                    size,
                    source_display: source.display.clone(),
                    target_display: target.display.clone(),
                },
                Arc::clone(&cancelled),
                progress,
            )
            .boxed(),
            _ => transfer(
                source.clone(),
                target.clone(),
                how,
                Arc::clone(&cancelled),
                progress,
            )
            .boxed(),
        };
        let task = tokio::spawn(cx.throttle.clone().scope_owned(work));
        let mut guard = CancelOnDrop {
            cancelled,
            task: Some(task),
        };
        // An object larger than one part gets its own progress (bytes, rate, ETA).
        let mut so_far = 0u64;
        let mut object: Option<Box<dyn ObjectProgress>> = None;
        while let Some(n) = moved.recv().await {
            cx.bytes.add(n);
            so_far += n;
            match &object {
                Some(object) => object.add(n),
                None if so_far >= self.spec.part_size as u64 => {
                    object = cx.bytes.object(&source.display, size);
                    if let Some(object) = &object {
                        object.add(so_far);
                    }
                }
                None => {}
            }
        }
        drop(object);
        let Some(task) = guard.task.take() else {
            return Err(StepError::permanent("the copy task is gone"));
        };
        let Transferred {
            bytes,
            metadata,
            hasher,
            parts,
            placing,
        } = match task.await {
            Ok(Ok(done)) => done,
            Ok(Err(Failure::Exists)) => return existing(),
            Ok(Err(Failure::Step(error))) => return Err(error),
            Err(join) => {
                return Err(StepError::permanent(format!(
                    "the copy of `{}` stopped: {join}",
                    source.display
                )));
            }
        };
        if bytes > effective_part_size(&target.operator, self.spec.part_size) as u64 {
            self.abort_earlier_uploads(&to, &target).await;
        }
        let digest = hasher.map(Hasher::finish);
        if let (Some(ours), Some(parts)) = (&digest, parts)
            && let Some(theirs) = store_md5(metadata.content_md5(), metadata.etag())
            && let Some(mismatch) = md5_mismatch(ours, parts, &theirs)
        {
            return Err(remove_corrupted(&target, &mismatch).await);
        }
        let line = serde_json::json!({
            "source": source.display,
            "target": target.display,
            "size": bytes,
            "checksum": self.spec.checksum.zip(digest.as_ref()).map(|(algorithm, value)| serde_json::json!({
                "algorithm": algorithm.name(), "value": hex(value)
            })),
            "etag": metadata.etag(),
            "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        });
        let Some(placing) = placing else {
            self.record(&line)?;
            return Ok(Outcome::done_to(bytes, target.display.clone()));
        };
        // A local copy's file gets its name, durably, outside the item's slot.
        let (manifest, if_exists) = (self.manifest.clone(), self.spec.if_exists);
        let rest = async move {
            if !placing.finish().await? {
                return exists(if_exists, &target.display);
            }
            if let Some(manifest) = &manifest {
                // The copy's time includes making it durable and naming it.
                let mut line = line;
                line["seconds"] =
                    serde_json::json!((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
                manifest.record(&line)?;
            }
            Ok(Outcome::done_to(bytes, target.display.clone()))
        };
        Ok(Outcome::Done(Done {
            bytes,
            target: None,
            settle: Some(Settle::new(rest)),
            ..Done::default()
        }))
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let from = self.spec.from.render(fields)?;
        let to = self.spec.to.render(fields)?;
        let mode = match self.spec.if_exists {
            IfExists::Skip => "if absent",
            IfExists::Overwrite => "overwrite",
            IfExists::Fail => "fail if present",
        };
        Ok(format!("copy {from} -> {to} ({mode})"))
    }

    fn calls(&self, fields: &Fields) -> Vec<(&'static str, u64)> {
        let (Ok(from), Ok(to)) = (self.spec.from.render(fields), self.spec.to.render(fields))
        else {
            return Vec::new();
        };
        let size = fields.get("size").and_then(|s| s.parse::<u64>().ok());
        match server_side::route(&self.spec, &self.stores, &self.refusals, &from, &to, size) {
            Route::Azure { parts: None, .. }
            | Route::S3 { parts: None, .. }
            | Route::Gcs { .. } => {
                // With `checksum`: the source's MD5 looked up before, the target's after.
                let heads = u64::from(self.spec.checksum.is_some()) * 2;
                return [("COPY", 1), ("HEAD", heads)]
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .collect();
            }
            Route::Azure {
                parts: Some(plan), ..
            } => {
                return vec![("COPY part", plan.count), ("multipart commit", 1)];
            }
            Route::S3 {
                parts: Some(plan), ..
            } => {
                return vec![
                    ("multipart start", 1),
                    ("COPY part", plan.count),
                    ("multipart commit", 1),
                ];
            }
            Route::Stream(_) => {}
        }
        let local = |url: &str| self.stores.resolve(url).is_ok_and(|l| l.local);
        let parts = size.map_or(1, |size| size.div_ceil(self.spec.part_size as u64).max(1));
        let mut calls = Vec::new();
        if !local(&from) {
            // As `read_plan` reads: one GET, or a HEAD and a ranged GET per part.
            if parts > 1 {
                calls.push(("HEAD", 1));
            }
            calls.push(("GET", parts));
        }
        if local(&to) {
            calls.push(("file write", 1));
        } else if parts > 1 {
            calls.push(("PUT", parts));
            calls.push(("multipart start", 1));
            calls.push(("multipart commit", 1));
        } else {
            calls.push(("PUT", 1));
        }
        calls
    }

    async fn check(&self, fields: &Fields) -> Result<Check, StepError> {
        let to = self
            .spec
            .to
            .render(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let target = self.stores.resolve(&to)?;
        match target.operator.stat(&target.path).await {
            Ok(_) => Ok(Check::TargetPresent),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Check::Unknown),
            Err(e) => Err(step_error(
                format!("cannot check whether `{}` exists", target.display),
                e,
            )),
        }
    }
}
