//! `--dry-run`: what each item would do, reading the source and touching nothing else.

use futures::StreamExt;

use super::{EngineError, Pipeline, PipelineStep};
use crate::item::{Fields, Status, StoredItem};
use crate::step::{ByteCounter, Outcome, StepContext};
use crate::throttle::Throttle;

/// Prints what each item would do, without writing anything: no state, no object. Under
/// `[expand]` each parent's children are listed (a read) and printed as `PARENT/CHILD`.
pub async fn dry_run(
    pipeline: &Pipeline,
    limit: Option<u64>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<u64, EngineError> {
    let mut items = pipeline.source.items(&Fields::new());
    let mut count = 0u64;
    while let Some(fields) = items.next().await {
        if limit.is_some_and(|limit| count >= limit) {
            break;
        }
        let fields = fields?;
        let key = pipeline.key.render(&fields).map_err(EngineError::Key)?;
        count += 1;
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
            if !describe(pipeline, &key, &fields, out).await? {
                break;
            }
            continue;
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
                return Ok(count);
            }
        }
    }
    Ok(count)
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
    for PipelineStep { name, step, traits } in &pipeline.steps {
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
