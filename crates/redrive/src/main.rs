//! The `redrive` command.

/// `println!` for what goes to stdout (data, summaries): when stdout is closed (`redrive
/// failed plan.toml | head -1`), redrive ends quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            $crate::stdout_failed(error);
        }
    }};
}

/// `print!` for stdout, as [`out!`].
#[macro_export]
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = write!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            $crate::stdout_failed(error);
        }
    }};
}

mod cli;
mod commands;
mod exit;
mod exporter;
mod logging;
mod metrics;
mod progress;
mod report;
mod summary;
mod telemetry;

use std::process::ExitCode;

use clap::Parser as _;
use redrive_core::secrets::redact;

use crate::cli::{Cli, Command};
use crate::exit::{ExitStatus, Hinted};

/// Peak memory must stay about parts × part size whatever the object's size: jemalloc reuses
/// the freed part buffers of a multipart copy, where glibc's malloc let RSS drift by tens of MB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Stdout cannot be written: a reader that went away (`| head`) ends the program with success,
/// as it would a Unix filter; any other failure is an error.
pub(crate) fn stdout_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {error}");
    std::process::exit(i32::from(ExitStatus::Error.code()));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = logging::init(
        cli.global.verbose,
        cli.global.quiet,
        cli.global.log_file.as_deref(),
        cli.global.log_format,
    ) {
        let file = cli
            .global
            .log_file
            .as_deref()
            .unwrap_or(std::path::Path::new("-"));
        eprintln!(
            "error: cannot open the log file {}: {error}\nhint: give --log-file a path in a folder that exists and can be written",
            file.display()
        );
        return ExitStatus::Error.into();
    }
    redrive_core::secrets::register_env_credentials();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitStatus::Error.into();
        }
    };
    let result = runtime.block_on(dispatch(&cli));
    // Do not wait for blocking source readers that a stopped run left behind.
    runtime.shutdown_background();
    match result {
        Ok(status) => status.into(),
        Err(error) => {
            print_error(&error);
            ExitStatus::Error.into()
        }
    }
}

async fn dispatch(cli: &Cli) -> anyhow::Result<ExitStatus> {
    match &cli.command {
        Command::Run(args) => commands::run::run(args, &cli.global).await,
        Command::Validate(args) => commands::validate::validate(args),
        Command::Status(args) => commands::inspect::status(args).await,
        Command::Failed(args) => commands::inspect::failed(args).await,
        Command::Report(args) => commands::report::report(args).await,
        Command::Reset(args) => commands::edit::reset(args).await,
        Command::Skip(args) => commands::edit::skip(args).await,
        Command::Diff(args) => commands::diff::diff(args).await,
        Command::Cp(args) => commands::cp::cp(args, &cli.global).await,
        Command::Completions(args) => Ok(completions(args)),
        Command::Man(args) => man(args),
    }
}

/// A man page in roff (`man -l -` reads it), written whole, as the completion scripts are.
fn man(args: &cli::ManArgs) -> anyhow::Result<ExitStatus> {
    use clap::CommandFactory as _;
    let redrive = Cli::command();
    let command = match &args.command {
        None => redrive,
        Some(name) => {
            let names: Vec<String> = redrive
                .get_subcommands()
                .map(|c| c.get_name().to_owned())
                .collect();
            let found = redrive.find_subcommand(name).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "`{name}` is not a redrive command; one of: {}",
                    names.join(", ")
                )
            })?;
            // Titled as `man` lists it, redrive-run(1); its synopsis says `redrive run`.
            let name = found.get_name().to_owned();
            found
                .display_name(format!("redrive-{name}"))
                .bin_name(format!("redrive {name}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    out_part!("{}", String::from_utf8_lossy(&page));
    Ok(ExitStatus::Success)
}

/// The completion script, written whole (a reader that stops early ends it quietly).
fn completions(args: &cli::CompletionsArgs) -> ExitStatus {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "redrive", &mut script);
    out_part!("{}", String::from_utf8_lossy(&script));
    ExitStatus::Success
}

/// `error: …`, each cause on its own line, then any hint; secrets masked.
fn print_error(error: &anyhow::Error) {
    eprintln!("error: {}", redact(&error.to_string()));
    let mut hints = Vec::new();
    for cause in error.chain() {
        if let Some(hinted) = cause.downcast_ref::<Hinted>() {
            hints.push(hinted.hint.clone());
        }
    }
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {}", redact(&cause.to_string()));
    }
    for hint in hints {
        eprintln!("hint: {}", redact(&hint));
    }
}
