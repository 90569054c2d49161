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
