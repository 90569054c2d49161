//! `enqueue = { queue, body, base64 }`.

use std::sync::Arc;

use redrive_core::job::template;
use redrive_core::step::Step;
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
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnqueue {
    queue: String,
    body: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    base64: bool,
}

impl StepKind for EnqueueSpec {
    type Raw = RawEnqueue;

    fn check(raw: &RawEnqueue, _cx: &CheckContext<'_>) -> Result<Self, String> {
        Ok(EnqueueSpec {
            queue: template("enqueue.queue", &raw.queue)?,
            body: template("enqueue.body", &raw.body)?,
            base64: raw.base64,
        })
    }
}

impl StepConfig for EnqueueSpec {
    fn templates(&self) -> Vec<&Template> {
        vec![&self.queue, &self.body]
    }

    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(EnqueueStep::new(
            self.clone(),
            Arc::clone(cx.stores),
        )))
    }
}
