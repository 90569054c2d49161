//! The test context: a temp dir, the `redrive` binary, the servers `scripts/test` starts.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// Azurite's well-known development account key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";

pub struct TestContext {
    pub dir: TempDir,
    envs: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl TestContext {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            envs: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn write(&self, relative: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write");
        path
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative))
            .unwrap_or_else(|e| panic!("read {relative}: {e}"))
    }

    /// Writes `plan.toml`.
    pub fn plan(&self, text: &str) -> PathBuf {
        self.write("plan.toml", text)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_redrive"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        command
    }

    pub fn redrive(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("run redrive");
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The SQLite state the test plans write (`[job] state = "state.db"`).
    pub fn state(&self) -> rusqlite::Connection {
        self.state_at("state.db")
    }

    /// Another SQLite state in the test's folder.
    pub fn state_at(&self, relative: &str) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path(relative)).expect("open state")
    }

    /// `count`, or `None` while the state is not there yet (or not yet created).
    pub fn try_count(&self, sql: &str) -> Option<i64> {
        if !self.path("state.db").exists() {
            return None;
        }
        let state = rusqlite::Connection::open(self.path("state.db")).ok()?;
        state.query_row(sql, [], |row| row.get(0)).ok()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.state()
            .query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A server address `scripts/test` exports; a clear failure when it is not running.
pub fn server(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: these tests need the servers that `scripts/test` installs and starts; run `scripts/test`")
    })
}

/// A unique, valid bucket or container name.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// One runtime for every helper: OpenDAL's process-wide HTTP client pools connections that
/// belong to the runtime that opened them, so a runtime per call would leave dead ones behind.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Writes an object, retrying what the server calls temporary (emulators under load reset
/// connections now and then).
pub async fn write_retrying(operator: &opendal::Operator, path: &str, body: Vec<u8>) {
    write_typed(operator, path, body, None).await;
}

/// [`write_retrying`] with a content type.
pub async fn write_typed(
    operator: &opendal::Operator,
    path: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
) {
    for attempt in 1.. {
        let mut write = operator.write_with(path, body.clone());
        if let Some(content_type) = content_type {
            write = write.content_type(content_type);
        }
        match write.await {
            Ok(_) => return,
            Err(e) if e.is_temporary() && attempt < 5 => {
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => panic!("write {path}: {e}"),
        }
    }
}

// ---- S3 (moto) ----

pub fn s3_endpoint() -> String {
    server("REDRIVE_TEST_S3_ENDPOINT")
}

pub fn s3_env(context: TestContext) -> TestContext {
    s3_env_at(context, &s3_endpoint())
}

/// `s3_env` with another endpoint (a proxy in front of moto).
pub fn s3_env_at(context: TestContext, endpoint: &str) -> TestContext {
    context
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing-secret")
        .env("AWS_REGION", "us-east-1")
}

/// Creates a bucket on moto (which accepts unsigned requests).
pub fn create_bucket(name: &str) {
    let url = format!("{}/{name}", s3_endpoint());
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .put(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        assert!(
            response.status().is_success(),
            "create bucket {name}: {}",
            response.status()
        );
    });
}

pub fn s3_operator(bucket: &str) -> opendal::Operator {
    opendal::install_default();
    let builder = opendal::services::S3::default()
        .bucket(bucket)
        .endpoint(&s3_endpoint())
        .region("us-east-1")
        .access_key_id("testing")
        .secret_access_key("testing-secret");
    opendal::Operator::new(builder).expect("s3 operator")
}

// ---- GCS (gcp-storage-emulator) ----

pub fn gcs_endpoint() -> String {
    server("REDRIVE_TEST_GCS_ENDPOINT")
}

/// Reaches GCS at `endpoint` (the emulator, or a proxy in front of it) as Google's client
/// libraries do: `STORAGE_EMULATOR_HOST`, no credentials.
pub fn gcs_env_at(context: TestContext, endpoint: &str) -> TestContext {
    context.env("STORAGE_EMULATOR_HOST", endpoint)
}

/// Creates a bucket on the emulator (which takes unsigned requests).
pub fn create_gcs_bucket(name: &str) {
    let url = format!("{}/storage/v1/b?project=test", gcs_endpoint());
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(format!(r#"{{"name":"{name}"}}"#))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(
            response.status().is_success(),
            "create bucket {name}: {}",
            response.status()
        );
    });
}

