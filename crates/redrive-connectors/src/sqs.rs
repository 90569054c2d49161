//! AWS SQS: `sqs://NAME` or a queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`), and
//! the calls redrive makes (GetQueueUrl, SendMessage) in SQS's JSON protocol, signed with
//! Signature Version 4.
//!
//! Settings: a matching `[store."sqs://NAME"]` table (endpoint, region, access_key_id,
//! secret_access_key, session_token), then `AWS_ENDPOINT_URL_SQS`/`AWS_ENDPOINT_URL`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::storage::Stores;

/// An SQS endpoint with credentials, and the queue URLs found so far.
pub(crate) struct Sqs {
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length; this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// The `Authorization` header of a SigV4-signed POST to `/` with the given headers.
pub(crate) fn sign(
    secret_key: &str,
    access_key: &str,
    region: &str,
    amz_date: &str,
    headers: &[(&str, &str)],
    payload: &str,
) -> String {
    let date = &amz_date[..8];
    let mut sorted: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    sorted.sort();
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = sorted
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}",
        hex(&Sha256::digest(payload.as_bytes()))
    );
    let scope = format!("{date}/{region}/sqs/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = hmac(format!("AWS4{secret_key}").as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, "sqs");
    let key = hmac(&key, "aws4_request");
    let signature = hex(&hmac(&key, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

impl Sqs {
    /// The endpoint and credentials for `url`.
    pub(crate) fn resolve(stores: &Stores, url: &str) -> Result<Self, StepError> {
        let display = secrets::redact(url).into_owned();
        let spec = stores.spec_for(url).cloned().unwrap_or_default();
        let env = stores.env();
        let region = spec
            .region
            .clone()
            .or_else(|| env.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = match url.strip_prefix("https://") {
            Some(rest) => format!("https://{}", rest.split('/').next().unwrap_or_default()),
            None => spec
                .endpoint
                .clone()
                .or_else(|| env.first(&["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"]))
                .unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com")),
        };
        let access_key = spec
            .access_key_id
            .clone()
            .or_else(|| env.first(&["AWS_ACCESS_KEY_ID"]));
        let secret_key = spec
            .secret_access_key
            .clone()
            .or_else(|| env.first(&["AWS_SECRET_ACCESS_KEY"]));
        let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
            return Err(StepError::new(
                ErrorClass::Fatal,
                format!(
                    "cannot reach `{display}`: no AWS credentials; export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or set them in a [store.\"sqs://QUEUE\"] table"
                ),
            ));
        };
        secrets::register(&secret_key);
        let session_token = spec
            .session_token
            .clone()
            .or_else(|| env.first(&["AWS_SESSION_TOKEN"]));
        if let Some(token) = &session_token {
            secrets::register(token);
        }
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            region,
            access_key,
            secret_key,
            session_token,
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
        let amz_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let target = format!("AmazonSQS.{action}");
        let content_type = "application/x-amz-json-1.0";
        let mut headers = vec![
            ("content-type", content_type),
            ("host", host.as_str()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        if let Some(token) = &self.session_token {
            headers.push(("x-amz-security-token", token.as_str()));
        }
        let authorization = sign(
            &self.secret_key,
            &self.access_key,
            &self.region,
            &amz_date,
            &headers,
            &body,
        );
        let mut request = client.post(format!("{}/", self.endpoint));
        for (name, value) in &headers {
            if *name != "host" {
                request = request.header(*name, *value);
            }
        }
        let response = request
            .header("authorization", authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| {
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

    #[test]
    fn signature_v4_matches_the_documented_derivation() {
        // The example key of AWS's SigV4 documentation; the derived signing key for
        // 20120215/us-east-1/iam is documented as f4780e2d…388c1d8e.
        let key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
        let key = hmac(&key, "us-east-1");
        let key = hmac(&key, "iam");
        let key = hmac(&key, "aws4_request");
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
        let header = sign(
            "secret",
            "AKID",
            "us-east-1",
            "20260101T000000Z",
            &[("host", "h"), ("x-amz-date", "20260101T000000Z")],
            "{}",
        );
        assert!(header.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature="), "{header}");
    }
}
