//! `enqueue = { queue, body, base64, max_wait }`.

use std::sync::Arc;

use redrive_core::job::{parse_duration, template};
use redrive_core::step::{Step, StepTraits};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::EnqueueStep;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};

/// Send one queue message per item.
#[derive(Clone, Debug)]
pub struct EnqueueSpec {
    /// The queue: `azq://QUEUE` or `https://ACCOUNT.queue.core.windows.net/QUEUE`.
    pub queue: Template,
    /// The message text.
    pub body: Template,
    /// Send the text base64-encoded (what Azure Functions queue triggers expect by default).
    pub base64: bool,
    /// SQS: the longest a message waits for its batch (of up to 10) to fill.
    pub max_wait: std::time::Duration,
    /// The queue is an SQS queue (its messages are sent in batches).
    pub sqs: bool,
}

/// Default wait for an SQS batch to fill.
pub(crate) const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnqueue {
    queue: String,
    body: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    base64: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait: Option<String>,
}

impl StepKind for EnqueueSpec {
    type Raw = RawEnqueue;

    fn check(raw: &RawEnqueue, _cx: &CheckContext<'_>) -> Result<Self, String> {
        let max_wait = match raw.max_wait.as_deref() {
            Some(text) => parse_duration(text).ok_or_else(|| {
                format!("`enqueue.max_wait` = `{text}` is not a duration; write e.g. `200ms`")
            })?,
            None => DEFAULT_MAX_WAIT,
        };
        Ok(EnqueueSpec {
            queue: template("enqueue.queue", &raw.queue)?,
            body: template("enqueue.body", &raw.body)?,
            base64: raw.base64,
            max_wait,
            sqs: crate::sqs::is_sqs(&raw.queue),
        })
    }

    fn canonicalize(raw: &mut RawEnqueue) {
        crate::plan::unless_default(&mut raw.max_wait, |w| {
            parse_duration(w) == Some(DEFAULT_MAX_WAIT)
        });
    }
}

impl StepConfig for EnqueueSpec {
    fn templates(&self) -> Vec<&Template> {
        vec![&self.queue, &self.body]
    }

    /// SQS messages go in batches; the engine still paces the step (one call per item).
    fn traits(&self) -> StepTraits {
        StepTraits {
            batch: self.sqs.then_some((crate::sqs::BATCH, self.max_wait)),
            ..StepTraits::default()
        }
    }

    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(EnqueueStep::new(
            self.clone(),
            Arc::clone(cx.stores),
        )))
    }
}
