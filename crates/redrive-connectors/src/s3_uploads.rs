//! Multipart uploads a crash left behind. A copy killed with `kill -9` in the middle of a
//! multipart upload leaves the upload open in the bucket: its parts are invisible and billed
//! until a lifecycle rule removes them. After a multipart copy completes, the unfinished
//! uploads of the same key (an earlier attempt's) are listed (`ListMultipartUploads`) and
//! aborted (`AbortMultipartUpload`). OpenDAL has no call for either, so these two requests are
//! made here, signed by [`AwsSigner`] (`reqsign-aws-v4`, the signer OpenDAL itself uses).

use crate::aws_sign::AwsSigner;

/// Lists and aborts the unfinished multipart uploads of one bucket.
pub(crate) struct S3Uploads {
    client: reqwest::Client,
    /// `https://s3.REGION.amazonaws.com` or the configured endpoint, without a trailing `/`.
    endpoint: String,
    bucket: String,
    virtual_host: bool,
    signer: AwsSigner,
}

impl std::fmt::Debug for S3Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Uploads")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// Where and as whom a bucket is reached, as the store's settings say.
pub(crate) struct S3Access<'a> {
    pub(crate) bucket: &'a str,
    pub(crate) region: &'a str,
    pub(crate) endpoint: Option<&'a str>,
    pub(crate) virtual_host: bool,
    pub(crate) keys: &'a crate::aws_sign::AwsKeys,
}

impl S3Uploads {
    pub(crate) fn new(access: &S3Access<'_>) -> Self {
        let endpoint = access.endpoint.map_or_else(
            || format!("https://s3.{}.amazonaws.com", access.region),
            |e| e.trim_end_matches('/').to_owned(),
        );
        Self {
            client: crate::http_client::client(std::time::Duration::from_secs(60)),
            virtual_host: access.virtual_host || access.endpoint.is_none(),
            endpoint,
            bucket: access.bucket.to_owned(),
            signer: AwsSigner::new("s3", access.region, access.keys),
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

    async fn send(&self, method: http::Method, url: &str) -> Result<String, String> {
        let headers = self.signer.sign(method.clone(), url, &[], b"").await?;
        let builder = self.client.request(method, url).headers(headers);
        let response = builder.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {}", excerpt(&body)))
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
            self.send(
                http::Method::DELETE,
                &self.url(&format!(
                    "/{}?uploadId={}",
                    encode_path(key),
                    encode(&upload_id)
                )),
            )
            .await?;
            aborted += 1;
        }
        Ok(aborted)
    }
}

/// (key, upload id) of each `<Upload>` in a `ListMultipartUploadsResult`.
fn uploads(xml: &str) -> Vec<(String, String)> {
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|upload| {
            let field = |name: &str| {
                let start = upload.find(&format!("<{name}>"))? + name.len() + 2;
                let end = upload[start..].find(&format!("</{name}>"))? + start;
                quick_xml::escape::unescape(&upload[start..end])
                    .ok()
                    .map(|text| text.into_owned())
            };
            Some((field("Key")?, field("UploadId")?))
        })
        .collect()
}

/// A query value, RFC 3986 encoded.
fn encode(text: &str) -> String {
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
