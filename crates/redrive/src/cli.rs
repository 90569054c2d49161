//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// redrive runs a work list through a pipeline of steps, in parallel, each item exactly once,
/// resumable after any crash, with a state database you can query.
///
/// A plan file (TOML) names the source of items, the steps run for each item and the limits.
/// Runs resume by default: rerun the same command after a crash or Ctrl-C.
#[derive(Debug, Parser)]
#[command(
    name = "redrive",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 all items done or skipped; 1 some items failed; \
2 usage, plan or state error; 130 interrupted (rerun resumes).\n\n\
Examples:\n  redrive validate plan.toml\n  redrive run plan.toml --dry-run --limit 5\n  \
redrive run plan.toml\n  redrive status plan.toml\n  redrive failed plan.toml --csv retry.csv"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// More detail on stderr: -v for each finished step of each item (`copy a → b: 2.0 KiB in 31 ms`), its failures and retries, -vv for debugging
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr; no progress
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// No progress bar or progress lines
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,
    /// Append log lines (warnings, and each item's at -v) to FILE, with their time, instead of
    /// stderr; progress and the summary stay on stderr
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) log_file: Option<PathBuf>,
    /// How log lines are written: text, or json (one object a line: timestamp, level, fields)
    #[arg(long, global = true, value_enum, default_value_t)]
    pub(crate) log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a plan: load its source into the state and run every unfinished item
    Run(RunArgs),
    /// Check a plan (syntax, keys, templates against the source's fields) without running it
    Validate(ValidateArgs),
    /// Show the job's items by status and step, bytes, rate and ETA
    Status(StatusArgs),
    /// List failed items with their errors, or write them as a CSV to run again
    Failed(FailedArgs),
    /// Write a report of the job as one HTML file that opens offline: totals, throughput over
    /// time, how long items took, failures and skips by reason, the slowest items
    Report(ReportArgs),
    /// Put items back to pending, to run from their first step on the next run
    Reset(ResetArgs),
    /// Mark items skipped by hand, so no run picks them up
    Skip(SkipArgs),
    /// Which keys of SRC have (or lack) their counterpart in DST
    Diff(DiffArgs),
    /// Copy a file, folder or prefix (recursively) to another store, resumably
    Cp(CpArgs),
    /// Print a shell completion script (e.g. `redrive completions bash > /etc/bash_completion.d/redrive`)
    Completions(CompletionsArgs),
    /// Print a man page: redrive's, or a command's (e.g. `redrive man run > redrive-run.1`)
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The command whose page to print (`run`, `status`, …); none: redrive's own page
    pub(crate) command: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell: bash, zsh, fish, powershell or elvish
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
#[command(
    after_help = "SRC and DST are paths or URLs (s3://, az://, gs://, https://ACCOUNT.blob.core.windows.net/…). \
A folder or prefix SRC copies recursively to DST/<path below SRC>. Targets that exist are left as they are (the summary counts them). \
The job's plan and state live in .redrive/cp-<hash>.toml/.db: rerun the same command to resume, \
`redrive status .redrive/cp-<hash>.toml` to watch it.\n\nExample:\n  redrive cp ./exports/ s3://archive/2026/ \
--checksum sha256 --manifest manifest.jsonl"
)]
pub(crate) struct CpArgs {
    /// What to copy: a file, a folder or a prefix
    pub(crate) src: String,
    /// Where to: a folder or prefix (a file or object name when SRC is one file)
    pub(crate) dst: String,
    /// Copy only these paths below SRC, one per line
    #[arg(long, value_name = "LIST")]
    pub(crate) files_from: Option<PathBuf>,
    /// Copy only paths that match this glob (repeatable): without a `/` it matches the file
    /// name (`*.json`), with one the path below SRC (`logs/**/*.gz`)
    #[arg(long, value_name = "GLOB")]
    pub(crate) include: Vec<String>,
    /// Leave out paths that match this glob (repeatable), as --include matches them
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,
    /// Compute a checksum while copying (md5, crc32c, sha256); md5 is checked against the store's
    #[arg(long, value_name = "ALG")]
    pub(crate) checksum: Option<String>,
    /// Append one JSON line per object copied to FILE
    #[arg(long, value_name = "FILE")]
    pub(crate) manifest: Option<PathBuf>,
    /// Objects in flight
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub(crate) concurrency: u32,
    /// Bytes per part for big objects (e.g. 16MiB)
    #[arg(long, value_name = "SIZE", default_value = "16MiB")]
    pub(crate) part_size: String,
    /// Parts of one object in flight
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) parts: usize,
    /// Print what would be copied (what an earlier run of this command copied is left out);
    /// copy nothing, write no state
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "SRC and DST are prefix listings (s3://, az://, gs://, a local folder) or \
local files of keys, one per line. Both stream, in flat memory: a sorted merge when both list in \
key order (object stores do), else an on-disk index.\n\nExample:\n  redrive diff s3://crashes/raw/20260915/ \
s3://crashes/processed/ --map '{name}' --missing havenots.txt --present haves.txt"
)]
pub(crate) struct DiffArgs {
    /// Where the keys to check come from
    pub(crate) src: String,
    /// Where their counterparts should be
    pub(crate) dst: String,
    /// The counterpart's key below DST, from SRC's fields (key, name, rel, size, url)
    #[arg(long, value_name = "TEMPLATE", default_value = "{rel}")]
    pub(crate) map: String,
    /// Write SRC's keys without a counterpart here, one per line
    #[arg(long, value_name = "FILE")]
    pub(crate) missing: PathBuf,
    /// Write SRC's keys with a counterpart here, one per line
    #[arg(long, value_name = "FILE")]
    pub(crate) present: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The plan file
    pub(crate) plan: PathBuf,
    /// One JSON object on stdout: the checked plan (`"ok": true`, job, source and its fields,
    /// key, steps, state, limits) or its error (`"ok": false`, file, table, message; exit 2)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StateArg {
    /// The state file, instead of the plan's `[job] state`
    #[arg(long, value_name = "PATH")]
    pub(crate) state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The plan file
    pub(crate) plan: PathBuf,
    #[command(flatten)]
    pub(crate) state: StateArg,
    /// Print what each item would do and the requests the run would make (per step: GET,
    /// PUT, HEAD, COPY, queue sends, HTTP requests, …); touch nothing, write no state
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: ask the stores what is there now (a stat per item and step, no
    /// write): items an `exists` step would skip, and copies whose target is present
    #[arg(long, requires = "dry_run")]
    pub(crate) check_targets: bool,
    /// Start at most N items in this run
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u64>,
    /// Run failed items again, from the step that failed
    #[arg(long)]
    pub(crate) retry_failed: bool,
    /// Stop starting items once N have failed in this run (the rest stay pending): a run
    /// whose items fail for one cause stops early instead of trying every item
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_errors: Option<u64>,
    /// Read the source again for items added since it was loaded (a CSV or list file that
    /// changed is read again by itself; a listing, a glob or a query only with this)
    #[arg(long)]
    pub(crate) reload: bool,
    /// Discard the state and start over (asks first unless --yes)
    #[arg(long)]
    pub(crate) restart: bool,
    /// Answer yes to --restart's question
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Calls per second at most, for the whole run: each step's calls, and each `http`
    /// step's requests (overrides its `rate`); split between `--workers`
    #[arg(long, value_name = "R")]
    pub(crate) rate: Option<f64>,
    /// Items in flight (overrides [limits] items)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: Option<u32>,
    /// After Ctrl-C or SIGTERM, how long the items in flight may take to finish (`30s`, `2m`,
    /// `0` to abort them at once); then they are abandoned and redone on the next run
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_grace)]
    pub(crate) grace: std::time::Duration,
    /// Write the run's metrics as JSON to FILE (processed, done, failed, skipped, duration_s,
    /// rows_per_sec, retries, peak_rss_mb, finished_at, …)
    #[arg(long, value_name = "FILE")]
    pub(crate) metrics: Option<PathBuf>,
    /// Append one CSV row per step transition to FILE (time, key, step, status, seconds, bytes,
    /// output, target, error type and message)
    #[arg(long, value_name = "FILE")]
    pub(crate) telemetry: Option<PathBuf>,
    /// Run only shard I of N (0 <= I < N): an integer `sql` key is split by `key mod N` in the
    /// query, other keys by a hash. The shard has its own state, STATE.shard-I-of-N.db (or its
    /// own PostgreSQL schema); the plan's hooks are not run
    #[arg(long, value_name = "I/N", value_parser = parse_shard, conflicts_with = "workers")]
    pub(crate) shard: Option<redrive_core::source::Shard>,
    /// Start N worker processes over shards 0..N-1 with one combined progress view; each writes
    /// worker-I.json beside the --metrics file (default metrics/aggregate.json), which gets the
    /// sum; each worker's stderr goes to the plan's log folder. Rerun to resume every shard
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256), conflicts_with = "dry_run")]
    pub(crate) workers: Option<u32>,
    /// Do not run the plan's [[job.before]] and [[job.after]] SQL
    #[arg(long)]
    pub(crate) no_hooks: bool,
    /// Report progress as JSON lines on stdout instead of a bar (what --workers reads from
    /// its workers)
    #[arg(long)]
    pub(crate) progress_json: bool,
    /// Serve live metrics for Prometheus at http://HOST:PORT/metrics while the run goes (items
    /// by status, per-step outcomes, durations, items in flight, retries and adaptive limits,
    /// bytes, throttling, state commit times); with --workers N, worker i serves on PORT + i
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics_addr: Option<String>,
    /// Print the end summary as one JSON object on stdout (the --metrics fields), for scripts
    #[arg(long, conflicts_with_all = ["progress_json", "workers", "dry_run"])]
    pub(crate) json: bool,
}

