//! `enqueue = { queue, body, base64, max_wait, dedup_id, group_id }`: one message per item to
//! an Azure Storage Queue or SQS. SQS messages are gathered into `SendMessageBatch` calls of up
//! to 10 (waiting at most `max_wait` for a batch to fill); each item is done when its own entry
//! was accepted.
//!
//! At-least-once: a message sent just before a crash, whose completion was not yet recorded,
//! is sent again on resume. To an SQS FIFO queue with `dedup_id`, SQS drops such a resend (within
//! its 5-minute deduplication window).

pub(crate) mod config;

use std::sync::Arc;
use std::time::Duration;

use self::config::EnqueueSpec;
use async_trait::async_trait;
use base64::Engine as _;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::TemplateError;

use crate::batch::Batcher;
use crate::queue;
use crate::sqs::{Message, Sqs, is_sqs};
use crate::storage::Stores;

/// Sends a queue message.
#[derive(Debug)]
pub struct EnqueueStep {
    spec: EnqueueSpec,
    stores: Arc<Stores>,
    client: reqwest::Client,
    /// Azure AD tokens for Azure queues reached without a key or SAS.
    storage_tokens: crate::azure_auth::TokenSource,
    /// SQS batchers by queue URL.
    sqs: tokio::sync::Mutex<std::collections::HashMap<String, Arc<SqsBatcher>>>,
}

/// Gathers the messages for one SQS queue into batches.
type SqsBatcher = Batcher<Message, StepError>;

impl EnqueueStep {
    /// A step as the plan describes it.
    pub fn new(spec: EnqueueSpec, stores: Arc<Stores>) -> Self {
        let client = crate::http_client::client(Duration::from_secs(30));
        let storage_tokens =
            crate::azure_auth::TokenSource::new("https://storage.azure.com", stores.env().clone());
        Self {
            spec,
            stores,
            storage_tokens,
            client,
            sqs: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The batcher for an SQS queue, made at its first message.
    async fn sqs_batcher(&self, url: &str) -> Result<Arc<SqsBatcher>, StepError> {
        let mut known = self.sqs.lock().await;
        if let Some(batcher) = known.get(url) {
            return Ok(Arc::clone(batcher));
        }
        let sqs = Arc::new(Sqs::resolve(&self.stores, url)?);
        let (client, queue) = (self.client.clone(), url.to_owned());
        let send: crate::batch::Send<Message, StepError> = Arc::new(move |bodies: Vec<Message>| {
            let (sqs, client, queue) = (Arc::clone(&sqs), client.clone(), queue.clone());
            Box::pin(async move { sqs.send_batch(&client, &queue, bodies).await })
        });
        let batcher = Arc::new(Batcher::new(crate::sqs::BATCH, self.spec.max_wait, send));
        known.insert(url.to_owned(), Arc::clone(&batcher));
        Ok(batcher)
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
        let sqs = is_sqs(&url);
        let limit = if sqs {
            crate::sqs::MAX_MESSAGE
        } else {
            queue::MAX_MESSAGE
        };
        if text.len() > limit {
            return Err(StepError::permanent(format!(
                "the message for `{}` is {} bytes; a queue message holds at most 1 MiB on SQS and 64 KiB on Azure",
                redrive_core::secrets::redact(&url),
                text.len()
            )));
        }
        if sqs {
            let render = |template: &Option<redrive_core::Template>| {
                template
                    .as_ref()
                    .map(|t| t.render(fields))
                    .transpose()
                    .map_err(|e| StepError::permanent(e.to_string()))
            };
            let message = Message::new(
                text,
                render(&self.spec.dedup_id)?,
                render(&self.spec.group_id)?,
            );
            let batcher = self.sqs_batcher(&url).await?;
            batcher
                .submit(message, || {
                    StepError::permanent("the message's batch was dropped")
                })
                .await?;
        } else {
            queue::resolve(&self.stores, &url)?
                .put(&self.client, &text, &self.storage_tokens)
                .await?;
        }
        Ok(Outcome::done_to(
            0,
            redrive_core::secrets::redact(&url).into_owned(),
        ))
    }

    fn calls(&self, _fields: &Fields) -> Vec<(&'static str, u64)> {
        // One send per item (SQS: one per batch of messages, as the dry run counts batches).
        vec![("queue send", 1)]
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let url = self.spec.queue.render(fields)?;
        let body = self.spec.body.render(fields)?;
        let encoding = if self.spec.base64 { " (base64)" } else { "" };
        Ok(format!("enqueue to {url}: {body}{encoding}"))
    }
}
