//! AWS SQS: `sqs://NAME` or a queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`), and
//! the calls redrive makes (GetQueueUrl, SendMessageBatch) in SQS's JSON protocol, signed with
//! Signature Version 4 by `reqsign-aws-v4` (see `aws_sign`).
//!
//! Settings: a matching `[store."sqs://NAME"]` table (endpoint, region, access_key_id,
//! secret_access_key, session_token), then `AWS_ENDPOINT_URL_SQS`/`AWS_ENDPOINT_URL`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`.

use redrive_core::env_vars;
use std::collections::HashMap;

use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;
use tokio::sync::Mutex;

use crate::aws_sign::AwsSigner;

use crate::storage::Stores;

/// An SQS endpoint with credentials, and the queue URLs found so far.
pub(crate) struct Sqs {
    endpoint: String,
    region: String,
    signer: AwsSigner,
    urls: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Sqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqs")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// True for the queue URLs this module handles.
pub(crate) fn is_sqs(url: &str) -> bool {
    url.starts_with("sqs://")
        || url
            .strip_prefix("https://")
            .is_some_and(|rest| rest.starts_with("sqs."))
}

impl Sqs {
    /// The endpoint and credentials for `url`.
    pub(crate) fn resolve(stores: &Stores, url: &str) -> Result<Self, StepError> {
        let display = secrets::redact(url).into_owned();
        let spec = stores.spec_for(url).cloned().unwrap_or_default();
        let env = stores.env();
        let region = crate::aws_sign::region(&spec, env);
        let endpoint = match url.strip_prefix("https://") {
            Some(rest) => format!("https://{}", rest.split('/').next().unwrap_or_default()),
            None => spec
                .endpoint
                .clone()
                .or_else(|| env.first(env_vars::AWS_SQS_ENDPOINT))
                .unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com")),
        };
        let Some(keys) = crate::aws_sign::AwsKeys::of(&spec, env) else {
            return Err(StepError::new(
                ErrorClass::Fatal,
                format!(
                    "cannot reach `{display}`: no AWS credentials; export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set them in a [store.\"sqs://QUEUE\"] table"
                ),
            ));
        };
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            signer: AwsSigner::new("sqs", &region, &keys),
            region,
            urls: Mutex::new(HashMap::new()),
        })
    }

    async fn call(
        &self,
        client: &reqwest::Client,
        action: &str,
        payload: &serde_json::Value,
        display: &str,
    ) -> Result<serde_json::Value, StepError> {
        let body = payload.to_string();
        let target = format!("AmazonSQS.{action}");
        let url = format!("{}/", self.endpoint);
        let headers = self
            .signer
            .sign(
                http::Method::POST,
                &url,
                &[
                    ("content-type", "application/x-amz-json-1.0"),
                    ("x-amz-target", target.as_str()),
                ],
                body.as_bytes(),
            )
            .await
            .map_err(|e| {
                StepError::new(
                    ErrorClass::Fatal,
                    format!("SQS {action} for `{display}`: {e}"),
                )
            })?;
        let request = client.post(url).headers(headers);
        let response = request.body(body).send().await.map_err(|e| {
            StepError::new(
                ErrorClass::Transient,
                format!("cannot reach SQS for `{display}`"),
            )
            .with_source(e)
        })?;
        let status = response.status();
        let retry_after = crate::response::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let kind = value
            .get("__type")
            .and_then(|t| t.as_str())
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
            .unwrap_or_default();
        let message = value
            .get("message")
            .or_else(|| value.get("Message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let class = if kind.contains("Throttl")
            || kind.contains("RequestThrottled")
            || status.as_u16() == 503
            || status.as_u16() == 429
        {
            ErrorClass::Throttled
        } else if status.is_server_error() {
            ErrorClass::Transient
        } else if status.as_u16() == 403
            || kind.contains("InvalidClientTokenId")
            || kind.contains("SignatureDoesNotMatch")
        {
            ErrorClass::Fatal
        } else {
            ErrorClass::Permanent
        };
        let mut error = StepError::new(
            class,
            format!("SQS {action} for `{display}` answered {status}: {kind} {message}"),
        );
        if let Some(delay) = retry_after {
            error = error.with_retry_after(delay);
        }
        Err(error)
    }

    /// The queue URL: given, or looked up once by name.
    async fn queue_url(
        &self,
        client: &reqwest::Client,
        url: &str,
        display: &str,
    ) -> Result<String, StepError> {
        let Some(name) = url.strip_prefix("sqs://").map(|n| n.trim_matches('/')) else {
            return Ok(url.to_owned());
        };
        if let Some(found) = self.urls.lock().await.get(name) {
            return Ok(found.clone());
        }
        let value = self
            .call(
                client,
                "GetQueueUrl",
                &serde_json::json!({ "QueueName": name }),
                display,
            )
            .await?;
        let found = value
            .get("QueueUrl")
            .and_then(|u| u.as_str())
            .ok_or_else(|| {
                StepError::permanent(format!(
                    "SQS GetQueueUrl for `{display}` returned no QueueUrl"
                ))
            })?
            .to_owned();
        self.urls
            .lock()
            .await
            .insert(name.to_owned(), found.clone());
        Ok(found)
    }

    /// Sends messages to `url` (`sqs://NAME` or a queue URL) with `SendMessageBatch`, up to
    /// 10 a call and 1 MiB of bodies a call (SQS's limits); one result per message, in
    /// order. Each message's own entry decides its result: a batch where one entry failed
    /// leaves the others sent.
    pub(crate) async fn send_batch(
        &self,
        client: &reqwest::Client,
        url: &str,
        bodies: Vec<Message>,
    ) -> Vec<Result<(), StepError>> {
        let display = secrets::redact(url).into_owned();
        let queue_url = match self.queue_url(client, url, &display).await {
            Ok(queue_url) => queue_url,
            Err(error) => return bodies.iter().map(|_| Err(copy_of(&error))).collect(),
        };
        let mut results = Vec::with_capacity(bodies.len());
        for chunk in chunks(&bodies) {
            results.extend(self.send_chunk(client, &queue_url, chunk, &display).await);
        }
        results
    }

    async fn send_chunk(
        &self,
        client: &reqwest::Client,
        queue_url: &str,
        bodies: &[Message],
        display: &str,
    ) -> Vec<Result<(), StepError>> {
        let entries: Vec<serde_json::Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let mut entry =
                    serde_json::json!({ "Id": format!("m{i}"), "MessageBody": message.body });
                if let Some(id) = &message.dedup_id {
                    entry["MessageDeduplicationId"] = id.as_str().into();
                }
                if let Some(id) = &message.group_id {
                    entry["MessageGroupId"] = id.as_str().into();
                }
                entry
            })
            .collect();
        let payload = serde_json::json!({ "QueueUrl": queue_url, "Entries": entries });
        let answer = match self
            .call(client, "SendMessageBatch", &payload, display)
            .await
        {
            Ok(answer) => answer,
            Err(error) => return bodies.iter().map(|_| Err(copy_of(&error))).collect(),
        };
        let listed = |key: &str| {
            answer
                .get(key)
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let id_of = |entry: &serde_json::Value| {
            entry
                .get("Id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let sent: std::collections::HashSet<String> =
            listed("Successful").iter().map(id_of).collect();
        let failed: HashMap<String, serde_json::Value> = listed("Failed")
            .into_iter()
            .map(|entry| (id_of(&entry), entry))
            .collect();
        (0..bodies.len())
            .map(|i| {
                let id = format!("m{i}");
                if sent.contains(&id) {
                    return Ok(());
                }
                let Some(entry) = failed.get(&id) else {
                    return Err(StepError::new(
                        ErrorClass::Transient,
                        format!(
                            "SQS SendMessageBatch for `{display}` did not acknowledge the message"
                        ),
                    ));
                };
                let text = |key: &str| {
                    entry
                        .get(key)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                // The sender's fault (a body SQS refuses) will not pass on a retry; SQS's own
                // (an internal error) may.
                let class = if entry
                    .get("SenderFault")
                    .and_then(serde_json::Value::as_bool)
                    == Some(false)
                {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                };
                Err(StepError::new(
                    class,
                    format!(
                        "SQS refused the message for `{display}`: {} {}",
                        text("Code"),
                        text("Message")
                    ),
                ))
            })
            .collect()
    }
}

/// Messages in one `SendMessageBatch` at most.
pub(crate) const BATCH: usize = 10;

/// SQS's limit on one message, and on the bodies of one `SendMessageBatch` (1 MiB since
/// August 2025; 256 KiB before).
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;
const BATCH_BYTES: usize = MAX_MESSAGE;

/// One message to send: its body and, for a FIFO queue, its deduplication and group ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) body: String,
    pub(crate) dedup_id: Option<String>,
    pub(crate) group_id: Option<String>,
}

impl Message {
    /// A message whose ids are made fit for SQS (see [`fifo_id`]).
    pub(crate) fn new(body: String, dedup_id: Option<String>, group_id: Option<String>) -> Self {
        Self {
            body,
            dedup_id: dedup_id.map(fifo_id),
            group_id: group_id.map(fifo_id),
        }
    }
}

/// A FIFO id as SQS takes it: 1 to 128 printable ASCII characters. Any other text (a key with
/// spaces or accents, a long one) becomes its SHA-256 in hex, so the same text always gives
/// the same id and a message sent again is still recognised.
fn fifo_id(text: String) -> String {
    let fits = (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        return text;
    }
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `bodies` cut into runs of at most 10 messages and `BATCH_BYTES` (a message alone may be as
/// large as SQS allows).
fn chunks(bodies: &[Message]) -> Vec<&[Message]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, message) in bodies.iter().enumerate() {
        let size = message.body.len();
        let full = i - start == BATCH || (i > start && bytes + size > BATCH_BYTES);
        if full {
            chunks.push(&bodies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < bodies.len() {
        chunks.push(&bodies[start..]);
    }
    chunks
}

/// The same error again, for each message of a batch that failed as a whole.
fn copy_of(error: &StepError) -> StepError {
    let mut copy = StepError::new(error.class(), error.to_string());
    if let Some(delay) = error.retry_after() {
        copy = copy.with_retry_after(delay);
    }
    if error.is_systemic() {
        copy = copy.systemic();
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(bodies: impl IntoIterator<Item = String>) -> Vec<Message> {
        bodies
            .into_iter()
            .map(|body| Message::new(body, None, None))
            .collect()
    }

    #[test]
    fn batches_hold_ten_messages_and_1_mib_at_most() {
        let small = messages((0..23).map(|i| i.to_string()));
        let sizes: Vec<usize> = chunks(&small).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [10, 10, 3]);
        let big = messages(vec!["x".repeat(400 * 1024); 5]);
        let sizes: Vec<usize> = chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(
            sizes,
            [2, 2, 1],
            "two 400 KiB bodies fit in 1 MiB, three do not"
        );
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn fifo_ids_are_kept_when_sqs_takes_them_and_hashed_when_not() {
        let id = |text: &str| fifo_id(text.to_owned());
        assert_eq!(id("job-7/item:42"), "job-7/item:42");
        let spaced = id("a key with spaces");
        assert_eq!(spaced.len(), 64);
        assert_eq!(
            spaced,
            id("a key with spaces"),
            "the same text, the same id"
        );
        assert_ne!(spaced, id("a key with spaces!"));
        assert_eq!(id(&"k".repeat(129)).len(), 64);
        assert_eq!(id("").len(), 64);
        assert_eq!(id("ü").len(), 64);
    }

    #[test]
    fn sqs_urls() {
        assert!(is_sqs("sqs://jobs"));
        assert!(is_sqs(
            "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"
        ));
        assert!(!is_sqs("azq://jobs"));
        assert!(!is_sqs("https://acct.queue.core.windows.net/jobs"));
    }
}
