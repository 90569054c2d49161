//! `enqueue = { queue, body, base64, max_wait, dedup_id, group_id }`.

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
    /// SQS FIFO: the message's deduplication id (a resend within 5 minutes is dropped).
    pub dedup_id: Option<Template>,
    /// SQS FIFO: the message's group (messages of one group are delivered in order).
    pub group_id: Option<Template>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
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
        let sqs = crate::sqs::is_sqs(&raw.queue);
        if !sqs && (raw.dedup_id.is_some() || raw.group_id.is_some()) {
            return Err(format!(
                "`enqueue.dedup_id` and `enqueue.group_id` are for SQS FIFO queues (`sqs://NAME.fifo`); `{}` is an Azure queue, which has neither: remove them",
                raw.queue
            ));
        }
        if raw.queue.ends_with(".fifo") && raw.group_id.is_none() {
            return Err(format!(
                "`enqueue.queue` = `{}` is an SQS FIFO queue, whose every message needs a group: add e.g. group_id = \"{{JobId}}\" (and dedup_id = \"{{key}}\" unless the queue deduplicates by content)",
                raw.queue
            ));
        }
        let optional = |name: &str, text: &Option<String>| {
            text.as_deref().map(|t| template(name, t)).transpose()
        };
        Ok(EnqueueSpec {
            queue: template("enqueue.queue", &raw.queue)?,
            body: template("enqueue.body", &raw.body)?,
            base64: raw.base64,
            max_wait,
            sqs,
            dedup_id: optional("enqueue.dedup_id", &raw.dedup_id)?,
            group_id: optional("enqueue.group_id", &raw.group_id)?,
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
        let mut all = vec![&self.queue, &self.body];
        all.extend(self.dedup_id.iter().chain(&self.group_id));
        all
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
