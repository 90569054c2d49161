//! S1 with the file list from Kusto (the fake in `kusto_fake`), copies on Azurite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{
    AZURITE_KEY, TestContext, azure_endpoint, azure_env, azure_operator, create_container,
    create_queue, get, put, queue_length, unique,
};
use crate::kusto_fake::{FakeKusto, error, v2};

const TOKEN: &str = "kusto-bearer-token-123456";

/// 5 work items × 4 files in a source container; the fake lists each work item's files.
/// `fake_status`: 200 answers, 401 refuses every token, 503 answers each work item's first
/// query with 503 ServiceUnavailable.
fn setup(fake_status: u16) -> (TestContext, FakeKusto, String, String, String) {
    let source = unique("k-src");
    let results = unique("k-results");
    let queue = unique("k-queue");
    create_container(&source);
    create_container(&results);
    create_queue(&queue);
    let operator = azure_operator(&source);
    for item in 0..5 {
        for file in 0..4 {
            put(
                &operator,
                &format!("wi{item}/file{file}.json"),
                format!("{{\"wi\":{item},\"f\":{file}}}").as_bytes(),
            );
        }
    }
    let endpoint = azure_endpoint();
    let base = format!("{endpoint}/{source}");
    let busy = std::sync::Mutex::new(std::collections::HashSet::new());
    let fake = FakeKusto::start(move |request| {
        if fake_status == 401 {
            return (401, error("Unauthorized", "The token is invalid"));
        }
        if fake_status == 503 && busy.lock().unwrap().insert(request.csl.clone()) {
            return (503, error("ServiceUnavailable", "The service is busy"));
        }
        if request.csl.contains("Filez") {
            return (
                400,
                error(
                    "SEM0100",
                    "'where' operator: Failed to resolve table or column expression named 'Filez'",
                ),
            );
        }
        // The work item is the first string literal in the query.
        let item = request.csl.split('"').nth(1).unwrap_or_default().to_owned();
        let rows: Vec<Vec<String>> = (0..4)
            .map(|file| {
                vec![
                    format!("{base}/{item}/file{file}.json"),
                    format!("file{file}.json"),
                ]
            })
            .collect();
        (200, v2(&["Uri", "FileName"], &rows))
    });
    let t = azure_env(TestContext::new())
        .env("KUSTO_TOKEN", TOKEN)
        .env("AZ_KEY", AZURITE_KEY);
    let mut csv = String::from("JobId,WorkItemId\n");
    for item in 0..5 {
        csv.push_str(&format!("job,wi{item}\n"));
    }
    t.write("failed_workitems.csv", csv);
    t.plan(&format!(
        r#"
[job]
name = "reupload-kusto"
state = "state.db"

[source]
csv = "failed_workitems.csv"
key = "{{WorkItemId}}"

[expand]
kusto = {{ cluster = "{cluster}", database = "engineeringdata", token = "${{KUSTO_TOKEN}}",
          query = "Files | where WorkItemId == {{WorkItemId|kql}} | project Uri, FileName" }}
key = "{{FileName}}"

[[step]]
copy = {{ from = "{{Uri}}", to = "az://{results}/{{WorkItemId}}-{{FileName}}", content_type = "application/json" }}

[[step]]
enqueue = {{ queue = "azq://{queue}", body = '{{"blob":"{{WorkItemId}}-{{FileName}}"}}' }}

[store."{endpoint}"]
account_name = "devstoreaccount1"
account_key = "${{AZ_KEY}}"
allow_http = true

[limits]
retries = 1
"#,
        cluster = fake.url
    ));
    (t, fake, source, results, queue)
}

