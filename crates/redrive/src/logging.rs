//! Logs on stderr, or appended to `--log-file` (text, or JSON lines with `--log-format
//! json`), every line passed through the secret mask, and the same line repeated counted
//! rather than printed again and again (a storage layer that warns once per entry of a
//! listing wrote gigabytes).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// `WARN message key=value`, with the time when written to a file
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields` (`message` and the rest)
    Json,
}

/// Where log lines go.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<Mutex<std::fs::File>>),
}

/// Writes one formatted line to its sink with secrets masked.
struct Redacting {
    sink: Sink,
    format: LogFormat,
}

/// Lines seen, by content: how often each was written.
static SEEN: Mutex<Option<Repeats>> = Mutex::new(None);

/// Counts of the lines written; bounded (it starts over past `LINES` distinct lines).
#[derive(Default)]
struct Repeats {
    counts: HashMap<String, u64>,
}

/// Distinct lines remembered.
const LINES: usize = 4096;
/// A line is printed this many times before its repeats are only counted.
const PRINTED: u64 = 3;

impl Repeats {
    /// What to write for `line`: the line, a note that it repeats, or nothing. Lines are
    /// compared without their time; the note is a line of `format`.
    fn admit(&mut self, line: &str, format: LogFormat) -> Option<String> {
        let seen = without_time(line);
        if self.counts.len() >= LINES && !self.counts.contains_key(seen) {
            self.counts.clear();
        }
        let count = self.counts.entry(seen.to_owned()).or_insert(0);
        *count += 1;
        let note = |n: u64| {
            let text =
                format!("the next line was logged {n} times; its repeats are counted, not printed");
            match format {
                LogFormat::Text => format!("({text})\n"),
                LogFormat::Json => format!(
                    "{}\n",
                    serde_json::json!({"level": "INFO", "fields": {"message": text}})
                ),
            }
        };
        match *count {
            n if n <= PRINTED => Some(line.to_owned()),
            n if n == PRINTED + 1 || n.is_power_of_two() && n >= 1024 => Some(note(n) + line),
            _ => None,
        }
    }
}

/// A line without the time it starts with (a JSON line's `timestamp`, a text line's first
/// word when it is a time), so that repeats are seen as repeats.
fn without_time(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix("{\"timestamp\":\"") {
        return rest.find("\",").map_or(line, |end| &rest[end + 2..]);
    }
    match line.split_once(' ') {
        Some((first, rest))
            if first.len() >= 20 && first.as_bytes()[4] == b'-' && first.contains('T') =>
        {
            rest
        }
        _ => line,
    }
}

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let masked = redrive_core::secrets::redact(&text);
        let admitted = match SEEN.lock() {
            Ok(mut seen) => seen
                .get_or_insert_with(Repeats::default)
                .admit(&masked, self.format),
            Err(_) => Some(masked.into_owned()),
        };
        if let Some(line) = admitted {
            match &self.sink {
                Sink::Stderr => std::io::stderr().write_all(line.as_bytes())?,
                Sink::File(file) => match file.lock() {
                    Ok(mut file) => file.write_all(line.as_bytes())?,
                    Err(_) => return Err(std::io::Error::other("the log file's lock is poisoned")),
                },
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &self.sink {
            Sink::Stderr => std::io::stderr().flush(),
            Sink::File(file) => file.lock().map_or(Ok(()), |mut f| f.flush()),
        }
    }
}

/// Makes [`Redacting`] writers.
struct Masked {
    sink: Sink,
    format: LogFormat,
}

impl<'a> MakeWriter<'a> for Masked {
    type Writer = Redacting;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting {
            sink: self.sink.clone(),
            format: self.format,
        }
    }
}

/// Sets up logging: warnings by default, `-v` info, `-vv` debug; `RUST_LOG` overrides. With
/// `file`, lines are appended there (with their time) instead of stderr.
pub(crate) fn init(
    verbose: u8,
    quiet: bool,
    file: Option<&Path>,
    format: LogFormat,
) -> std::io::Result<()> {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,opendal=warn",
        (false, _) => "debug,opendal=info,hyper=info,reqwest=info,rustls=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let sink = match file {
        Some(path) => Sink::File(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ))),
        None => Sink::Stderr,
    };
    let to_file = matches!(sink, Sink::File(_));
    let writer = Masked { sink, format };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match (format, to_file) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.with_ansi(false).try_init(),
        (LogFormat::Text, false) => {
            let color = std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(color).without_time().try_init()
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_repeated_a_million_times_is_printed_a_few_times() {
        let mut repeats = Repeats::default();
        let line = "WARN skipping entry due to not found during listing: in/\n";
        let printed: Vec<String> = (0..1_000_000)
            .filter_map(|_| repeats.admit(line, LogFormat::Text))
            .collect();
        assert!(printed.len() < 20, "{} lines printed", printed.len());
        assert!(printed[3].contains("logged 4 times"), "{}", printed[3]);
        // Other lines are not held back.
        assert_eq!(
            repeats.admit("another\n", LogFormat::Text).as_deref(),
            Some("another\n")
        );
    }

    #[test]
    fn repeats_are_seen_through_the_time_of_each_line() {
        let mut repeats = Repeats::default();
        let json = |t: u32| {
            format!(
                "{{\"timestamp\":\"2026-12-02T14:00:{t:02}.1Z\",\"level\":\"WARN\",\"fields\":{{\"message\":\"x\"}}}}\n"
            )
        };
        let printed: Vec<String> = (0..50)
            .filter_map(|t| repeats.admit(&json(t), LogFormat::Json))
            .collect();
        assert_eq!(printed.len(), 4, "{printed:?}");
        // The note is a JSON line of its own.
        let note = printed[3].lines().next().unwrap_or("");
        let value: serde_json::Value = serde_json::from_str(note).unwrap_or_default();
        assert!(
            value["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("logged 4 times"),
            "{note}"
        );
        let text = |t: u32| format!("2026-12-02T14:00:{t:02}.123456Z  WARN y\n");
        let printed = (0..50)
            .filter_map(|t| repeats.admit(&text(t), LogFormat::Text))
            .count();
        assert_eq!(printed, 4);
    }
}
