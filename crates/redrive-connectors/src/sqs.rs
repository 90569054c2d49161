//! AWS SQS: `sqs://NAME` or a queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`), and
//! the calls redrive makes (GetQueueUrl, SendMessage) in SQS's JSON protocol, signed with
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

    /// Sends one message to `url` (`sqs://NAME` or a queue URL).
    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: &str,
    ) -> Result<(), StepError> {
        let display = secrets::redact(url).into_owned();
        let queue_url = self.queue_url(client, url, &display).await?;
        self.call(
            client,
            "SendMessage",
            &serde_json::json!({ "QueueUrl": queue_url, "MessageBody": body }),
            &display,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
