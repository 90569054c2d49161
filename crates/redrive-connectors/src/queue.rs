//! Azure Storage Queue: where `azq://QUEUE` and `https://ACCOUNT.queue.core.windows.net/QUEUE`
//! lead, and the one REST call redrive makes (Put Message), signed with Shared Key or a SAS.
//!
//! Settings come from the same places as blobs: a matching `[store."PREFIX"]` table, then
//! `AZURE_STORAGE_CONNECTION_STRING` (its `QueueEndpoint`, or the account's public endpoint),
//! then `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_TOKEN`.
//! Without a key or SAS, an Azure AD token for `https://storage.azure.com` is used (a service
//! principal from the environment, the `az` CLI, or a managed identity).

use base64::Engine as _;
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;

use crate::storage::Stores;

/// Service version sent with every request.
const VERSION: &str = "2021-08-06";
/// The service's limit on a message.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// A resolved queue: where to post and how to sign.
#[derive(Clone)]
pub(crate) struct Queue {
    /// `https://ACCOUNT.queue.core.windows.net` or an emulator's `http://HOST:PORT/ACCOUNT`.
    endpoint: String,
    account: String,
    name: String,
    /// The account key (base64), for Shared Key signing.
    key: Option<String>,
    sas: Option<String>,
    /// The URL for messages, secrets masked.
    pub(crate) display: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

fn settings(message: String) -> StepError {
    StepError::new(ErrorClass::Fatal, message)
}

/// Resolves a queue URL with the plan's `[store]` tables and the environment.
pub(crate) fn resolve(stores: &Stores, url: &str) -> Result<Queue, StepError> {
    let display = secrets::redact(url).into_owned();
    let spec = stores.spec_for(url).cloned().unwrap_or_default();
    let env = stores.env();
    let connection = crate::azure_account::ConnectionString::of(&spec, env);
    let part = |name: &str| connection.part(name);

    let (url_account, url_endpoint, name) = if let Some(name) = url.strip_prefix("azq://") {
        (None, None, name.trim_matches('/').to_owned())
    } else if let Some(rest) = url.strip_prefix("https://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(account) = host.strip_suffix(".queue.core.windows.net") else {
            return Err(StepError::permanent(format!(
                "`{display}` is not a queue URL; use azq://QUEUE or https://ACCOUNT.queue.core.windows.net/QUEUE"
            )));
        };
        (
            Some(account.to_owned()),
            Some(format!("https://{host}")),
            path.trim_matches('/').to_owned(),
        )
    } else {
        return Err(StepError::permanent(format!(
            "`{display}` is not a queue URL; use azq://QUEUE or https://ACCOUNT.queue.core.windows.net/QUEUE"
        )));
    };
    if name.is_empty() || name.contains('/') {
        return Err(StepError::permanent(format!(
            "`{display}` names no queue; write azq://QUEUE"
        )));
    }

    let account = crate::azure_account::account(url_account.as_deref(), &spec, &connection, env)
        .or_else(|| {
            connection
                .development()
                .then(|| "devstoreaccount1".to_owned())
        });
    let Some(account) = account else {
        return Err(settings(format!(
            "cannot reach `{display}`: no Azure storage account is set; export AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME (with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN), or add a [store.\"azq://QUEUE\"] table"
        )));
    };
    let endpoint = url_endpoint
        .or(spec.endpoint.clone())
        .or_else(|| part("QueueEndpoint"))
        .or_else(|| {
            connection
                .development()
                .then(|| "http://127.0.0.1:10001/devstoreaccount1".to_owned())
        })
        .unwrap_or_else(|| {
            let protocol = part("DefaultEndpointsProtocol").unwrap_or_else(|| "https".to_owned());
            let suffix = part("EndpointSuffix").unwrap_or_else(|| "core.windows.net".to_owned());
            format!("{protocol}://{account}.queue.{suffix}")
        })
        .trim_end_matches('/')
        .to_owned();
    let key = crate::azure_account::key(&account, &spec, &connection, env);
    let sas = crate::azure_account::sas(None, &spec, &connection, env);
    let key = match key {
        Some(key) => {
            let key = key.trim().to_owned();
            if base64::engine::general_purpose::STANDARD
                .decode(&key)
                .is_err()
            {
                return Err(settings(format!(
                    "cannot reach `{display}`: the account key is not valid base64"
                )));
            }
            Some(key)
        }
        None => None,
    };
    Ok(Queue {
        endpoint,
        account,
        name,
        key,
        sas,
        display,
    })
}

/// `<QueueMessage><MessageText>…</MessageText></QueueMessage>`, the text XML-escaped.
pub(crate) fn message_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    format!("<QueueMessage><MessageText>{escaped}</MessageText></QueueMessage>")
}

impl Queue {
    /// The headers of a message post: version, type, length, date, and with an account key the
    /// Shared Key `Authorization`, signed by `reqsign-azure-storage`.
    async fn signed_headers(&self, url: &str, length: usize) -> Result<http::HeaderMap, StepError> {
        let cannot =
            |e: String| settings(format!("cannot sign a message to `{}`: {e}", self.display));
        let (mut parts, ()) = http::Request::post(url)
            .header("x-ms-version", VERSION)
            .header("content-type", "application/xml")
            .header("content-length", length)
            .body(())
            .map_err(|e| cannot(e.to_string()))?
            .into_parts();
        crate::azure_account::sign(&mut parts, &self.account, self.key.as_deref())
            .await
            .map_err(cannot)?;
        Ok(parts.headers)
    }

