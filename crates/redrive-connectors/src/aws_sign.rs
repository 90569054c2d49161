//! AWS Signature Version 4 for the requests redrive makes itself (SQS, S3's multipart-upload
//! clean-up), by `reqsign-aws-v4`: the maintained signer OpenDAL uses for S3, not a
//! hand-written one.

use reqsign_aws_v4::{Credential, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, Signer};
use sha2::{Digest, Sha256};

/// Signs requests to one AWS service in one region with keys.
pub(crate) struct AwsSigner {
    signer: Signer<Credential>,
}

impl std::fmt::Debug for AwsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsSigner")
    }
}

impl AwsSigner {
    /// A signer for `service` (`sqs`, `s3`) in `region`.
    pub(crate) fn new(
        service: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> Self {
        let mut credentials = StaticCredentialProvider::new(access_key_id, secret_access_key);
        if let Some(token) = session_token {
            credentials = credentials.with_session_token(token);
        }
        Self {
            signer: Signer::new(
                Context::new(),
                credentials,
                RequestSigner::new(service, region),
            ),
        }
    }

    /// The headers to send with a request of `method` to `url` carrying `headers` and `body`:
    /// those given, the payload's hash, the date, the session token and `Authorization`.
    pub(crate) async fn sign(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<http::HeaderMap, String> {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let hash: String = Sha256::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (mut parts, ()) = request
            .header("x-amz-content-sha256", hash)
            .body(())
            .map_err(|e| format!("cannot make the request to `{url}`: {e}"))?
            .into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| format!("cannot sign the request: {e}"))?;
        Ok(parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_signed_with_the_key_scope_and_payload_hash() {
        let signer = AwsSigner::new("sqs", "eu-west-1", "AKIDEXAMPLE", "secret", Some("tok"));
        let headers = signer
            .sign(
                http::Method::POST,
                "https://sqs.eu-west-1.amazonaws.com/",
                &[("x-amz-target", "AmazonSQS.SendMessage")],
                b"{}",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && authorization.contains("/eu-west-1/sqs/aws4_request")
                && authorization.contains("x-amz-target"),
            "{authorization}"
        );
        assert_eq!(
            headers
                .get("x-amz-content-sha256")
                .and_then(|v| v.to_str().ok()),
            Some("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
        );
        assert_eq!(
            headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok()),
            Some("tok")
        );
    }
}
