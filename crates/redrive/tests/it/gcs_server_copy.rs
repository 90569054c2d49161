//! GCS → GCS copied by the service (rewrite), on gcp-storage-emulator behind a recording
//! proxy: redrive never reads the source's bytes.
//!
//! The emulator performs the rewrite but ignores `ifGenerationMatch` (it copies over the
//! target), so the tests check that the condition is sent, and answer it as GCS does (`412`)
//! in the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{
    TestContext, create_gcs_bucket, gcs_default_content_type, gcs_endpoint, gcs_env_at,
    gcs_operator, gcs_put as put, get, unique,
};
use crate::proxy::{Action, Proxy};

/// The answer GCS gives a create-only rewrite onto an existing object.
const PRECONDITION_FAILED: &str = r#"{"error":{"code":412,"message":"At least one of the pre-conditions you specified did not hold.","errors":[{"reason":"conditionNotMet"}]}}"#;

/// Two buckets, `in/f0.json` … `in/f4.json` (`body N`) in the first.
fn buckets() -> (String, String) {
    let (src, dst) = (unique("rd-gss"), unique("rd-gsd"));
    create_gcs_bucket(&src);
    create_gcs_bucket(&dst);
    let source = gcs_operator(&src);
    for i in 0..5 {
        put(
            &source,
            &format!("in/f{i}.json"),
            format!("body {i}").as_bytes(),
        );
    }
    (src, dst)
}

/// A plan whose state is `STATE.db` and manifest `STATE.jsonl`; one object at a time, so a
/// refusal is known before the next object is tried.
fn plan(t: &TestContext, state: &str, source: &str, from: &str, to: &str, extra: &str) {
    t.plan(&format!(
        r#"
[job]
name = "gcs-server-side"
state = "{state}.db"
[source]
{source}
[[step]]
copy = {{ from = "{from}", to = "{to}", manifest = "{state}.jsonl"{extra} }}
[limits]
retries = 0
items = 1
"#
    ));
}

