//! Azure Blob → Azure Blob with one Copy Blob From URL request per object.
//!
//! The request (`PUT` on the target, `x-ms-copy-source`, `x-ms-requires-sync: true`) is
//! synchronous: when it answers `202` with `x-ms-copy-status: success` the target is complete.
//! A create-only copy sends `If-None-Match: *`, and an existing target is refused by the
//! service (`409 BlobAlreadyExists`), with no HEAD before. The source is authorised by a SAS:
//! the plan's, or a read-only one for the source container, valid for an hour, made from the
//! source account's key (`reqsign-azure-storage`) once per container and renewed before it
//! expires (so a 16M-object job makes a few dozen, not one per object); the target request is
//! signed with its account's key (Shared Key) or carries its SAS.
//!
//! Azure copies up to 256 MiB this way. A larger object, a copy that sets `content_type` or
//! asks for a `checksum`, or a store pair the service refuses to copy between (another
//! account without access, an emulator that does not implement it) is streamed instead
//! (`mode = "auto"`, said once per store pair), or fails (`mode = "server"`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;

use super::Server;
use crate::azure_account::AzureBlob;

/// The largest object Copy Blob From URL copies.
pub(crate) const MAX_SYNC_COPY: u64 = 256 * 1024 * 1024;

/// The service version of the requests (Copy Blob From URL with `If-None-Match`).
const VERSION: &str = "2021-12-02";

/// How long a copy request may take: the service copies up to 256 MiB before it answers.
const COPY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Copies between Azure blobs server-side.
#[derive(Debug, Default)]
pub(crate) struct AzureCopier {
    client: std::sync::OnceLock<reqwest::Client>,
    /// Read SASes made for source containers, by (endpoint, container), with when.
    made: Mutex<HashMap<(String, String), (String, Instant)>>,
}

/// How long a SAS made for a source container is valid.
const SAS_LIFE: Duration = Duration::from_secs(3600);
/// A SAS older than this is made again (a copy may take minutes after it is sent).
const SAS_RENEW: Duration = Duration::from_secs(40 * 60);

impl AzureCopier {
    /// One Copy Blob From URL.
    pub(crate) async fn copy(
        &self,
        source: &AzureBlob,
        target: &AzureBlob,
        create_only: bool,
    ) -> Result<Server, StepError> {
        let Some(source_url) = self.source_url(source)? else {
            return Ok(Server::Unsupported(format!(
                "no key or SAS for account `{}` to let the service read the source",
                source.account
            )));
        };
        let target_url = match (&target.key, &target.sas) {
            (None, Some(sas)) => format!("{}?{sas}", target.url()),
            (None, None) => {
                return Ok(Server::Unsupported(format!(
                    "no key or SAS for account `{}`",
                    target.account
                )));
            }
            _ => target.url(),
        };
        let cannot = |e: String| {
            StepError::new(
                ErrorClass::Fatal,
                format!("cannot sign a copy to `{}`: {e}", target.display),
            )
        };
        let mut request = http::Request::put(target_url.as_str())
            .header("x-ms-version", VERSION)
            .header("x-ms-copy-source", source_url.as_str())
            .header("x-ms-requires-sync", "true")
            .header("content-length", "0");
        if create_only {
            request = request.header("if-none-match", "*");
        }
        let (mut parts, ()) = request
            .body(())
            .map_err(|e| cannot(e.to_string()))?
            .into_parts();
        crate::azure_account::sign(&mut parts, &target.account, target.key.as_deref())
            .await
            .map_err(cannot)?;
        let client = self
            .client
            .get_or_init(|| crate::http_client::client(COPY_TIMEOUT));
        let response = client
            .put(&target_url)
            .headers(parts.headers)
            .send()
            .await
            .map_err(|e| {
                StepError::new(
                    ErrorClass::Transient,
                    format!(
                        "cannot copy `{}` to `{}`: {}",
                        source.display,
                        target.display,
                        secrets::redact(&e.to_string())
                    ),
                )
            })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (code, copy_status) = (header("x-ms-error-code"), header("x-ms-copy-status"));
        let retry_after = crate::response::retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let message = crate::response::between(&text, "<Message>", "</Message>")
            .and_then(|m| m.lines().next())
            .unwrap_or_default()
            .to_owned();
        let said = || {
            secrets::redact(&format!(
                "copying `{}` to `{}`: the service answered {status} {code} {message}",
                source.display, target.display
            ))
            .into_owned()
        };
        match status {
            200..=299 if copy_status.is_empty() || copy_status == "success" => Ok(Server::Copied),
            200..=299 => Ok(Server::Unsupported(format!(
                "the copy did not finish at once (x-ms-copy-status: {copy_status})"
            ))),
            409 if code == "BlobAlreadyExists" => Ok(Server::Exists),
            412 if create_only => Ok(Server::Exists),
            404 if code == "BlobNotFound" || code == "CannotVerifyCopySource" => Err(
                StepError::permanent(format!("{}: the source is missing", said())),
            ),
            429 | 503 => {
                let mut error = StepError::new(ErrorClass::Throttled, said());
                if let Some(delay) = retry_after {
                    error = error.with_retry_after(delay);
                }
                Err(error)
            }
            408 | 500..=599 => Err(StepError::new(ErrorClass::Transient, said())),
            // Anything else says this way is not open between these stores (not implemented,
            // the source unreadable by the service, a version it does not know): streaming
            // is, and reports the item's own error if there is one.
            _ => Ok(Server::Unsupported(said())),
        }
    }
}

