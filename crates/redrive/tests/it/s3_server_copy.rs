//! S3 → S3 copied by the service (CopyObject; UploadPartCopy above `copy_cutoff`), on moto
//! behind a recording proxy: redrive never reads the source's bytes.
//!
//! moto performs CopyObject but ignores `If-None-Match` on it (it copies over the target), so
//! a create-only copy to a server that is not AWS S3 is streamed unless the plan says
//! `mode = "server"`; the tests check that the condition is sent, and answer it as AWS S3
//! does (`412`) in the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use crate::common::{TestContext, create_bucket, get, put, s3_operator, unique};
use crate::proxy::{Action, Proxy};

/// One request the proxy saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: std::collections::HashMap<String, String>,
}

/// A proxy in front of moto that keeps each request's method, path and headers, and answers
/// a conditional copy onto `existing` (in the target bucket) with `412`, as AWS S3 does.
fn recording_proxy(existing: Option<String>) -> (Proxy, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let proxy = Proxy::start(crate::common::s3_endpoint(), move |request| {
        log.lock().unwrap().push(Seen {
            method: request.method.clone(),
            path: request.path.clone(),
            headers: request.headers.clone(),
        });
        let conditional = request.headers.get("if-none-match").map(String::as_str) == Some("*");
        let copy = request.headers.contains_key("x-amz-copy-source")
            || request.path.contains("uploadId=") && request.method == "POST";
        match &existing {
            Some(key) if conditional && copy && request.path.split('?').next() == Some(key) => {
                Action::Answer(
                    412,
                    "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>".to_owned(),
                )
            }
            _ => Action::Forward,
        }
    });
    (proxy, seen)
}

fn through(proxy: &Proxy) -> TestContext {
    crate::common::s3_env_at(TestContext::new(), &proxy.address)
}

/// A plan that copies what `s3://SRC/in/` lists to `s3://DST/PREFIX/`, its state in
/// `state.db` for the first prefix a test uses (`TestContext::count` reads that one).
fn plan(t: &TestContext, src: &str, dst: &str, prefix: &str, extra: &str) {
    let state = if t.dir.path().join("state.db").exists() {
        format!("{prefix}-{}.db", extra.len())
    } else {
        "state.db".to_owned()
    };
    t.plan(&format!(
        r#"
[job]
name = "s3-server-side"
state = "{state}"
[source]
list = "s3://{src}/in/"
[[step]]
copy = {{ from = "{{url}}", to = "s3://{dst}/{prefix}/{{name}}", manifest = "{prefix}.jsonl"{extra} }}
"#
    ));
}

/// One CopyObject per object, the source never read by redrive; an existing target is kept
/// (`mode = "server"`, the 412 answered as AWS S3 does), with `If-None-Match: *` sent and no
/// HEAD first; `bytes` counts the objects' sizes and the manifest says `server_side`. A
/// create-only copy with `mode = "auto"` to a server that is not AWS S3 streams instead (its
/// PUT conditional), and keeps the existing target too.
#[test]
fn s3_to_s3_is_copied_by_the_service_without_reading_the_bytes() {
    let (src, dst) = (unique("rd-s3s"), unique("rd-s3d"));
    create_bucket(&src);
    create_bucket(&dst);
    let (source, target) = (s3_operator(&src), s3_operator(&dst));
    for i in 0..5 {
        put(
            &source,
            &format!("in/f{i}.json"),
            format!("body {i}").as_bytes(),
        );
    }
    put(&target, "server/f1.json", b"ORIGINAL");
    put(&target, "auto/f1.json", b"ORIGINAL");
    let (proxy, seen) = recording_proxy(Some(format!("/{dst}/server/f1.json")));
    let t = through(&proxy);

    plan(&t, &src, &dst, "server", r#", mode = "server""#);
    let dry = t.redrive(&["run", "--dry-run", "plan.toml"]).expect_code(0);
    assert!(dry.stderr.contains("COPY"), "{}", dry.stderr);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    for i in [0, 2, 3, 4] {
        assert_eq!(
            get(&target, &format!("server/f{i}.json")).as_deref(),
            Some(format!("body {i}").as_bytes())
        );
    }
    assert_eq!(
        get(&target, "server/f1.json").as_deref(),
        Some(&b"ORIGINAL"[..])
    );
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    let reads: Vec<&String> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/in/f"))
        .map(|r| &r.path)
        .collect();
    assert!(reads.is_empty(), "redrive read source objects: {reads:?}");
    assert!(
        !requests.iter().any(|r| r.method == "HEAD"),
        "no HEAD first"
    );
    let copies: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(copies.len(), 5, "one request an object");
    for copy in &copies {
        let from = copy.headers.get("x-amz-copy-source").unwrap();
        assert!(from.starts_with(&format!("/{src}/in/f")), "{from}");
        assert_eq!(
            copy.headers.get("if-none-match").map(String::as_str),
            Some("*")
        );
    }
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        5
    );
    assert_eq!(t.count("SELECT sum(bytes) FROM items"), 4 * 6);
    let manifest = t.read("server.jsonl");
    assert_eq!(manifest.lines().count(), 4, "{manifest}");
    assert!(
        manifest.lines().all(|l| l.contains("\"server_side\":true")),
        "{manifest}"
    );

    // Create-only, mode = "auto", a server that is not AWS S3: streamed (GET and a
    // conditional PUT through redrive), and the existing target kept.
    plan(&t, &src, &dst, "auto", "");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&target, "auto/f1.json").as_deref(),
        Some(&b"ORIGINAL"[..])
    );
    assert_eq!(
        get(&target, "auto/f3.json").as_deref(),
        Some(&b"body 3"[..])
    );
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    let reads = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/in/f"))
        .count();
    assert_eq!(reads, 5, "streamed: each source read once");
    assert!(
        !requests
            .iter()
            .any(|r| r.headers.contains_key("x-amz-copy-source"))
    );

    // if_exists = "overwrite" needs no condition: copied by the service on any S3 server.
    plan(&t, &src, &dst, "auto", r#", if_exists = "overwrite""#);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&target, "auto/f1.json").as_deref(),
        Some(&b"body 1"[..])
    );
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    let copies = requests
        .iter()
        .filter(|r| r.headers.contains_key("x-amz-copy-source"))
        .count();
    assert_eq!(
        copies,
        5,
        "{:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/in/f"))
    );
}

