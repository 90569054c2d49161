//! Big objects: multipart / block uploads with inline checksums and a manifest, on moto and
//! Azurite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sha2::Digest;

use crate::common::{
    TestContext, azure_env, azure_operator, create_bucket, create_container, get, s3_env,
    s3_operator, unique,
};

const MIB: usize = 1024 * 1024;

/// Deterministic, incompressible-looking bytes.
fn data(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn plan(t: &TestContext, to: &str, checksum: &str) {
    t.plan(&format!(
        r#"
[job]
name = "big"
state = "state.db"
[source]
glob = "in/*.bin"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "{to}/{{name}}", part_size = "5MiB", parts = 2, checksum = "{checksum}", manifest = "manifest.jsonl" }}
"#
    ));
}

fn manifest(t: &TestContext) -> Vec<serde_json::Value> {
    t.read("manifest.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_big_object_goes_up_in_parts_to_s3_with_its_checksum_in_the_manifest() {
    let bucket = unique("rd-big");
    create_bucket(&bucket);
    let t = s3_env(TestContext::new());
    let big = data(24 * MIB + 123);
    t.write("in/big.bin", &big);
    t.write("in/small.bin", b"hello world");
    plan(&t, &format!("s3://{bucket}/up"), "sha256");
    let out = t
        .redrive(&["run", "plan.toml", "--metrics", "metrics.json"])
        .expect_code(0);
    let s3 = s3_operator(&bucket);
    assert!(get(&s3, "up/big.bin").unwrap() == big, "byte-equal");
    let lines = manifest(&t);
    let line = lines
        .iter()
        .find(|l| l["target"].as_str().unwrap().ends_with("/big.bin"))
        .unwrap();
    assert_eq!(line["size"], big.len());
    assert_eq!(line["checksum"]["algorithm"], "sha256");
    assert_eq!(
        line["checksum"]["value"],
        format!("{:x}", sha2::Sha256::digest(&big))
    );
    assert!(
        line["etag"].as_str().unwrap().contains('-'),
        "a multipart ETag: {line}"
    );
    let metrics: serde_json::Value = serde_json::from_str(&t.read("metrics.json")).unwrap();
    assert!(
        metrics["peak_rss_mb"].as_f64().unwrap() < 100.0,
        "{metrics} {}",
        out.stderr
    );
}

#[test]
fn md5_is_checked_against_the_store_and_crc32c_recorded() {
    let bucket = unique("rd-md5");
    create_bucket(&bucket);
    let t = s3_env(TestContext::new());
    t.write("in/small.bin", b"hello world");
    plan(&t, &format!("s3://{bucket}/up"), "md5");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    // A single-part upload: S3's ETag is the MD5, and it matched.
    assert_eq!(
        manifest(&t)[0]["checksum"]["value"],
        "5eb63bbbe01eeed093cb22bb8f5acdc3"
    );
    assert_eq!(
        manifest(&t)[0]["etag"],
        "\"5eb63bbbe01eeed093cb22bb8f5acdc3\""
    );

    let t = s3_env(TestContext::new());
    t.write("in/nine.bin", b"123456789");
    plan(&t, &format!("s3://{bucket}/crc"), "crc32c");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(manifest(&t)[0]["checksum"]["value"], "e3069283");
}

#[test]
fn a_big_object_goes_up_in_blocks_to_azure() {
    let container = unique("rd-bigaz");
    create_container(&container);
    let t = azure_env(TestContext::new());
    let big = data(12 * MIB + 7);
    t.write("in/big.bin", &big);
    plan(&t, &format!("az://{container}/up"), "md5");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        get(&azure_operator(&container), "up/big.bin").unwrap() == big,
        "byte-equal"
    );
    let md5 = manifest(&t)[0]["checksum"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(md5.len(), 32);
}

#[test]
fn cp_copies_a_folder_recursively_and_a_rerun_resumes() {
    let bucket = unique("rd-cp");
    create_bucket(&bucket);
    let s3 = s3_operator(&bucket);
    let t = s3_env(TestContext::new());
    t.write("exports/a.json", "A");
    t.write("exports/day/b.json", "BB");
    t.write("exports/day/deep/c.json", data(6 * MIB));
    let out = t
        .redrive(&[
            "cp",
            "exports",
            &format!("s3://{bucket}/archive/"),
            "--checksum",
            "sha256",
            "--manifest",
            "m.jsonl",
            "--part-size",
            "5MiB",
        ])
        .expect_code(0);
    assert!(
        out.stderr.contains("This run: done 3, skipped 0, failed 0"),
        "{}",
        out.stderr
    );
    assert_eq!(get(&s3, "archive/a.json").as_deref(), Some(&b"A"[..]));
    assert_eq!(get(&s3, "archive/day/b.json").as_deref(), Some(&b"BB"[..]));
    assert_eq!(
        get(&s3, "archive/day/deep/c.json").map(|b| b.len()),
        Some(6 * MIB)
    );
    assert_eq!(t.read("m.jsonl").lines().count(), 3);

    // The same command again: the state says everything is done.
    let again = t
        .redrive(&[
            "cp",
            "exports",
            &format!("s3://{bucket}/archive/"),
            "--checksum",
            "sha256",
            "--manifest",
            "m.jsonl",
            "--part-size",
            "5MiB",
        ])
        .expect_code(0);
    assert!(
        again
            .stderr
            .contains("This run: done 0, skipped 0, failed 0"),
        "{}",
        again.stderr
    );
    let plans: Vec<_> = std::fs::read_dir(t.path(".redrive"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .collect();
    assert_eq!(plans.len(), 1, "one job for one command");
    let status = t
        .redrive(&["status", plans[0].path().to_str().unwrap()])
        .expect_code(0);
    assert!(
        status.stdout.contains("  done              3"),
        "{}",
        status.stdout
    );

    // --files-from copies just those; a single file copies to a key.
    t.write("list.txt", "day/b.json\n");
    t.redrive(&[
        "cp",
        "exports",
        &format!("s3://{bucket}/some/"),
        "--files-from",
        "list.txt",
    ])
    .expect_code(0);
    assert_eq!(get(&s3, "some/day/b.json").as_deref(), Some(&b"BB"[..]));
    assert_eq!(get(&s3, "some/a.json"), None);
    t.redrive(&[
        "cp",
        "exports/a.json",
        &format!("s3://{bucket}/one/renamed.json"),
    ])
    .expect_code(0);
    assert_eq!(get(&s3, "one/renamed.json").as_deref(), Some(&b"A"[..]));

    let bad = t
        .redrive(&["cp", "exports", "out", "--checksum", "md4"])
        .expect_code(2);
    assert!(
        bad.stderr.contains("--checksum md4 is not an algorithm"),
        "{}",
        bad.stderr
    );
}

/// Multipart uploads in progress in `bucket`, as S3's ListMultipartUploads reports them.
fn uploads_in_progress(bucket: &str) -> usize {
    let url = format!("{}/{bucket}?uploads", crate::common::s3_endpoint());
    let body = crate::common::runtime()
        .block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() });
    body.matches("<UploadId>").count()
}

#[test]
fn a_second_ctrl_c_aborts_the_multipart_uploads_it_cuts_off() {
    let bucket = unique("rd-abort");
    create_bucket(&bucket);
    let t = s3_env(TestContext::new());
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let mut bytes = data(40 * MIB);
            bytes[0] = i;
            bytes
        })
        .collect();
    for (i, bytes) in files.iter().enumerate() {
        t.write(&format!("in/f{i}.bin"), bytes);
    }
    plan(&t, &format!("s3://{bucket}/up"), "sha256");

    let run = t
        .command(&["run", "plan.toml", "--concurrency", "4"])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while uploads_in_progress(&bucket) == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no upload started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for _ in 0..2 {
        std::process::Command::new("kill")
            .args(["-INT", &run.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert_eq!(
        uploads_in_progress(&bucket),
        0,
        "orphaned multipart uploads: {stderr}"
    );

    // The rerun redoes what was cut off; every object arrives whole.
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let operator = s3_operator(&bucket);
    for (i, bytes) in files.iter().enumerate() {
        let got = get(&operator, &format!("up/f{i}.bin")).unwrap();
        assert!(got == *bytes, "up/f{i}.bin differs");
    }
    assert_eq!(uploads_in_progress(&bucket), 0);
}

/// A proxy in front of moto that answers the first upload of part 2 with a 500, and logs
/// each request as `METHOD PATH`.
fn part_failing_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufReader, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let upstream = crate::common::s3_endpoint();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let requests = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (upstream, log, failed, client) = (
                upstream.clone(),
                Arc::clone(&requests),
                Arc::clone(&failed),
                client.clone(),
            );
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                while let Some(request) = crate::common::read_request(&mut reader) {
                    log.lock()
                        .unwrap()
                        .push(format!("{} {}", request.method, request.path));
                    let is_part_2 =
                        request.method == "PUT" && request.path.contains("partNumber=2");
                    if is_part_2 && !failed.swap(true, Ordering::SeqCst) {
                        let body =
                            "<Error><Code>InternalError</Code><Message>injected</Message></Error>";
                        let _ = write!(
                            stream,
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        continue;
                    }
                    let response = crate::common::runtime().block_on(async {
                        let method =
                            reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
                        let mut forward =
                            client.request(method, format!("{upstream}{}", request.path));
                        for (name, value) in &request.headers {
                            if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                                forward = forward.header(name, value);
                            }
                        }
                        let response = forward.body(request.body).send().await.unwrap();
                        let status = response.status();
                        let headers = response.headers().clone();
                        (status, headers, response.bytes().await.unwrap())
                    });
                    let (status, headers, body) = response;
                    let mut head = format!(
                        "HTTP/1.1 {} {}\r\n",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    );
                    for (name, value) in &headers {
                        if !matches!(
                            name.as_str(),
                            "content-length" | "transfer-encoding" | "connection"
                        ) {
                            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
                        }
                    }
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                    if stream.write_all(head.as_bytes()).is_err()
                        || stream.write_all(&body).is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    (address, log)
}

#[test]
fn a_failed_part_is_sent_again_alone() {
    let bucket = unique("rd-part");
    create_bucket(&bucket);
    let (proxy, log) = part_failing_proxy();
    let t = TestContext::new()
        .env("AWS_ENDPOINT_URL", &proxy)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing-secret")
        .env("AWS_REGION", "us-east-1");
    let big = data(12 * MIB);
    t.write("in/big.bin", &big);
    plan(&t, &format!("s3://{bucket}/up"), "sha256");
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);

    let log = log.lock().unwrap().clone();
    let count = |what: &dyn Fn(&str) -> bool| log.iter().filter(|l| what(l)).count();
    assert_eq!(
        count(&|l| l.starts_with("POST") && l.contains("?uploads")),
        1,
        "one multipart upload: {log:#?}"
    );
    assert_eq!(
        count(&|l| l.starts_with("PUT") && l.contains("partNumber=1")),
        1,
        "part 1 once: {log:#?}"
    );
    assert_eq!(
        count(&|l| l.starts_with("PUT") && l.contains("partNumber=2")),
        2,
        "part 2 again, alone: {log:#?}"
    );
    assert_eq!(
        count(&|l| l.starts_with("PUT") && l.contains("partNumber=3")),
        1,
        "part 3 once: {log:#?}"
    );
    assert!(
        out.stderr.contains("0 retries"),
        "the step itself was not retried: {}",
        out.stderr
    );
    assert!(
        get(&s3_operator(&bucket), "up/big.bin").unwrap() == big,
        "the object differs"
    );
}
