//! `redrive run PLAN --workers N`: N worker processes of this program over shards 0..N-1,
//! each with its own state and metrics, watched from here: one combined progress view,
//! Ctrl-C forwarded, a worker that dies reported, the metrics summed, the hooks run once.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use redrive_connectors::Plan;
use redrive_core::item::Status;
use redrive_core::source::Shard;
use redrive_core::state::Summary;
use tokio::io::AsyncBufReadExt as _;

use crate::cli::{GlobalArgs, RunArgs};
use crate::exit::ExitStatus;
use crate::metrics::{AggregateMetrics, RunMetrics, WorkerMetrics, per_second};
use crate::summary;

/// A worker's last progress report.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
struct Reported {
    total: u64,
    finished: u64,
    done: u64,
    failed: u64,
    skipped: u64,
    bytes: u64,
}

/// How one worker ended.
#[derive(Debug)]
enum Ended {
    Exited(i32),
    Signalled(i32),
}

pub(crate) async fn run(
    args: &RunArgs,
    global: &GlobalArgs,
    plan: &Plan,
    workers: u32,
) -> anyhow::Result<ExitStatus> {
    let started = Instant::now();
    let target = super::state::target(Some(plan), &args.state)?;
    let shards: Vec<Shard> = (0..workers)
        .map(|index| Shard {
            index,
            count: workers,
        })
        .collect();
    let aggregate = args
        .metrics
        .clone()
        .unwrap_or_else(|| PathBuf::from("metrics/aggregate.json"));
    let metrics_dir = match aggregate.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&metrics_dir)
        .with_context(|| format!("cannot create `{}`", metrics_dir.display()))?;
    std::fs::create_dir_all(&plan.log_dir)
        .with_context(|| format!("cannot create `{}`", plan.log_dir.display()))?;
    let metrics_addrs = worker_metrics_addrs(args.metrics_addr.as_deref(), workers)?;
    if args.restart {
        super::state::confirm_restart(&format!("{} shard states", workers), args.yes)?;
    }

    // The hooks run here, once for the job, not in each worker.
    let before = if args.restart {
        None
    } else {
        shard_summaries(&target, &shards, &args.plan).await
    };
    let hooks =
        super::hooks::Around::start(plan, !args.no_hooks, before.as_ref(), args.retry_failed)
            .await?;

    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let reports = Arc::new(Mutex::new(vec![Reported::default(); shards.len()]));
    let mut children = Vec::with_capacity(shards.len());
    for shard in &shards {
        let metrics = metrics_dir.join(format!("worker-{}.json", shard.index));
        // A file from an earlier run must not pass for this run's.
        let _ = std::fs::remove_file(&metrics);
        let log = plan.log_dir.join(format!("worker-{}.log", shard.index));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create `{}`", log.display()))?;
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("run")
            .arg(&args.plan)
            .arg("--shard")
            .arg(shard.to_string())
            .arg("--metrics")
            .arg(&metrics)
            .arg("--progress-json")
            .arg("--no-hooks");
        if let Some(addr) = metrics_addrs.get(shard.index as usize) {
            command.arg("--metrics-addr").arg(addr);
        }
        forward(&mut command, args, global, *shard);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            // Its own process group: a Ctrl-C at the terminal reaches the workers through
            // this process only, once.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start worker {}", shard.index))?;
        if let Some(stdout) = child.stdout.take() {
            let reports = Arc::clone(&reports);
            let index = shard.index as usize;
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(reported) = serde_json::from_str::<Reported>(&line)
                        && let Ok(mut reports) = reports.lock()
                    {
                        reports[index] = reported;
                    }
                }
            });
        }
        children.push((*shard, child, log));
    }
    if !global.quiet {
        eprintln!(
            "Started {workers} workers (logs in {}, metrics in {}).",
            plan.log_dir.display(),
            metrics_dir.display()
        );
        if let (Some(first), Some(last)) = (metrics_addrs.first(), metrics_addrs.last()) {
            eprintln!(
                "Live metrics at http://{first}/metrics … http://{last}/metrics (worker 0 … {}).",
                workers - 1
            );
        }
    }

    let display = Display::start(global, Arc::clone(&reports));
    let pids: Vec<u32> = children.iter().filter_map(|(_, c, _)| c.id()).collect();
    let forwarder = tokio::spawn(forward_signals(pids));
    let mut ended = Vec::with_capacity(children.len());
    for (shard, mut child, log) in children {
        let status = child
            .wait()
            .await
            .with_context(|| format!("cannot wait for worker {}", shard.index))?;
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Signalled(signal),
            (None, None) => Ended::Exited(-1),
        };
        ended.push((shard, how, log));
    }
    forwarder.abort();
    display.finish();

    // Sum up: every shard's state, every worker's metrics.
    let after = shard_summaries(&target, &shards, &args.plan).await;
    let wall = started.elapsed().as_secs_f64();
    let mut died = Vec::new();
    let mut interrupted = false;
    for (shard, how, log) in &ended {
        match how {
            Ended::Exited(0 | 1) => {}
            Ended::Exited(130) => interrupted = true,
            Ended::Exited(code) => {
                died.push(shard.index);
                eprintln!(
                    "worker {} (shard {shard}) stopped with exit code {code}:{}",
                    shard.index,
                    tail(log)
                );
            }
            Ended::Signalled(signal) => {
                died.push(shard.index);
                eprintln!(
                    "worker {} (shard {shard}) was killed by signal {signal}; its shard resumes on the next run (log: {})",
                    shard.index,
                    log.display()
                );
            }
        }
    }
    let sums = write_aggregate(&aggregate, &metrics_dir, &shards, &died, wall)
        .with_context(|| format!("cannot write `{}`", aggregate.display()))?;
    if let Some(after) = &after
        && !global.quiet
    {
        eprint!(
            "{}",
            summary::table(
                &plan.name,
                &format!("{workers} shards, {}", target.shards_display()),
                after
            )
        );
    }
    let clauses: Vec<String> = [
        super::run::taken_over(sums.taken_over),
        super::run::kept(sums.kept),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !clauses.is_empty() && !global.quiet {
        eprintln!("This run's workers: {}.", clauses.join("; "));
    }
    if !died.is_empty() {
        eprintln!(
            "{} of {workers} workers died. Rerun `redrive run {} --workers {workers}` to resume their shards.",
            died.len(),
            args.plan.display()
        );
        return Ok(ExitStatus::Error);
    }
    if interrupted {
        eprintln!(
            "Interrupted. Rerun `redrive run {} --workers {workers}` to resume.",
            args.plan.display()
        );
        return Ok(ExitStatus::Interrupted);
    }
    hooks.finish(after.as_ref(), interrupted).await?;
    let failed = after.as_ref().map_or(0, |s| s.count(Status::Failed));
    if failed > 0 {
        eprintln!(
            "{} failed: `redrive failed {} --state <shard state>` lists a shard's; `redrive run {} --workers {workers} --retry-failed` tries {} again.",
            crate::summary::items(failed),
            args.plan.display(),
            args.plan.display(),
            if failed == 1 { "it" } else { "them" }
        );
        return Ok(ExitStatus::Failed);
    }
    Ok(ExitStatus::Success)
}