/// Writes an object to the emulator with a content type: without one the emulator answers
/// `"contentType": null`, which OpenDAL cannot read (GCS itself answers
/// `application/octet-stream`).
pub fn gcs_put(operator: &opendal::Operator, path: &str, body: &[u8]) {
    runtime().block_on(write_typed(
        operator,
        path,
        body.to_vec(),
        Some(GCS_CONTENT_TYPE),
    ));
}

/// GCS's default content type.
pub const GCS_CONTENT_TYPE: &str = "application/octet-stream";

/// A proxy rule's part for the emulator: an upload without a content type gets GCS's default
/// one (see [`gcs_put`]).
pub fn gcs_default_content_type(request: &mut HttpRequest) {
    if request.path.starts_with("/upload/") && !request.headers.contains_key("content-type") {
        request.headers.insert(
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        );
    }
}

pub fn gcs_operator(bucket: &str) -> opendal::Operator {
    opendal::install_default();
    let builder = opendal::services::Gcs::default()
        .bucket(bucket)
        .endpoint(&gcs_endpoint())
        .skip_signature();
    opendal::Operator::new(builder).expect("gcs operator")
}

// ---- Azure Blob (Azurite) ----

pub fn azure_endpoint() -> String {
    server("REDRIVE_TEST_AZURITE_BLOB")
}

pub fn azure_queue_endpoint() -> String {
    server("REDRIVE_TEST_AZURITE_QUEUE")
}

pub fn azure_connection_string() -> String {
    azure_connection_string_at(&azure_endpoint())
}

/// Azurite's connection string with another blob endpoint (a proxy in front of Azurite).
pub fn azure_connection_string_at(blob_endpoint: &str) -> String {
    azure_connection_string_via(blob_endpoint, &azure_queue_endpoint())
}

/// Azurite's connection string with other blob and queue endpoints (proxies).
pub fn azure_connection_string_via(blob_endpoint: &str, queue_endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={blob_endpoint};QueueEndpoint={queue_endpoint};"
    )
}

/// Azurite's origin (its blob endpoint without the account): where a proxy in front of it
/// forwards.
pub fn azure_origin() -> String {
    azure_endpoint()
        .trim_end_matches(&format!("/{AZURITE_ACCOUNT}"))
        .to_owned()
}

/// A context whose Azure Blob requests go through `proxy` (in front of [`azure_origin`]).
pub fn azure_env_via(proxy: &crate::proxy::Proxy) -> TestContext {
    TestContext::new().env(
        "AZURE_STORAGE_CONNECTION_STRING",
        &azure_connection_string_at(&format!("{}/{AZURITE_ACCOUNT}", proxy.address)),
    )
}

/// Checks that a run said once (not once an object) that a store pair's server-side copies
/// are refused and streamed instead.
pub fn assert_refused_once(stderr: &str) {
    assert_eq!(
        stderr
            .matches("are refused: streaming them instead")
            .count(),
        1,
        "said once: {stderr}"
    );
}

/// Checks that a manifest records a server-side copy's MD5, that of `body`.
pub fn assert_server_md5(manifest: &str, body: &str) {
    assert!(
        manifest.contains(&format!(
            r#""checksum":{{"algorithm":"md5","value":"{}"}}"#,
            md5_hex(body)
        )) && manifest.contains("\"server_side\":true"),
        "{manifest}"
    );
}

pub fn azure_env(context: TestContext) -> TestContext {
    context.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        &azure_connection_string(),
    )
}

