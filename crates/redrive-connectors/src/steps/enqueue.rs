//! `enqueue = { queue, body, base64 }`: one message per item to an Azure Storage Queue.
//!
//! At-least-once: a message sent just before a crash, whose completion was not yet recorded,
//! is sent again on resume.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::plan::EnqueueSpec;
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::TemplateError;

use crate::queue::{self, MAX_MESSAGE};
use crate::storage::Stores;

/// Sends a queue message.
#[derive(Debug)]
pub struct EnqueueStep {
    spec: EnqueueSpec,
    stores: Arc<Stores>,
    client: reqwest::Client,
}

impl EnqueueStep {
    /// A step as the plan describes it.
    pub fn new(spec: EnqueueSpec, stores: Arc<Stores>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            spec,
            stores,
            client,
        }
    }

    fn text(&self, fields: &Fields) -> Result<String, TemplateError> {
        let body = self.spec.body.render(fields)?;
        Ok(if self.spec.base64 {
            base64::engine::general_purpose::STANDARD.encode(body)
        } else {
            body
        })
    }
}

#[async_trait]
impl Step for EnqueueStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let url = self
            .spec
            .queue
            .render(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let text = self
            .text(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let queue = queue::resolve(&self.stores, &url)?;
        if text.len() > MAX_MESSAGE {
            return Err(StepError::permanent(format!(
                "the message for `{}` is {} bytes; a queue message holds at most 64 KiB",
                queue.display,
                text.len()
            )));
        }
        queue.put(&self.client, &text).await?;
        Ok(Outcome::Done { bytes: 0 })
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let url = self.spec.queue.render(fields)?;
        let body = self.spec.body.render(fields)?;
        let encoding = if self.spec.base64 { " (base64)" } else { "" };
        Ok(format!("enqueue to {url}: {body}{encoding}"))
    }
}