impl AzureCopier {
    /// The source's URL with a SAS that lets the service read it: the plan's SAS, or a read
    /// SAS for its container made from the account key (one per container, renewed after
    /// `SAS_RENEW`). `None` without either.
    fn source_url(&self, source: &AzureBlob) -> Result<Option<String>, StepError> {
        if let Some(sas) = &source.sas {
            return Ok(Some(format!("{}?{sas}", source.url())));
        }
        let Some(key) = &source.key else {
            return Ok(None);
        };
        let slot = (source.endpoint.clone(), source.container.clone());
        let known = self
            .made
            .lock()
            .ok()
            .and_then(|made| made.get(&slot).cloned())
            .filter(|(_, at)| at.elapsed() < SAS_RENEW);
        let query = match known {
            Some((query, _)) => query,
            None => {
                let query = container_sas(source, key)?;
                if let Ok(mut made) = self.made.lock() {
                    made.insert(slot, (query.clone(), Instant::now()));
                }
                query
            }
        };
        Ok(Some(format!("{}?{query}", source.url())))
    }
}

/// A read SAS for `source`'s container, valid `SAS_LIFE`, its signature registered as a
/// secret.
fn container_sas(source: &AzureBlob, key: &str) -> Result<String, StepError> {
    let expiry = reqsign_core::time::Timestamp::now() + SAS_LIFE;
    let resource = reqsign_azure_storage::ServiceSasResource::Container {
        container: source.container.clone(),
    };
    let sas = reqsign_azure_storage::ServiceSharedAccessSignature::new(
        source.account.clone(),
        key.to_owned(),
        resource,
        "r".to_owned(),
        expiry,
    )
    .token()
    .map_err(|e| {
        StepError::new(
            ErrorClass::Fatal,
            format!(
                "cannot make a SAS to read `{}`: {e} (is the account key base64?)",
                source.display
            ),
        )
    })?;
    let query = sas
        .iter()
        .map(|(name, value)| format!("{name}={}", encode_query(value)))
        .collect::<Vec<_>>()
        .join("&");
    secrets::register(&query);
    for (name, value) in &sas {
        if name == "sig" {
            secrets::register(value);
            secrets::register(&encode_query(value));
        }
    }
    Ok(query)
}

fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn blob(key: Option<&str>, sas: Option<&str>) -> AzureBlob {
        AzureBlob {
            endpoint: "http://127.0.0.1:10000/devstoreaccount1".into(),
            account: "devstoreaccount1".into(),
            key: key.map(str::to_owned),
            sas: sas.map(str::to_owned),
            container: "src".into(),
            path: "a b/ü.json".into(),
            display: "az://src/a b/ü.json".into(),
        }
    }

    #[test]
    fn the_source_is_read_with_the_plans_sas_or_one_made_for_its_container() {
        let copier = AzureCopier::default();
        let with_sas = copier.source_url(&blob(None, Some("sv=x&sig=abc")));
        assert_eq!(
            with_sas.unwrap().unwrap(),
            "http://127.0.0.1:10000/devstoreaccount1/src/a%20b/%C3%BC.json?sv=x&sig=abc"
        );
        let made = copier.source_url(&blob(Some("a2V5a2V5a2V5"), None));
        let made = made.unwrap().unwrap();
        assert!(
            made.contains("?sv=") && made.contains("&sp=r&sr=c&sig="),
            "{made}"
        );
        let sig = made.split("sig=").nth(1).unwrap();
        assert_eq!(secrets::redact(&made).matches(sig).count(), 0, "masked");
        // One SAS a container, not one an object: the secrets to mask stay few.
        let mut other = blob(Some("a2V5a2V5a2V5"), None);
        other.path = "another.json".into();
        let again = copier.source_url(&other).unwrap().unwrap();
        assert_eq!(
            again.split_once('?').map(|p| p.1),
            made.split_once('?').map(|p| p.1)
        );
        assert!(copier.source_url(&blob(None, None)).unwrap().is_none());
    }
}
