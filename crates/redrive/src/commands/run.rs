//! `redrive run PLAN`: resume (or start) the job, with progress, signals and metrics.

use std::io::IsTerminal as _;
use std::sync::Arc;

use anyhow::Context as _;
use redrive_core::engine::{self, RunOptions, RunReport, StopLevel};
use redrive_core::item::Status;
use redrive_core::retry::Backoff;
use redrive_core::state::{JobInfo, StateError, StateStore, Summary};
use tokio::sync::watch;

use crate::cli::{GlobalArgs, RunArgs};
use crate::exit::{ExitStatus, Hinted};
use crate::metrics::RunMetrics;
use crate::progress::{Display, Progress};
use crate::summary;

pub(crate) async fn run(args: &RunArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let mut plan = super::load_plan(&args.plan)?;
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(Hinted {
                message: format!("--rate {rate} is not a rate"),
                hint: "give requests per second, e.g. --rate 5 or --rate 0.5".to_owned(),
            }
            .into());
        }
        for step in &mut plan.steps {
            step.action.config_mut().override_rate(rate);
        }
    }
    if let Some(workers) = args.workers {
        return super::workers::run(args, global, &plan, workers).await;
    }
    // A state given on the command line is the job's own file too (a local listing leaves it
    // out).
    if let Some(state) = &args.state.state
        && let Ok(here) = std::env::current_dir()
        && !state.display().to_string().contains("://")
    {
        plan.state = here.join(state).display().to_string();
    }
    let env = redrive_connectors::storage::Env::from_process();
    let pipeline = Arc::new(redrive_connectors::build_shard(&plan, env, args.shard)?);
    // The metrics port is taken before the state is opened or a hook runs: a port in use
    // stops the run before anything starts.
    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(crate::exporter::listen(addr).await?),
        None => None,
    };

    let mut target = super::state::target(Some(&plan), &args.state)?;
    if let Some(shard) = args.shard {
        target = target.for_shard(shard);
    }
    if args.dry_run {
        return dry_run(&pipeline, &target, args).await;
    }

    let opened = super::state::open_for_run(
        &target,
        plan.limits.lease,
        args.restart,
        |what| super::state::confirm_restart(what, args.yes),
        &args.plan,
    )
    .await?;
    let store = Arc::clone(&opened.store);
    store
        .begin(&JobInfo {
            name: plan.name.clone(),
            fingerprint: plan.fingerprint.clone(),
            earlier_fingerprints: plan.earlier_fingerprints.clone(),
        })
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;
    let before = store
        .summary()
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;

    // Hooks belong to the whole job: a shard (started by --workers or by hand) runs none.
    let hooks = super::hooks::Around::start(
        &plan,
        !args.no_hooks && args.shard.is_none(),
        Some(&before),
        args.retry_failed,
    )
    .await?;

    let display = if args.progress_json {
        Display::Json
    } else if global.quiet || global.no_progress {
        Display::Off
    } else if std::io::stderr().is_terminal() {
        Display::Bar
    } else {
        Display::Lines
    };
    let mut finished_before = before.count(Status::Done) + before.count(Status::Skipped);
    if !args.retry_failed {
        finished_before += before.count(Status::Failed);
    }
    let telemetry = args
        .telemetry
        .as_deref()
        .map(crate::telemetry::Telemetry::open)
        .transpose()?;
    let exporter = metrics_listener
        .as_ref()
        .map(|_| Arc::new(crate::exporter::Exporter::new(&before, args.retry_failed)));
    let progress = Progress::start(
        display,
        before.total(),
        finished_before,
        telemetry,
        exporter.clone(),
    );
    if let (Some(exporter), Some(listener)) = (&exporter, metrics_listener) {
        exporter.serve(listener, progress.shared_counters());
    }
    progress.set_children(before.children_total(), {
        let mut finished = before.children(Status::Done) + before.children(Status::Skipped);
        if !args.retry_failed {
            finished += before.children(Status::Failed);
        }
        finished
    });

    let (stop, stop_requests) = watch::channel(StopLevel::Run);
    let signals = tokio::spawn(super::signals::watch_signals(stop, args.grace));
    let options = RunOptions {
        concurrency: args.concurrency.map_or(plan.limits.items, |n| n as usize),
        per_item: plan.limits.per_item,
        retries: plan.limits.retries,
        limit: args.limit,
        retry_failed: args.retry_failed,
        backoff: Backoff::default(),
        throttle_budget: engine::THROTTLE_BUDGET,
        rate: args.rate,
        reload: args.reload,
        max_errors: args.max_errors,
    };
    warn_unfillable_batches(&pipeline, options.concurrency);
    let state: Arc<dyn StateStore> = Arc::clone(&store);
    let started = std::time::Instant::now();
    let result = engine::run(
        Arc::clone(&pipeline),
        state,
        options,
        Arc::clone(&progress) as _,
        stop_requests,
    )
    .await;
    progress.finish();
    signals.abort();
    // Uploads cut off by a second Ctrl-C abort in the background: let them finish, so no
    // multipart upload is left behind.
    let late = redrive_connectors::upload::finish_aborts(std::time::Duration::from_secs(15)).await;
    if late > 0 {
        eprintln!(
            "warning: {late} interrupted uploads were not aborted in time; their parts stay until the store's lifecycle rule removes them"
        );
    }
    if args.progress_json {
        crate::out!("{}", progress.final_json());
    }

    let after = store
        .summary()
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;
    // A run stopped by an error (a ragged source row, a full state disk) still did work: its
    // summary counts what was recorded, as the progress counted it.
    let report = match &result {
        Ok(report) => report.clone(),
        Err(_) => progress.counters().report(started.elapsed()),
    };
    if let Some(path) = &args.metrics {
        write_metrics(path, &report, &progress, args.shard)
            .with_context(|| format!("cannot write metrics to `{}`", path.display()))?;
    }
    if args.json {
        crate::out!("{}", metrics_json(&report, &progress, args.shard)?);
    }
    if after.total() == 0 && result.is_ok() {
        eprintln!(
            "warning: the source yielded no items; check [source] in {}",
            args.plan.display()
        );
    }
    if !global.quiet {
        eprint!(
            "{}",
            summary::table(&plan.name, opened.location.as_str(), &after)
        );
        eprintln!("{}", this_run(&report));
    }
    if report.duplicate_keys > 0 {
        let key = plan.key().map(|k| k.raw().to_owned()).unwrap_or_default();
        eprintln!(
            "error: {} rows of the source were not added: an earlier row had the same key (`key = \"{key}\"`), so their work is not done; make [source] key unique (e.g. `{{JobId}}/{{WorkItemId}}`), then rerun with --restart",
            report.duplicate_keys
        );
    }
    let key = plan.key().map(|k| k.raw().to_owned()).unwrap_or_default();
    let report = result.map_err(|e| match e {
        engine::EngineError::State(e) => super::state_error(e, &args.plan),
        duplicate @ engine::EngineError::DuplicateKey { .. } => Hinted {
            message: duplicate.to_string(),
            hint: format!(
                "make [source] key unique (it is `key = \"{key}\"`; e.g. `{{JobId}}/{{WorkItemId}}`), then rerun with --restart; the rows loaded so far were kept"
            ),
        }
        .into(),
        same @ engine::EngineError::SameTarget { .. } => Hinted {
            message: same.to_string(),
            hint: "put a field that tells the items apart in the target (e.g. `to = \"out/{JobId}/{name}\"`), then rerun with --restart; the second item was not started".to_owned(),
        }
        .into(),
        other => anyhow::Error::new(other),
    })?;
    if report.repeated_rows > 0 && !global.quiet {
        let n = report.repeated_rows;
        let (rows, verb) = if n == 1 {
            ("row", "repeats")
        } else {
            ("rows", "repeat")
        };
        eprintln!(
            "{n} {rows} of the source {verb} an earlier row exactly (same key, same fields): counted once, run once."
        );
    }
    if report.dropped_duplicates > 0 && !global.quiet {
        let n = report.dropped_duplicates;
        let (rows, verb) = if n == 1 {
            ("row", "has")
        } else {
            ("rows", "have")
        };
        eprintln!(
            "{n} {rows} of the source {verb} the key of an earlier row and other fields: left out, the first row with each key is the item (`duplicates = \"first\"`)."
        );
    }
    hooks.finish(Some(&after), report.interrupted).await?;
    if report.duplicate_keys > 0 && !report.interrupted {
        return Ok(ExitStatus::Failed);
    }
    Ok(outcome(&report, &after, &args.plan))
}