fn count(t: &TestContext, state: &str, sql: &str) -> i64 {
    t.state_at(&format!("{state}.db"))
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// One rewrite per object (two when GCS answers that it has not finished: the second carries
/// its `rewriteToken`), the source never read by redrive and the target never looked up;
/// a create-only rewrite sends `ifGenerationMatch=0` and an existing target is kept (the 412
/// answered as GCS does); `bytes` counts the objects' sizes, from the answers when the list
/// gives none; the manifest says `server_side`; an overwrite sends no condition.
#[test]
fn gcs_to_gcs_is_rewritten_by_the_service_without_reading_the_bytes() {
    let (src, dst) = buckets();
    let target = gcs_operator(&dst);
    put(&target, "keep/f1.json", b"ORIGINAL");
    let existing = format!("/b/{dst}/o/keep%2Ff1.json");
    let unfinished = format!("/b/{dst}/o/keep%2Ff2.json");
    let proxy = Proxy::start(gcs_endpoint(), move |request| {
        let conditional = request.path.contains("ifGenerationMatch=0");
        if request.method == "POST" && conditional && request.path.contains(&existing) {
            Action::Answer(412, PRECONDITION_FAILED.to_owned())
        } else if request.path.contains(&unfinished) && !request.path.contains("rewriteToken=") {
            // GCS copies a large object over several calls: the first says where to go on.
            Action::Answer(
                200,
                r#"{"kind":"storage#rewriteResponse","totalBytesRewritten":"0","objectSize":"6","done":false,"rewriteToken":"go/on+1"}"#.to_owned(),
            )
        } else {
            Action::Forward
        }
    });
    let t = gcs_env_at(TestContext::new(), &proxy.address);

    let list = format!(r#"list = "gs://{src}/in/""#);
    let (from, to) = ("{url}", format!("gs://{dst}/keep/{{name}}"));
    plan(&t, "keep", &list, from, &to, "");
    let dry = t.redrive(&["run", "--dry-run", "plan.toml"]).expect_code(0);
    assert!(dry.stderr.contains("COPY"), "{}", dry.stderr);
    proxy.log.lock().unwrap().clear();
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    for i in [0, 2, 3, 4] {
        assert_eq!(
            get(&target, &format!("keep/f{i}.json")).as_deref(),
            Some(format!("body {i}").as_bytes())
        );
    }
    assert_eq!(
        get(&target, "keep/f1.json").as_deref(),
        Some(&b"ORIGINAL"[..])
    );
    let requests = std::mem::take(&mut *proxy.log.lock().unwrap());
    let rewrites: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/rewriteTo/"))
        .collect();
    assert_eq!(
        rewrites.len(),
        6,
        "one request an object, two for the one GCS had not finished: {requests:?}"
    );
    assert!(
        rewrites
            .iter()
            .any(|r| r.contains("keep%2Ff2.json") && r.contains("rewriteToken=go%2Fon%2B1")),
        "the second call goes on with the token: {rewrites:?}"
    );
    assert!(
        rewrites.iter().all(|r| r.contains("ifGenerationMatch=0")
            && r.contains(&format!("/b/{src}/o/in%2Ff"))),
        "{rewrites:?}"
    );
    let others: Vec<&String> = requests
        .iter()
        .filter(|r| !r.contains("/rewriteTo/") && !r.contains(&format!("/b/{src}/o?")))
        .collect();
    assert!(
        others.is_empty(),
        "only the listing and the rewrites (no read, no lookup): {others:?}"
    );
    assert_eq!(
        count(
            &t,
            "keep",
            "SELECT count(*) FROM items WHERE status = 'done'"
        ),
        5
    );
    assert_eq!(count(&t, "keep", "SELECT sum(bytes) FROM items"), 4 * 6);
    let manifest = t.read("keep.jsonl");
    assert_eq!(manifest.lines().count(), 4, "{manifest}");
    assert!(
        manifest.lines().all(|l| l.contains("\"server_side\":true")),
        "{manifest}"
    );

    // A list of names gives no sizes: the rewrite's answer does, with no second request.
    // Overwrite: no condition.
    put(&target, "over/f1.json", b"ORIGINAL");
    t.write("names.txt", "f0.json\nf1.json\nf2.json\nf3.json\nf4.json\n");
    let (from, to) = (
        format!("gs://{src}/in/{{line}}"),
        format!("gs://{dst}/over/{{line}}"),
    );
    plan(
        &t,
        "over",
        r#"lines = "names.txt""#,
        &from,
        &to,
        r#", if_exists = "overwrite""#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    for i in 0..5 {
        assert_eq!(
            get(&target, &format!("over/f{i}.json")).as_deref(),
            Some(format!("body {i}").as_bytes())
        );
    }
    let requests = std::mem::take(&mut *proxy.log.lock().unwrap());
    assert_eq!(
        requests.len(),
        5,
        "a rewrite an object, nothing else: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.contains("/rewriteTo/") && !r.contains("ifGenerationMatch")),
        "{requests:?}"
    );
    assert_eq!(count(&t, "over", "SELECT sum(bytes) FROM items"), 5 * 6);
}

/// A rewrite the service refuses (`403`: the target's credentials cannot read the source) makes
/// `mode = "auto"` stream that store pair instead, said once; `mode = "server"` fails the item
/// and says how to stream it.
#[test]
fn a_refused_rewrite_streams_in_auto_mode_and_fails_in_server_mode() {
    let (src, dst) = buckets();
    let target = gcs_operator(&dst);
    let proxy = Proxy::start(gcs_endpoint(), |request| {
        gcs_default_content_type(request);
        if request.path.contains("/rewriteTo/") {
            Action::Answer(
                403,
                r#"{"error":{"code":403,"message":"redrive@example.iam.gserviceaccount.com does not have storage.objects.get access"}}"#.to_owned(),
            )
        } else {
            Action::Forward
        }
    });
    let t = gcs_env_at(TestContext::new(), &proxy.address);
    let list = format!(r#"list = "gs://{src}/in/""#);
    let to = format!("gs://{dst}/auto/{{name}}");
    plan(&t, "auto", &list, "{url}", &to, "");
    let out = t.redrive(&["run", "plan.toml", "-v"]).expect_code(0);
    for i in 0..5 {
        assert_eq!(
            get(&target, &format!("auto/f{i}.json")).as_deref(),
            Some(format!("body {i}").as_bytes())
        );
    }
    crate::common::assert_refused_once(&out.stderr);
    let requests = proxy.requests();
    let tried = requests
        .iter()
        .filter(|r| r.contains("/rewriteTo/"))
        .count();
    assert_eq!(
        tried, 1,
        "tried until the first refusal, not once an object: {requests:?}"
    );

    let to = format!("gs://{dst}/server/{{name}}");
    plan(&t, "server", &list, "{url}", &to, r#", mode = "server""#);
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    let error: String = t
        .state_at("server.db")
        .query_row("SELECT error FROM items LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert!(
        error.contains("403")
            && error.contains("mode = \"server\"")
            && error.contains("mode = \"auto\""),
        "{error}"
    );
    assert!(get(&target, "server/f0.json").is_none());
}

/// `checksum = "md5"` keeps the service's copy: the source's MD5 and the target's, as GCS
/// reports them (two lookups, no bytes read), are compared and written to the manifest; a
/// target that reports another MD5 is removed and the item fails (tried again with retries).
#[test]
fn an_md5_checked_rewrite_compares_what_the_service_reports_and_removes_a_wrong_copy() {
    let (src, dst) = buckets();
    let target = gcs_operator(&dst);
    let wrong = format!("/b/{dst}/o/bad%2Ff3.json");
    let proxy = Proxy::start(gcs_endpoint(), move |request| {
        // The target's metadata, its md5Hash that of other bytes.
        if request.method == "GET" && request.path.starts_with(&format!("/storage/v1{wrong}")) {
            Action::Answer(
                200,
                r#"{"name":"bad/f3.json","size":"6","md5Hash":"AAAAAAAAAAAAAAAAAAAAAA==","etag":"x","updated":"2026-01-01T00:00:00Z","contentType":"application/octet-stream"}"#.to_owned(),
            )
        } else {
            Action::Forward
        }
    });
    let t = gcs_env_at(TestContext::new(), &proxy.address);
    t.write("names.txt", "f0.json\nf3.json\n");
    let from = format!("gs://{src}/in/{{line}}");
    for prefix in ["good", "bad"] {
        let to = format!("gs://{dst}/{prefix}/{{line}}");
        let extra = r#", checksum = "md5", mode = "server""#;
        plan(&t, prefix, r#"lines = "names.txt""#, &from, &to, extra);
        let code = if prefix == "good" { 0 } else { 1 };
        t.redrive(&["run", "plan.toml"]).expect_code(code);
    }
    let manifest = t.read("good.jsonl");
    crate::common::assert_server_md5(&manifest, "body 0");
    crate::common::assert_server_md5(&manifest, "body 3");
    let requests = proxy.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.contains("alt=media") || r.starts_with("POST /upload/")),
        "no bytes through redrive: {requests:?}"
    );
    assert_eq!(get(&target, "bad/f0.json").as_deref(), Some(&b"body 0"[..]));
    assert!(
        get(&target, "bad/f3.json").is_none(),
        "the wrong copy removed"
    );
    let error: String = t
        .state_at("bad.db")
        .query_row("SELECT error FROM items WHERE error IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        error.contains("checksum mismatch") && error.contains("removed"),
        "{error}"
    );
}