fn parse_shard(text: &str) -> Result<redrive_core::source::Shard, String> {
    redrive_core::source::Shard::parse(text)
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The plan file
    #[arg(default_value = "plan.toml")]
    pub(crate) plan: PathBuf,
    #[command(flatten)]
    pub(crate) state: StateArg,
    /// Print JSON instead of a table
    #[arg(long)]
    pub(crate) json: bool,
    /// Refresh every SECONDS (default 2) until Ctrl-C: redrawn in place on a terminal, one
    /// table (or, with --json, one JSON line) after another otherwise
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true, default_missing_value = "2", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) watch: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct FailedArgs {
    /// The plan file
    #[arg(default_value = "plan.toml")]
    pub(crate) plan: PathBuf,
    #[command(flatten)]
    pub(crate) state: StateArg,
    /// Write the failed items' fields to FILE as CSV (usable as a `csv` source)
    #[arg(long, value_name = "FILE")]
    pub(crate) csv: Option<PathBuf>,
    /// The CSV's columns: the items' fields, or s3-batch (the S3 Batch Operations completion
    /// report's: Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage)
    #[arg(long, value_enum, default_value_t, requires = "csv")]
    pub(crate) csv_format: CsvFormat,
    /// One JSON object per line on stdout (key, step, attempts, error, fields), for scripts
    #[arg(long, conflicts_with = "csv")]
    pub(crate) json: bool,
}

