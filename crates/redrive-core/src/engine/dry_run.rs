//! `--dry-run`: what each item would do, reading the source and the state and touching
//! nothing.

use std::collections::HashMap;

use futures::StreamExt;

use super::{EngineError, Pipeline, PipelineStep};
use crate::item::{Fields, Status, StoredItem};
use crate::state::StateStore;
use crate::step::{ByteCounter, Check, Outcome, StepContext};
use crate::throttle::Throttle;

/// What a dry run found: the items it would run, and those the state says are finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DryRunReport {
    /// Items a run would start (listed).
    pub would_run: u64,
    /// Items already done.
    pub done: u64,
    /// Items already skipped.
    pub skipped: u64,
    /// Items that failed, which a run starts again only with `--retry-failed`.
    pub failed: u64,
    /// With `check_targets`: items a step would skip as things are now (an `exists` check).
    pub would_skip: u64,
    /// With `check_targets`: targets already there.
    pub targets_present: u64,
    /// The requests the run would make: per step (in order, by name), what and how many.
    pub calls: Vec<(String, Vec<(&'static str, u64)>)>,
}

impl DryRunReport {
    fn count_calls(&mut self, step: usize, name: &str, calls: Vec<(&'static str, u64)>) {
        while self.calls.len() <= step {
            self.calls.push((String::new(), Vec::new()));
        }
        let (named, totals) = &mut self.calls[step];
        if named.is_empty() {
            name.clone_into(named);
        }
        for (what, n) in calls {
            match totals.iter_mut().find(|(w, _)| *w == what) {
                Some((_, total)) => *total += n,
                None => totals.push((what, n)),
            }
        }
    }

    /// A batching step's requests carry a batch of items each.
    fn per_batch(mut self, pipeline: &Pipeline) -> Self {
        for (step, (_, totals)) in pipeline.steps.iter().zip(&mut self.calls) {
            if let Some((batch, _)) = step.traits.batch {
                for (_, n) in totals.iter_mut() {
                    *n = n.div_ceil(batch as u64);
                }
            }
        }
        self.calls.retain(|(_, totals)| !totals.is_empty());
        self
    }
}

/// Source rows looked up in the state at once.
const LOOKUP: usize = 256;

/// Prints what each item would do, without writing anything: no state, no object. Items the
/// state (when there is one) records done, skipped or failed are counted, not listed (failed
/// ones are listed with `retry_failed`, as a run would start them). Under `[expand]` each
/// listed parent's children are listed (a read) and printed as `PARENT/CHILD`.
///
/// With `check_targets` each listed item's steps also ask their stores what is there now (a
/// stat, no write): a step that would skip the item says so, a copy whose target exists says
/// `target present`. The report counts the requests the run would make, per step.
pub async fn dry_run(
    pipeline: &Pipeline,
    state: Option<&dyn StateStore>,
    options: &DryRunOptions,
    out: &mut (dyn std::io::Write + Send),
) -> Result<DryRunReport, EngineError> {
    let mut report = DryRunReport::default();
    let found = items_of(pipeline, state, options, out, &mut report).await;
    found.map(|()| report.per_batch(pipeline))
}

/// What `--dry-run` is asked to look at.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRunOptions {
    /// List at most this many items (`--limit`).
    pub limit: Option<u64>,
    /// List failed items too, as `--retry-failed` would run them.
    pub retry_failed: bool,
    /// Ask the stores what is there now (`--check-targets`).
    pub check_targets: bool,
}

async fn items_of(
    pipeline: &Pipeline,
    state: Option<&dyn StateStore>,
    options: &DryRunOptions,
    out: &mut (dyn std::io::Write + Send),
    report: &mut DryRunReport,
) -> Result<(), EngineError> {
    let DryRunOptions {
        limit,
        retry_failed,
        check_targets,
    } = *options;
    let mut items = pipeline.source.items(&Fields::new());
    let mut chunk: Vec<(String, Fields)> = Vec::with_capacity(LOOKUP);
    let mut ended = false;
    while !ended {
        chunk.clear();
        while chunk.len() < LOOKUP {
            let Some(fields) = items.next().await else {
                ended = true;
                break;
            };
            let fields = fields?;
            let key = pipeline.key.render(&fields).map_err(EngineError::Key)?;
            chunk.push((key, fields));
        }
        let recorded: HashMap<String, Status> = match state {
            Some(state) => state
                .statuses_of(chunk.iter().map(|(key, _)| key.clone()).collect())
                .await?
                .into_iter()
                .collect(),
            None => HashMap::new(),
        };
        for (key, fields) in chunk.drain(..) {
            match recorded.get(&key) {
                Some(Status::Done) => report.done += 1,
                Some(Status::Skipped) => report.skipped += 1,
                Some(Status::Failed) if !retry_failed => report.failed += 1,
                _ => {
                    if limit.is_some_and(|limit| report.would_run >= limit) {
                        return Ok(());
                    }
                    report.would_run += 1;
                    if !listed(pipeline, key, fields, check_targets, out, report).await? {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Prints an item that would run (its children under `[expand]`). False when the output is
/// closed.
async fn listed(
    pipeline: &Pipeline,
    key: String,
    fields: Fields,
    check_targets: bool,
    out: &mut (dyn std::io::Write + Send),
    report: &mut DryRunReport,
) -> Result<bool, EngineError> {
    // Large fields left out of the state are read (a read, like the listing).
    let mut item = [StoredItem {
        id: 0,
        parent: None,
        parent_key: None,
        expanded: false,
        key,
        fields,
        step: 0,
        status: Status::Pending,
        attempts: 0,
        error: None,
        bytes: 0,
    }];
    pipeline.source.hydrate(&mut item).await?;
    let [StoredItem { key, fields, .. }] = item;
    let Some(expansion) = &pipeline.expand else {
        return describe(pipeline, &key, &fields, check_targets, out, report).await;
    };
    let mut children = expansion.source.items(&fields);
    while let Some(child) = children.next().await {
        let mut child_fields = fields.clone();
        child_fields.extend(child?);
        let child_key = expansion
            .key
            .render(&child_fields)
            .map_err(EngineError::Key)?;
        let child = format!("{key}/{child_key}");
        if !describe(pipeline, &child, &child_fields, check_targets, out, report).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One line: the key, then each step's action. False when the output is closed. Steps that
/// only compute fields (`xml`) are run, so later steps show what they would get.
async fn describe(
    pipeline: &Pipeline,
    key: &str,
    fields: &Fields,
    check_targets: bool,
    out: &mut (dyn std::io::Write + Send),
    report: &mut DryRunReport,
) -> Result<bool, EngineError> {
    struct Nothing;
    impl ByteCounter for Nothing {
        fn add(&self, _: u64) {}
    }
    let mut fields = std::borrow::Cow::Borrowed(fields);
    let mut line = crate::secrets::redact(key).into_owned();
    for (
        index,
        PipelineStep {
            name, step, traits, ..
        },
    ) in pipeline.steps.iter().enumerate()
    {
        let what = step.describe(&fields).map_err(EngineError::Key)?;
        line.push_str(&format!("\t{name}: {}", crate::secrets::redact(&what)));
        if check_targets {
            match step.check(&fields).await {
                Ok(Check::Unknown) => {}
                Ok(Check::TargetPresent) => {
                    report.targets_present += 1;
                    line.push_str(" → target present");
                }
                Ok(Check::Skips(reason)) => {
                    report.would_skip += 1;
                    report.count_calls(index, name, step.calls_when_skipped(&fields));
                    line.push_str(&format!(" → skipped: {reason}"));
                    break;
                }
                Err(error) => line.push_str(&format!(
                    " → cannot check: {}",
                    crate::secrets::redact(&error.chain())
                )),
            }
        }
        report.count_calls(index, name, step.calls(&fields));
        if traits.binds_fields {
            let cx = StepContext {
                bytes: &Nothing,
                key,
                throttle: Throttle::none(),
            };
            match step.run(&fields, &cx).await {
                Ok(Outcome::Done(done)) => fields.to_mut().extend(done.fields),
                Ok(Outcome::Skipped(reason)) => {
                    line.push_str(&format!(" → skipped: {reason}"));
                    break;
                }
                Err(error) => {
                    line.push_str(&format!(
                        " → fails: {}",
                        crate::secrets::redact(&error.chain())
                    ));
                    break;
                }
            }
        }
    }
    Ok(writeln!(out, "{line}").is_ok())
}