/// A request to Azurite signed with Shared Key; returns status, headers and body.
pub fn azure_request(
    method: &str,
    endpoint: &str,
    path: &str,
    query: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let date = jiff::Timestamp::now()
        .strftime("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let version = "2021-08-06";
    let mut sorted: Vec<&(&str, &str)> = query.iter().collect();
    sorted.sort();
    let canonical_query: String = sorted.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
    let string_to_sign = format!(
        "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{path}{canonical_query}"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .expect("key");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(string_to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let query_string: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let url = if query.is_empty() {
        format!("{endpoint}/{path}")
    } else {
        format!("{endpoint}/{path}?{}", query_string.join("&"))
    };
    runtime().block_on(async {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = reqwest::Client::new()
            .request(method, &url)
            .header("x-ms-date", &date)
            .header("x-ms-version", version)
            .header(
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .header("Content-Length", "0")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap_or_default())
    })
}

/// Creates a container (OpenDAL does not).
pub fn create_container(name: &str) {
    let (status, _, body) =
        azure_request("PUT", &azure_endpoint(), name, &[("restype", "container")]);
    assert!(
        (200..300).contains(&status),
        "create container {name}: {status} {body}"
    );
}

/// Creates a queue.
pub fn create_queue(name: &str) {
    let (status, _, body) = azure_request("PUT", &azure_queue_endpoint(), name, &[]);
    assert!(
        (200..300).contains(&status),
        "create queue {name}: {status} {body}"
    );
}

/// How many messages a queue holds.
pub fn queue_length(name: &str) -> u64 {
    let (status, headers, body) = azure_request(
        "GET",
        &azure_queue_endpoint(),
        name,
        &[("comp", "metadata")],
    );
    assert_eq!(status, 200, "queue metadata {name}: {body}");
    headers
        .get("x-ms-approximate-messages-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("message count")
}

/// The texts of up to 32 messages, without taking them.
pub fn peek_messages(name: &str) -> Vec<String> {
    let path = format!("{name}/messages");
    let (status, _, body) = azure_request(
        "GET",
        &azure_queue_endpoint(),
        &path,
        &[("numofmessages", "32"), ("peekonly", "true")],
    );
    assert_eq!(status, 200, "peek {name}: {body}");
    message_texts(&body)
}

/// The texts of every message in a queue, taken (hidden for ten minutes), 32 at a time.
pub fn take_messages(name: &str) -> Vec<String> {
    let path = format!("{name}/messages");
    let mut texts = Vec::new();
    loop {
        let (status, _, body) = azure_request(
            "GET",
            &azure_queue_endpoint(),
            &path,
            &[("numofmessages", "32"), ("visibilitytimeout", "600")],
        );
        assert_eq!(status, 200, "get messages {name}: {body}");
        let batch = message_texts(&body);
        if batch.is_empty() {
            return texts;
        }
        texts.extend(batch);
    }
}

fn message_texts(body: &str) -> Vec<String> {
    body.split("<MessageText>")
        .skip(1)
        .filter_map(|part| part.split("</MessageText>").next())
        .map(|text| {
            text.replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .collect()
}

pub fn azure_operator(container: &str) -> opendal::Operator {
    opendal::install_default();
    let builder = opendal::services::Azblob::default()
        .container(container)
        .endpoint(&azure_endpoint())
        .account_name(AZURITE_ACCOUNT)
        .account_key(AZURITE_KEY);
    opendal::Operator::new(builder).expect("azblob operator")
}

/// Reads an object, or `None` when it does not exist. A temporary failure (an emulator that
/// dropped a connection after a long suite) is tried again, as [`write_retrying`] does.
pub fn get(operator: &opendal::Operator, path: &str) -> Option<Vec<u8>> {
    runtime().block_on(async {
        for attempt in 1.. {
            match operator.read(path).await {
                Ok(buffer) => return Some(buffer.to_vec()),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return None,
                Err(e) if e.is_temporary() && attempt < 5 => {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => panic!("read {path}: {e}"),
            }
        }
        None
    })
}

pub fn put(operator: &opendal::Operator, path: &str, body: &[u8]) {
    runtime().block_on(write_retrying(operator, path, body.to_vec()));
}

pub fn content_type(operator: &opendal::Operator, path: &str) -> Option<String> {
    runtime().block_on(async {
        operator
            .stat(path)
            .await
            .unwrap_or_else(|e| panic!("stat {path}: {e}"))
            .content_type()
            .map(str::to_owned)
    })
}

/// The MD5 of `text`, in hex.
pub fn md5_hex(text: &str) -> String {
    <md5::Md5 as md5::Digest>::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes `n` small input files `in/f{i}.txt` with content `body {i}`.
pub fn make_inputs(context: &TestContext, n: usize) {
    let dir = context.path("in");
    std::fs::create_dir_all(&dir).expect("mkdir in");
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:05}.txt")), format!("body {i}")).expect("write input");
    }
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// One HTTP/1.1 request as the tests' small servers read it.
pub struct HttpRequest {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The request target, e.g. `/v2/rest/query`.
    pub path: String,
    /// Header names lowercased.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads the next request from a connection; `None` when the client closed it.
pub fn read_request(reader: &mut impl std::io::BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let method = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        read_chunks(reader)?
    } else {
        let length = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(HttpRequest {
        method,
        path,
        headers,
        body,
    })
}

/// A `Transfer-Encoding: chunked` body (a stream of unknown length), decoded.
fn read_chunks(reader: &mut impl std::io::BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = size.trim().split(';').next()?;
        let size = usize::from_str_radix(size, 16).ok()?;
        let mut chunk = vec![0; size + 2]; // the chunk and its CRLF
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Every file below `dir` (folders followed, not listed), by its path relative to `dir`, in
/// no particular order.
pub fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                found.push(rel.display().to_string());
            }
        }
    }
    found
}
