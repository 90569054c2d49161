//! S2 (seed 001) end to end: list the raw crashes of two days on S3 (moto), skip those with a
//! processed counterpart, submit the rest in batches to an HTTP API (a local receiver).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::common::{TestContext, create_bucket, runtime, s3_env, s3_operator, unique};

const RAW: usize = 10_000;
const TOKEN: &str = "socorro-api-token-98765";

/// An HTTP receiver: records the crash ids of every accepted request; `flaky` answers 429 to
/// every fifth request and 500 to every twentieth.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) accepted: Arc<Mutex<Vec<Vec<String>>>>,
    tokens: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
}

pub(crate) fn receiver(flaky: bool) -> Receiver {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/api/Reprocessing/",
        listener.local_addr().unwrap()
    );
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, t, r) = (
        Arc::clone(&accepted),
        Arc::clone(&tokens),
        Arc::clone(&requests),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (a, t, r) = (Arc::clone(&a), Arc::clone(&t), Arc::clone(&r));
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let Some(http) = crate::common::read_request(&mut reader) else {
                        return;
                    };
                    let token = http.headers.get("auth-token").cloned().unwrap_or_default();
                    let body = http.body;
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut stream = stream.try_clone().unwrap();
                    if flaky && n % 5 == 1 {
                        let _ = stream.write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nslow");
                        continue;
                    }
                    if flaky && n % 20 == 3 {
                        let _ = stream.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
                        );
                        continue;
                    }
                    let ids: Vec<String> = String::from_utf8_lossy(&body)
                        .split('&')
                        .filter_map(|pair| pair.strip_prefix("crash_ids="))
                        .map(str::to_owned)
                        .collect();
                    a.lock().unwrap().push(ids);
                    t.lock().unwrap().push(token);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntrue");
                }
            });
        }
    });
    Receiver {
        url,
        accepted,
        tokens,
        requests,
    }
}

/// One bucket for both tests (they only read it): its name and the missing crash ids, sorted.
fn bucket() -> &'static (String, Vec<String>) {
    static BUCKET: std::sync::OnceLock<(String, Vec<String>)> = std::sync::OnceLock::new();
    BUCKET.get_or_init(|| {
        let bucket = unique("rd-s2");
        create_bucket(&bucket);
        let mut missing = fill(&bucket);
        missing.sort();
        (bucket, missing)
    })
}

/// RAW crash ids over two days under raw/; 70% of them processed under processed/.
fn fill(bucket: &str) -> Vec<String> {
    let operator = s3_operator(bucket);
    let ids: Vec<String> = (0..RAW)
        .map(|i| format!("{:08x}-{i:05}", i * 2_654_435_761usize % 0xffff_ffff))
        .collect();
    let mut writes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let day = if i % 2 == 0 { "20260915" } else { "20260916" };
        writes.push(format!("raw/{day}/{id}"));
        if i % 10 < 7 {
            writes.push(format!("processed/{id}"));
        }
    }
    runtime().block_on(async {
        futures::stream::iter(writes)
            .map(|path| {
                let operator = operator.clone();
                async move { crate::common::write_retrying(&operator, &path, b"{}".to_vec()).await }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
    });
    ids.iter()
        .enumerate()
        .filter(|(i, _)| i % 10 >= 7)
        .map(|(_, id)| id.clone())
        .collect()
}

fn plan(t: &TestContext, bucket: &str, url: &str) {
    t.plan(&format!(
        r#"
[job]
name = "reprocess"
state = "state.db"

[source]
list = "s3://{bucket}/raw/"

[[step]]
name = "processed?"
exists = "s3://{bucket}/processed/{{name}}"

[[step]]
name = "submit"
http = {{ url = "{url}", headers = {{ Auth-Token = "${{SOCORRO_TOKEN}}" }},
         form = {{ crash_ids = "{{name}}" }}, batch = 50, max_wait = "200ms" }}

[limits]
items = 200
retries = 8
"#
    ));
}

#[test]
fn missing_crashes_are_submitted_once_in_batches_and_diff_agrees() {
    let (bucket, missing) = bucket();
    let receiver = receiver(false);
    let t = s3_env(TestContext::new()).env("SOCORRO_TOKEN", TOKEN);
    plan(&t, bucket, &receiver.url);

    let out = t
        .redrive(&["run", "plan.toml", "--metrics", "metrics.json"])
        .expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "done {}, skipped {}",
            missing.len(),
            RAW - missing.len()
        )),
        "{}",
        out.stderr
    );
    let batches = receiver.accepted.lock().unwrap().clone();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 50),
        "batches of at most 50"
    );
    let mut got: Vec<String> = batches.into_iter().flatten().collect();
    got.sort();
    assert_eq!(got.len(), missing.len(), "each missing crash once");
    assert_eq!(&got, missing);
    assert!(
        receiver.tokens.lock().unwrap().iter().all(|t| t == TOKEN),
        "the token header on every request"
    );

    // A rerun submits nothing.
    let before = receiver.requests.load(Ordering::SeqCst);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(receiver.requests.load(Ordering::SeqCst), before);

    // The token appears nowhere redrive writes.
    let state = std::fs::read(t.path("state.db")).unwrap();
    assert!(!String::from_utf8_lossy(&state).contains(TOKEN));
    for text in [&out.stdout, &out.stderr, &t.read("metrics.json")] {
        assert!(!text.contains(TOKEN));
    }

    // `diff` finds the same missing keys.
    let diff = t
        .redrive(&[
            "diff",
            &format!("s3://{bucket}/raw/"),
            &format!("s3://{bucket}/processed/"),
            "--map",
            "{name}",
            "--missing",
            "missing.txt",
            "--present",
            "present.txt",
        ])
        .expect_code(0);
    let mut listed: Vec<String> = t
        .read("missing.txt")
        .lines()
        .map(|k| k.rsplit('/').next().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(&listed, missing, "{}", diff.stderr);
    assert_eq!(t.read("present.txt").lines().count(), RAW - missing.len());
}

#[test]
fn throttling_and_errors_delay_but_never_lose_or_duplicate_a_submission() {
    let (bucket, missing) = bucket();
    let receiver = receiver(true);
    let t = s3_env(TestContext::new()).env("SOCORRO_TOKEN", TOKEN);
    plan(&t, bucket, &receiver.url);
    let out = t
        .redrive(&["run", "plan.toml", "--metrics", "metrics.json"])
        .expect_code(0);
    let mut got: Vec<String> = receiver
        .accepted
        .lock()
        .unwrap()
        .clone()
        .into_iter()
        .flatten()
        .collect();
    got.sort();
    let mut unique_ids = got.clone();
    unique_ids.dedup();
    assert_eq!(unique_ids.len(), got.len(), "no crash accepted twice");
    assert_eq!(&got, missing);
    let metrics: serde_json::Value = serde_json::from_str(&t.read("metrics.json")).unwrap();
    assert!(metrics["throttled"].as_u64().unwrap() > 0, "{metrics}");
    assert!(
        metrics["retries"].as_u64().unwrap() > metrics["throttled"].as_u64().unwrap(),
        "{metrics}"
    );
    let _ = out;
}
