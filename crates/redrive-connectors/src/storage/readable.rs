//! OpenDAL errors as a person reads them: the service's own code and message first (`403
//! InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records.`), or
//! what went wrong on the wire (`connection refused at http://127.0.0.1:24951`), then a hint.
//! OpenDAL's own dump (operation, context, headers) is logged at `-v` only.

use opendal::ErrorKind;

/// An error, described.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Described {
    /// What to show after "cannot write `URL`: ".
    pub(crate) text: String,
    /// The endpoint or its configuration failed, not this object: connection refused, host
    /// unknown, TLS, credentials missing or refused, bucket or container missing.
    pub(crate) systemic: bool,
}

/// Service error codes that say the credentials, not the object, are wrong.
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
    "AccountIsDisabled",
];

/// Service error codes that say the bucket or container is missing.
const MISSING_CODES: &[&str] = &["NoSuchBucket", "ContainerNotFound"];

pub(crate) fn describe(error: &opendal::Error) -> Described {
    // The error and its causes: a failed read wraps the service's error in another one.
    let mut full = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        full.push_str(" | ");
        full.push_str(&error.to_string());
        cause = error.source();
    }
    let origin = context(&full, "url")
        .or_else(|| context(&full, "uri"))
        .map(origin_of);
    if let Some(code) = debug_field(&full, "code").filter(|c| !c.is_empty()) {
        let message = debug_field(&full, "message").unwrap_or_default();
        let status = status(&full).map(|s| format!("{s} ")).unwrap_or_default();
        let mut text = format!("{status}{code}");
        if !message.is_empty() {
            text.push_str(": ");
            text.push_str(&message);
        }
        let credentials = CREDENTIAL_CODES.contains(&code.as_str());
        if credentials {
            text.push_str(
                " (check the credentials: the [store] table's keys, or AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING / _KEY / _SAS_TOKEN)",
            );
        }
        return Described {
            text,
            systemic: credentials || MISSING_CODES.contains(&code.as_str()),
        };
    }
    let cause = deepest_cause(error);
    let at = origin.map(|o| format!(" at {o}")).unwrap_or_default();
    let lower = cause.to_lowercase();
    if lower.contains("connection refused") {
        return systemic(format!(
            "connection refused{at}: is the endpoint right, and the server up?"
        ));
    }
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        return systemic(format!(
            "the host{at} is unknown (DNS): check the endpoint, or the bucket or account name in the URL"
        ));
    }
    if lower.contains("certificate")
        || lower.contains("tls handshake")
        || lower.contains("invalid peer")
    {
        return systemic(format!(
            "TLS failed{at}: {cause} (a custom CA: set AWS_CA_BUNDLE or SSL_CERT_FILE)"
        ));
    }
    if lower.contains("credential") && error.kind() != ErrorKind::NotFound {
        return systemic(format!(
            "no usable credentials: {cause} (set them in a [store] table or the environment: \
             AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING, …)"
        ));
    }
    let text = match error.kind() {
        ErrorKind::NotFound => "not found".to_owned(),
        ErrorKind::PermissionDenied => format!("permission denied: {cause}"),
        ErrorKind::AlreadyExists => "it exists already".to_owned(),
        ErrorKind::IsADirectory => "it is a folder, not a file".to_owned(),
        ErrorKind::NotADirectory => "a part of its path is a file, not a folder".to_owned(),
        _ if lower.contains("timed out") || lower.contains("timeout") => {
            format!("timed out{at}")
        }
        _ => format!(
            "{cause}{}",
            if at.is_empty() {
                String::new()
            } else {
                format!(" ({})", at.trim_start())
            }
        ),
    };
    Described {
        text,
        systemic: false,
    }
}

fn systemic(text: String) -> Described {
    Described {
        text,
        systemic: true,
    }
}

