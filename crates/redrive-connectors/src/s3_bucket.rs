//! The S3 requests redrive makes itself, for one bucket: the multipart clean-up and the
//! server-side copies (CopyObject, UploadPartCopy), which OpenDAL has no call for (its `copy`
//! works within one operator and sends no condition). Each request is signed by [`AwsSigner`]
//! (`reqsign-aws-v4`, the signer OpenDAL itself uses).
//!
//! A copy killed with `kill -9` in the middle of a multipart upload leaves the upload open in
//! the bucket: its parts are invisible and billed until a lifecycle rule removes them. After a
//! multipart copy completes, the unfinished uploads of the same key (an earlier attempt's) are
//! listed (`ListMultipartUploads`) and aborted (`AbortMultipartUpload`).

use crate::aws_sign::{AwsKeys, AwsSigner};

/// Signed requests to one bucket.
pub(crate) struct S3Bucket {
    client: reqwest::Client,
    /// `https://s3.REGION.amazonaws.com` or the configured endpoint, without a trailing `/`.
    endpoint: String,
    bucket: String,
    virtual_host: bool,
    signer: AwsSigner,
}

impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Bucket")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// Where and as whom a bucket is reached, as the store's settings say.
pub(crate) struct S3Access {
    pub(crate) bucket: String,
    pub(crate) region: String,
    /// The configured endpoint; `None` for AWS's own.
    pub(crate) endpoint: Option<String>,
    pub(crate) virtual_host: bool,
    pub(crate) keys: AwsKeys,
}

impl S3Access {
    /// The endpoint requests go to, without a trailing `/`.
    pub(crate) fn endpoint(&self) -> String {
        self.endpoint.as_deref().map_or_else(
            || format!("https://s3.{}.amazonaws.com", self.region),
            |e| e.trim_end_matches('/').to_owned(),
        )
    }

    /// Whether this is AWS's S3 (no endpoint of its own, or one of `amazonaws.com`).
    pub(crate) fn is_aws(&self) -> bool {
        self.endpoint.as_deref().is_none_or(|endpoint| {
            let host = endpoint
                .split_once("://")
                .map_or(endpoint, |(_, rest)| rest);
            let host = host.split(['/', ':']).next().unwrap_or(host);
            host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
        })
    }
}

/// What the service answered.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    /// The text of `<NAME>` in the body, unescaped.
    pub(crate) fn field(&self, name: &str) -> Option<String> {
        field(&self.body, name)
    }

    /// The `<Error>` a body carries (S3 can answer `200` and report a failure in the body).
    pub(crate) fn error_code(&self) -> Option<String> {
        self.body
            .contains("<Error>")
            .then(|| self.field("Code"))
            .flatten()
    }
}

impl S3Bucket {
    pub(crate) fn new(access: &S3Access, client: reqwest::Client) -> Self {
        Self {
            client,
            virtual_host: access.virtual_host || access.endpoint.is_none(),
            endpoint: access.endpoint(),
            bucket: access.bucket.clone(),
            signer: AwsSigner::new("s3", &access.region, &access.keys),
        }
    }

    /// The bucket's URL, for a path and query (`/KEY?uploadId=…`).
    fn url(&self, path_and_query: &str) -> String {
        if self.virtual_host {
            let (scheme, host) = self
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &self.endpoint));
            format!("{scheme}://{}.{host}{path_and_query}", self.bucket)
        } else {
            format!("{}/{}{path_and_query}", self.endpoint, self.bucket)
        }
    }

    /// An object's URL, with a query (`""`, `?uploads`, `?partNumber=1&uploadId=…`).
    pub(crate) fn object_url(&self, key: &str, query: &str) -> String {
        self.url(&format!("/{}{query}", encode_path(key)))
    }

    /// Sends a signed request; `Err` when no answer came (the text says why).
    pub(crate) async fn request(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Answer, String> {
        let signed = self
            .signer
            .sign(method.clone(), url, headers, body.as_bytes())
            .await?;
        let response = self
            .client
            .request(method, url)
            .headers(signed)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn send(&self, method: http::Method, url: &str) -> Result<String, String> {
        let answer = self.request(method, url, &[], "").await?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(format!("{}: {}", answer.status, excerpt(&answer.body)))
        }
    }

    /// Aborts the unfinished multipart uploads of exactly `key`; returns how many.
    pub(crate) async fn abort_unfinished(&self, key: &str) -> Result<usize, String> {
        let listing = self
            .send(
                http::Method::GET,
                &self.url(&format!("/?uploads&prefix={}", encode(key))),
            )
            .await?;
        let mut aborted = 0;
        for (listed, upload_id) in uploads(&listing) {
            if listed != key {
                continue;
            }
            self.abort(key, &upload_id).await?;
            aborted += 1;
        }
        Ok(aborted)
    }

    /// Aborts one multipart upload of `key`.
    pub(crate) async fn abort(&self, key: &str, upload_id: &str) -> Result<(), String> {
        let url = self.object_url(key, &format!("?uploadId={}", encode(upload_id)));
        self.send(http::Method::DELETE, &url).await.map(drop)
    }
}

/// The `x-amz-copy-source` value that names `key` in `bucket`.
pub(crate) fn copy_source(bucket: &str, key: &str) -> String {
    format!("/{}/{}", encode(bucket), encode_path(key))
}

/// The text of the first `<NAME>` in `xml`, unescaped.
fn field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    quick_xml::escape::unescape(&xml[start..end])
        .ok()
        .map(|text| text.into_owned())
}

/// (key, upload id) of each `<Upload>` in a `ListMultipartUploadsResult`.
fn uploads(xml: &str) -> Vec<(String, String)> {
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|upload| Some((field(upload, "Key")?, field(upload, "UploadId")?)))
        .collect()
}

/// A query value, RFC 3986 encoded.
pub(crate) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY).to_string()
}

/// A key in a path: each segment encoded, the `/` kept.
fn encode_path(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn excerpt(body: &str) -> String {
    body.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_read_from_the_listing() {
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket>\
            <Upload><Key>big/a&amp;b.bin</Key><UploadId>id-1</UploadId></Upload>\
            <Upload><Key>big/a.bin</Key><UploadId>id+2</UploadId></Upload>\
            </ListMultipartUploadsResult>";
        assert_eq!(
            uploads(xml),
            [
                ("big/a&b.bin".to_owned(), "id-1".to_owned()),
                ("big/a.bin".to_owned(), "id+2".to_owned())
            ]
        );
        assert_eq!(encode_path("big/a b+.bin"), "big/a%20b%2B.bin");
    }
}
