//! Azure Storage account settings, read the same way for blobs and queues: an
//! `AZURE_STORAGE_CONNECTION_STRING` (or a `[store]` table's `connection_string`) parsed once,
//! its key and SAS registered as secrets as soon as it is read.

use redrive_core::job::StoreSpec;
use redrive_core::{env_vars, secrets};

use crate::storage::Env;

/// A connection string's `Name=value` parts.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionString {
    text: Option<String>,
}

impl ConnectionString {
    /// The `[store]` table's connection string, else the environment's; its secrets
    /// registered.
    pub(crate) fn of(spec: &StoreSpec, env: &Env) -> Self {
        let text = spec
            .connection_string
            .clone()
            .or_else(|| env.first(env_vars::AZURE_CONNECTION_STRING));
        let connection = Self { text };
        for secret in ["AccountKey", "SharedAccessSignature"] {
            if let Some(value) = connection.part(secret) {
                secrets::register(&value);
            }
        }
        connection
    }

    /// The text, when there is one.
    pub(crate) fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The value of part `name` (`AccountName`, `AccountKey`, `QueueEndpoint`, …).
    pub(crate) fn part(&self, name: &str) -> Option<String> {
        self.text.as_deref().and_then(|text| {
            text.split(';')
                .filter_map(|part| part.split_once('='))
                .find(|(key, _)| key.trim() == name)
                .map(|(_, value)| value.trim().to_owned())
        })
    }

    /// `UseDevelopmentStorage=true`: Azurite's well-known account.
    pub(crate) fn development(&self) -> bool {
        self.part("UseDevelopmentStorage").as_deref() == Some("true")
    }
}

/// The account a URL, the `[store]` table, the connection string or the environment names,
/// in that order.
pub(crate) fn account(
    url_account: Option<&str>,
    spec: &StoreSpec,
    connection: &ConnectionString,
    env: &Env,
) -> Option<String> {
    url_account
        .map(str::to_owned)
        .or_else(|| spec.account_name.clone())
        .or_else(|| connection.part("AccountName"))
        .or_else(|| env.first(env_vars::AZURE_ACCOUNT))
}

/// The key for `account`: the `[store]` table's, else the connection string's or the
/// environment's when they belong to that account (a key is never sent to another).
pub(crate) fn key(
    account: &str,
    spec: &StoreSpec,
    connection: &ConnectionString,
    env: &Env,
) -> Option<String> {
    let same_account = connection
        .part("AccountName")
        .is_none_or(|name| name == account);
    let key = spec.account_key.clone().or_else(|| {
        same_account
            .then(|| {
                connection
                    .part("AccountKey")
                    .or_else(|| env.first(env_vars::AZURE_ACCOUNT_KEY))
            })
            .flatten()
    });
    if let Some(key) = &key {
        secrets::register(key);
    }
    key
}

/// The SAS: the URL's, the `[store]` table's, the connection string's, the environment's.
pub(crate) fn sas(
    url_sas: Option<&str>,
    spec: &StoreSpec,
    connection: &ConnectionString,
    env: &Env,
) -> Option<String> {
    let sas = url_sas
        .map(str::to_owned)
        .or_else(|| spec.sas_token.clone())
        .or_else(|| connection.part("SharedAccessSignature"))
        .or_else(|| env.first(env_vars::AZURE_SAS_TOKEN))
        .map(|s| s.trim_start_matches('?').to_owned());
    if let Some(sas) = &sas {
        secrets::register(sas);
    }
    sas
}

/// Signs a request to Azure Storage: with the account key, Shared Key (`reqsign-azure-storage`);
/// without one (a SAS in the URL, or a bearer token), only its `x-ms-date`.
pub(crate) async fn sign(
    parts: &mut http::request::Parts,
    account: &str,
    key: Option<&str>,
) -> Result<(), String> {
    match key {
        Some(key) => {
            let signer = reqsign_core::Signer::new(
                reqsign_core::Context::new(),
                reqsign_azure_storage::StaticCredentialProvider::new_shared_key(account, key),
                reqsign_azure_storage::RequestSigner::new(),
            );
            signer.sign(parts, None).await.map_err(|e| e.to_string())
        }
        None => {
            let date = reqsign_core::time::Timestamp::now().format_http_date();
            let date = http::HeaderValue::from_str(&date).map_err(|e| e.to_string())?;
            parts.headers.insert("x-ms-date", date);
            Ok(())
        }
    }
}

/// One blob, as a request outside OpenDAL reaches it (a server-side copy).
#[derive(Clone, Debug)]
pub(crate) struct AzureBlob {
    /// The account's blob endpoint, without a trailing `/`
    /// (`https://ACCOUNT.blob.core.windows.net`, `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: String,
    pub account: String,
    pub key: Option<String>,
    /// Without its leading `?`.
    pub sas: Option<String>,
    pub container: String,
    pub path: String,
    /// The URL as given, secrets masked.
    pub display: String,
}

impl AzureBlob {
    /// The blob's URL, its name percent-encoded (its `/` kept).
    pub(crate) fn url(&self) -> String {
        const NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'/')
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        format!(
            "{}/{}/{}",
            self.endpoint,
            self.container,
            percent_encoding::utf8_percent_encode(&self.path, NAME)
        )
    }
}

/// The blob endpoint of `account`: the URL's, the `[store]` table's, the connection string's
/// `BlobEndpoint` (or Azurite's for `UseDevelopmentStorage=true`, or its protocol and
/// suffix), else the public cloud's.
pub(crate) fn blob_endpoint(
    url_endpoint: Option<&str>,
    spec: &StoreSpec,
    connection: &ConnectionString,
    account: &str,
) -> String {
    let endpoint = url_endpoint
        .map(str::to_owned)
        .or_else(|| spec.endpoint.clone())
        .or_else(|| connection.part("BlobEndpoint"))
        .or_else(|| {
            connection
                .development()
                .then(|| format!("http://127.0.0.1:10000/{account}"))
        })
        .unwrap_or_else(|| {
            let protocol = connection
                .part("DefaultEndpointsProtocol")
                .unwrap_or_else(|| "https".to_owned());
            let suffix = connection
                .part("EndpointSuffix")
                .unwrap_or_else(|| "core.windows.net".to_owned());
            format!("{protocol}://{account}.blob.{suffix}")
        });
    endpoint.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_is_read_once_and_its_key_kept_to_its_account() {
        let env = Env::from_pairs([(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        )]);
        let spec = StoreSpec::default();
        let connection = ConnectionString::of(&spec, &env);
        assert_eq!(
            account(None, &spec, &connection, &env).as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(
            key("devstoreaccount1", &spec, &connection, &env).as_deref(),
            Some("a2V5")
        );
        assert_eq!(key("other", &spec, &connection, &env), None);
    }
}