fn outcome(report: &RunReport, after: &Summary, plan: &std::path::Path) -> ExitStatus {
    if report.interrupted {
        eprintln!(
            "Interrupted. The state is consistent: rerun `redrive run {}` to resume.",
            plan.display()
        );
        return ExitStatus::Interrupted;
    }
    let failed = after.count(Status::Failed);
    if report.max_errors_reached {
        // The loader stops with the run: items the source still holds are not in the state
        // yet, and a count of the pending ones alone would read as all that is left.
        let unread = if after.source_complete {
            ""
        } else {
            ", and the rest of the source is not loaded yet (the next run goes on reading it)"
        };
        eprintln!(
            "Stopped starting items after {} failed in this run (--max-errors); {} loaded items are not started yet{unread}. Fix the cause, then rerun (with --retry-failed for the failed ones).",
            report.failed,
            after.count(Status::Pending)
        );
    }
    if failed > 0 {
        eprintln!(
            "{} failed: `redrive failed {plan}` lists {them}; `redrive run {plan} --retry-failed` tries {them} again.",
            crate::summary::items(failed),
            plan = plan.display(),
            them = if failed == 1 { "it" } else { "them" }
        );
        return ExitStatus::Failed;
    }
    ExitStatus::Success
}

fn this_run(report: &RunReport) -> String {
    let seconds = report.duration.as_secs_f64();
    let finished = report.done + report.skipped + report.failed;
    let children = report.children;
    let children = if children.done + children.skipped + children.failed > 0 {
        format!(
            "; children done {}, skipped {}, failed {}",
            children.done, children.skipped, children.failed
        )
    } else {
        String::new()
    };
    format!(
        "This run: done {}, skipped {}, failed {}{children}, {} in {:.1}s ({:.0} items/s), {} retries ({} throttled)",
        report.done,
        report.skipped,
        report.failed,
        summary::human_bytes(report.bytes),
        seconds,
        finished as f64 / seconds.max(0.001),
        report.retries,
        report.throttled,
    ) + &lowered_limits(report)
        + &[taken_over(report.taken_over), kept(report.kept)]
            .into_iter()
            .flatten()
            .map(|clause| format!("; {clause}"))
            .collect::<String>()
}

