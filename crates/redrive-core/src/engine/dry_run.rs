//! `--dry-run`: what each item would do, reading the source and the state and touching
//! nothing.

use std::collections::HashMap;

use futures::StreamExt;

use super::{EngineError, Pipeline, PipelineStep};
use crate::item::{Fields, Status, StoredItem};
use crate::state::StateStore;
use crate::step::{ByteCounter, Outcome, StepContext};
use crate::throttle::Throttle;

/// What a dry run found: the items it would run, and those the state says are finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DryRunReport {
    /// Items a run would start (listed).
    pub would_run: u64,
    /// Items already done.
    pub done: u64,
    /// Items already skipped.
    pub skipped: u64,
    /// Items that failed, which a run starts again only with `--retry-failed`.
    pub failed: u64,
}

/// Source rows looked up in the state at once.
const LOOKUP: usize = 256;

/// Prints what each item would do, without writing anything: no state, no object. Items the
/// state (when there is one) records done, skipped or failed are counted, not listed (failed
/// ones are listed with `retry_failed`, as a run would start them). Under `[expand]` each
/// listed parent's children are listed (a read) and printed as `PARENT/CHILD`.
pub async fn dry_run(
    pipeline: &Pipeline,
    state: Option<&dyn StateStore>,
    limit: Option<u64>,
    retry_failed: bool,
    out: &mut (dyn std::io::Write + Send),
) -> Result<DryRunReport, EngineError> {
    let mut items = pipeline.source.items(&Fields::new());
    let mut report = DryRunReport::default();
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
                        return Ok(report);
                    }
                    report.would_run += 1;
                    if !listed(pipeline, key, fields, out).await? {
                        return Ok(report);
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Prints an item that would run (its children under `[expand]`). False when the output is
/// closed.
async fn listed(
    pipeline: &Pipeline,
    key: String,
    fields: Fields,
    out: &mut (dyn std::io::Write + Send),
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
        return describe(pipeline, &key, &fields, out).await;
    };
    let mut children = expansion.source.items(&fields);
    while let Some(child) = children.next().await {
        let mut child_fields = fields.clone();
        child_fields.extend(child?);
        let child_key = expansion
            .key
            .render(&child_fields)
            .map_err(EngineError::Key)?;
        if !describe(pipeline, &format!("{key}/{child_key}"), &child_fields, out).await? {
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
    out: &mut (dyn std::io::Write + Send),
) -> Result<bool, EngineError> {
    struct Nothing;
    impl ByteCounter for Nothing {
        fn add(&self, _: u64) {}
    }
    let mut fields = std::borrow::Cow::Borrowed(fields);
    let mut line = crate::secrets::redact(key).into_owned();
    for PipelineStep {
        name, step, traits, ..
    } in &pipeline.steps
    {
        let what = step.describe(&fields).map_err(EngineError::Key)?;
        line.push_str(&format!("\t{name}: {}", crate::secrets::redact(&what)));
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
