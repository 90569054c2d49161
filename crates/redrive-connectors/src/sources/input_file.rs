//! A source's input file: a local path, or an object in any store the plan reaches
//! (`csv = "s3://bucket/lists/failed.csv.gz"`, `az://…`, `gs://…`). Either is read as a
//! blocking [`Read`] through the compression its name says (see `compressed`), streamed: an
//! object's body arrives a chunk at a time, so memory stays at a chunk and the decoder's window
//! whatever the list's size. Readers run off the async runtime (tokio's blocking pool), as the
//! csv and line parsers do.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::source::SourceError;
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::storage::{Location, Stores};

/// Where a source's file is, as the plan's check saw it: a URL stays a URL until the stores
/// are known; anything else is a path (relative to the plan's folder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputPath {
    /// A local file.
    Local(PathBuf),
    /// An object in a store, as written.
    Url(String),
}

impl InputPath {
    /// `value` as written in the plan.
    pub(crate) fn of(value: &str, base_dir: &Path) -> Self {
        if value.contains("://") && !value.starts_with("file://") {
            InputPath::Url(value.to_owned())
        } else {
            let path = value.strip_prefix("file://").unwrap_or(value);
            InputPath::Local(base_dir.join(path))
        }
    }

    /// The file, reachable: a local file must open; an object must exist (its properties
    /// are read once, and are its revision).
    pub(crate) fn open(&self, stores: &Stores) -> Result<InputFile, SourceError> {
        match self {
            InputPath::Local(path) => InputFile::local(path),
            InputPath::Url(url) => InputFile::object(url, stores),
        }
    }
}

/// A source's input, ready to be read any number of times.
#[derive(Clone, Debug)]
pub(crate) enum InputFile {
    Local(PathBuf),
    Object(Arc<Object>),
}

/// An object read through its store's operator, driven from blocking code by `runtime`.
#[derive(Debug)]
pub(crate) struct Object {
    location: Location,
    runtime: Handle,
    /// The object's ETag, size and modification time when the plan was built.
    revision: Option<String>,
}

impl InputFile {
    /// A local file, which must be a file (not a folder, a pipe or a device) and open.
    pub(crate) fn local(path: &Path) -> Result<Self, SourceError> {
        let not_a_file = |message: &str| SourceError::Input {
            location: path.display().to_string(),
            message: message.to_owned(),
        };
        // Looked at before opening: opening a pipe waits for a writer, and a folder opens.
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                return Err(not_a_file(
                    "is a folder, and this source reads a file; for the files in a folder, \
                     use `glob = \"FOLDER/*\"`",
                ));
            }
            if !meta.is_file() {
                return Err(not_a_file(
                    "is not a file (a pipe or a device): a list is read again when a run \
                     resumes, so it must be a file; save it to one first (`COMMAND > list.txt`)",
                ));
            }
        }
        std::fs::File::open(path).map_err(|e| SourceError::Io {
            location: path.display().to_string(),
            source: Box::new(e),
        })?;
        Ok(InputFile::Local(path.to_path_buf()))
    }

    /// An object named by `url`, which must exist.
    pub(crate) fn object(url: &str, stores: &Stores) -> Result<Self, SourceError> {
        let shown = redrive_core::secrets::redact(url).into_owned();
        let location = stores.resolve(url).map_err(|e| SourceError::Input {
            location: shown.clone(),
            message: e.to_string(),
        })?;
        if location.local {
            return InputFile::local(Path::new(&location.path));
        }
        let runtime = runtime(&shown)?;
        let meta = blocking(&runtime, location.operator.stat(&location.path)).map_err(|e| {
            SourceError::Input {
                location: shown.clone(),
                message: crate::storage::describe(&e),
            }
        })?;
        let revision = Some(format!(
            "{}:{}:{}",
            meta.etag().unwrap_or_default(),
            meta.content_length(),
            meta.last_modified()
                .map(|t| t.to_string())
                .unwrap_or_default()
        ));
        Ok(InputFile::Object(Arc::new(Object {
            location,
            runtime,
            revision,
        })))
    }

    /// The file's path or URL (secrets masked), for messages: `items.csv:12`.
    pub(crate) fn display(&self) -> String {
        match self {
            InputFile::Local(path) => path.display().to_string(),
            InputFile::Object(object) => object.location.display.clone(),
        }
    }

    /// A token that changes when the content does: a local file's length and modification
    /// time; an object's ETag, size and modification time as the plan found them.
    pub(crate) fn revision(&self) -> Option<String> {
        match self {
            InputFile::Local(path) => super::file_revision(path),
            InputFile::Object(object) => object.revision.clone(),
        }
    }

    /// The decompressed bytes, from the start, without a leading UTF-8 byte order mark (a
    /// list saved by a Windows editor or Excel starts with one: left in, the first line's
    /// key began with an invisible character and named no file). Blocking: call it off the
    /// async runtime.
    pub(crate) fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(without_bom(super::compressed::decode(
            &self.name(),
            self.raw()?,
        )?))
    }

    /// The file's name, which says its compression.
    pub(crate) fn name(&self) -> String {
        match self {
            InputFile::Local(path) => file_name(path),
            InputFile::Object(object) => file_name(Path::new(&object.location.path)),
        }
    }

    /// The bytes as stored, from the start. Blocking: call it off the async runtime.
    pub(crate) fn raw(&self) -> std::io::Result<Box<dyn Read + Send>> {
        match self {
            InputFile::Local(path) => Ok(Box::new(std::fs::File::open(path)?)),
            InputFile::Object(object) => {
                let location = &object.location;
                let stream = blocking(&object.runtime, async {
                    let reader = location.operator.reader(&location.path).await?;
                    reader.into_bytes_stream(..).await
                })
                .map_err(|e| std::io::Error::other(crate::storage::describe(&e)))?;
                Ok(Box::new(Body {
                    runtime: object.runtime.clone(),
                    stream: stream.boxed(),
                    chunk: Bytes::new(),
                }))
            }
        }
    }
}