#[test]
fn files_listed_by_kusto_are_copied_and_a_missing_blob_fails_only_its_work_item() {
    let (t, fake, source, results, queue) = setup(200);
    // One source blob is gone before the run.
    crate::common::runtime().block_on(async {
        azure_operator(&source)
            .delete("wi3/file2.json")
            .await
            .unwrap()
    });

    let out = t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(
        out.stderr
            .contains("done 4, skipped 0, failed 1; children done 19, skipped 0, failed 1"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(TOKEN), "the token is masked");
    let results_operator = azure_operator(&results);
    assert_eq!(
        get(&results_operator, "wi0-file1.json").as_deref(),
        Some(&b"{\"wi\":0,\"f\":1}"[..])
    );
    assert_eq!(get(&results_operator, "wi3-file2.json"), None);
    assert_eq!(
        queue_length(&queue),
        19,
        "a message only after the copy succeeded"
    );

    // What Kusto was asked.
    let requests = fake.requests();
    assert_eq!(requests.len(), 5, "each work item listed once");
    assert!(
        requests
            .iter()
            .all(|r| r.path == "/v2/rest/query" && r.db == "engineeringdata")
    );
    assert!(
        requests
            .iter()
            .all(|r| r.authorization == format!("Bearer {TOKEN}"))
    );
    assert!(
        requests
            .iter()
            .any(|r| r.csl == "Files | where WorkItemId == \"wi3\" | project Uri, FileName")
    );

    // The failed file names its blob and the error; its work item fails with the count.
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed.stdout.contains("wi3/file2.json\tcopy\t"),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains("/wi3/file2.json`"),
        "{}",
        failed.stdout
    );
    assert!(failed.stdout.contains("NotFound"), "{}", failed.stdout);
    assert_eq!(t.count("SELECT count(*) FROM workitems WHERE key = 'wi3' AND status = 'failed' AND files_failed = 1"), 1);
    assert_eq!(
        t.count("SELECT count(*) FROM workitems WHERE status = 'done'"),
        4
    );
    let status = t.redrive(&["status", "plan.toml"]).expect_code(0);
    assert!(
        status
            .stdout
            .contains("Items in progress or failed, with their children"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("  failed         4       3       1  wi3\n"),
        "{}",
        status.stdout
    );

    // `failed --csv` lists exactly it; run as a new source it retries exactly it.
    t.redrive(&["failed", "plan.toml", "--csv", "retry.csv"])
        .expect_code(0);
    let csv = t.read("retry.csv");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.starts_with("FileName,JobId,Uri,WorkItemId\nfile2.json,job,"),
        "{csv}"
    );
    put(
        &azure_operator(&source),
        "wi3/file2.json",
        b"{\"wi\":3,\"f\":2}",
    );
    let plan = t.read("plan.toml");
    let start = plan.find("[expand]").unwrap();
    let end = plan.find("[[step]]").unwrap();
    let retry_plan = plan[..start]
        .replace("failed_workitems.csv", "retry.csv")
        .replace("{WorkItemId}\"", "{WorkItemId}/{FileName}\"")
        .replace("state.db", "retry.db")
        + &plan[end..];
    t.write("retry.toml", retry_plan);
    let out = t.redrive(&["run", "retry.toml"]).expect_code(0);
    assert!(
        out.stderr.contains("This run: done 1, skipped 0, failed 0"),
        "{}",
        out.stderr
    );
    assert_eq!(
        get(&results_operator, "wi3-file2.json").as_deref(),
        Some(&b"{\"wi\":3,\"f\":2}"[..])
    );
    assert_eq!(queue_length(&queue), 20);
}

#[test]
fn kusto_errors_are_reported_with_kusto_s_own_message() {
    let (t, _fake, _, _, _) = setup(401);
    let out = t.redrive(&["run", "plan.toml"]).expect_code(1);
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed
            .stdout
            .contains("cannot list the children of `wi0`: kusto http://127.0.0.1:"),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains(
            "Kusto refused the token (401 Unauthorized): Unauthorized: The token is invalid"
        ),
        "{}",
        failed.stdout
    );
    assert!(!out.stderr.contains(TOKEN) && !failed.stdout.contains(TOKEN));

    let (t, _fake, _, _, _) = setup(200);
    t.plan(
        &t.read("plan.toml")
            .replace("query = \"Files |", "query = \"Filez |"),
    );
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed.stdout.contains("Kusto answered 400: SEM0100: 'where' operator: Failed to resolve table or column expression named 'Filez'"),
        "{}",
        failed.stdout
    );
}

#[test]
fn kql_escapes_values_holding_quotes() {
    let (t, fake, _, _, _) = setup(200);
    t.write(
        "failed_workitems.csv",
        "JobId,WorkItemId\njob,\"we\"\"ird\\one\"\n",
    );
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    let csl = fake.requests().pop().map(|r| r.csl).unwrap_or_default();
    assert_eq!(
        csl,
        r#"Files | where WorkItemId == "we\"ird\\one" | project Uri, FileName"#
    );
}

#[test]
fn transient_kusto_errors_are_retried() {
    let (t, fake, _, _, _) = setup(503);
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(out.stderr.contains("children done 20"), "{}", out.stderr);
    assert_eq!(
        fake.requests().len(),
        10,
        "each work item's query twice: 503, then 200"
    );
}
