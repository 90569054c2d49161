//! `copy` and `list` against S3 (moto server started by `scripts/test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{
    TestContext, content_type, create_bucket, get, make_inputs, put, s3_endpoint, s3_env,
    s3_operator, unique,
};

#[test]
fn local_to_s3_then_s3_to_s3_create_only_with_content_type() {
    let bucket = unique("rd-s3");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    put(&operator, "dst/f00001.txt", b"ORIGINAL");

    let t = s3_env(TestContext::new());
    make_inputs(&t, 5);
    t.plan(&format!(
        r#"
[job]
name = "up"
state = "state.db"
[source]
glob = "in/*.txt"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "s3://{bucket}/dst/{{name}}", content_type = "text/plain" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&operator, "dst/f00000.txt").as_deref(),
        Some(&b"body 0"[..])
    );
    assert_eq!(
        content_type(&operator, "dst/f00000.txt").as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        get(&operator, "dst/f00001.txt").as_deref(),
        Some(&b"ORIGINAL"[..]),
        "existing object untouched"
    );
    assert_eq!(
        t.count("SELECT bytes FROM items WHERE key = 'f00000.txt'"),
        6
    );
    assert_eq!(
        t.count("SELECT bytes FROM items WHERE key = 'f00001.txt'"),
        0
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        5
    );

    // S3 → S3 from a prefix listing: fields key, name, size, url.
    let t2 = s3_env(TestContext::new());
    t2.plan(&format!(
        r#"
[job]
name = "s3s3"
state = "state.db"
[source]
list = "s3://{bucket}/dst/"
[[step]]
copy = {{ from = "{{url}}", to = "s3://{bucket}/copy/{{size}}-{{name}}", content_type = "application/json" }}
"#
    ));
    t2.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        t2.count("SELECT count(*) FROM items WHERE status = 'done'"),
        5
    );
    assert_eq!(
        get(&operator, "copy/6-f00002.txt").as_deref(),
        Some(&b"body 2"[..])
    );
    assert_eq!(
        get(&operator, "copy/8-f00001.txt").as_deref(),
        Some(&b"ORIGINAL"[..])
    );
    let key: String = t2
        .state()
        .query_row("SELECT key FROM items ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(key, "dst/f00000.txt");
}

#[test]
fn s3_settings_from_a_store_table_and_exists_step() {
    let bucket = unique("rd-store");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    put(&operator, "done/b", b"processed");
    let t = TestContext::new()
        .env("MY_S3_KEY", "testing")
        .env("MY_S3_SECRET", "testing-secret-x");
    t.write("keys.txt", "a\nb\n");
    t.write("src/a", "A");
    t.write("src/b", "B");
    t.plan(&format!(
        r#"
[job]
name = "store"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
exists = "s3://{bucket}/done/{{line}}"
[[step]]
copy = {{ from = "src/{{line}}", to = "s3://{bucket}/raw/{{line}}" }}
[store."s3://{bucket}"]
endpoint = "{endpoint}"
allow_http = true
region = "us-east-1"
access_key_id = "${{MY_S3_KEY}}"
secret_access_key = "${{MY_S3_SECRET}}"
"#,
        endpoint = s3_endpoint()
    ));
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(out.stderr.contains("done 1, skipped 1"), "{}", out.stderr);
    assert_eq!(get(&operator, "raw/a").as_deref(), Some(&b"A"[..]));
    assert_eq!(
        get(&operator, "raw/b"),
        None,
        "skipped: its processed counterpart exists"
    );
}