/// `text` without the UTF-8 byte order mark it may start with. Looked for at the first read,
/// so a file that cannot be read (not gzip after all) fails where its lines are read, naming
/// the line.
fn without_bom(text: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    Box::new(WithoutBom {
        text,
        head: [0; 3],
        start: 0,
        end: 0,
        looked: false,
    })
}

struct WithoutBom {
    text: Box<dyn Read + Send>,
    /// The first bytes read, when they were not the mark: `head[start..end]` is still to give.
    head: [u8; 3],
    start: usize,
    end: usize,
    looked: bool,
}

impl Read for WithoutBom {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if !self.looked {
            while self.end < BOM.len() {
                match self.text.read(&mut self.head[self.end..]) {
                    Ok(0) => break,
                    Ok(n) => self.end += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            self.looked = true;
            if self.head[..self.end] == *BOM {
                self.end = 0;
            }
        }
        if self.start < self.end {
            let n = (self.end - self.start).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.start..self.start + n]);
            self.start += n;
            return Ok(n);
        }
        self.text.read(buf)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The runtime that drives an object's reads: the one the plan is built in. Reads block a
/// thread of its blocking pool, never a worker.
fn runtime(shown: &str) -> Result<Handle, SourceError> {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() != RuntimeFlavor::CurrentThread => Ok(handle),
        _ => Err(SourceError::Input {
            location: shown.to_owned(),
            message: "a file in a store is read on the multi-threaded runtime that runs the plan"
                .to_owned(),
        }),
    }
}

/// Waits for `future` on `runtime` from blocking code, or from a worker thread of a
/// multi-threaded runtime (which hands its other tasks to the other workers meanwhile).
fn blocking<F: Future>(runtime: &Handle, future: F) -> F::Output {
    tokio::task::block_in_place(|| runtime.block_on(future))
}

/// An object's body as a blocking reader.
struct Body {
    runtime: Handle,
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    chunk: Bytes,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match blocking(&self.runtime, self.stream.next()) {
                None => return Ok(0),
                Some(next) => self.chunk = next?,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