    /// Posts one message. 201 is success; 4xx fail the item with the service's message;
    /// 429 and 5xx are retried (with Retry-After) by the engine. Without a key or SAS, `aad`
    /// gives the bearer token.
    pub(crate) async fn put(
        &self,
        client: &reqwest::Client,
        text: &str,
        aad: &crate::azure_auth::TokenSource,
    ) -> Result<(), StepError> {
        let body = message_xml(text);
        let url = match (&self.key, &self.sas) {
            (None, Some(sas)) => format!("{}/{}/messages?{sas}", self.endpoint, self.name),
            _ => format!("{}/{}/messages", self.endpoint, self.name),
        };
        let signed = self.signed_headers(&url, body.len()).await?;
        let mut request = client.post(&url).headers(signed);
        if self.key.is_none() && self.sas.is_none() {
            let token = aad.token(client).await.map_err(|e| {
                settings(format!(
                    "cannot reach `{}`: no account key or SAS token for account `{}`, and no Azure AD token: {e}",
                    self.display, self.account
                ))
            })?;
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.body(body).send().await.map_err(|e| {
            let class = if e.is_builder() {
                ErrorClass::Permanent
            } else {
                ErrorClass::Transient
            };
            StepError::new(
                class,
                format!("cannot send a message to `{}`", self.display),
            )
            .with_source(e)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = crate::response::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let code = crate::response::between(&text, "<Code>", "</Code>").unwrap_or_default();
        let message = crate::response::between(&text, "<Message>", "</Message>")
            .map(|m| m.lines().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| text.chars().take(200).collect());
        let class = match status.as_u16() {
            429 | 503 => ErrorClass::Throttled,
            500..=599 | 408 => ErrorClass::Transient,
            401 | 403 => ErrorClass::Fatal,
            _ => ErrorClass::Permanent,
        };
        let mut error = StepError::new(
            class,
            format!(
                "queue `{}` answered {status}: {code} {message}",
                self.display
            ),
        );
        if let Some(delay) = retry_after {
            error = error.with_retry_after(delay);
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Env;
    use redrive_core::job::StoreSpec;

    fn stores(specs: Vec<(String, StoreSpec)>, env: &[(&str, &str)]) -> Stores {
        Stores::new(
            std::path::Path::new("/"),
            specs,
            Env::from_pairs(env.iter().copied()),
        )
    }

    #[test]
    fn message_text_is_xml_escaped() {
        assert_eq!(
            message_xml(r#"{"a":"<b> & 'c'"}"#),
            "<QueueMessage><MessageText>{&quot;a&quot;:&quot;&lt;b&gt; &amp; &apos;c&apos;&quot;}</MessageText></QueueMessage>"
        );
    }

    #[test]
    fn connection_string_gives_endpoint_account_and_key() {
        let stores = stores(
            vec![],
            &[(
                "AZURE_STORAGE_CONNECTION_STRING",
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
            )],
        );
        let queue = resolve(&stores, "azq://results").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(queue.endpoint, "http://127.0.0.1:10001/devstoreaccount1");
        assert_eq!(
            (queue.account.as_str(), queue.name.as_str()),
            ("devstoreaccount1", "results")
        );
        assert_eq!(queue.key.as_deref(), Some("a2V5"));
    }

    #[test]
    fn public_endpoint_from_account_name_and_sas() {
        let stores = stores(
            vec![],
            &[
                ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
                ("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=abcd"),
            ],
        );
        let queue = resolve(&stores, "azq://q1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(queue.endpoint, "https://acct.queue.core.windows.net");
        assert_eq!(queue.sas.as_deref(), Some("sv=1&sig=abcd"));
    }

    #[test]
    fn bad_queue_urls_and_missing_settings_are_named() {
        let none = stores(vec![], &[]);
        let error = resolve(&none, "sqs://q")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(error, Err("`sqs://q` is not a queue URL; use azq://QUEUE or https://ACCOUNT.queue.core.windows.net/QUEUE".to_owned()));
        let error = resolve(&none, "azq://q")
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(error.contains("no Azure storage account is set"), "{error}");
    }

    #[tokio::test]
    async fn without_a_key_or_sas_an_azure_ad_token_is_required() {
        let env = Env::from_pairs([
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/token"),
            ("IDENTITY_HEADER", "x"),
        ]);
        let stores = Stores::new(std::path::Path::new("/"), vec![], env.clone());
        let queue = resolve(&stores, "azq://q").unwrap_or_else(|e| panic!("{e}"));
        let aad = crate::azure_auth::TokenSource::new("https://storage.azure.com", env);
        let error = queue
            .put(&reqwest::Client::new(), "m", &aad)
            .await
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(error.contains("no account key or SAS token for account `acct`, and no Azure AD token: no Azure credential found"), "{error}");
    }

    #[tokio::test]
    async fn a_message_post_is_signed_with_the_account_key() {
        let stores = stores(
            vec![],
            &[(
                "AZURE_STORAGE_CONNECTION_STRING",
                "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:10001/acct;",
            )],
        );
        let queue = resolve(&stores, "azq://jobs").unwrap_or_else(|e| panic!("{e}"));
        let headers = queue
            .signed_headers("http://127.0.0.1:10001/acct/jobs/messages", 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let value = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            value("authorization").starts_with("SharedKey acct:"),
            "{headers:?}"
        );
        assert!(!value("x-ms-date").is_empty());
        assert_eq!(value("x-ms-version"), VERSION);
    }
}
