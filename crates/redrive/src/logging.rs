//! Logs on stderr, every line passed through the secret mask.

use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Writes to stderr with secrets masked.
struct Redacting;

impl Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redrive_core::secrets::redact(&text).as_bytes())?;
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