#[test]
fn a_missing_bucket_stops_the_run_naming_the_url_and_keeps_the_items_pending() {
    let t = s3_env(TestContext::new());
    t.write("keys.txt", "a\nb\n");
    t.write("src/a", "A");
    t.write("src/b", "B");
    let bucket = unique("rd-none");
    t.plan(&format!(
        r#"
[job]
name = "nobucket"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = {{ from = "src/{{line}}", to = "s3://{bucket}/x/{{line}}" }}
[limits]
items = 1
retries = 0
"#
    ));
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(out.stderr.contains("stopping the run"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot write `s3://{bucket}/x/a`")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("NoSuchBucket"), "{}", out.stderr);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'pending'"),
        2,
        "not the items' fault"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE error LIKE '%NoSuchBucket%'"),
        1
    );
    // Once the bucket exists, a plain rerun completes.
    crate::common::create_bucket(&bucket);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let operator = crate::common::s3_operator(&bucket);
    assert_eq!(
        crate::common::get(&operator, "x/b").as_deref(),
        Some(&b"B"[..])
    );
}

/// Field values `x//a.txt` and `x/a.txt` (and `x/./b.txt`, `.`) in a target key: the storage
/// layer would write them all to `x/a.txt`, `x/b.txt` or `up/`, so two items used to be done
/// with one object and 0 bytes. Each such item fails, naming the key; the others copy.
#[test]
fn keys_that_storage_would_merge_fail_instead_of_landing_on_another_object() {
    let bucket = unique("rd-keys");
    create_bucket(&bucket);
    let t = s3_env(TestContext::new());
    t.write("in/x/a.txt", "A");
    t.write("in/x/b.txt", "B");
    t.write("in/c.txt", "C");
    t.write(
        "names.txt",
        "x/a.txt\nx//a.txt\nx/./b.txt\nx/b.txt\nc.txt\n.\n",
    );
    t.plan(&format!(
        r#"
[job]
name = "keys"
state = "state.db"
[source]
lines = "names.txt"
[[step]]
copy = {{ from = "in/{{line}}", to = "s3://{bucket}/up/{{line}}" }}
"#
    ));
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let failed: Vec<String> = {
        let state = t.state();
        let mut statement = state
            .prepare("SELECT key FROM items WHERE status = 'failed' AND (error LIKE '%segment in its key%' OR error LIKE '%names a folder%') ORDER BY key")
            .unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(failed, [".", "x/./b.txt", "x//a.txt"], "{}", out.stderr);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        3
    );
    let operator = s3_operator(&bucket);
    assert_eq!(get(&operator, "up/x/a.txt").as_deref(), Some(&b"A"[..]));
    assert_eq!(get(&operator, "up/x/b.txt").as_deref(), Some(&b"B"[..]));
    assert_eq!(get(&operator, "up/c.txt").as_deref(), Some(&b"C"[..]));
}

/// An S3 endpoint on a closed port, 100 items, the default retries: every item used to be
/// retried and failed, exit 1 after minutes. The copy step's first calls all fail the same
/// systemic way, so the run stops within seconds, exit 2, one clear message, items pending.
#[test]
fn a_closed_endpoint_stops_the_run_at_once_with_the_items_pending() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let t = TestContext::new();
    let names: String = (0..100).map(|i| format!("k{i:03}\n")).collect();
    t.write("keys.txt", names);
    for i in 0..100 {
        t.write(&format!("src/k{i:03}"), "x");
    }
    t.plan(&format!(
        r#"
[job]
name = "closed"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = {{ from = "src/{{line}}", to = "s3://closed/x/{{line}}" }}
[store."s3://closed"]
endpoint = "http://127.0.0.1:{port}"
allow_http = true
region = "us-east-1"
access_key_id = "test-key"
secret_access_key = "test-secret"
"#
    ));
    let started = std::time::Instant::now();
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains(&format!(
            "connection refused at http://127.0.0.1:{port}: is the endpoint right"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("persistent"), "{}", out.stderr);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'failed'"),
        0,
        "{}",
        out.stderr
    );
}