/// Targets that were there already: a rerun after a source changed copies nothing for it,
/// and says so here rather than only `done`.
pub(super) fn kept(n: u64) -> Option<String> {
    match n {
        0 => None,
        1 => Some("1 target was there already and was left as it was (create-only)".to_owned()),
        n => Some(format!(
            "{n} targets were there already and were left as they were (create-only)"
        )),
    }
}

/// Items other workers took over from this one (its leases had lapsed: it was paused).
pub(super) fn taken_over(n: u64) -> Option<String> {
    (n > 0).then(|| {
        format!(
            "{n} items taken over by other workers after the lease on them expired (the worker holding them was paused or lost its connection)"
        )
    })
}

/// The steps whose endpoints throttled enough to lower how many calls redrive keeps in flight.
fn lowered_limits(report: &RunReport) -> String {
    let lowered: Vec<String> = report
        .limits
        .iter()
        .filter(|(_, limit)| limit.lowest < limit.max)
        .map(|(step, limit)| {
            format!(
                "{step}: {} throttled responses, in flight lowered to {} of {} (now {})",
                limit.throttled, limit.lowest, limit.max, limit.now
            )
        })
        .collect();
    if lowered.is_empty() {
        String::new()
    } else {
        format!("; throttling: {}", lowered.join("; "))
    }
}

fn run_metrics(
    report: &RunReport,
    progress: &Progress,
    shard: Option<redrive_core::source::Shard>,
) -> RunMetrics {
    let retries = progress
        .counters()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    RunMetrics::of(report, retries, shard.map(|s| s.to_string()))
}

fn write_metrics(
    path: &std::path::Path,
    report: &RunReport,
    progress: &Progress,
    shard: Option<redrive_core::source::Shard>,
) -> anyhow::Result<()> {
    crate::metrics::write(path, &run_metrics(report, progress, shard))
}

