//! S3 → S3: one CopyObject per object (up to 5 GiB), or above `copy_cutoff` a multipart upload
//! whose parts are UploadPartCopy requests, `parts` at once.
//!
//! A create-only copy sends `If-None-Match: *` on the CopyObject or on the
//! CompleteMultipartUpload, and an existing target is refused by the service (`412`), with
//! no HEAD before. The request is signed with the target's keys, which must be allowed to
//! read the source: when they are not (`403`), the pair is streamed instead (each side with
//! its own keys). S3 may answer `200` and report a failure in the body; the body decides.
//! A multipart copy that fails is aborted; one a crash cut off is aborted after the item's
//! next copy completes, as a streamed multipart copy's is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::secrets;

use super::{Halt, PartPlan, Server};
use crate::s3_bucket::{Answer, S3Bucket};
use crate::storage::S3Object;

/// The largest object one CopyObject copies.
pub(crate) const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

/// How long one copy request may take: S3 copies up to 5 GiB before it answers (sending
/// spaces meanwhile to keep the connection open).
const COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Copies between S3 objects server-side, one client per target bucket.
#[derive(Debug, Default)]
pub(crate) struct S3Copier {
    client: OnceLock<reqwest::Client>,
    buckets: Mutex<HashMap<(String, String, String), Arc<S3Bucket>>>,
}

impl S3Copier {
    /// The client for the bucket `object` is in, as its keys reach it.
    fn bucket(&self, object: &S3Object) -> Arc<S3Bucket> {
        let access = &object.access;
        let slot = (
            access.endpoint(),
            access.bucket.clone(),
            access.keys.access_key_id.clone(),
        );
        let make = || {
            let client = self
                .client
                .get_or_init(|| crate::http_client::client(COPY_TIMEOUT));
            Arc::new(S3Bucket::new(access, client.clone()))
        };
        match self.buckets.lock() {
            Ok(mut buckets) => Arc::clone(buckets.entry(slot).or_insert_with(make)),
            Err(_) => make(),
        }
    }

    /// One CopyObject.
    pub(crate) async fn copy(
        &self,
        source: &S3Object,
        target: &S3Object,
        create_only: bool,
    ) -> Result<Server, StepError> {
        let bucket = self.bucket(target);
        let copy_source = crate::s3_bucket::copy_source(&source.access.bucket, &source.key);
        let mut headers = vec![("x-amz-copy-source", copy_source.as_str())];
        if create_only {
            headers.push(("if-none-match", "*"));
        }
        let url = bucket.object_url(&target.key, "");
        let answer = send(
            &bucket,
            http::Method::PUT,
            &url,
            &headers,
            "",
            source,
            target,
        )
        .await?;
        if answer.status == 400
            && answer.error_code().as_deref() == Some("InvalidRequest")
            && answer.body.contains("maximum allowable size")
        {
            return Ok(Server::TooLarge);
        }
        judge(&answer, create_only, source, target, "CopyObjectResult")
    }

    /// A multipart upload of `target` whose parts the service copies from `source`.
    pub(crate) async fn copy_in_parts(
        &self,
        source: &S3Object,
        target: &S3Object,
        plan: PartPlan,
        in_flight: usize,
        create_only: bool,
    ) -> Result<Server, StepError> {
        let bucket = self.bucket(target);
        let url = bucket.object_url(&target.key, "?uploads");
        let answer = send(&bucket, http::Method::POST, &url, &[], "", source, target).await?;
        let upload_id = match judge(&answer, false, source, target, "UploadId")? {
            Server::Copied(_) => answer.field("UploadId").unwrap_or_default(),
            other => return Ok(other),
        };
        let done = self
            .parts_and_commit(
                &bucket,
                source,
                target,
                plan,
                in_flight,
                create_only,
                &upload_id,
            )
            .await;
        if !matches!(done, Ok(Server::Copied(_)))
            && let Err(error) = bucket.abort(&target.key, &upload_id).await
        {
            tracing::warn!(target = %target.display, error = %secrets::redact(&error), "Cannot abort the multipart copy; the bucket's lifecycle rule will remove its parts.");
        }
        done
    }

