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
//! Azure copies up to 256 MiB this way; a larger blob (above `copy_cutoff`, at most 256 MiB)
//! is copied block by block (Put Block From URL, `parts` at once) and committed by Put Block
//! List with `If-None-Match: *`. A copy that sets `content_type` or asks for a `checksum` other
//! than md5 (md5 is compared from what the source and target report), or a store pair the
//! service refuses to copy between (another account without access, a server that does not
//! implement it) is streamed instead (`mode = "auto"`, said once per store pair), or fails
//! (`mode = "server"`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;

use super::{Halt, Server};
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

/// What the service answered a request.
struct Reply {
    status: u16,
    code: String,
    copy_status: String,
    retry_after: Option<Duration>,
    message: String,
}

impl AzureCopier {
    /// One Copy Blob From URL.
    pub(crate) async fn copy(
        &self,
        source: &AzureBlob,
        target: &AzureBlob,
        create_only: bool,
    ) -> Result<Server, StepError> {
        let Some(source_url) = self.source_url(source)? else {
            return Ok(Server::Unsupported(no_key(&source.account, true)));
        };
        let mut headers = vec![
            ("x-ms-copy-source", source_url.as_str()),
            ("x-ms-requires-sync", "true"),
        ];
        if create_only {
            headers.push(("if-none-match", "*"));
        }
        let Some(reply) = self
            .send(source, target, "", &headers, String::new())
            .await?
        else {
            return Ok(Server::Unsupported(no_key(&target.account, false)));
        };
        judge(&reply, create_only, source, target)
    }

    /// A blob larger than one Copy Blob From URL takes: its blocks copied by the service from
    /// the source (Put Block From URL, `in_flight` at once), then committed by Put Block List
    /// with `If-None-Match: *`. Blocks never committed (a failed or killed attempt) stay
    /// invisible and the service drops them within a week.
    pub(crate) async fn copy_in_blocks(
        &self,
        source: &AzureBlob,
        target: &AzureBlob,
        plan: super::PartPlan,
        in_flight: usize,
        create_only: bool,
    ) -> Result<Server, StepError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let Some(source_url) = self.source_url(source)? else {
            return Ok(Server::Unsupported(no_key(&source.account, true)));
        };
        // Block ids: the same length for every block of a blob, as the service requires.
        let ids: Vec<String> = (1..=plan.count)
            .map(|n| {
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("redrive-{n:06}"),
                )
            })
            .collect();
        let placed = futures::stream::iter(0..ids.len())
            .map(|i| {
                let (source_url, id) = (&source_url, &ids[i]);
                async move {
                    let (start, end) = plan.range(i as u64 + 1);
                    let range = format!("bytes={start}-{end}");
                    let headers = [
                        ("x-ms-copy-source", source_url.as_str()),
                        ("x-ms-source-range", range.as_str()),
                    ];
                    let query = format!("comp=block&blockid={}", encode_query(id));
                    let reply = self
                        .send(source, target, &query, &headers, String::new())
                        .await
                        .map_err(Halt::Failed)?;
                    let Some(reply) = reply else {
                        return Err(Halt::Answer(Server::Unsupported(no_key(
                            &target.account,
                            false,
                        ))));
                    };
                    Halt::of(judge(&reply, false, source, target))
                }
            })
            .buffer_unordered(in_flight.max(1))
            .try_collect::<Vec<()>>()
            .await;
        if let Err(halt) = placed {
            return halt.into_result();
        }
        let mut list = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in &ids {
            list.push_str(&format!("<Latest>{id}</Latest>"));
        }
        list.push_str("</BlockList>");
        let mut headers = vec![("content-type", "application/xml")];
        if create_only {
            headers.push(("if-none-match", "*"));
        }
        match self
            .send(source, target, "comp=blocklist", &headers, list)
            .await?
        {
            Some(reply) => judge(&reply, create_only, source, target),
            None => Ok(Server::Unsupported(no_key(&target.account, false))),
        }
    }

    /// One signed `PUT` on the target blob (with `query`, e.g. `comp=block&blockid=…`);
    /// `None` when there is no key or SAS to sign it with.
    async fn send(
        &self,
        source: &AzureBlob,
        target: &AzureBlob,
        query: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<Option<Reply>, StepError> {
        let mut params: Vec<&str> = Vec::new();
        if !query.is_empty() {
            params.push(query);
        }
        match (&target.key, &target.sas) {
            (None, Some(sas)) => params.push(sas),
            (None, None) => return Ok(None),
            _ => {}
        }
        let target_url = if params.is_empty() {
            target.url()
        } else {
            format!("{}?{}", target.url(), params.join("&"))
        };
        let cannot = |e: String| {
            StepError::new(
                ErrorClass::Fatal,
                format!("cannot sign a copy to `{}`: {e}", target.display),
            )
        };
        let length = body.len().to_string();
        let mut request = http::Request::put(target_url.as_str())
            .header("x-ms-version", VERSION)
            .header("content-length", length.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
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
            .body(body)
            .send()
            .await
            .map_err(|e| super::unanswered(&source.display, &target.display, &e.to_string()))?;
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
        Ok(Some(Reply {
            status,
            code,
            copy_status,
            retry_after,
            message,
        }))
    }
}

fn no_key(account: &str, source: bool) -> String {
    if source {
        format!("no key or SAS for account `{account}` to let the service read the source")
    } else {
        format!("no key or SAS for account `{account}`")
    }
}

/// What a reply means.
fn judge(
    reply: &Reply,
    create_only: bool,
    source: &AzureBlob,
    target: &AzureBlob,
) -> Result<Server, StepError> {
    let (status, code) = (reply.status, reply.code.as_str());
    let said = || {
        secrets::redact(&format!(
            "copying `{}` to `{}`: the service answered {status} {code} {}",
            source.display, target.display, reply.message
        ))
        .into_owned()
    };
    match status {
        200..=299 if reply.copy_status.is_empty() || reply.copy_status == "success" => {
            Ok(Server::Copied(None))
        }
        200..=299 => Ok(Server::Unsupported(format!(
            "the copy did not finish at once (x-ms-copy-status: {})",
            reply.copy_status
        ))),
        409 if code == "BlobAlreadyExists" => Ok(Server::Exists),
        412 if create_only => Ok(Server::Exists),
        404 if code == "BlobNotFound" || code == "CannotVerifyCopySource" => Err(
            StepError::permanent(format!("{}: the source is missing", said())),
        ),
        429 | 503 => {
            let mut error = StepError::new(ErrorClass::Throttled, said());
            if let Some(delay) = reply.retry_after {
                error = error.with_retry_after(delay);
            }
            Err(error)
        }
        408 | 500..=599 if status != 501 => Err(StepError::new(ErrorClass::Transient, said())),
        // Anything else says this way is not open between these stores (not implemented,
        // the source unreadable by the service, a version it does not know): streaming
        // is, and reports the item's own error if there is one.
        _ => Ok(Server::Unsupported(said())),
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