/// Where each worker serves its metrics (`--metrics-addr HOST:PORT`): worker i on PORT + i,
/// each port checked free before any worker starts (a taken one stops the run here, naming
/// it). Port 0 lets each worker take any free port (its log says which).
fn worker_metrics_addrs(addr: Option<&str>, workers: u32) -> anyhow::Result<Vec<String>> {
    let Some(addr) = addr else {
        return Ok(Vec::new());
    };
    let hint = "give HOST:PORT, e.g. `--metrics-addr 127.0.0.1:9187`; with --workers N, worker i serves on PORT + i";
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("`--metrics-addr {addr}` is not HOST:PORT: {hint}"))?;
    let mut addrs = Vec::with_capacity(workers as usize);
    for index in 0..workers {
        let port = if port == 0 {
            0
        } else {
            u16::try_from(u32::from(port) + index).map_err(|_| {
                anyhow::anyhow!(
                    "`--metrics-addr {addr}` with {workers} workers needs ports up to {}: {hint}",
                    u32::from(port) + workers - 1
                )
            })?
        };
        let worker = format!("{host}:{port}");
        if port != 0 {
            std::net::TcpListener::bind(&worker).with_context(|| {
                format!("cannot serve worker {index}'s metrics on `{worker}`: {hint}")
            })?;
        }
        addrs.push(worker);
    }
    Ok(addrs)
}

/// The options a worker inherits.
fn forward(
    command: &mut tokio::process::Command,
    args: &RunArgs,
    global: &GlobalArgs,
    shard: redrive_core::source::Shard,
) {
    let index = shard.index;
    if let Some(state) = &args.state.state {
        command.arg("--state").arg(state);
    }
    if let Some(limit) = args.limit {
        command.arg("--limit").arg(limit.to_string());
    }
    if args.retry_failed {
        command.arg("--retry-failed");
    }
    if args.reload {
        command.arg("--reload");
    }
    // Each worker counts its own failures.
    if let Some(max) = args.max_errors {
        command.arg("--max-errors").arg(max.to_string());
    }
    if args.restart {
        command.arg("--restart").arg("--yes");
    }
    // `--rate` is for the whole run: each of the N workers gets its share.
    if let Some(rate) = args.rate {
        command
            .arg("--rate")
            .arg((rate / f64::from(shard.count.max(1))).to_string());
    }
    if let Some(concurrency) = args.concurrency {
        command.arg("--concurrency").arg(concurrency.to_string());
    }
    command
        .arg("--grace")
        .arg(format!("{}ms", args.grace.as_millis()));
    if let Some(telemetry) = &args.telemetry {
        let name = format!(
            "{}-worker-{index}.csv",
            telemetry
                .file_stem()
                .map_or_else(|| "telemetry".into(), |s| s.to_string_lossy())
        );
        command
            .arg("--telemetry")
            .arg(telemetry.with_file_name(name));
    }
    for _ in 0..global.verbose {
        command.arg("-v");
    }
}

