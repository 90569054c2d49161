//! No secret ever printed or stored: jobs run with an Azure account key (a connection string),
//! a SAS token and a bearer token, against servers that fail in ways that tempt a leak (a 403
//! for a bad SAS, a 401 whose body echoes the token back). Every output is then scanned:
//! stdout, stderr, the step logs, the state (every byte of the SQLite file), telemetry,
//! metrics and the manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, Write as _};

use crate::common::{AZURITE_KEY, TestContext, azure_env, create_container, put, unique};

const BEARER: &str = "bearer-TOKEN-7f3a9c1d2e";
const SAS_SIG: &str = "SIGsecret0123456789abcdefZZ";

/// A server that answers every request 401 with the request's Authorization header in its body.
fn echoing_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                while let Some(request) = crate::common::read_request(&mut reader) {
                    let auth = request
                        .headers
                        .get("authorization")
                        .cloned()
                        .unwrap_or_default();
                    let body = format!("{{\"error\":\"invalid token\",\"got\":\"{auth}\"}}");
                    let _ = write!(
                        stream,
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    address
}

/// Every file under `dir`, as bytes (the state file included).
fn all_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn account_keys_sas_tokens_and_bearer_tokens_appear_nowhere() {
    let container = unique("rd-secret");
    create_container(&container);
    put(
        &crate::common::azure_operator(&container),
        "in/a.json",
        b"{}",
    );
    let api = echoing_server();
    let t = azure_env(TestContext::new())
        .env("RD_TEST_BEARER", BEARER)
        .env(
            "RD_TEST_SAS",
            &format!("sv=2021-08-06&ss=b&srt=co&sp=r&se=2030-01-01T00:00:00Z&sig={SAS_SIG}"),
        );
    t.write("keys.txt", "a.json\n");
    // Storage: one store with the account key (the connection string), one with a SAS whose
    // signature is wrong (403).
    t.plan(&format!(
        r#"
[job]
name = "secrets"
state = "state.db"
logs = "logs"
[source]
lines = "keys.txt"
[[step]]
name = "copy-with-key"
copy = {{ from = "az://{container}/in/{{line}}", to = "az://{container}/out/{{line}}", manifest = "manifest.jsonl", checksum = "md5" }}
[[step]]
name = "copy-with-sas"
copy = {{ from = "az://{container}sas/in/{{line}}", to = "out/{{line}}" }}
[limits]
retries = 0
[store."az://{container}sas"]
sas_token = "${{RD_TEST_SAS}}"
"#
    ));
    // An API whose 401 echoes the bearer token back.
    t.write(
        "api.toml",
        format!(
            r#"
[job]
name = "secrets-api"
state = "api.db"
logs = "logs"
[source]
lines = "keys.txt"
[[step]]
http = {{ url = "{api}/submit", headers = {{ Authorization = "Bearer ${{RD_TEST_BEARER}}" }}, json = '{{"file":"{{line}}"}}' }}
[limits]
retries = 0
"#
        ),
    );

    let run = t
        .redrive(&[
            "run",
            "plan.toml",
            "-vv",
            "--metrics",
            "m1.json",
            "--telemetry",
            "t.csv",
        ])
        .expect_code(1);
    assert!(run.stderr.contains("copy-with-sas"), "{}", run.stderr);
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    let status = t.redrive(&["status", "plan.toml", "--json"]).expect_code(0);
    let dry = t.redrive(&["run", "plan.toml", "--dry-run"]);
    let api = t
        .redrive(&[
            "run",
            "api.toml",
            "-vv",
            "--metrics",
            "m2.json",
            "--telemetry",
            "t2.csv",
        ])
        .expect_code(1);
    let failed_api = t.redrive(&["failed", "api.toml"]).expect_code(0);
    assert!(
        failed_api.stdout.contains("401") && failed_api.stdout.contains("Bearer ***"),
        "the API step ran, failed, and its echoed token is masked: {}",
        failed_api.stdout
    );
    assert!(
        failed.stdout.contains("403"),
        "the SAS was refused: {}",
        failed.stdout
    );

    let outputs = [
        ("run stdout", run.stdout.as_bytes().to_vec()),
        ("run stderr", run.stderr.as_bytes().to_vec()),
        ("failed", failed.stdout.as_bytes().to_vec()),
        ("status", status.stdout.as_bytes().to_vec()),
        (
            "dry run",
            format!("{}{}", dry.stdout, dry.stderr).into_bytes(),
        ),
        ("api run stderr", api.stderr.as_bytes().to_vec()),
        ("failed (api)", failed_api.stdout.as_bytes().to_vec()),
    ];
    let files = all_files(t.dir.path());
    assert!(files.iter().any(|(name, _)| name.ends_with("state.db")));
    assert!(files.iter().any(|(name, _)| name.ends_with("t.csv")));
    for (name, bytes) in outputs.iter().map(|(n, b)| ((*n).to_owned(), b)).chain(
        files
            .iter()
            .filter(|(name, _)| !name.ends_with(".toml"))
            .map(|(n, b)| (n.clone(), b)),
    ) {
        for secret in [AZURITE_KEY, SAS_SIG, BEARER] {
            assert!(
                !contains(bytes, secret),
                "`{secret}` leaked in {name}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

/// A converter that prints what it was given (a token from the plan's `${ENV}`, a SAS URL) on
/// stdout and stderr: its per-item log is masked like everything else, and so is the error
/// that quotes its stderr.
#[test]
fn run_step_logs_are_masked() {
    let t = TestContext::new().env("CONVERTER_TOKEN", BEARER);
    t.write("keys.txt", "a\nb\n");
    t.plan(&format!(
        r#"
[job]
name = "logs"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = {{ shell = "echo using $TOKEN; echo fetching https://acct.blob.core.windows.net/c/{{line}}?sv=2024&sig={SAS_SIG} >&2; printf 'binary \\377\\n'; test {{line}} = a", env = {{ TOKEN = "${{CONVERTER_TOKEN}}" }} }}
"#
    ));
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 1, "item b fails: {}", out.stderr);
    let logs = all_files(&t.path("logs-logs"));
    assert!(logs.len() >= 2, "{logs:?}");
    let written = all_files(&t.path("."));
    let written = written
        .iter()
        .filter(|(path, _)| !path.ends_with("plan.toml"));
    for (path, bytes) in logs.iter().chain(written) {
        assert!(!contains(bytes, BEARER), "the token is in {path}");
        assert!(!contains(bytes, SAS_SIG), "the SAS signature is in {path}");
    }
    let log = String::from_utf8_lossy(&logs[0].1).into_owned();
    assert!(log.contains("using ***"), "{log}");
    assert!(log.contains("binary"), "{log}");
    assert!(!out.stderr.contains(SAS_SIG) && !out.stderr.contains(BEARER));
}