    #[allow(clippy::too_many_arguments)]
    async fn parts_and_commit(
        &self,
        bucket: &S3Bucket,
        source: &S3Object,
        target: &S3Object,
        plan: PartPlan,
        in_flight: usize,
        create_only: bool,
        upload_id: &str,
    ) -> Result<Server, StepError> {
        let copy_source = crate::s3_bucket::copy_source(&source.access.bucket, &source.key);
        let upload = crate::s3_bucket::encode(upload_id);
        let parts: Result<Vec<(u64, String)>, Halt> = futures::stream::iter(1..=plan.count)
            .map(|n| {
                let (copy_source, upload) = (&copy_source, &upload);
                async move {
                    let (start, end) = plan.range(n);
                    let range = format!("bytes={start}-{end}");
                    let url = bucket
                        .object_url(&target.key, &format!("?partNumber={n}&uploadId={upload}"));
                    let headers = [
                        ("x-amz-copy-source", copy_source.as_str()),
                        ("x-amz-copy-source-range", range.as_str()),
                    ];
                    let answer = send(
                        bucket,
                        http::Method::PUT,
                        &url,
                        &headers,
                        "",
                        source,
                        target,
                    )
                    .await
                    .map_err(Halt::Failed)?;
                    Halt::of(judge(&answer, false, source, target, "CopyPartResult"))?;
                    Ok((n, answer.field("ETag").unwrap_or_default()))
                }
            })
            .buffer_unordered(in_flight.max(1))
            .try_collect::<Vec<(u64, String)>>()
            .await;
        let mut etags = match parts {
            Ok(etags) => etags,
            Err(halt) => return halt.into_result(),
        };
        etags.sort_unstable();
        let mut body = String::from("<CompleteMultipartUpload>");
        for (n, etag) in &etags {
            body.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                quick_xml::escape::escape(etag.as_str())
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let url = bucket.object_url(&target.key, &format!("?uploadId={upload}"));
        let mut headers = vec![("content-type", "application/xml")];
        if create_only {
            headers.push(("if-none-match", "*"));
        }
        let answer = send(
            bucket,
            http::Method::POST,
            &url,
            &headers,
            &body,
            source,
            target,
        )
        .await?;
        judge(
            &answer,
            create_only,
            source,
            target,
            "CompleteMultipartUploadResult",
        )
    }
}

/// Sends one request; no answer at all is a temporary failure.
async fn send(
    bucket: &S3Bucket,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    source: &S3Object,
    target: &S3Object,
) -> Result<Answer, StepError> {
    bucket
        .request(method, url, headers, body)
        .await
        .map_err(|e| super::unanswered(&source.display, &target.display, &e))
}

/// What an answer means: `Copied` when its body holds `<success>`.
fn judge(
    answer: &Answer,
    create_only: bool,
    source: &S3Object,
    target: &S3Object,
    success: &str,
) -> Result<Server, StepError> {
    let code = answer.error_code().unwrap_or_default();
    let said = || {
        let message = answer.field("Message").unwrap_or_default();
        secrets::redact(&format!(
            "copying `{}` to `{}`: the service answered {} {code} {message}",
            source.display, target.display, answer.status
        ))
        .into_owned()
    };
    let throttled = || {
        let mut error = StepError::new(ErrorClass::Throttled, said());
        if let Some(delay) = crate::response::retry_after(&answer.headers) {
            error = error.with_retry_after(delay);
        }
        error
    };
    match answer.status {
        // S3 reports a failure that happened while it copied in a 200's body.
        200..=299 if code.is_empty() && answer.body.contains(&format!("<{success}")) => {
            Ok(Server::Copied(None))
        }
        200..=299 if code == "SlowDown" => Err(throttled()),
        200..=299 if !code.is_empty() => Err(StepError::new(ErrorClass::Transient, said())),
        200..=299 => Ok(Server::Unsupported(format!(
            "the answer did not say the copy was made: {}",
            said()
        ))),
        412 if create_only => Ok(Server::Exists),
        // Another write of the same key was under way: try again.
        409 if code == "ConditionalRequestConflict" => {
            Err(StepError::new(ErrorClass::Transient, said()))
        }
        404 if code == "NoSuchKey" => Err(StepError::permanent(format!(
            "{}: the source is missing",
            said()
        ))),
        404 if code == "NoSuchBucket" => Err(StepError::permanent(said())),
        429 | 503 => Err(throttled()),
        408 | 500..=599 if answer.status != 501 => {
            Err(StepError::new(ErrorClass::Transient, said()))
        }
        // Anything else (403: the target's keys cannot read the source; 501: not
        // implemented; 400: a request this server does not take) says this way is not open
        // between these stores: streaming is, and reports the item's own error if it has one.
        _ => Ok(Server::Unsupported(said())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::aws_sign::AwsKeys;
    use crate::s3_bucket::S3Access;

    fn object(key: &str) -> S3Object {
        S3Object {
            access: S3Access {
                bucket: "b".into(),
                region: "us-east-1".into(),
                endpoint: Some("http://127.0.0.1:9".into()),
                virtual_host: false,
                keys: AwsKeys {
                    access_key_id: "id".into(),
                    secret_access_key: "secret".into(),
                    session_token: None,
                },
            },
            key: key.into(),
            display: format!("s3://b/{key}"),
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: reqwest::header::HeaderMap::new(),
            body: body.to_owned(),
        }
    }

    #[test]
    fn answers_are_judged_by_their_body_as_well_as_their_status() {
        let (a, b) = (object("a"), object("b"));
        let judged = |status, body: &str, create_only| {
            judge(
                &answer(status, body),
                create_only,
                &a,
                &b,
                "CopyObjectResult",
            )
        };
        let ok = "<CopyObjectResult><ETag>\"x\"</ETag></CopyObjectResult>";
        assert!(matches!(judged(200, ok, true), Ok(Server::Copied(_))));
        assert!(matches!(judged(412, "", true), Ok(Server::Exists)));
        // A 200 whose body is an error: S3 failed while it copied.
        let failed = "<Error><Code>InternalError</Code><Message>We encountered</Message></Error>";
        let error = judged(200, failed, true).err().unwrap();
        assert_eq!(error.class(), ErrorClass::Transient);
        assert!(error.chain().contains("InternalError"), "{}", error.chain());
        let slow = "<Error><Code>SlowDown</Code></Error>";
        assert_eq!(
            judged(503, slow, true).err().unwrap().class(),
            ErrorClass::Throttled
        );
        let missing = "<Error><Code>NoSuchKey</Code></Error>";
        let error = judged(404, missing, true).err().unwrap();
        assert_eq!(error.class(), ErrorClass::Permanent);
        assert!(error.chain().contains("the source is missing"));
        let denied = "<Error><Code>AccessDenied</Code></Error>";
        assert!(matches!(
            judged(403, denied, true),
            Ok(Server::Unsupported(_))
        ));
        assert!(matches!(judged(501, "", true), Ok(Server::Unsupported(_))));
        let conflict = "<Error><Code>ConditionalRequestConflict</Code></Error>";
        assert_eq!(
            judged(409, conflict, true).err().unwrap().class(),
            ErrorClass::Transient
        );
    }
}
