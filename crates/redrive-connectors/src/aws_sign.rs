//! AWS Signature Version 4 for the requests redrive makes itself (SQS, S3's multipart-upload
//! clean-up), by `reqsign-aws-v4`: the maintained signer OpenDAL uses for S3, not a
//! hand-written one.

use redrive_core::job::StoreSpec;
use redrive_core::{env_vars, secrets};
use reqsign_aws_v4::{Credential, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, Signer};
use sha2::{Digest, Sha256};

use crate::storage::Env;

/// AWS keys as a `[store]` table or the environment gives them (secrets registered).
pub(crate) struct AwsKeys {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

impl AwsKeys {
    /// The table's keys, else the environment's; `None` without both an id and a secret.
    pub(crate) fn of(spec: &StoreSpec, env: &Env) -> Option<Self> {
        let access_key_id = spec
            .access_key_id
            .clone()
            .or_else(|| env.first(env_vars::AWS_ACCESS_KEY_ID))?;
        let secret_access_key = spec
            .secret_access_key
            .clone()
            .or_else(|| env.first(env_vars::AWS_SECRET_ACCESS_KEY))?;
        let session_token = spec
            .session_token
            .clone()
            .or_else(|| env.first(env_vars::AWS_SESSION_TOKEN));
        secrets::register(&secret_access_key);
        if let Some(token) = &session_token {
            secrets::register(token);
        }
        Some(Self {
            access_key_id,
            secret_access_key,
            session_token,
        })
    }
}

/// The region: the table's, else the environment's, else `us-east-1`.
pub(crate) fn region(spec: &StoreSpec, env: &Env) -> String {
    spec.region
        .clone()
        .or_else(|| env.first(env_vars::AWS_REGION))
        .unwrap_or_else(|| "us-east-1".to_owned())
}

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
    pub(crate) fn new(service: &str, region: &str, keys: &AwsKeys) -> Self {
        let mut credentials =
            StaticCredentialProvider::new(&keys.access_key_id, &keys.secret_access_key);
        if let Some(token) = &keys.session_token {
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
        let keys = AwsKeys {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "secret".to_owned(),
            session_token: Some("tok".to_owned()),
        };
        let signer = AwsSigner::new("sqs", "eu-west-1", &keys);
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