/// `failed --csv-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CsvFormat {
    /// The items' fields, with a header: usable as a `csv` source
    #[default]
    Fields,
    /// S3 Batch Operations' completion report (no header), for objects (`url` = s3://…, or
    /// `bucket` and `key` fields)
    S3Batch,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The plan file
    #[arg(default_value = "plan.toml")]
    pub(crate) plan: PathBuf,
    #[command(flatten)]
    pub(crate) state: StateArg,
    /// The HTML file to write (`-` for stdout)
    #[arg(short, long, value_name = "FILE", default_value = "report.html")]
    pub(crate) output: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    /// The plan file
    pub(crate) plan: PathBuf,
    /// Keys of the items to reset
    #[arg(required_unless_present = "status", conflicts_with = "status")]
    pub(crate) keys: Vec<String>,
    /// Reset every item with this status (pending, running, done, skipped, failed)
    #[arg(long, value_name = "STATUS")]
    pub(crate) status: Option<String>,
    #[command(flatten)]
    pub(crate) state: StateArg,
}

#[derive(Debug, Args)]
pub(crate) struct SkipArgs {
    /// The plan file
    pub(crate) plan: PathBuf,
    /// Keys of the items to skip
    #[arg(required = true)]
    pub(crate) keys: Vec<String>,
    /// Why (recorded in the state)
    #[arg(long, default_value = "skipped by hand")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) state: StateArg,
}

/// `--grace`: a duration (`10s`, `2m`, `0`).
fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    redrive_core::job::parse_duration(text)
        .ok_or_else(|| format!("`{text}` is not a duration; write e.g. `10s`, `2m` or `0`"))
}