/// Above `copy_cutoff` an object is copied by UploadPartCopy, `part_size` at a time, and the
/// upload completed with `If-None-Match: *`: the bytes are the source's, redrive read none of
/// them, no upload is left open; an existing target is kept (moto honours the condition on
/// CompleteMultipartUpload) and its upload aborted.
#[test]
fn s3_to_s3_above_the_cutoff_is_copied_in_parts_by_the_service() {
    let (src, dst) = (unique("rd-s3ps"), unique("rd-s3pd"));
    create_bucket(&src);
    create_bucket(&dst);
    let (source, target) = (s3_operator(&src), s3_operator(&dst));
    let body: Vec<u8> = (0..11 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    put(&source, "in/big.bin", &body);
    put(&source, "in/kept.bin", &body);
    put(&target, "parts/kept.bin", b"ORIGINAL");
    let (proxy, seen) = recording_proxy(None);
    let t = through(&proxy);
    plan(
        &t,
        &src,
        &dst,
        "parts",
        r#", mode = "server", copy_cutoff = "5MiB", part_size = "5MiB", parts = 2"#,
    );
    let dry = t.redrive(&["run", "--dry-run", "plan.toml"]).expect_code(0);
    assert!(dry.stderr.contains("COPY part"), "{}", dry.stderr);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        get(&target, "parts/big.bin").unwrap() == body,
        "the same bytes"
    );
    assert_eq!(
        get(&target, "parts/kept.bin").as_deref(),
        Some(&b"ORIGINAL"[..])
    );
    let requests = seen.lock().unwrap().clone();
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/in/"))
    );
    let ranges: Vec<&String> = requests
        .iter()
        .filter(|r| r.path.contains("/parts/big.bin?") && r.method == "PUT")
        .filter_map(|r| r.headers.get("x-amz-copy-source-range"))
        .collect();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert!(ranges.contains(&&format!("bytes=10485760-{}", body.len() - 1)));
    let completes: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("uploadId="))
        .collect();
    assert_eq!(completes.len(), 2);
    assert!(
        completes
            .iter()
            .all(|r| r.headers.get("if-none-match").map(String::as_str) == Some("*"))
    );
    assert_eq!(
        crate::big::uploads_in_progress(&dst),
        0,
        "no upload left open"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );
    assert_eq!(
        t.count("SELECT bytes FROM items WHERE key = 'in/big.bin'"),
        body.len() as i64
    );
}

/// `checksum = "md5"`: the service copies, and the MD5s S3 reports of the source and of the
/// target (single-part ETags: two HEADs, no bytes read) are compared and written to the
/// manifest.
#[test]
fn an_md5_checked_s3_copy_is_made_by_the_service_and_compared() {
    let (src, dst) = (unique("rd-s3m"), unique("rd-s3n"));
    create_bucket(&src);
    create_bucket(&dst);
    put(&s3_operator(&src), "in/a.json", b"body a");
    let (proxy, seen) = recording_proxy(None);
    let t = through(&proxy);
    plan(
        &t,
        &src,
        &dst,
        "md5",
        r#", checksum = "md5", mode = "server""#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&s3_operator(&dst), "md5/a.json").as_deref(),
        Some(&b"body a"[..])
    );
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    let methods: Vec<&str> = requests
        .iter()
        .filter(|r| r.path.contains("/a.json"))
        .map(|r| r.method.as_str())
        .collect();
    assert_eq!(methods, ["HEAD", "PUT", "HEAD"], "{requests:?}");
    crate::common::assert_server_md5(&t.read("md5.jsonl"), "body a");
}