/// First Ctrl-C (or SIGTERM): each worker drains. Second: each aborts.
async fn forward_signals(pids: Vec<u32>) {
    let mut terminate = super::signals::terminate_signal();
    let mut count = 0;
    loop {
        super::signals::next_stop_signal(&mut terminate).await;
        count += 1;
        eprintln!(
            "\n{} the workers.",
            if count == 1 {
                "Stopping (Ctrl-C again to abort)"
            } else {
                "Aborting"
            }
        );
        for pid in &pids {
            // No `unsafe` here for kill(2): the system's `kill` sends the signal.
            let _ = tokio::process::Command::new("kill")
                .arg("-INT")
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
}

/// Each shard's summary, summed; `None` when no shard has a state yet.
async fn shard_summaries(
    target: &redrive_state::StateLocation,
    shards: &[Shard],
    plan_path: &Path,
) -> Option<Summary> {
    let mut parts = Vec::new();
    for shard in shards {
        let Ok(opened) = super::state::open_existing(&target.for_shard(*shard), plan_path).await
        else {
            // A shard without a state has all its work ahead of it.
            parts.push(Summary::default());
            continue;
        };
        parts.push(opened.store.summary().await.unwrap_or_default());
    }
    parts
        .iter()
        .any(|p| p.total() > 0 || p.source_complete)
        .then(|| summary::sum(&parts))
}

/// The last lines of a worker's log, indented.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    lines[start..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

/// `aggregate.json`: the workers' counts summed, the rate over the wall time of all of them.
fn write_aggregate(
    path: &Path,
    dir: &Path,
    shards: &[Shard],
    died: &[u32],
    wall: f64,
) -> anyhow::Result<AggregateMetrics> {
    let mut aggregate = AggregateMetrics {
        workers: shards.len(),
        processed: 0,
        done: 0,
        failed: 0,
        skipped: 0,
        bytes: 0,
        retries: 0,
        taken_over: 0,
        kept: 0,
        duration_s: (wall * 1000.0).round() / 1000.0,
        rows_per_sec: 0.0,
        items_per_sec: 0.0,
        died: died.to_vec(),
        finished_at: jiff::Timestamp::now().to_string(),
        per_worker: Vec::with_capacity(shards.len()),
    };
    for shard in shards {
        let file = dir.join(format!("worker-{}.json", shard.index));
        let metrics = RunMetrics::read(&file);
        if let Some(metrics) = &metrics {
            aggregate.processed += metrics.processed;
            aggregate.done += metrics.done;
            aggregate.failed += metrics.failed;
            aggregate.skipped += metrics.skipped;
            aggregate.bytes += metrics.bytes;
            aggregate.retries += metrics.retries;
            aggregate.taken_over += metrics.taken_over;
            aggregate.kept += metrics.kept;
        }
        aggregate.per_worker.push(WorkerMetrics {
            shard: shard.to_string(),
            metrics: file.display().to_string(),
            died: died.contains(&shard.index),
            processed: metrics.as_ref().map(|m| m.processed),
            rows_per_sec: metrics.as_ref().map(|m| m.rows_per_sec),
        });
    }
    let rate = per_second(aggregate.processed, wall);
    aggregate.rows_per_sec = rate;
    aggregate.items_per_sec = rate;
    crate::metrics::write(path, &aggregate)?;
    Ok(aggregate)
}

/// The combined view: a bar on a terminal (total and one per worker), else a line every 5 s.
struct Display {
    bar: Option<ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Display {
    fn start(global: &GlobalArgs, reports: Arc<Mutex<Vec<Reported>>>) -> Self {
        let off = global.quiet || global.no_progress;
        let bar = (!off && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} items {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let every = if shown.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                let all = match reports.lock() {
                    Ok(reports) => reports.clone(),
                    Err(_) => continue,
                };
                let sum = all.iter().fold(Reported::default(), |a, r| Reported {
                    total: a.total + r.total,
                    finished: a.finished + r.finished,
                    done: a.done + r.done,
                    failed: a.failed + r.failed,
                    skipped: a.skipped + r.skipped,
                    bytes: a.bytes + r.bytes,
                });
                let workers: Vec<String> = all
                    .iter()
                    .map(|r| format!("{}/{}", r.finished, r.total))
                    .collect();
                let text = format!(
                    "(done {}, failed {}, skipped {}) workers {}",
                    sum.done,
                    sum.failed,
                    sum.skipped,
                    workers.join(" ")
                );
                match &shown {
                    Some(bar) => {
                        bar.set_length(sum.total);
                        bar.set_position(sum.finished);
                        bar.set_message(text);
                    }
                    None if !off => {
                        let rate = (sum.done + sum.failed + sum.skipped) as f64
                            / started.elapsed().as_secs_f64().max(0.001);
                        eprintln!(
                            "Progress: {}/{} {text} {rate:.0} items/s",
                            sum.finished, sum.total
                        );
                    }
                    None => {}
                }
            }
        });
        Self { bar, ticker }
    }

    fn finish(&self) {
        self.ticker.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
