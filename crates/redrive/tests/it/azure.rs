//! `copy` and `list` against Azure Blob (Azurite started by `scripts/test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{
    AZURITE_KEY, TestContext, azure_endpoint, azure_env, azure_operator, content_type,
    create_container, get, make_inputs, put, unique,
};

#[test]
fn local_to_azure_then_azure_to_azure_create_only_with_content_type() {
    let container = unique("rd-az");
    create_container(&container);
    let operator = azure_operator(&container);
    put(&operator, "dst/f00001.txt", b"ORIGINAL");

    let t = azure_env(TestContext::new());
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
copy = {{ from = "{{path}}", to = "az://{container}/dst/{{name}}", content_type = "application/json" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&operator, "dst/f00000.txt").as_deref(),
        Some(&b"body 0"[..])
    );
    assert_eq!(
        content_type(&operator, "dst/f00000.txt").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        get(&operator, "dst/f00001.txt").as_deref(),
        Some(&b"ORIGINAL"[..]),
        "existing blob untouched"
    );
    assert_eq!(
        t.count("SELECT bytes FROM items WHERE key = 'f00000.txt'"),
        6
    );

    // Azure → Azure, the seed-000 shape: `{WorkItemId}-{FileName}`, skip existing.
    let t2 = azure_env(TestContext::new());
    t2.plan(&format!(
        r#"
[job]
name = "azaz"
state = "state.db"
[source]
list = "azure://{container}/dst/"
[[step]]
copy = {{ from = "{{url}}", to = "az://{container}/results/wi7-{{name}}", content_type = "application/json", if_exists = "skip" }}
"#
    ));
    t2.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&operator, "results/wi7-f00003.txt").as_deref(),
        Some(&b"body 3"[..])
    );
    assert_eq!(
        t2.count("SELECT count(*) FROM items WHERE status = 'done'"),
        5
    );
    // Rerun after a reset: every target exists, nothing is overwritten, all count as done.
    put(&operator, "results/wi7-f00004.txt", b"CHANGED");
    t2.redrive(&["reset", "plan.toml", "--status", "done"])
        .expect_code(0);
    t2.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&operator, "results/wi7-f00004.txt").as_deref(),
        Some(&b"CHANGED"[..])
    );
    assert_eq!(t2.count("SELECT sum(bytes) FROM items"), 0);
}

#[test]
fn blob_urls_as_a_kusto_uri_column_holds_them_via_a_store_table() {
    let container = unique("rd-uri");
    create_container(&container);
    let operator = azure_operator(&container);
    put(&operator, "job1/wi1/a.json", b"{\"a\":1}");
    let endpoint = azure_endpoint();
    let t = TestContext::new().env("AZ_KEY", AZURITE_KEY);
    t.write(
        "files.csv",
        format!("WorkItemId,FileName,Uri\nwi1,a.json,{endpoint}/{container}/job1/wi1/a.json\n"),
    );
    t.plan(&format!(
        r#"
[job]
name = "uri"
state = "state.db"
[source]
csv = "files.csv"
key = "{{WorkItemId}}/{{FileName}}"
[[step]]
copy = {{ from = "{{Uri}}", to = "{endpoint}/{container}/results/{{WorkItemId}}-{{FileName}}" }}
[store."{endpoint}"]
account_name = "devstoreaccount1"
account_key = "${{AZ_KEY}}"
allow_http = true
"#
    ));
    let out = t.redrive(&["run", "plan.toml", "-v"]).expect_code(0);
    assert!(!out.stderr.contains(AZURITE_KEY), "the key is masked");
    assert_eq!(
        get(&operator, "results/wi1-a.json").as_deref(),
        Some(&b"{\"a\":1}"[..])
    );
}

#[test]
fn az_urls_without_an_account_stop_with_what_to_set() {
    let t = TestContext::new();
    make_inputs(&t, 1);
    t.plan(
        r#"
[job]
name = "noacct"
state = "state.db"
[source]
glob = "in/*.txt"
[[step]]
copy = { from = "{path}", to = "az://c/{name}" }
"#,
    );
    let mut command = t.command(&["run", "plan.toml"]);
    for var in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT",
    ] {
        command.env_remove(var);
    }
    let output = command.output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("export AZURE_STORAGE_CONNECTION_STRING"),
        "{stderr}"
    );
}

