//! The copy manifest (`manifest = "…"`): a JSON line per object copied, appended.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use redrive_core::error::{ErrorClass, StepError};

/// A manifest file, opened (appending) when its first line is written: building the step
/// for `--dry-run` or `validate` creates no file.
#[derive(Debug)]
pub(super) struct Manifest {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Manifest {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends `line` (secrets redacted).
    pub(super) fn record(&self, line: &serde_json::Value) -> Result<(), StepError> {
        let text = redrive_core::secrets::redact(&line.to_string()).into_owned();
        let mut file = self
            .file
            .lock()
            .map_err(|_| StepError::permanent("the manifest lock is poisoned"))?;
        let file = match &mut *file {
            Some(file) => file,
            None => file.insert(self.open()?),
        };
        writeln!(file, "{text}").map_err(|e| {
            StepError::new(ErrorClass::Fatal, "cannot append to the manifest").with_source(e)
        })
    }

    fn open(&self) -> Result<std::fs::File, StepError> {
        let path = &self.path;
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            });
        opened.map_err(|e| {
            StepError::new(
                ErrorClass::Fatal,
                format!("cannot open the manifest `{}`", path.display()),
            )
            .with_source(e)
        })
    }
}