/// `--dry-run` prices a local → S3 job: one PUT for a small file, a multipart upload (a PUT
/// per part, its start and completion) for one larger than `part_size`; `--check-targets`
/// asks moto (HEAD) which targets are there. Nothing is uploaded.
#[test]
fn dry_run_counts_puts_and_parts_and_checks_s3_targets() {
    let bucket = unique("rd-dry");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    put(&operator, "dst/small.bin", b"there before");
    let t = s3_env(TestContext::new());
    t.write("in/small.bin", b"s".repeat(1000));
    t.write("in/big.bin", vec![b'b'; 11 * 1024 * 1024]);
    t.plan(&format!(
        r#"
[job]
name = "priced"
state = "state.db"
[source]
glob = "in/*.bin"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "s3://{bucket}/dst/{{name}}", part_size = "5MiB" }}
"#
    ));
    let dry = t
        .redrive(&["run", "plan.toml", "--dry-run", "--check-targets"])
        .expect_code(0);
    // big.bin: 11 MiB in 5 MiB parts = 3 PUTs, started and committed; small.bin: 1 PUT.
    assert!(
        dry.stderr.contains(
            "Requests it would make: copy: 4 PUT, 1 multipart start, 1 multipart commit."
        ),
        "{}",
        dry.stderr
    );
    assert!(dry.stderr.contains("1 target present"), "{}", dry.stderr);
    let small = dry
        .stdout
        .lines()
        .find(|l| l.starts_with("small.bin"))
        .unwrap_or("");
    assert!(small.ends_with("→ target present"), "{}", dry.stdout);
    assert!(get(&operator, "dst/big.bin").is_none(), "nothing uploaded");
    assert_eq!(
        get(&operator, "dst/small.bin").as_deref(),
        Some(&b"there before"[..])
    );
}

/// `failed --csv F --csv-format s3-batch` writes S3 Batch Operations' completion-report rows
/// for failed objects of an S3 listing (no header: Bucket, Key, VersionId, TaskStatus,
/// ErrorCode, HTTPStatusCode, ResultMessage); items that are not S3 objects are refused.
#[test]
fn failed_objects_are_written_as_an_s3_batch_completion_report() {
    let bucket = unique("rd-batch");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    for name in ["ok.txt", "bad one.txt", "fine.txt"] {
        put(&operator, &format!("in/{name}"), b"x");
    }
    let t = s3_env(TestContext::new());
    t.plan(&format!(
        r#"
[job]
name = "batch-report"
state = "state.db"
[source]
list = "s3://{bucket}/in/"
[[step]]
name = "check"
run = {{ cmd = ["sh", "-c", "case \"$0\" in bad*) echo 'HTTP 403 from the converter' >&2; exit 1;; esac", "{{name}}"] }}
[limits]
retries = 0
"#
    ));
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(1);
    let out = t
        .redrive(&[
            "failed",
            "plan.toml",
            "--csv",
            "report.csv",
            "--csv-format",
            "s3-batch",
        ])
        .expect_code(0);
    assert!(
        out.stderr.contains("S3 Batch Operations completion report"),
        "{}",
        out.stderr
    );
    let text = t.read("report.csv");
    let rows: Vec<csv::StringRecord> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("a CSV row"))
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    let row: Vec<&str> = rows[0].iter().collect();
    assert_eq!(
        &row[..6],
        [
            bucket.as_str(),
            "in/bad one.txt",
            "",
            "failed",
            "PermanentFailure",
            "403"
        ],
        "{text}"
    );
    assert!(row[6].contains("HTTP 403 from the converter"), "{text}");

    // Items that are not S3 objects: refused, naming one.
    let u = TestContext::new();
    u.write("keys.txt", "a\n");
    u.plan("[job]\nname = \"lines\"\nstate = \"state.db\"\n[source]\nlines = \"keys.txt\"\n[[step]]\nrun = { shell = \"exit 1\" }\n[limits]\nretries = 0\n");
    u.redrive(&["run", "plan.toml", "-q"]).expect_code(1);
    let refused = u
        .redrive(&[
            "failed",
            "plan.toml",
            "--csv",
            "r.csv",
            "--csv-format",
            "s3-batch",
        ])
        .expect_code(2);
    assert!(
        refused.stderr.contains("item `a` is not an S3 object"),
        "{}",
        refused.stderr
    );
}
