//! GCS → GCS: one rewrite per object (`POST /storage/v1/b/SRC/o/KEY/rewriteTo/b/DST/o/KEY`),
//! sent again with the `rewriteToken` it answers until it says `done` (GCS copies a large
//! object, or one that changes location or storage class, over several calls; within a
//! location, one).
//!
//! A create-only copy sends `ifGenerationMatch=0`: an existing target is refused by the
//! service (`412`), with no lookup before. The request is sent as the target's credentials
//! (a bearer token from `reqsign-google`), which must be allowed to read the source: when
//! they are not (`403`), the pair is streamed instead. The answer carries the object's size,
//! so `bytes` costs no second request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;

use super::Server;
use crate::gcs_sign::{GcsCredential, GcsSigner, ReqwestSend};
use crate::storage::GcsObject;

/// How long one rewrite call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Most rewrite calls for one object (each copies at least 1 MiB; GCS's own clients loop
/// until done: this bounds a server that never says so).
const MAX_CALLS: usize = 10_000;

/// Copies between GCS objects server-side, one signer per credential.
#[derive(Debug, Default)]
pub(crate) struct GcsCopier {
    client: OnceLock<reqwest::Client>,
    signers: Mutex<HashMap<GcsCredential, Arc<GcsSigner>>>,
}

/// What one rewrite call came to.
#[derive(Debug)]
enum Rewrite {
    /// The target is complete: its size.
    Done(u64),
    /// Call again with this token.
    More(String),
    /// The service did not copy it (exists, unsupported).
    Not(Server),
}

impl GcsCopier {
    fn client(&self) -> &reqwest::Client {
        self.client
            .get_or_init(|| crate::http_client::client(CALL_TIMEOUT))
    }

    fn signer(&self, credential: &GcsCredential) -> Arc<GcsSigner> {
        let make = || {
            Arc::new(GcsSigner::new(
                credential,
                ReqwestSend(self.client().clone()),
            ))
        };
        match self.signers.lock() {
            Ok(mut signers) => Arc::clone(signers.entry(credential.clone()).or_insert_with(make)),
            Err(_) => make(),
        }
    }

    /// Rewrites `source` to `target`: `Copied(Some(size))` once the target is complete.
    pub(crate) async fn copy(
        &self,
        source: &GcsObject,
        target: &GcsObject,
        create_only: bool,
    ) -> Result<Server, StepError> {
        let signer = self.signer(&target.credential);
        let base = rewrite_url(source, target, create_only);
        let mut token: Option<String> = None;
        for _ in 0..MAX_CALLS {
            let url = match &token {
                Some(token) => format!(
                    "{base}{}rewriteToken={}",
                    if base.contains('?') { '&' } else { '?' },
                    crate::s3_bucket::encode(token)
                ),
                None => base.clone(),
            };
            let headers = signer
                .sign(
                    http::Method::POST,
                    &url,
                    &[("content-type", "application/json")],
                )
                .await?;
            let response = self
                .client()
                .post(&url)
                .headers(headers)
                .body("{}")
                .send()
                .await
                .map_err(|e| super::unanswered(&source.display, &target.display, &e.to_string()))?;
            let status = response.status().as_u16();
            let retry_after = crate::response::retry_after(response.headers());
            let body = response
                .text()
                .await
                .map_err(|e| super::unanswered(&source.display, &target.display, &e.to_string()))?;
            match judge(status, &body, retry_after, create_only, source, target)? {
                Rewrite::Done(size) => return Ok(Server::Copied(Some(size))),
                Rewrite::More(next) => token = Some(next),
                Rewrite::Not(answer) => return Ok(answer),
            }
        }
        Err(StepError::new(
            ErrorClass::Transient,
            format!(
                "copying `{}` to `{}`: the service had not finished after {MAX_CALLS} rewrite calls",
                source.display, target.display
            ),
        ))
    }
}

/// The first rewrite call's URL.
fn rewrite_url(source: &GcsObject, target: &GcsObject, create_only: bool) -> String {
    let encode = crate::s3_bucket::encode;
    let mut url = format!(
        "{}/storage/v1/b/{}/o/{}/rewriteTo/b/{}/o/{}",
        target.endpoint,
        encode(&source.bucket),
        encode(&source.key),
        encode(&target.bucket),
        encode(&target.key)
    );
    if create_only {
        url.push_str("?ifGenerationMatch=0");
    }
    url
}

/// The parts of a rewrite answer redrive reads.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    done: bool,
    rewrite_token: Option<String>,
    /// A decimal string (JSON API int64).
    object_size: Option<String>,
}

