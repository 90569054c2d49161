//! Azure AD tokens for a resource (a Kusto cluster), the way `DefaultAzureCredential` finds
//! them: a service principal from the environment, then the `az` CLI, then a managed identity.
//! Tokens are cached until shortly before they expire and masked wherever they could appear.

use redrive_core::env_vars;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::storage::Env;

/// A token and where it came from (said at `-v`).
#[derive(Clone)]
struct Cached {
    token: String,
    until: Instant,
}

/// Gets and caches tokens for one resource.
pub(crate) struct TokenSource {
    resource: String,
    env: Env,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl TokenSource {
    pub(crate) fn new(resource: &str, env: Env) -> Self {
        Self {
            resource: resource.trim_end_matches('/').to_owned(),
            env,
            cached: Mutex::new(None),
        }
    }

    /// A valid token, or what was tried and how to fix it.
    pub(crate) async fn token(&self, client: &reqwest::Client) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some(entry) = cached.as_ref().filter(|c| c.until > Instant::now()) {
            return Ok(entry.token.clone());
        }
        let mut tried = Vec::new();
        let found = match self.service_principal(client).await {
            Some(Ok(found)) => Some(("environment service principal", found)),
            Some(Err(e)) => {
                return Err(format!(
                    "the service principal in AZURE_CLIENT_ID/AZURE_CLIENT_SECRET was refused: {e}"
                ));
            }
            None => {
                tried.push("a service principal (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET are not all set)");
                match self.az_cli().await {
                    Some(found) => Some(("Azure CLI", found)),
                    None => {
                        tried.push("the Azure CLI (`az account get-access-token` gave no token)");
                        match self.managed_identity(client).await {
                            Some(found) => Some(("managed identity", found)),
                            None => {
                                tried.push("a managed identity (no endpoint answered)");
                                None
                            }
                        }
                    }
                }
            }
        };
        let Some((how, (token, lifetime))) = found else {
            return Err(format!(
                "no Azure credential found for {}; tried {}. Run `az login`, export a service principal, or give `token = \"${{KUSTO_TOKEN}}\"`",
                self.resource,
                tried.join(", ")
            ));
        };
        redrive_core::secrets::register(&token);
        tracing::info!(resource = %self.resource, credential = how, "Got an Azure token.");
        let lifetime = lifetime
            .saturating_sub(Duration::from_secs(300))
            .max(Duration::from_secs(60));
        *cached = Some(Cached {
            token: token.clone(),
            until: Instant::now() + lifetime,
        });
        Ok(token)
    }

    async fn service_principal(
        &self,
        client: &reqwest::Client,
    ) -> Option<Result<(String, Duration), String>> {
        let tenant = self.env.first(env_vars::AZURE_TENANT_ID)?;
        let client_id = self.env.first(env_vars::AZURE_CLIENT_ID)?;
        let secret = self.env.first(env_vars::AZURE_CLIENT_SECRET)?;
        let authority = self
            .env
            .first(env_vars::AZURE_AUTHORITY_HOST)
            .unwrap_or_else(|| "https://login.microsoftonline.com".to_owned());
        let url = format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        );
        let scope = format!("{}/.default", self.resource);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", scope.as_str()),
        ];
        let body: String = form
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let response = client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        Some(match response {
            Ok(response) if response.status().is_success() => parse(response).await,
            Ok(response) => {
                let status = response.status();
                Err(format!(
                    "{status} {}",
                    response
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect::<String>()
                ))
            }
            Err(e) => Err(e.to_string()),
        })
    }

    async fn az_cli(&self) -> Option<(String, Duration)> {
        let output = tokio::process::Command::new("az")
            .args([
                "account",
                "get-access-token",
                "--resource",
                &self.resource,
                "--query",
                "accessToken",
                "-o",
                "tsv",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .ok()?
            .ok()?;
        let token = String::from_utf8(output.stdout).ok()?.trim().to_owned();
        (output.status.success() && !token.is_empty()).then_some((token, Duration::from_secs(3000)))
    }

    async fn managed_identity(&self, client: &reqwest::Client) -> Option<(String, Duration)> {
        let request = match (self.env.first(&["IDENTITY_ENDPOINT"]), self.env.first(&["IDENTITY_HEADER"])) {
            (Some(endpoint), Some(header)) => client
                .get(format!("{endpoint}?api-version=2019-08-01&resource={}", self.resource))
                .header("X-IDENTITY-HEADER", header),
            _ => client
                .get(format!(
                    "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    self.resource
                ))
                .header("Metadata", "true"),
        };
        let response = request.timeout(Duration::from_secs(2)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        parse(response).await.ok()
    }
}

async fn parse(response: reqwest::Response) -> Result<(String, Duration), String> {
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let seconds = match body.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok((
        body.access_token,
        Duration::from_secs(seconds.unwrap_or(3000)),
    ))
}
