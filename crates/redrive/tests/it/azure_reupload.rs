//! S1 (seed 000) end to end on Azurite: work items from a CSV expand into their files by a
//! prefix listing; each file is copied as `{WorkItemId}-{FileName}`, create-only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::common::{
    TestContext, azure_connection_string, azure_operator, create_container, create_queue, get,
    peek_messages, put, queue_length, runtime, take_messages, unique,
};

/// How many work items, and files in each.
#[derive(Clone, Copy)]
pub struct Size {
    pub work_items: usize,
    pub files: usize,
}

const SMALL: Size = Size {
    work_items: 40,
    files: 25,
};

pub struct S1 {
    pub t: TestContext,
    pub size: Size,
    pub results: String,
    pub queue: String,
}

fn body(job: usize, item: usize, file: usize) -> String {
    format!("{{\"job\":{job},\"workitem\":{item},\"file\":{file}}}")
}

/// The result blob of a file.
fn result_name(item: usize, file: usize) -> String {
    format!("wi{item:02}-file{file:02}.json")
}

fn setup() -> S1 {
    setup_with(SMALL, &azure_connection_string())
}

/// Fills a source container with `size` blobs under `{JobId}/{WorkItemId}/`, and writes the
/// plan; redrive reaches Azurite through `connection_string` (proxies, for the fault tests).
pub fn setup_with(size: Size, connection_string: &str) -> S1 {
    let source = unique("s1-src");
    let results = unique("s1-results");
    let queue = unique("s1-queue");
    create_container(&source);
    create_container(&results);
    create_queue(&queue);
    let operator = azure_operator(&source);
    runtime().block_on(async {
        let uploads =
            (0..size.work_items).flat_map(|item| (0..size.files).map(move |file| (item, file)));
        futures::stream::iter(uploads)
            .map(|(item, file)| {
                let operator = operator.clone();
                async move {
                    let path = format!("job{}/wi{item:02}/file{file:02}.json", item % 3);
                    let body = body(item % 3, item, file).into_bytes();
                    crate::common::write_retrying(&operator, &path, body).await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    });
    let t = TestContext::new().env("AZURE_STORAGE_CONNECTION_STRING", connection_string);
    let mut csv = String::from("JobId,WorkItemId\n");
    for item in 0..size.work_items {
        csv.push_str(&format!("job{},wi{item:02}\n", item % 3));
    }
    t.write("failed_workitems.csv", csv);
    t.plan(&format!(
        r#"
[job]
name = "reupload-failed-workitems"
state = "state.db"

[source]
csv = "failed_workitems.csv"
key = "{{WorkItemId}}"

[expand]
list = "az://{source}/{{JobId}}/{{WorkItemId}}/"
key = "{{name}}"

[[step]]
copy = {{ from = "{{url}}", to = "az://{results}/{{WorkItemId}}-{{name}}", content_type = "application/json", if_exists = "skip" }}

[[step]]
enqueue = {{ queue = "azq://{queue}", body = '{{"blob":"{{WorkItemId}}-{{name}}"}}' }}

[limits]
items = 4
per_item = 5
"#
    ));
    S1 {
        t,
        size,
        results,
        queue,
    }
}

/// Every file copied once with its content (those in `untouched` kept as they were), and the
/// state says so.
pub fn assert_all_copied(s1: &S1, untouched: &[(&str, &str)]) {
    let Size { work_items, files } = s1.size;
    let results = azure_operator(&s1.results);
    for item in 0..work_items {
        for file in 0..files {
            let name = result_name(item, file);
            let got = get(&results, &name).unwrap_or_else(|| panic!("{name} is missing"));
            match untouched.iter().find(|(n, _)| *n == name) {
                Some((_, original)) => {
                    assert_eq!(got, original.as_bytes(), "{name} was overwritten")
                }
                None => assert_eq!(
                    String::from_utf8(got).unwrap(),
                    body(item % 3, item, file),
                    "{name}"
                ),
            }
        }
    }
    let t = &s1.t;
    assert_eq!(
        t.count(&format!(
            "SELECT count(*) FROM workitems WHERE status = 'done' AND files_total = {files} AND files_done = {files}"
        )),
        work_items as i64
    );
    assert_eq!(
        t.count("SELECT count(*) FROM files WHERE status = 'done'"),
        (work_items * files) as i64
    );
    assert_eq!(
        t.count("SELECT count(*) FROM files"),
        (work_items * files) as i64,
        "no file listed twice"
    );
}

/// Takes every message of the queue: each file's message is there at least once, no other
/// is. Returns how many are duplicates (a message sent again after a crash or a lost answer).
pub fn assert_every_message_at_least_once(s1: &S1) -> usize {
    let mut seen: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for text in take_messages(&s1.queue) {
        *seen.entry(text).or_default() += 1;
    }
    let Size { work_items, files } = s1.size;
    let mut duplicates = 0;
    for item in 0..work_items {
        for file in 0..files {
            let text = format!("{{\"blob\":\"{}\"}}", result_name(item, file));
            let count = seen
                .remove(&text)
                .unwrap_or_else(|| panic!("no message for {text}"));
            duplicates += count - 1;
        }
    }
    assert!(seen.is_empty(), "unexpected messages: {seen:?}");
    duplicates
}

#[test]
fn work_items_expand_into_files_copied_create_only() {
    let s1 = setup();
    let results = azure_operator(&s1.results);
    put(&results, "wi07-file03.json", b"EXISTED BEFORE");
    let out = s1.t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        out.stderr
            .contains("done 40, skipped 0, failed 0; children done 1000"),
        "{}",
        out.stderr
    );
    assert_all_copied(&s1, &[("wi07-file03.json", "EXISTED BEFORE")]);
    assert_eq!(
        queue_length(&s1.queue),
        1000,
        "exactly one message per file"
    );
    let mut bodies = peek_messages(&s1.queue);
    bodies.sort();
    assert!(
        bodies
            .iter()
            .all(|b| b.starts_with("{\"blob\":\"wi") && b.ends_with(".json\"}")),
        "{bodies:?}"
    );
    let content_type = crate::common::content_type(&results, "wi12-file00.json");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    // status shows work items and files.
    let status = s1.t.redrive(&["status", "plan.toml"]).expect_code(0);
    assert!(
        status.stdout.contains("status        items   children"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("  done             40       1000"),
        "{}",
        status.stdout
    );
    let json =
        s1.t.redrive(&["status", "plan.toml", "--json"])
            .expect_code(0);
    assert!(
        json.stdout.contains("\"children_total\":1000"),
        "{}",
        json.stdout
    );
    // The job is done: a dry run has nothing to list.
    let dry =
        s1.t.redrive(&["run", "plan.toml", "--dry-run"])
            .expect_code(0);
    assert_eq!(dry.stdout, "", "{}", dry.stdout);
    assert!(
        dry.stderr.contains("would run 0 items; already"),
        "{}",
        dry.stderr
    );
    // Against a state that does not exist yet, it lists each work item's files, reading only.
    let dry =
        s1.t.redrive(&[
            "run",
            "plan.toml",
            "--dry-run",
            "--limit",
            "1",
            "--state",
            "none-yet.db",
        ])
        .expect_code(0);
    assert!(!s1.t.path("none-yet.db").exists(), "no state made");
    assert_eq!(dry.stdout.lines().count(), SMALL.files, "{}", dry.stdout);
    assert!(
        dry.stdout.starts_with("wi00/file00.json\tcopy: copy az://"),
        "{}",
        dry.stdout
    );
}

#[test]
fn killed_part_way_then_rerun_loses_and_duplicates_nothing() {
    let s1 = setup();
    let results = azure_operator(&s1.results);
    put(&results, "wi30-file10.json", b"EXISTED BEFORE");
    let mut child = s1.t.command(&["run", "plan.toml"]).spawn().expect("spawn");
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended before the kill: {status}");
        }
        let done = rusqlite::Connection::open_with_flags(
            s1.t.path("state.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM items WHERE parent IS NOT NULL AND status = 'done'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .ok()
        })
        .unwrap_or(0);
        if done >= 300 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    child.wait().expect("wait");
    assert!(s1.t.count("SELECT count(*) FROM files WHERE status = 'done'") < 1000);
    s1.t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_all_copied(&s1, &[("wi30-file10.json", "EXISTED BEFORE")]);
    assert_eq!(
        s1.t.count("SELECT count(*) FROM files WHERE attempts > 2"),
        0,
        "each file started at most twice"
    );
}