/// The innermost cause's words (the OS's or the HTTP client's), else OpenDAL's message.
fn deepest_cause(error: &opendal::Error) -> String {
    let mut deepest: Option<String> = None;
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if !text.is_empty() {
            deepest = Some(text);
        }
        cause = error.source();
    }
    let text = deepest.unwrap_or_else(|| error.message().to_owned());
    // `error sending request: client error (Connect): tcp connect error: Connection refused
    // (os error 111)`: the last clause says it.
    text.rsplit(": ").next().unwrap_or(&text).trim().to_owned()
}

/// `field: "value"` in a Rust debug dump (`S3Error { code: "…", message: "…" }`).
fn debug_field(text: &str, field: &str) -> Option<String> {
    let start = text.find(&format!("{field}: \""))? + field.len() + 3;
    let mut value = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.extend(chars.next()),
            '"' => return Some(value),
            c => value.push(c),
        }
    }
    None
}

/// `key: value` in OpenDAL's `context: { … }`.
fn context<'a>(full: &'a str, key: &str) -> Option<&'a str> {
    let context = &full[full.find("context: {")?..];
    let start = context.find(&format!("{key}: "))? + key.len() + 2;
    let value = &context[start..];
    let end = value.find([',', ' ', '}']).unwrap_or(value.len());
    Some(&value[..end])
}

/// `http://host:port` of a URL.
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or(rest);
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

/// The HTTP status in the response context (`Parts { status: 403, … }`).
fn status(full: &str) -> Option<u16> {
    let at = full.find("status: ")? + "status: ".len();
    let digits: String = full[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_error_shows_its_status_code_and_message() {
        let error = opendal::Error::new(
            ErrorKind::PermissionDenied,
            "S3Error { code: \"InvalidAccessKeyId\", message: \"The AWS Access Key Id you provided does not exist in our records.\", resource: \"\", request_id: \"x\" }",
        )
        .with_operation("write")
        .with_context("service", "s3")
        .with_context("uri", "http://127.0.0.1:5000/b/k")
        .with_context("response", "Parts { status: 403, version: HTTP/1.1, headers: {} }");
        let described = describe(&error);
        assert!(
            described.text.starts_with(
                "403 InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records. (check the credentials"
            ),
            "{}",
            described.text
        );
        assert!(described.systemic);
    }

    #[test]
    fn a_service_error_wrapped_by_a_failed_read_is_found() {
        let inner = opendal::Error::new(
            ErrorKind::NotFound,
            "AzblobError { code: \"BlobNotFound\", message: \"The specified blob does not exist.\" }",
        )
        .with_operation("read")
        .with_context("uri", "http://127.0.0.1:10000/devstoreaccount1/c/k")
        .with_context("response", "Parts { status: 404, version: HTTP/1.1, headers: {} }");
        let error = opendal::Error::new(ErrorKind::Unexpected, "read failed")
            .set_source(std::io::Error::other(inner))
            .set_temporary();
        assert_eq!(
            describe(&error),
            Described {
                text: "404 BlobNotFound: The specified blob does not exist.".to_owned(),
                systemic: false
            }
        );
    }

    #[test]
    fn a_refused_connection_names_the_endpoint() {
        let cause = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)",
        );
        let error = opendal::Error::new(ErrorKind::Unexpected, "send http request")
            .with_operation("write")
            .with_context("url", "http://127.0.0.1:24951/nobucket/up/f1.txt")
            .set_source(cause)
            .set_persistent();
        assert_eq!(
            describe(&error),
            Described {
                text: "connection refused at http://127.0.0.1:24951: is the endpoint right, and the server up?".to_owned(),
                systemic: true
            }
        );
    }

    #[test]
    fn a_missing_file_is_not_found_without_the_dump() {
        let error = opendal::Error::new(ErrorKind::NotFound, "entity not found")
            .with_operation("stat")
            .with_context("service", "fs")
            .with_context("path", "tmp/x")
            .set_persistent();
        assert_eq!(
            describe(&error),
            Described {
                text: "not found".to_owned(),
                systemic: false
            }
        );
    }
}