/// What an answer means.
fn judge(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    create_only: bool,
    source: &GcsObject,
    target: &GcsObject,
) -> Result<Rewrite, StepError> {
    let said = || {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        secrets::redact(&format!(
            "copying `{}` to `{}`: the service answered {status} {message}",
            source.display, target.display
        ))
        .into_owned()
    };
    match status {
        200..=299 => match serde_json::from_str::<Answer>(body) {
            Ok(Answer {
                done: true,
                object_size,
                ..
            }) => Ok(Rewrite::Done(
                object_size.and_then(|s| s.parse().ok()).unwrap_or(0),
            )),
            Ok(Answer {
                rewrite_token: Some(token),
                ..
            }) if !token.is_empty() => Ok(Rewrite::More(token)),
            _ => Ok(Rewrite::Not(Server::Unsupported(format!(
                "the answer did not say the copy was made or how to go on: {}",
                said()
            )))),
        },
        412 if create_only => Ok(Rewrite::Not(Server::Exists)),
        404 => Err(StepError::permanent(format!(
            "{}: the source (or a bucket) is missing",
            said()
        ))),
        429 | 503 => {
            let mut error = StepError::new(ErrorClass::Throttled, said());
            if let Some(delay) = retry_after {
                error = error.with_retry_after(delay);
            }
            Err(error)
        }
        408 | 500..=599 if status != 501 => Err(StepError::new(ErrorClass::Transient, said())),
        // Anything else (403: the target's credentials cannot read the source; 401; 400: a
        // request this server does not take; 501) says this way is not open between these
        // stores: streaming is, and reports the item's own error if it has one.
        _ => Ok(Rewrite::Not(Server::Unsupported(said()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(bucket: &str, key: &str) -> GcsObject {
        GcsObject {
            endpoint: "https://storage.googleapis.com".into(),
            bucket: bucket.into(),
            key: key.into(),
            credential: GcsCredential::Anonymous,
            display: format!("gs://{bucket}/{key}"),
        }
    }

    #[test]
    fn the_url_encodes_each_name_whole_and_asks_for_create_only() {
        let (a, b) = (object("src", "in/a b+c.json"), object("dst", "out/x?.json"));
        assert_eq!(
            rewrite_url(&a, &b, true),
            "https://storage.googleapis.com/storage/v1/b/src/o/in%2Fa%20b%2Bc.json/rewriteTo/b/dst/o/out%2Fx%3F.json?ifGenerationMatch=0"
        );
        assert!(!rewrite_url(&a, &b, false).contains('?'));
    }

    #[test]
    fn answers_are_judged_by_status_and_body() {
        let (a, b) = (object("s", "k"), object("d", "k"));
        let judged =
            |status, body: &str, create_only| judge(status, body, None, create_only, &a, &b);
        let done = r#"{"kind":"storage#rewriteResponse","totalBytesRewritten":"5","objectSize":"5","done":true}"#;
        assert!(matches!(judged(200, done, true), Ok(Rewrite::Done(5))));
        let more = r#"{"totalBytesRewritten":"1048576","objectSize":"9999999","done":false,"rewriteToken":"tok/1"}"#;
        assert!(matches!(judged(200, more, true), Ok(Rewrite::More(t)) if t == "tok/1"));
        assert!(matches!(
            judged(200, "{}", true),
            Ok(Rewrite::Not(Server::Unsupported(_)))
        ));
        let failed = r#"{"error":{"code":412,"message":"At least one of the pre-conditions you specified did not hold."}}"#;
        assert!(matches!(
            judged(412, failed, true),
            Ok(Rewrite::Not(Server::Exists))
        ));
        let missing = r#"{"error":{"code":404,"message":"No such object: s/k"}}"#;
        let error = judged(404, missing, true)
            .err()
            .map(|e| (e.class(), e.chain()));
        assert!(
            matches!(&error, Some((ErrorClass::Permanent, text)) if text.contains("No such object") && text.contains("missing")),
            "{error:?}"
        );
        let slow = judge(429, "{}", Some(Duration::from_secs(3)), true, &a, &b).err();
        assert_eq!(slow.map(|e| e.class()), Some(ErrorClass::Throttled));
        assert_eq!(
            judged(500, "", true).err().map(|e| e.class()),
            Some(ErrorClass::Transient)
        );
        for refused in [401, 403, 400, 501] {
            assert!(
                matches!(
                    judged(refused, "{}", true),
                    Ok(Rewrite::Not(Server::Unsupported(_)))
                ),
                "{refused}"
            );
        }
    }
}