/// Azure → Azure is copied by the service (Copy Blob From URL, synchronous): through a
/// recording proxy, no source blob is read by redrive, one PUT per object; an existing target
/// is kept by `If-None-Match: *` (no HEAD first); the manifest says `server_side`, `bytes`
/// counts the object sizes. A copy that sets `content_type` streams instead.
#[test]
fn azure_to_azure_is_copied_server_side_without_reading_the_bytes() {
    let (src, dst) = (unique("rd-sss"), unique("rd-ssd"));
    create_container(&src);
    create_container(&dst);
    let (source, target) = (azure_operator(&src), azure_operator(&dst));
    for i in 0..5 {
        put(
            &source,
            &format!("in/f{i}.json"),
            format!("body {i}").as_bytes(),
        );
    }
    put(&target, "out/f1.json", b"ORIGINAL");
    let proxy = crate::proxy::Proxy::start(crate::common::azure_origin(), |_| {
        crate::proxy::Action::Forward
    });
    let t = crate::common::azure_env_via(&proxy);
    t.plan(&format!(
        r#"
[job]
name = "server-side"
state = "state.db"
[source]
list = "az://{src}/in/"
[[step]]
copy = {{ from = "{{url}}", to = "az://{dst}/out/{{name}}", manifest = "manifest.jsonl" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    for i in [0, 2, 3, 4] {
        assert_eq!(
            get(&target, &format!("out/f{i}.json")).as_deref(),
            Some(format!("body {i}").as_bytes())
        );
    }
    assert_eq!(
        get(&target, "out/f1.json").as_deref(),
        Some(&b"ORIGINAL"[..]),
        "the existing target is kept"
    );
    let requests = proxy.requests();
    let reads: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/in/f"))
        .collect();
    assert!(reads.is_empty(), "redrive read source blobs: {reads:?}");
    let puts = requests.iter().filter(|r| r.starts_with("PUT ")).count();
    assert_eq!(puts, 5, "one request per object: {requests:?}");
    assert!(
        !requests.iter().any(|r| r.starts_with("HEAD ")),
        "no HEAD before a create-only copy: {requests:?}"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        5
    );
    assert_eq!(t.count("SELECT sum(bytes) FROM items"), 4 * 6);
    let manifest = t.read("manifest.jsonl");
    assert_eq!(manifest.lines().count(), 4, "{manifest}");
    assert!(
        manifest.lines().all(|l| l.contains("\"server_side\":true")),
        "{manifest}"
    );
    assert!(
        !manifest.contains("sig="),
        "no SAS in the manifest: {manifest}"
    );

    // With a content type to set, the object is streamed (GET and PUT through redrive).
    t.plan(&format!(
        r#"
[job]
name = "streamed"
state = "state2.db"
[source]
list = "az://{src}/in/"
[[step]]
copy = {{ from = "{{url}}", to = "az://{dst}/typed/{{name}}", content_type = "application/json" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        content_type(&target, "typed/f0.json").as_deref(),
        Some("application/json")
    );
    let reads = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/in/f"))
        .count();
    assert_eq!(reads, 5, "streamed: each source read once");
}

fn blocks_plan(src: &str, dst: &str, mode: &str, state: &str) -> String {
    format!(
        r#"
[job]
name = "blocks"
state = "{state}"
[source]
list = "az://{src}/in/"
[[step]]
copy = {{ from = "{{url}}", to = "az://{dst}/{mode}/{{name}}", mode = "{mode}", copy_cutoff = "5MiB", part_size = "5MiB", parts = 2, manifest = "{state}.jsonl" }}
[limits]
items = 1
"#
    )
}

/// Two containers, the source holding `in/a.bin` and `in/b.bin` of 11 MiB each: (source
/// container, target container, the target's operator, the bytes).
fn two_big_blobs() -> (String, String, opendal::Operator, Vec<u8>) {
    let (src, dst) = (unique("rd-sbs"), unique("rd-sbd"));
    create_container(&src);
    create_container(&dst);
    let source = azure_operator(&src);
    let body: Vec<u8> = (0..11 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    put(&source, "in/a.bin", &body);
    put(&source, "in/b.bin", &body);
    (src, dst.clone(), azure_operator(&dst), body)
}

/// Above `copy_cutoff` a blob is copied by the service block by block (Put Block From URL,
/// which Azurite 3.37 does) and committed with `If-None-Match: *`: the bytes are the
/// source's, an existing target is kept, the manifest says `server_side`.
#[test]
fn a_blob_above_the_cutoff_is_copied_by_the_service_in_blocks() {
    let (src, dst, target, body) = two_big_blobs();
    put(&target, "server/b.bin", b"ORIGINAL");
    let t = azure_env(TestContext::new());
    t.plan(&blocks_plan(&src, &dst, "server", "state.db"));
    let dry = t.redrive(&["run", "--dry-run", "plan.toml"]).expect_code(0);
    assert!(dry.stderr.contains("6 COPY part"), "{}", dry.stderr);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        get(&target, "server/a.bin").unwrap() == body,
        "the same bytes"
    );
    assert_eq!(
        get(&target, "server/b.bin").as_deref(),
        Some(&b"ORIGINAL"[..])
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );
    let manifest = t.read("state.db.jsonl");
    assert_eq!(manifest.lines().count(), 1, "{manifest}");
    assert!(manifest.contains("\"server_side\":true"), "{manifest}");
}

/// A service that does not implement Put Block From URL (a proxy answers it `501`, as older
/// Azurite versions did): `mode = "auto"` streams those objects instead, saying so once for
/// the store pair at `-v`, and the bytes arrive whole; `mode = "server"` fails them, saying
/// how to stream them.
#[test]
fn blocks_the_service_refuses_to_copy_are_streamed_instead() {
    let (src, dst, target, body) = two_big_blobs();
    let proxy = crate::proxy::Proxy::start(crate::common::azure_origin(), |request| {
        if request.path.contains("comp=block&") && request.headers.contains_key("x-ms-copy-source")
        {
            crate::proxy::Action::Answer(
                501,
                "<Error><Code>NotImplemented</Code></Error>".to_owned(),
            )
        } else {
            crate::proxy::Action::Forward
        }
    });
    let t = crate::common::azure_env_via(&proxy);
    t.plan(&blocks_plan(&src, &dst, "auto", "state.db"));
    let out = t.redrive(&["run", "plan.toml", "-v"]).expect_code(0);
    for name in ["a.bin", "b.bin"] {
        assert!(
            get(&target, &format!("auto/{name}")).unwrap() == body,
            "{name} whole"
        );
    }
    crate::common::assert_refused_once(&out.stderr);
    let requests = proxy.requests();
    let blocks = requests
        .iter()
        .filter(|r| r.contains("comp=block&blockid=cmVkcml2ZS"))
        .count();
    let streamed = requests
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/in/"))
        .count();
    assert!(
        (1..=2).contains(&blocks),
        "tried for the first object only: {requests:?}"
    );
    assert!(streamed >= 2, "both streamed: {requests:?}");

    t.plan(&blocks_plan(&src, &dst, "server", "state2.db"));
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    let error: String = t
        .state_at("state2.db")
        .query_row("SELECT error FROM items LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert!(
        error.contains("mode = \"server\"") && error.contains("mode = \"auto\""),
        "{error}"
    );
}

/// `mode = "server"` fails an object that cannot be copied by the service (a local source)
/// with a message that says how to stream it; `mode = "stream"` streams Azure → Azure.
#[test]
fn copy_mode_server_refuses_what_it_cannot_copy_and_stream_always_streams() {
    let dst = unique("rd-ssm");
    create_container(&dst);
    let t = azure_env(TestContext::new());
    make_inputs(&t, 1);
    t.plan(&format!(
        r#"
[job]
name = "mode"
state = "state.db"
[source]
glob = "in/*.txt"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "az://{dst}/x/{{name}}", mode = "server" }}
"#
    ));
    let out = t.redrive(&["run", "plan.toml"]);
    out.expect_code(1);
    let error: String = t
        .state()
        .query_row("SELECT error FROM items", [], |r| r.get(0))
        .unwrap();
    assert!(
        error.contains("mode = \"server\"") && error.contains("mode = \"auto\""),
        "{error}"
    );
}

/// `checksum = "md5"`: the service copies, and the MD5s Azure reports of the source and of the
/// target (Content-MD5: two HEADs, no bytes read) are compared and written to the manifest.
#[test]
fn an_md5_checked_azure_copy_is_made_by_the_service_and_compared() {
    let (src, dst) = (unique("rd-smd"), unique("rd-dmd"));
    create_container(&src);
    create_container(&dst);
    put(&azure_operator(&src), "in/a.json", b"body a");
    let proxy = crate::proxy::Proxy::start(crate::common::azure_origin(), |_| {
        crate::proxy::Action::Forward
    });
    let t = crate::common::azure_env_via(&proxy);
    t.plan(&format!(
        r#"
[job]
name = "server-side-md5"
state = "state.db"
[source]
list = "az://{src}/in/"
[[step]]
copy = {{ from = "{{url}}", to = "az://{dst}/out/{{name}}", manifest = "manifest.jsonl", checksum = "md5", mode = "server" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        get(&azure_operator(&dst), "out/a.json").as_deref(),
        Some(&b"body a"[..])
    );
    let requests = proxy.requests();
    let methods: Vec<&str> = requests
        .iter()
        .filter(|r| r.contains("/a.json"))
        .filter_map(|r| r.split(' ').next())
        .collect();
    assert_eq!(
        methods,
        ["HEAD", "PUT", "HEAD"],
        "the source's MD5, the copy, the target's MD5: {requests:?}"
    );
    crate::common::assert_server_md5(&t.read("manifest.jsonl"), "body a");
}