/// `run --json`: the metrics on one line, secrets masked.
fn metrics_json(
    report: &RunReport,
    progress: &Progress,
    shard: Option<redrive_core::source::Shard>,
) -> anyhow::Result<String> {
    let text = serde_json::to_string(&run_metrics(report, progress, shard))?;
    Ok(redrive_core::secrets::redact(&text).into_owned())
}

/// A batch fills only from the items in flight: with fewer in flight than the batch holds,
/// every batch waits its `max_wait`, and the run crawls.
fn warn_unfillable_batches(pipeline: &engine::Pipeline, in_flight: usize) {
    for step in &pipeline.steps {
        let Some((batch, max_wait)) = step.traits.batch else {
            continue;
        };
        if in_flight < batch {
            eprintln!(
                "warning: step `{}` sends batches of {batch} but only {in_flight} items are in flight: each batch waits {max_wait:?} to fill; raise [limits] items or --concurrency to at least {}, or lower its `batch`",
                step.name,
                batch * 2
            );
        }
    }
}

/// `--dry-run`: the items a run would start, listed; those the state records finished, counted.
async fn dry_run(
    pipeline: &engine::Pipeline,
    target: &redrive_state::StateLocation,
    args: &RunArgs,
) -> anyhow::Result<ExitStatus> {
    let opened = match target.open_existing().await {
        Ok(opened) => Some(opened),
        Err(StateError::Missing { .. }) => None,
        Err(error) => return Err(super::state_error(error, &args.plan)),
    };
    let state = opened.as_ref().map(|opened| opened.store.as_ref());
    let mut stdout = std::io::BufWriter::new(std::io::stdout());
    let options = engine::DryRunOptions {
        limit: args.limit,
        retry_failed: args.retry_failed,
        check_targets: args.check_targets,
    };
    let report = engine::dry_run(pipeline, state, &options, &mut stdout).await?;
    if let Err(error) = std::io::Write::flush(&mut stdout) {
        // A reader that stopped reading (`| head`) ends the dry run quietly.
        crate::stdout_failed(error);
    }
    let mut finished = Vec::new();
    for (n, what) in [(report.done, "done"), (report.skipped, "skipped")] {
        if n > 0 {
            finished.push(format!("{n} {what}"));
        }
    }
    if report.failed > 0 {
        finished.push(format!(
            "{} failed (`--retry-failed` runs {})",
            report.failed,
            if report.failed == 1 { "it" } else { "them" }
        ));
    }
    let already = if finished.is_empty() {
        String::new()
    } else {
        format!("; already {}", finished.join(", "))
    };
    let items = if report.would_run == 1 {
        "item"
    } else {
        "items"
    };
    let mut checked = Vec::new();
    if report.would_skip > 0 {
        checked.push(format!("{} skipped by a step", report.would_skip));
    }
    if report.targets_present > 0 {
        let them = if report.targets_present == 1 {
            "target"
        } else {
            "targets"
        };
        checked.push(format!("{} {them} present", report.targets_present));
    }
    let checked = if checked.is_empty() {
        String::new()
    } else {
        format!(" (of those, as the stores say now: {})", checked.join(", "))
    };
    eprintln!(
        "Dry run: would run {} {items}{checked}{already}; nothing was written or recorded.",
        report.would_run
    );
    if !report.calls.is_empty() {
        let steps: Vec<String> = report
            .calls
            .iter()
            .map(|(step, calls)| {
                let calls: Vec<String> = calls
                    .iter()
                    .map(|(what, n)| {
                        format!("{} {}", crate::summary::grouped(*n), plural(what, *n))
                    })
                    .collect();
                format!("{step}: {}", calls.join(", "))
            })
            .collect();
        eprintln!("Requests it would make: {}.", steps.join("; "));
    }
    Ok(ExitStatus::Success)
}

/// A request's name for `n` of them: `1 process`, `2 processes`, `3 GET`.
fn plural(what: &str, n: u64) -> String {
    if n == 1 || what.chars().all(|c| !c.is_lowercase()) {
        what.to_owned()
    } else if what.ends_with('s') {
        format!("{what}es")
    } else {
        format!("{what}s")
    }
}
