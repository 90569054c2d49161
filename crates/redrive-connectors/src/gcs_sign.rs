//! OAuth 2 bearer tokens for the GCS requests redrive makes itself (the server-side rewrite),
//! by `reqsign-google`: the maintained signer OpenDAL uses for GCS, not a hand-written one.
//! Tokens are fetched once and reused until shortly before they expire.

use bytes::Bytes;
use redrive_core::error::{ErrorClass, StepError};
use reqsign_core::{Context, OsEnv, Signer, StaticEnv};
use reqsign_google::{
    Credential, DefaultCredentialProvider, FileCredentialProvider, RequestSigner,
};

/// The scope of the tokens: read and write objects.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// Who GCS requests are sent as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GcsCredential {
    /// Nobody: an emulator (`STORAGE_EMULATOR_HOST`), as Google's own client libraries do.
    Anonymous,
    /// A credential file (`credential_path`, `GOOGLE_APPLICATION_CREDENTIALS`): a service
    /// account's key, an authorized user, an external account.
    File(String),
    /// Google's default chain: gcloud's application default credentials, then the VM's
    /// metadata server.
    Default,
}

/// Signs GCS requests with a bearer token.
pub(crate) struct GcsSigner {
    signer: Option<Signer<Credential>>,
}

impl std::fmt::Debug for GcsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcsSigner")
    }
}

/// Sends the token requests over redrive's own HTTP client.
#[derive(Clone)]
pub(crate) struct ReqwestSend(pub(crate) reqwest::Client);

impl std::fmt::Debug for ReqwestSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReqwestSend")
    }
}

impl reqsign_core::HttpSend for ReqwestSend {
    async fn http_send(
        &self,
        request: http::Request<Bytes>,
    ) -> reqsign_core::Result<http::Response<Bytes>> {
        let failed = |e: reqwest::Error| {
            reqsign_core::Error::unexpected("the token request failed").with_source(e)
        };
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(failed)?;
        let mut answer = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        let body = response.bytes().await.map_err(failed)?;
        answer.body(body).map_err(|e| {
            reqsign_core::Error::unexpected("the token answer cannot be read").with_source(e)
        })
    }
}

impl GcsSigner {
    /// A signer for `credential`, fetching tokens through `http`.
    pub(crate) fn new(credential: &GcsCredential, http: impl reqsign_core::HttpSend) -> Self {
        let os = OsEnv;
        let mut envs = reqsign_core::Env::vars(&os);
        envs.insert("GOOGLE_SCOPE".to_owned(), SCOPE.to_owned());
        let context = Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_http_send(http)
            .with_env(StaticEnv {
                home_dir: reqsign_core::Env::home_dir(&os),
                envs,
            });
        let request = RequestSigner::new("storage").with_scope(SCOPE);
        let signer = match credential {
            GcsCredential::Anonymous => None,
            GcsCredential::File(path) => Some(Signer::new(
                context,
                FileCredentialProvider::new(path).with_scope(SCOPE),
                request,
            )),
            GcsCredential::Default => Some(Signer::new(
                context,
                DefaultCredentialProvider::new(),
                request,
            )),
        };
        Self { signer }
    }

    /// The headers to send with a request of `method` to `url` carrying `headers`: those
    /// given and `Authorization` (none for an emulator). A token that could not be fetched
    /// is a temporary failure when the token server may answer later, else permanent.
    pub(crate) async fn sign(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::HeaderMap, StepError> {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request
            .body(())
            .map_err(|e| StepError::permanent(format!("cannot make the request to `{url}`: {e}")))?
            .into_parts();
        if let Some(signer) = &self.signer {
            signer.sign(&mut parts, None).await.map_err(|e| {
                let class = if e.is_retryable() {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                };
                StepError::new(
                    class,
                    redrive_core::secrets::redact(&format!(
                        "cannot get a GCS token ({e}); set credential_path in the [store] table \
                         or GOOGLE_APPLICATION_CREDENTIALS to a service account's key file"
                    ))
                    .into_owned(),
                )
            })?;
        }
        Ok(parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Answers the token exchange as Google's OAuth server does, and keeps what it was asked.
    #[derive(Debug, Default, Clone)]
    struct TokenServer(Arc<Mutex<Vec<(String, String)>>>);

    impl reqsign_core::HttpSend for TokenServer {
        async fn http_send(
            &self,
            request: http::Request<Bytes>,
        ) -> reqsign_core::Result<http::Response<Bytes>> {
            if let Ok(mut asked) = self.0.lock() {
                asked.push((
                    request.uri().to_string(),
                    String::from_utf8_lossy(request.body()).into_owned(),
                ));
            }
            let body =
                r#"{"access_token":"ya29.test-token","expires_in":3600,"token_type":"Bearer"}"#;
            http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Bytes::from_static(body.as_bytes()))
                .map_err(|e| reqsign_core::Error::unexpected("answer").with_source(e))
        }
    }

    #[tokio::test]
    async fn a_credential_file_becomes_a_bearer_token_fetched_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("adc.json");
        std::fs::write(
            &path,
            r#"{"type":"authorized_user","client_id":"id.apps.googleusercontent.com","client_secret":"s3cret","refresh_token":"1//refresh"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let server = TokenServer::default();
        let signer = GcsSigner::new(
            &GcsCredential::File(path.display().to_string()),
            server.clone(),
        );
        for _ in 0..2 {
            let headers = signer
                .sign(
                    http::Method::POST,
                    "https://storage.googleapis.com/storage/v1/b/a/o/x/rewriteTo/b/b/o/x",
                    &[("content-type", "application/json")],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                headers.get("authorization").and_then(|v| v.to_str().ok()),
                Some("Bearer ya29.test-token")
            );
            assert!(headers.contains_key("content-type"));
        }
        let asked = server.0.lock().map(|a| a.clone()).unwrap_or_default();
        assert_eq!(asked.len(), 1, "one token for both requests: {asked:?}");
        assert!(
            asked[0].0.contains("oauth2.googleapis.com/token"),
            "{asked:?}"
        );
        assert!(asked[0].1.contains("refresh_token"), "{asked:?}");
    }

    #[tokio::test]
    async fn an_emulator_gets_no_authorization_and_a_missing_file_says_what_to_set() {
        let anonymous = GcsSigner::new(&GcsCredential::Anonymous, TokenServer::default());
        let headers = anonymous
            .sign(http::Method::GET, "http://127.0.0.1:9/storage/v1/b/a", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!headers.contains_key("authorization"));

        let missing = GcsSigner::new(
            &GcsCredential::File("/nonexistent/key.json".to_owned()),
            TokenServer::default(),
        );
        let error = missing
            .sign(http::Method::GET, "https://storage.googleapis.com/", &[])
            .await
            .err()
            .map(|e| e.chain())
            .unwrap_or_default();
        assert!(
            error.contains("cannot get a GCS token") && error.contains("credential_path"),
            "{error}"
        );
    }
}
