//! Logs on stderr, every line passed through the secret mask, and the same line repeated
//! counted rather than printed again and again (a storage layer that warns once per entry of
//! a listing wrote gigabytes).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Writes to stderr with secrets masked.
struct Redacting;

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
    /// What to write for `line`: the line, a note that it repeats, or nothing.
    fn admit(&mut self, line: &str) -> Option<String> {
        if self.counts.len() >= LINES && !self.counts.contains_key(line) {
            self.counts.clear();
        }
        let count = self.counts.entry(line.to_owned()).or_insert(0);
        *count += 1;
        match *count {
            n if n <= PRINTED => Some(line.to_owned()),
            n if n == PRINTED + 1 || n.is_power_of_two() && n >= 1024 => Some(format!(
                "(the next line was logged {n} times; its repeats are counted, not printed)\n{line}"
            )),
            _ => None,
        }
    }
}

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let masked = redrive_core::secrets::redact(&text);
        let admitted = match SEEN.lock() {
            Ok(mut seen) => seen.get_or_insert_with(Repeats::default).admit(&masked),
            Err(_) => Some(masked.into_owned()),
        };
        if let Some(line) = admitted {
            std::io::stderr().write_all(line.as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Makes [`Redacting`] writers.
struct StderrMasked;

impl<'a> MakeWriter<'a> for StderrMasked {
    type Writer = Redacting;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting
    }
}

/// Sets up logging: warnings by default, `-v` info, `-vv` debug; `RUST_LOG` overrides.
pub(crate) fn init(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,opendal=warn",
        (false, _) => "debug,opendal=info,hyper=info,reqwest=info,rustls=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let color = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrMasked)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_repeated_a_million_times_is_printed_a_few_times() {
        let mut repeats = Repeats::default();
        let line = "WARN skipping entry due to not found during listing: in/\n";
        let printed: Vec<String> = (0..1_000_000).filter_map(|_| repeats.admit(line)).collect();
        assert!(printed.len() < 20, "{} lines printed", printed.len());
        assert!(printed[3].contains("logged 4 times"), "{}", printed[3]);
        // Other lines are not held back.
        assert_eq!(repeats.admit("another\n").as_deref(), Some("another\n"));
    }
}
