//! `--telemetry FILE`: an append-only CSV with one row per step transition (a step starting,
//! and finishing done, skipped or failed), flushed row by row so a crash loses none.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use redrive_core::engine::StepEvent;
use redrive_core::error::ErrorClass;
use redrive_core::secrets::redact;

/// The columns, in order.
pub(crate) const HEADER: [&str; 11] = [
    "time",
    "key",
    "parent",
    "step",
    "status",
    "seconds",
    "bytes",
    "output",
    "target",
    "error_type",
    "error_message",
];

pub(crate) struct Telemetry {
    writer: Mutex<csv::Writer<std::fs::File>>,
}

impl Telemetry {
    /// Opens `path` for appending; writes the header when the file is new or empty.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the telemetry file `{}`", path.display()))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut writer = csv::Writer::from_writer(file);
        if empty {
            writer
                .write_record(HEADER)
                .context("cannot write the telemetry header")?;
            writer
                .flush()
                .context("cannot write the telemetry header")?;
        }
        Ok(Self {
            writer: Mutex::new(writer),
        })
    }

    pub(crate) fn write(&self, event: &StepEvent<'_>) {
        let error_type = event.error_class.map(|class| match class {
            ErrorClass::Transient => "transient",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        });
        let row = [
            jiff::Timestamp::now().to_string(),
            redact(event.key).into_owned(),
            event
                .parent
                .map(|p| redact(p).into_owned())
                .unwrap_or_default(),
            event.step.to_owned(),
            event.status.as_str().to_owned(),
            format!("{:.3}", event.seconds),
            event.bytes.to_string(),
            event.output.unwrap_or_default().to_owned(),
            event
                .target
                .map(|t| redact(t).into_owned())
                .unwrap_or_default(),
            error_type.unwrap_or_default().to_owned(),
            event
                .error
                .map(|e| redact(e).into_owned())
                .unwrap_or_default(),
        ];
        if let Ok(mut writer) = self.writer.lock()
            && writer
                .write_record(&row)
                .and_then(|()| writer.flush().map_err(Into::into))
                .is_err()
        {
            tracing::warn!("Cannot write a telemetry row.");
        }
    }
}
