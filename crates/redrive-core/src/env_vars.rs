//! The environment variables redrive reads for storage, queues and credentials, named once.
//! Each is what that cloud's own tools read; a list is tried in order.

/// The AWS region.
pub const AWS_REGION: &[&str] = &["AWS_REGION", "AWS_DEFAULT_REGION"];
/// An S3 endpoint other than AWS's (MinIO, moto, R2).
pub const AWS_S3_ENDPOINT: &[&str] = &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];
/// An SQS endpoint other than AWS's.
pub const AWS_SQS_ENDPOINT: &[&str] = &["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"];
/// The AWS access key id.
pub const AWS_ACCESS_KEY_ID: &[&str] = &["AWS_ACCESS_KEY_ID"];
/// The AWS secret access key (a secret).
pub const AWS_SECRET_ACCESS_KEY: &[&str] = &["AWS_SECRET_ACCESS_KEY"];
/// An AWS session token (a secret).
pub const AWS_SESSION_TOKEN: &[&str] = &["AWS_SESSION_TOKEN"];
/// An Azure Storage connection string (holds a key or SAS: a secret).
pub const AZURE_CONNECTION_STRING: &[&str] = &["AZURE_STORAGE_CONNECTION_STRING"];
/// The Azure Storage account.
pub const AZURE_ACCOUNT: &[&str] = &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"];
/// The Azure Storage account key (a secret).
pub const AZURE_ACCOUNT_KEY: &[&str] = &["AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY"];
/// An Azure Storage SAS token (a secret).
pub const AZURE_SAS_TOKEN: &[&str] = &["AZURE_STORAGE_SAS_TOKEN"];
/// An Azure AD service principal: tenant, client id, client secret (a secret), authority.
pub const AZURE_TENANT_ID: &[&str] = &["AZURE_TENANT_ID"];
/// See [`AZURE_TENANT_ID`].
pub const AZURE_CLIENT_ID: &[&str] = &["AZURE_CLIENT_ID"];
/// See [`AZURE_TENANT_ID`].
pub const AZURE_CLIENT_SECRET: &[&str] = &["AZURE_CLIENT_SECRET"];
/// See [`AZURE_TENANT_ID`].
pub const AZURE_AUTHORITY_HOST: &[&str] = &["AZURE_AUTHORITY_HOST"];
/// A GCS service account's JSON file.
pub const GOOGLE_CREDENTIALS: &[&str] = &["GOOGLE_APPLICATION_CREDENTIALS"];
/// A GCS emulator (`host:port` or a URL): its endpoint, reached without credentials, as
/// Google's own client libraries do.
pub const GCS_EMULATOR_HOST: &[&str] = &["STORAGE_EMULATOR_HOST"];

/// The variables whose values are credentials: masked whenever they are set.
pub const SECRETS: &[&[&str]] = &[
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    AZURE_ACCOUNT_KEY,
    AZURE_SAS_TOKEN,
    AZURE_CONNECTION_STRING,
    AZURE_CLIENT_SECRET,
];
