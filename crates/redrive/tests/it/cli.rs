//! Every command and exit code, on local files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{TestContext, make_inputs, walk};

const COPY_PLAN: &str = r#"
[job]
name = "t"
state = "state.db"

[source]
glob = "in/*.txt"
key = "{name}"

[[step]]
copy = { from = "{path}", to = "out/{name}" }

[limits]
items = 4
retries = 1
"#;

#[test]
fn run_copies_every_item_and_records_bytes() {
    let t = TestContext::new();
    make_inputs(&t, 10);
    t.plan(COPY_PLAN);
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        out.stderr
            .contains("This run: done 10, skipped 0, failed 0"),
        "{}",
        out.stderr
    );
    for i in 0..10 {
        assert_eq!(t.read(&format!("out/f{i:05}.txt")), format!("body {i}"));
    }
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done' AND attempts = 1"),
        10
    );
    assert_eq!(
        t.count("SELECT sum(bytes) FROM items"),
        (0..10)
            .map(|i| format!("body {i}").len() as i64)
            .sum::<i64>()
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE finished_at IS NULL OR started_at IS NULL"),
        0
    );
    // Nothing left: the rerun does nothing.
    let again = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        again
            .stderr
            .contains("This run: done 0, skipped 0, failed 0"),
        "{}",
        again.stderr
    );
    assert_eq!(t.count("SELECT max(attempts) FROM items"), 1);
}

#[test]
fn an_existing_target_is_not_overwritten_and_counts_as_done() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    t.write("out/f00001.txt", "ORIGINAL");
    t.plan(COPY_PLAN);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(t.read("out/f00001.txt"), "ORIGINAL");
    assert_eq!(t.read("out/f00002.txt"), "body 2");
    assert_eq!(
        t.count("SELECT bytes FROM items WHERE key = 'f00001.txt'"),
        0
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        3
    );
}

#[test]
fn if_exists_fail_and_overwrite() {
    let t = TestContext::new();
    make_inputs(&t, 2);
    t.write("out/f00000.txt", "ORIGINAL");
    t.plan(&COPY_PLAN.replace(
        "to = \"out/{name}\"",
        "to = \"out/{name}\", if_exists = \"fail\"",
    ));
    let out = t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(out.stderr.contains("1 item failed"), "{}", out.stderr);
    assert_eq!(t.read("out/f00000.txt"), "ORIGINAL");
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed.stdout.contains("exists (if_exists = \\\"fail\\\")")
            || failed.stdout.contains("exists (if_exists = \"fail\")"),
        "{}",
        failed.stdout
    );

    let t = TestContext::new();
    make_inputs(&t, 1);
    t.write("out/f00000.txt", "ORIGINAL");
    t.plan(&COPY_PLAN.replace(
        "to = \"out/{name}\"",
        "to = \"out/{name}\", if_exists = \"overwrite\"",
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(t.read("out/f00000.txt"), "body 0");
}

#[test]
fn exists_step_skips_with_reason_and_negate_skips_missing() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    t.write("done/f00000.txt", "x");
    t.plan(&COPY_PLAN.replace(
        "[[step]]\ncopy",
        "[[step]]\nexists = \"done/{name}\"\n\n[[step]]\ncopy",
    ));
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(out.stderr.contains("done 2, skipped 1"), "{}", out.stderr);
    assert_eq!(t.count("SELECT count(*) FROM items WHERE status = 'skipped' AND error = 'exists' AND key = 'f00000.txt'"), 1);
    assert!(!t.path("out/f00000.txt").exists());

    let t = TestContext::new();
    make_inputs(&t, 3);
    t.write("done/f00000.txt", "x");
    t.plan(&COPY_PLAN.replace(
        "[[step]]\ncopy",
        "[[step]]\nexists = { url = \"done/{name}\", negate = true }\n\n[[step]]\ncopy",
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'skipped' AND error = 'missing'"),
        2
    );
    assert!(t.path("out/f00000.txt").exists());
}

#[test]
fn failed_items_exit_1_then_failed_lists_and_retry_failed_resumes() {
    let t = TestContext::new();
    t.write("items.csv", "Name,Group\na,g1\nb,g2\nc,g1\n");
    t.write("src/a", "A");
    t.write("src/c", "C");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
csv = "items.csv"
key = "{Name}"
[[step]]
copy = { from = "src/{Name}", to = "out/{Group}-{Name}" }
[limits]
retries = 0
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(
        out.stderr
            .contains("1 item failed: `redrive failed plan.toml` lists it"),
        "{}",
        out.stderr
    );
    assert_eq!(t.read("out/g1-a"), "A");

    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed
            .stdout
            .starts_with("key\tstep\tattempts\terror\nb\tcopy\t1\tcannot read `"),
        "{}",
        failed.stdout
    );
    assert!(failed.stdout.contains("src/b"), "{}", failed.stdout);
    assert_eq!(
        t.count("SELECT count(*) FROM failed"),
        1,
        "the `failed` view"
    );

    // --csv writes a file usable as a csv source.
    t.redrive(&["failed", "plan.toml", "--csv", "retry.csv"])
        .expect_code(0);
    assert_eq!(t.read("retry.csv"), "Group,Name\ng2,b\n");
    let retry_plan = t.write(
        "retry.toml",
        t.read("plan.toml")
            .replace("items.csv", "retry.csv")
            .replace("state.db", "retry.db"),
    );
    t.redrive(&["validate", retry_plan.to_str().unwrap()])
        .expect_code(0);

    // A rerun without --retry-failed leaves it failed (exit 1); with it, the item is redone.
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    t.write("src/b", "B");
    t.redrive(&["run", "plan.toml", "--retry-failed"])
        .expect_code(0);
    assert_eq!(t.read("out/g2-b"), "B");
    assert_eq!(t.count("SELECT attempts FROM items WHERE key = 'b'"), 2);
}

#[test]
fn transient_errors_are_retried_and_permanent_ones_are_not() {
    // A missing source is permanent: one attempt even with retries = 3.
    let t = TestContext::new();
    t.write("keys.txt", "nope\n");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "src/{line}", to = "out/{line}" }
[limits]
retries = 3
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(out.stderr.contains("0 retries"), "{}", out.stderr);
}

#[test]
fn dry_run_prints_and_touches_nothing() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    t.plan(COPY_PLAN);
    let out = t
        .redrive(&["run", "plan.toml", "--dry-run", "--limit", "2"])
        .expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("f00000.txt\tcopy: copy "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with("out/f00000.txt (if absent)"),
        "{}",
        lines[0]
    );
    assert!(!t.path("state.db").exists(), "no state");
    assert!(!t.path("out").exists(), "nothing written");
}

/// `--dry-run` on a job part done used to list every item as if nothing had run: it reads
/// the state, lists the work left and counts what is finished.
#[test]
fn a_dry_run_reads_the_state_and_lists_only_the_work_left() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    t.plan(COPY_PLAN);
    t.redrive(&["run", "plan.toml", "--limit", "2", "--no-progress"])
        .expect_code(0);
    let out = t.redrive(&["run", "plan.toml", "--dry-run"]).expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert!(lines[0].starts_with("f00002.txt\t"), "{}", lines[0]);
    assert!(
        out.stderr.contains("would run 1 item; already 2 done"),
        "{}",
        out.stderr
    );
    assert!(!t.path("out/f00002.txt").exists(), "nothing written");
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2,
        "the state is as it was"
    );
}

#[test]
fn limit_starts_at_most_n_items() {
    let t = TestContext::new();
    make_inputs(&t, 10);
    t.plan(COPY_PLAN);
    t.redrive(&["run", "plan.toml", "--limit", "3"])
        .expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        3
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        10
    );
}

#[test]
fn a_changed_plan_is_refused_with_a_hint_and_restart_needs_yes() {
    let t = TestContext::new();
    make_inputs(&t, 2);
    t.plan(COPY_PLAN);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    t.plan(&COPY_PLAN.replace("out/{name}", "out2/{name}"));
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("was written by a different plan"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: the plan's source or steps changed"),
        "{}",
        out.stderr
    );
    // Changing only limits is not a different plan.
    t.plan(COPY_PLAN.replace("items = 4", "items = 2").as_str());
    t.redrive(&["run", "plan.toml"]).expect_code(0);

    t.plan(&COPY_PLAN.replace("out/{name}", "out2/{name}"));
    let out = t.redrive(&["run", "plan.toml", "--restart"]).expect_code(2);
    assert!(
        out.stderr.contains("hint: add --yes to confirm"),
        "{}",
        out.stderr
    );
    t.redrive(&["run", "plan.toml", "--restart", "--yes"])
        .expect_code(0);
    assert_eq!(t.read("out2/f00001.txt"), "body 1");
}

#[test]
fn status_table_and_json() {
    let t = TestContext::new();
    make_inputs(&t, 4);
    t.plan(COPY_PLAN);
    let out = t.redrive(&["status", "plan.toml"]).expect_code(2);
    assert!(out.stderr.contains("no state at"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: run `redrive run plan.toml` first"),
        "{}",
        out.stderr
    );

    // One item done and three pending, whatever the loader had read when a `--limit` run
    // stopped it: run all, then put three back.
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    t.redrive(&[
        "reset",
        "plan.toml",
        "f00001.txt",
        "f00002.txt",
        "f00003.txt",
    ])
    .expect_code(0);
    let table = t.redrive(&["status", "plan.toml"]).expect_code(0);
    assert!(
        table.stdout.contains("  done              1\n"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("  pending           3\n"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("Unfinished and failed items by step:"),
        "{}",
        table.stdout
    );
    let json = t.redrive(&["status", "plan.toml", "--json"]).expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(value["items"]["done"], 1);
    assert_eq!(value["total"], 4);
    assert_eq!(value["job"], "t");
    // --state alone, without the plan.
    let by_state = t
        .redrive(&["status", "--state", "state.db", "missing.toml", "--json"])
        .expect_code(0);
    assert!(
        by_state.stdout.contains("\"total\":4"),
        "{}",
        by_state.stdout
    );
}

#[test]
fn reset_and_skip_by_hand() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    t.plan(COPY_PLAN);
    // Two items done and one pending (a `--limit 2` run may stop the loader before it has
    // read the third).
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    t.redrive(&["reset", "plan.toml", "f00002.txt"])
        .expect_code(0);
    std::fs::remove_file(t.path("out/f00002.txt")).unwrap();
    let out = t
        .redrive(&["skip", "plan.toml", "f00002.txt"])
        .expect_code(0);
    assert!(
        out.stdout.contains("Marked 1 item skipped."),
        "{}",
        out.stdout
    );
    let out = t
        .redrive(&["reset", "plan.toml", "f00000.txt", "nope"])
        .expect_code(0);
    assert!(
        out.stdout.contains("Reset 1 item to pending"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(
            "1 of the 2 keys are not in the state, nothing was done for them: `nope` (its keys look like `f0000"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'pending' AND step_index = 0"),
        1
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );
    assert_eq!(
        t.count(
            "SELECT count(*) FROM items WHERE status = 'skipped' AND error = 'skipped by hand'"
        ),
        1
    );
    assert!(!t.path("out/f00002.txt").exists());

    let out = t
        .redrive(&["reset", "plan.toml", "--status", "done"])
        .expect_code(0);
    assert!(out.stdout.contains("Reset 2 items"), "{}", out.stdout);
    let out = t
        .redrive(&["reset", "plan.toml", "--status", "finished"])
        .expect_code(2);
    assert!(
        out.stderr.contains("unknown status `finished`"),
        "{}",
        out.stderr
    );
    t.redrive(&["reset", "plan.toml"]).expect_code(2);
}

#[test]
fn validate_reports_plan_errors_with_exit_2() {
    let t = TestContext::new();
    make_inputs(&t, 1);
    t.plan(COPY_PLAN);
    let out = t.redrive(&["validate", "plan.toml"]).expect_code(0);
    assert!(
        out.stdout
            .contains("source  glob (fields: name, path, size)"),
        "{}",
        out.stdout
    );

    t.plan(&COPY_PLAN.replace("items = 4", "items = 4\nworkers = 2"));
    let out = t.redrive(&["validate", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("plan.toml: in `limits.workers`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("unknown field `workers`, expected one of `items`, `per_item`, `retries`"),
        "{}",
        out.stderr
    );

    t.plan(&COPY_PLAN.replace("out/{name}", "out/{nmae}"));
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains(
            "field `nmae` used in `out/{nmae}` does not exist; available fields: name, path, size"
        ),
        "{}",
        out.stderr
    );
    assert!(!t.path("state.db").exists(), "a plan error writes no state");

    let out = t.redrive(&["validate", "nope.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("cannot read plan `nope.toml`"),
        "{}",
        out.stderr
    );

    let out = t.redrive(&["run"]).expect_code(2);
    assert!(out.stderr.contains("PLAN"), "{}", out.stderr);
}

#[test]
fn a_malformed_csv_row_names_file_and_line() {
    let t = TestContext::new();
    t.write("items.csv", "Name,Group\na,g1\nb\n");
    t.write("src/a", "A");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
csv = "items.csv"
key = "{Name}"
[[step]]
copy = { from = "src/{Name}", to = "out/{Name}" }
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr
            .contains("items.csv:3: the row has 1 fields but the header has 2"),
        "{}",
        out.stderr
    );
    // The good row before it was recorded and run, and the summary counts it; a fixed file
    // resumes.
    assert_eq!(t.read("out/a"), "A");
    assert!(out.stderr.contains("This run: done 1,"), "{}", out.stderr);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        1
    );
    t.write("items.csv", "Name,Group\na,g1\nb,g2\n");
    t.write("src/b", "B");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );
}

#[test]
fn env_values_are_masked_in_output_state_and_metrics() {
    let secret = "sekrit-Value-1234";
    let t = TestContext::new().env("REDRIVE_TEST_SECRET", secret);
    t.write("keys.txt", "k1\n");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "src/${REDRIVE_TEST_SECRET}/{line}", to = "out/{line}" }
[limits]
retries = 0
"#,
    );
    let run = t
        .redrive(&["run", "plan.toml", "-vv", "--metrics", "m.json"])
        .expect_code(1);
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    let dry = t.redrive(&["run", "plan.toml", "--dry-run"]).expect_code(0);
    let error: String = t
        .state()
        .query_row("SELECT error FROM items", [], |r| r.get(0))
        .unwrap();
    assert!(error.contains("src/***/k1"), "{error}");
    for text in [
        &run.stdout,
        &run.stderr,
        &failed.stdout,
        &dry.stdout,
        &error,
        &t.read("m.json"),
    ] {
        assert!(!text.contains(secret), "secret leaked in: {text}");
    }
    let missing = TestContext::new();
    missing.write("keys.txt", "k1\n");
    missing.plan(&t.read("plan.toml"));
    let out = missing.redrive(&["validate", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr
            .contains("environment variable `REDRIVE_TEST_SECRET`"),
        "{}",
        out.stderr
    );
}

#[test]
fn metrics_file_has_the_documented_fields() {
    let t = TestContext::new();
    make_inputs(&t, 5);
    t.plan(COPY_PLAN);
    t.redrive(&["run", "plan.toml", "--metrics", "metrics.json"])
        .expect_code(0);
    let metrics: serde_json::Value = serde_json::from_str(&t.read("metrics.json")).expect("json");
    for field in [
        "processed",
        "failed",
        "skipped",
        "bytes",
        "duration_s",
        "items_per_sec",
        "retries",
        "throttled",
        "storage_calls_retried",
        "finished_at",
    ] {
        assert!(metrics.get(field).is_some(), "missing {field}: {metrics}");
    }
    assert_eq!(metrics["processed"], 5);
    assert_eq!(metrics["bytes"], 5 * 6);
}

#[test]
fn progress_lines_when_not_a_terminal() {
    // Not a terminal: no bar; the plain line comes every 5 s, so a short run prints only the summary.
    let t = TestContext::new();
    make_inputs(&t, 2);
    t.plan(COPY_PLAN);
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "no escape codes: {}",
        out.stderr
    );
    assert!(out.stderr.contains("Job t (state "), "{}", out.stderr);
    let quiet = t.redrive(&["run", "plan.toml", "-q"]).expect_code(0);
    assert_eq!(quiet.stderr, "");
}

#[test]
fn help_teaches() {
    let t = TestContext::new();
    let out = t.redrive(&["--help"]).expect_code(0);
    for word in [
        "run",
        "validate",
        "status",
        "failed",
        "reset",
        "skip",
        "diff",
        "cp",
        "Exit codes",
    ] {
        assert!(out.stdout.contains(word), "{word}: {}", out.stdout);
    }
    let out = t.redrive(&["run", "--help"]).expect_code(0);
    for flag in [
        "--dry-run",
        "--limit",
        "--retry-failed",
        "--restart",
        "--yes",
        "--concurrency",
        "--metrics",
        "--telemetry",
        "--rate",
        "--state",
    ] {
        assert!(out.stdout.contains(flag), "{flag}: {}", out.stdout);
    }
}

#[test]
fn a_local_listing_gives_key_name_size_and_url() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    t.write("in/sub/deep.txt", "deeper");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
list = "in/"
[[step]]
copy = { from = "{url}", to = "out/{size}-{name}" }
"#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(t.read("out/6-f00002.txt"), "body 2");
    assert_eq!(t.read("out/6-deep.txt"), "deeper");
    let key: String = t
        .state()
        .query_row(
            "SELECT key FROM items WHERE key LIKE '%deep.txt'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(key, t.path("in/sub/deep.txt").display().to_string());

    // Not recursive: the subfolder is left out.
    let flat = TestContext::new();
    make_inputs(&flat, 2);
    flat.write("in/sub/deep.txt", "deeper");
    flat.plan(
        &t.read("plan.toml")
            .replace("list = \"in/\"", "list = \"in/\"\nrecursive = false"),
    );
    flat.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(flat.count("SELECT count(*) FROM items"), 2);
}

#[test]
fn a_field_cannot_take_a_copy_outside_its_folder() {
    let t = TestContext::new();
    let escaped = format!("escaped-{}.txt", std::process::id());
    t.write("items.csv", format!("name\n../../{escaped}\nok.txt\n"));
    t.write("src", "hi");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
csv = "items.csv"
key = "{name}"
[[step]]
copy = { from = "src", to = "out/{name}" }
[limits]
retries = 0
"#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(!t.dir.path().parent().unwrap().join(&escaped).exists());
    assert_eq!(t.read("out/ok.txt"), "hi");
    let error: String = t
        .state()
        .query_row("SELECT error FROM failed", [], |r| r.get(0))
        .unwrap();
    assert!(
        error.contains("leaves the place `out/{name}` points to"),
        "{error}"
    );
}

/// A local folder is listed with its files' sizes, in its subfolders too; a folder that is not
/// there (a mistyped path) is an error naming it, not a copy of nothing that exits 0.
#[test]
fn cp_of_a_local_folder_copies_its_tree_and_a_missing_folder_is_an_error() {
    let t = TestContext::new();
    t.write("exports/a.json", "A");
    t.write("exports/day/b.json", "BB");
    t.write("exports/day/deeper/c.json", "CCC");
    t.redrive(&["cp", "exports", "out", "-q"]).expect_code(0);
    assert_eq!(t.read("out/a.json"), "A");
    assert_eq!(t.read("out/day/b.json"), "BB");
    assert_eq!(t.read("out/day/deeper/c.json"), "CCC");
    let state = std::fs::read_dir(t.path(".redrive"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "db"))
        .unwrap()
        .path();
    let sizes: i64 = rusqlite::Connection::open(state)
        .unwrap()
        .query_row(
            "SELECT sum(CAST(json_extract(fields, '$.size') AS INTEGER)) FROM items WHERE status = 'done'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(sizes, 6, "each file listed with its size");

    let missing = t.redrive(&["cp", "exprots", "out2"]).expect_code(2);
    assert!(
        missing
            .stderr
            .contains("exprots/: no such folder; check the path"),
        "{}",
        missing.stderr
    );
    assert!(!t.path("out2").exists());

    t.write("a-file", "x");
    let onto_a_file = t.redrive(&["cp", "exports", "a-file"]).expect_code(2);
    assert!(
        onto_a_file
            .stderr
            .contains("`a-file` is a file: a folder or prefix is copied into a folder"),
        "{}",
        onto_a_file.stderr
    );
}

/// A create-only copy whose target is there already counts as done and leaves it as it was;
/// the summary says how many were left, so a rerun after a source changed does not pass for
/// a copy.
#[test]
fn the_summary_counts_targets_that_were_there_already() {
    let t = TestContext::new();
    t.write("in/a.txt", "new a");
    t.write("in/b.txt", "new b");
    t.write("out/a.txt", "old a");
    let out = t.redrive(&["cp", "in", "out"]).expect_code(0);
    assert!(
        out.stderr
            .contains("This run: done 2, skipped 0, failed 0, 5 B in ")
            && out
                .stderr
                .contains("; 1 target was there already and was left as it was (create-only)"),
        "{}",
        out.stderr
    );
    assert_eq!(t.read("out/a.txt"), "old a");
    assert_eq!(t.read("out/b.txt"), "new b");
    let again = t.redrive(&["cp", "in", "out"]).expect_code(0);
    assert!(!again.stderr.contains("there already"), "{}", again.stderr);
    // `--json` (and `--metrics`) count them as `kept`.
    t.write("out2/b.txt", "old b");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
glob = "in/*.txt"
[[step]]
copy = { from = "{path}", to = "out2/{name}" }
"#,
    );
    let json = t.redrive(&["run", "plan.toml", "--json"]).expect_code(0);
    let metrics: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.stdout));
    assert_eq!(metrics["kept"], 1, "{metrics}");
    assert_eq!(metrics["done"], 2, "{metrics}");

    // `--workers`: every worker's summed, in the summary and the aggregate metrics (they
    // were counted by each worker and said by none).
    for name in ["a", "b", "c", "d"] {
        t.write(&format!("in/{name}.txt"), format!("new {name}"));
    }
    t.write("out3/a.txt", "old a");
    t.write("out3/c.txt", "old c");
    t.write("out3/d.txt", "old d");
    t.plan(
        r#"
[job]
name = "t3"
state = "state3.db"
[source]
glob = "in/*.txt"
[[step]]
copy = { from = "{path}", to = "out3/{name}" }
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--workers", "2"])
        .expect_code(0);
    assert!(
        out.stderr.contains(
            "This run's workers: 3 targets were there already and were left as they were (create-only)."
        ),
        "{}",
        out.stderr
    );
    let aggregate: serde_json::Value =
        serde_json::from_str(&t.read("metrics/aggregate.json")).unwrap();
    assert_eq!(
        (&aggregate["kept"], &aggregate["done"]),
        (&serde_json::json!(3), &serde_json::json!(4)),
        "{aggregate}"
    );
    assert_eq!(t.read("out3/c.txt"), "old c");
}

/// Paths that read as template or pattern syntax are copied as they are named: a folder
/// `{name}` (a field: exit 2 before), `${HOME}` (read as the variable: the home folder's
/// files would have been copied, and its path masked as a secret), a file `a[1].txt` beside
/// `a1.txt` (a pattern: `a1.txt` was copied instead).
#[test]
fn cp_copies_paths_named_like_fields_variables_or_patterns_as_they_are_named() {
    let t = TestContext::new().env("HOME", "/nonexistent-redrive-home");
    t.write("{name}/a.txt", "A");
    t.write("${HOME}/b.txt", "B");
    t.write("d[1]/c.txt", "C");
    t.write("a[1].txt", "bracketed");
    t.write("a1.txt", "plain");
    t.write("list.txt", "c.txt\n");
    t.redrive(&["cp", "{name}", "out/{key}", "-q"])
        .expect_code(0);
    t.redrive(&["cp", "${HOME}", "out/${HOME}", "-q"])
        .expect_code(0);
    t.redrive(&["cp", "d[1]", "out/d[1]", "--files-from", "list.txt", "-q"])
        .expect_code(0);
    t.redrive(&["cp", "a[1].txt", "out/", "-q"]).expect_code(0);
    assert_eq!(t.read("out/{key}/a.txt"), "A");
    assert_eq!(t.read("out/${HOME}/b.txt"), "B");
    assert_eq!(t.read("out/d[1]/c.txt"), "C");
    assert_eq!(t.read("out/a[1].txt"), "bracketed");
    assert!(!t.path("out/a1.txt").exists());
    // `diff` reads its locations as named too.
    t.redrive(&[
        "diff",
        "${HOME}",
        "out/${HOME}",
        "--missing",
        "missing.txt",
        "--present",
        "present.txt",
    ])
    .expect_code(0);
    let present = t.read("present.txt");
    assert!(present.ends_with("/${HOME}/b.txt\n"), "{present}");
    assert_eq!(t.read("missing.txt"), "");
}

/// `cp` of a local folder into a folder inside it would list the copies it makes and copy
/// them again, without end: refused. Run from inside SRC, its own state (`.redrive/`, written
/// while SRC is listed) is not copied.
#[test]
fn cp_into_its_own_source_is_refused_and_its_state_is_not_copied() {
    let t = TestContext::new();
    for i in 0..20 {
        t.write(&format!("data/f{i:02}.json"), "x");
    }
    for dst in ["data/backup", "./data/./new/../backup"] {
        let out = t.redrive(&["cp", "data", dst]).expect_code(2);
        assert!(
            out.stderr.contains("is inside `data`") && out.stderr.contains("copy them again"),
            "{}",
            out.stderr
        );
    }
    assert!(!t.path("data/backup").exists());

    let out = t
        .command(&["cp", ".", "../copied", "-q"])
        .current_dir(t.path("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied: Vec<String> = walk(&t.path("copied"));
    assert_eq!(copied.len(), 20, "{copied:?}");
    assert!(copied.iter().all(|p| !p.contains(".redrive")), "{copied:?}");
    assert!(
        t.path("data/.redrive").is_dir(),
        "the state is where it was"
    );
}

/// A target whose folder cannot be made (a file has the folder's name) fails that item, saying
/// what is in the way; the run goes on with the others instead of stopping at it (every rerun
/// stopped there again). A folder with the target's name fails its item too (it was taken for
/// the target existing, and the item recorded done with nothing copied).
#[test]
fn a_target_folder_blocked_by_a_file_fails_its_item_not_the_run() {
    let t = TestContext::new();
    t.write("keys.txt", "a\nx/y\nb\nd\nc\n");
    for key in ["a", "x/y", "b", "d", "c"] {
        t.write(&format!("in/{key}"), key);
    }
    t.write("out/x", "a file where a folder would go");
    // And a folder where the file would go: not "the target exists" (skipped as done).
    t.write("out/d/inside", "a folder's file");
    t.plan(
        r#"
[job]
name = "blocked"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "in/{line}", to = "out/{line}" }
[limits]
items = 1
"#,
    );
    let out = t.redrive(&["run", "plan.toml", "-q"]).expect_code(1);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        3,
        "{}",
        out.stderr
    );
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed.stdout.contains(
            "cannot make the folder for `out/x/y`: a file has the name of one of its folders"
        ),
        "{}",
        failed.stdout
    );
    assert!(
        failed
            .stdout
            .contains("`out/d` is a folder: the file cannot be written there"),
        "{}",
        failed.stdout
    );
    assert_eq!(t.read("out/x"), "a file where a folder would go");
    assert_eq!(t.read("out/d/inside"), "a folder's file");
}

/// A plan that lists its own folder (`list = "."`) copies the files there, not the state and
/// logs the job writes there while it runs (a torn copy of a database, files nobody asked for).
#[test]
fn a_local_listing_leaves_out_the_jobs_own_state_and_logs() {
    let t = TestContext::new();
    for name in ["a.json", "sub/b.json", "job.dbx"] {
        t.write(&format!("work/{name}"), name);
    }
    t.write(
        "work/plan.toml",
        r#"
[job]
name = "job"
[source]
list = "."
[[step]]
copy = { from = "{url}", to = "../out/{rel}" }
"#,
    );
    t.redrive(&["run", "work/plan.toml", "-q"]).expect_code(0);
    let mut copied = walk(&t.path("out"));
    copied.sort();
    assert_eq!(
        copied,
        ["a.json", "job.dbx", "plan.toml", "sub/b.json"],
        "the state is in work/.redrive/: {:?}",
        walk(&t.path("work"))
    );
    assert!(t.path("work/.redrive/job.db").exists());

    // A state given with --state, in the listed folder, is left out too.
    let out = t
        .command(&["run", "plan.toml", "--state", "mine.db", "-q"])
        .current_dir(t.path("work"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.path("work/mine.db").exists());
    assert!(
        !walk(&t.path("out"))
            .iter()
            .any(|p| p.starts_with("mine.db"))
    );

    // A glob that matches everything leaves them out as well.
    t.write(
        "work/glob.toml",
        r#"
[job]
name = "globbed"
[source]
glob = "**/*"
[[step]]
copy = { from = "{path}", to = "../globbed/{name}" }
"#,
    );
    t.redrive(&["run", "work/glob.toml", "-q"]).expect_code(0);
    let mut globbed = walk(&t.path("globbed"));
    globbed.sort();
    assert_eq!(
        globbed,
        [
            "a.json",
            "b.json",
            "glob.toml",
            "job.db",
            "job.db.lock",
            "job.dbx",
            "mine.db",
            "mine.db.lock",
            "plan.toml"
        ],
        "only this job's own files are left out: the other job's states are files like any other"
    );
}

#[test]
fn an_empty_source_says_so() {
    let t = TestContext::new();
    t.write("items.csv", "name\n");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
csv = "items.csv"
key = "{name}"
[[step]]
copy = { from = "in/{name}", to = "out/{name}" }
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        out.stderr.contains("warning: the source yielded no items"),
        "{}",
        out.stderr
    );
}

#[test]
fn csv_with_bom_crlf_and_quoted_newlines_reads_cleanly() {
    let t = TestContext::new();
    t.write(
        "items.csv",
        b"\xef\xbb\xbfName,Note\r\na,\"one, two\r\nthree\"\r\nb,plain\r\n",
    );
    t.write("in/a", "A");
    t.write("in/b", "B");
    t.plan(
        r#"
[job]
name = "t"
state = "state.db"
[source]
csv = "items.csv"
key = "{Name}"
[[step]]
copy = { from = "in/{Name}", to = "out/{Name}" }
"#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let note: String = t
        .state()
        .query_row(
            "SELECT json_extract(fields, '$.Note') FROM items WHERE key = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(note, "one, two\r\nthree");
    assert_eq!(t.read("out/b"), "B");
}

/// `s3:/bucket` (one slash) used to pass `validate` and copy into a local folder named `s3:`.
#[test]
fn a_mistyped_store_url_is_refused_before_anything_is_written() {
    let t = TestContext::new();
    make_inputs(&t, 2);
    for (to, says) in [
        ("s3:/bucket/{name}", "`s3:` must be followed by `//`"),
        ("gs:/bucket/{name}", "`gs:` must be followed by `//`"),
        ("s4://bucket/{name}", "`s4://` is not a store redrive knows"),
    ] {
        t.plan(&COPY_PLAN.replace("out/{name}", to));
        for command in ["validate", "run"] {
            let out = t.redrive(&[command, "plan.toml"]).expect_code(2);
            assert!(
                out.stderr.contains("`copy.to`"),
                "{command} {to}: {}",
                out.stderr
            );
            assert!(out.stderr.contains(says), "{command} {to}: {}", out.stderr);
        }
        assert!(
            !t.path("s3:").exists() && !t.path("gs:").exists(),
            "no local folder"
        );
    }
}

/// `redrive failed plan.toml | head -1` used to panic (`failed printing to stdout: Broken
/// pipe`, exit 101); `status` and `--progress-json` likewise.
#[test]
fn a_reader_that_stops_early_ends_redrive_quietly() {
    use std::io::BufRead as _;
    let t = TestContext::new();
    let keys: String = (0..3_000)
        .map(|i| format!("missing-{i:05}.txt\n"))
        .collect();
    t.write("keys.txt", keys);
    t.plan(
        r#"
[job]
name = "pipe"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "in/{line}", to = "out/{line}" }
[limits]
items = 64
retries = 0
"#,
    );
    t.redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(1);
    for args in [
        &["failed", "plan.toml"][..],
        &["status", "plan.toml", "--json"][..],
        &["completions", "bash"][..],
    ] {
        let mut child = t.command(args).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .expect("a line");
        // The reader goes away after one line, as `head -1` does.
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!first.is_empty(), "{args:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `reset` (and `skip`) used to change items under a running run's feet.
/// The steps outlast the lock's patience (2 s) so the edits meet a held lock.
#[test]
fn a_hand_edit_waits_for_the_run_to_stop() {
    let t = TestContext::new();
    t.write("keys.txt", "k1\nk2\n");
    t.plan(
        r#"
[job]
name = "edit"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = { shell = "touch started-{line}; sleep 6" }
[limits]
items = 2
"#,
    );
    let mut run = t
        .command(&["run", "plan.toml", "--no-progress"])
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while !t.path("started-k1").exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the run started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for args in [
        &["reset", "plan.toml", "k1"][..],
        &["skip", "plan.toml", "k2"][..],
    ] {
        let out = t.redrive(args).expect_code(2);
        assert!(
            out.stderr.contains("a run is using this state"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(run.wait().expect("wait").code(), Some(0));
    t.redrive(&["reset", "plan.toml", "k1"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'pending'"),
        1
    );
}

/// Five rows whose `{WorkItemId}` key comes three times (`A`) with other fields, and a plan
/// keyed on it that runs `shell` per item.
fn rows_with_a_repeated_key(t: &TestContext, shell: &str) {
    t.write(
        "items.csv",
        "JobId,WorkItemId\nJ1,A\nJ1,B\nJ2,A\nJ2,C\nJ3,A\n",
    );
    t.plan(&format!(
        r#"
[job]
name = "dups"
state = "state.db"
[source]
csv = "items.csv"
key = "{{WorkItemId}}"
[[step]]
run = {{ shell = "{shell}" }}
"#
    ));
}

/// Rows J1,A and J2,A with `key = "{WorkItemId}"` used to become one item, the other row's work
/// silently never done (exit 0, nothing said, even with -v). A key that comes again with other
/// fields stops the run (exit 2) naming both rows; a row repeated exactly is counted, once.
#[test]
fn rows_whose_key_is_not_unique_are_reported_and_fail_the_run() {
    let t = TestContext::new();
    rows_with_a_repeated_key(&t, "true");
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress", "--metrics", "m.json"])
        .expect_code(2);
    // Each row named by its file and line (the header is line 1).
    let csv = t.path("items.csv").display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "two rows with the key `A` and other fields: first {{JobId=J1, WorkItemId=A}} ({csv}:2), then {{JobId=J2, WorkItemId=A}} ({csv}:4)"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("`key = \"{WorkItemId}\"`"),
        "{}",
        out.stderr
    );
    // With a unique key, all five rows run.
    t.plan(
        &t.read("plan.toml")
            .replace("{WorkItemId}\"", "{JobId}/{WorkItemId}\""),
    );
    t.redrive(&["run", "plan.toml", "--no-progress", "--restart", "--yes"])
        .expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        5
    );
}

/// Two rows with distinct keys whose `copy.to` renders to one file used to be two items: the
/// first copied, the second skipped as "exists" (or, overwriting, the first's bytes lost). The
/// load now claims each target and stops (exit 2) naming both keys before the second is
/// started; a rerun meets it again; a target that tells them apart runs all of them.
#[test]
fn two_items_that_would_write_one_target_stop_the_run_naming_both_keys() {
    let t = TestContext::new();
    t.write("in/J1-A.txt", "first");
    t.write("in/J2-A.txt", "second");
    t.write("in/J1-B.txt", "b");
    t.write("items.csv", "JobId,WorkItemId\nJ1,A\nJ1,B\nJ2,A\n");
    t.plan(
        r#"
[job]
name = "same-target"
state = "state.db"
[source]
csv = "items.csv"
key = "{JobId}/{WorkItemId}"
[[step]]
copy = { from = "in/{JobId}-{WorkItemId}.txt", to = "out/{WorkItemId}.txt" }
"#,
    );
    for _ in 0..2 {
        let out = t
            .redrive(&["run", "plan.toml", "--no-progress"])
            .expect_code(2);
        let file = t.path("out/A.txt").display().to_string();
        assert!(
            out.stderr
                .contains(&format!("items `J1/A` and `J2/A` both write `{file}`")),
            "{}",
            out.stderr
        );
        // J1/A may have run (a batch is handed over whenever the source makes the loader
        // wait); J2/A never starts, so `out/A.txt` never holds its bytes.
        if t.path("out/A.txt").exists() {
            assert_eq!(t.read("out/A.txt"), "first");
        }
        assert_eq!(
            t.count("SELECT count(*) FROM items WHERE key = 'J2/A' AND status != 'pending'"),
            0
        );
    }
    t.plan(
        &t.read("plan.toml")
            .replace("out/{WorkItemId}", "out/{JobId}/{WorkItemId}"),
    );
    t.redrive(&["run", "plan.toml", "--no-progress", "--restart", "--yes"])
        .expect_code(0);
    assert_eq!(t.read("out/J1/A.txt"), "first");
    assert_eq!(t.read("out/J2/A.txt"), "second");
    assert_eq!(t.read("out/J1/B.txt"), "b");
}

/// On a local disk `out/a//x.txt`, `out/./a/x.txt` and `out/a/x.txt` are one file: items whose
/// targets are spelled so are one target (they used to pass as three, and two items' bytes
/// were lost), named by the file's absolute path.
#[test]
fn local_targets_spelled_two_ways_are_one_target() {
    let t = TestContext::new();
    t.write("in/1.txt", "one");
    t.write("in/2.txt", "two");
    t.write("in/3.txt", "three");
    t.write("items.csv", "Id,Path\n1,a//x.txt\n2,b.txt\n3,./a/x.txt\n");
    t.plan(
        r#"
[job]
name = "aliases"
state = "state.db"
[source]
csv = "items.csv"
key = "{Id}"
[[step]]
copy = { from = "in/{Id}.txt", to = "out/{Path}" }
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(2);
    let file = t.path("out/a/x.txt").display().to_string();
    assert!(
        out.stderr
            .contains(&format!("items `1` and `3` both write `{file}`")),
        "{}",
        out.stderr
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE key = '3' AND status != 'pending'"),
        0
    );
}

/// A target that renders from a field a step binds (`require`'s `input`) is known only when
/// the item reaches its step: it is claimed then, and a second key that would write it fails
/// (the first item's bytes stay) instead of overwriting it or being skipped as "exists".
#[test]
fn a_target_from_a_bound_field_is_claimed_when_the_item_reaches_its_step() {
    let t = TestContext::new();
    t.write("in/shared-1.txt", "shared");
    t.write("keys.txt", "k1\nk2\n");
    t.plan(
        r#"
[job]
name = "bound"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
require = "in/shared-*.txt"
copy = { from = "{input}", to = "out/{input}" }
[limits]
items = 1
retries = 0
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(1);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE key = 'k1' AND status = 'done'"),
        1,
        "{}",
        out.stderr
    );
    let error: String = t
        .state()
        .query_row(
            "SELECT error FROM items WHERE key = 'k2' AND status = 'failed'",
            [],
            |r| r.get(0),
        )
        .unwrap_or_default();
    assert!(
        error.contains("items `k1` and `k2` both write `"),
        "{error}\n{}",
        out.stderr
    );
    // The rerun of the failed item meets the same claim.
    t.redrive(&["run", "plan.toml", "--no-progress", "--retry-failed"])
        .expect_code(1);
}

/// Under `[expand]` (the Azure re-upload's shape), children of two parents whose target
/// renders to one object: the second child is refused as it is listed (exit 2), named
/// `parent/child`, and the first child's bytes are all the target ever holds.
#[test]
fn two_children_that_would_write_one_target_stop_the_run_naming_both() {
    let t = TestContext::new();
    t.write("src/J1/A/x.txt", "first");
    t.write("src/J2/A/x.txt", "second");
    t.write("items.csv", "JobId,WorkItemId\nJ1,A\nJ2,A\n");
    t.plan(
        r#"
[job]
name = "same-child-target"
state = "state.db"
[source]
csv = "items.csv"
key = "{JobId}/{WorkItemId}"
[expand]
list = "src/{JobId}/{WorkItemId}/"
key = "{name}"
[[step]]
copy = { from = "{url}", to = "out/{WorkItemId}-{name}" }
[limits]
items = 1
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(2);
    let file = t.path("out/A-x.txt").display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "items `J1/A/x.txt` and `J2/A/x.txt` both write `{file}`"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(t.read("out/A-x.txt"), "first");
    t.redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(2);
    assert_eq!(t.read("out/A-x.txt"), "first");
}

/// After the key-conflict error, a plain rerun used to continue after the last recorded row
/// and end with exit 0: the conflicting row (recorded before the rows after it) was never read
/// again, its work lost in silence. It now meets the conflict again; `duplicates = "first"`
/// (added without `--restart`) keeps the first row of each key and says what it left out.
#[test]
fn a_rerun_after_a_key_conflict_meets_it_again_until_duplicates_first() {
    let t = TestContext::new();
    rows_with_a_repeated_key(&t, "echo {JobId} >> ran-{WorkItemId}");
    for _ in 0..2 {
        let out = t
            .redrive(&["run", "plan.toml", "--no-progress"])
            .expect_code(2);
        assert!(
            out.stderr
                .contains("two rows with the key `A` and other fields"),
            "{}",
            out.stderr
        );
    }
    t.plan(&t.read("plan.toml").replace(
        "key = \"{WorkItemId}\"",
        "key = \"{WorkItemId}\"\nduplicates = \"first\"",
    ));
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress", "--metrics", "m.json"])
        .expect_code(0);
    assert!(
        out.stderr.contains(
            "2 rows of the source have the key of an earlier row and other fields: left out"
        ),
        "{}",
        out.stderr
    );
    let metrics: serde_json::Value = serde_json::from_str(&t.read("m.json")).expect("metrics");
    assert_eq!(metrics["dropped_duplicates"], 2);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        3
    );
    // The first row of each key ran, once.
    assert_eq!(t.read("ran-A"), "J1\n");
    assert_eq!(t.read("ran-C"), "J2\n");
    // A value other than "first" or "error" is a plan error naming both.
    t.plan(&t.read("plan.toml").replace("\"first\"", "\"last\""));
    let out = t.redrive(&["validate", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("`duplicates` is \"error\"") && out.stderr.contains("not \"last\""),
        "{}",
        out.stderr
    );
}

/// `redrive cp ../in ./copied` (and a `list = "../in/"` source) used to list forever, write
/// gigabytes of warnings and ignore Ctrl-C; written absolute, the same folder worked.
#[test]
fn a_local_path_with_dot_dot_is_listed_once() {
    let t = TestContext::new();
    make_inputs(&t, 3);
    std::fs::create_dir_all(t.path("sub")).unwrap();
    let mut child = t
        .command(&["cp", "sub/../in", "copied", "--no-progress"])
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("`cp sub/../in` did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert_eq!(status.code(), Some(0), "{stderr}");
    let copied = std::fs::read_dir(t.path("copied"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(copied, 3, "{stderr}");
}

/// Field values inserted into a `shell` command are data: quoted, so a value with shell syntax
/// is printed, not run. `{field|raw}` opts out.
#[test]
fn shell_commands_quote_field_values() {
    let t = TestContext::new();
    t.write("names.txt", "a; touch pwned\n$(touch pwned2)\nit's plain\n");
    t.plan(
        r#"
[job]
name = "quoted"
state = "state.db"
[source]
lines = "names.txt"
[[step]]
run = { shell = "printf '%s\\n' {line} >> seen.txt" }
[limits]
items = 1
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    let mut seen: Vec<String> = t.read("seen.txt").lines().map(str::to_owned).collect();
    seen.sort();
    assert_eq!(
        seen,
        ["$(touch pwned2)", "a; touch pwned", "it's plain"],
        "{}",
        out.stderr
    );
    assert!(!t.path("pwned").exists() && !t.path("pwned2").exists());

    let t = TestContext::new();
    t.write("commands.txt", "touch made-by-raw\n");
    t.plan(
        r#"
[job]
name = "raw"
state = "state.db"
[source]
lines = "commands.txt"
[[step]]
run = { shell = "{line|raw}" }
"#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(t.path("made-by-raw").exists());
}

/// Rows appended to a list after it was loaded used to be ignored by every rerun, which said
/// all was done. A CSV that changed is read again and its new rows run; a glob (a listing,
/// which cannot tell cheaply) is read again with `--reload`.
#[test]
fn rows_added_to_a_loaded_source_are_run_by_the_next_run() {
    let t = TestContext::new();
    t.write("items.csv", "Name\na\nb\n");
    for name in ["a", "b", "c", "d"] {
        t.write(&format!("src/{name}"), name.to_uppercase());
    }
    t.plan(
        r#"
[job]
name = "grow"
state = "state.db"
[source]
csv = "items.csv"
key = "{Name}"
[[step]]
copy = { from = "src/{Name}", to = "out/{Name}" }
"#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(!out.stderr.contains("source changed"), "{}", out.stderr);
    // A file's modification time can be the same within a second on some file systems: the
    // length changes too.
    t.write("items.csv", "Name\na\nb\nc\nd\n");
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        out.stderr
            .contains("The source changed since it was loaded"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("This run: done 2,"), "{}", out.stderr);
    assert_eq!(t.read("out/d"), "D");
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        4
    );
    assert_eq!(
        t.count("SELECT max(attempts) FROM items"),
        1,
        "none ran twice"
    );

    let t = TestContext::new();
    t.write("in/a.txt", "A");
    t.plan(
        r#"
[job]
name = "grow-glob"
state = "state.db"
[source]
glob = "in/*.txt"
key = "{name}"
[[step]]
copy = { from = "{path}", to = "out/{name}" }
"#,
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    t.write("in/b.txt", "B");
    t.redrive(&["run", "plan.toml", "--reload"]).expect_code(0);
    assert_eq!(t.read("out/b.txt"), "B");
}

/// A row repeated exactly (same key, same fields) is the same work: counted, run once, and the
/// run succeeds.
#[test]
fn a_row_repeated_exactly_is_counted_and_run_once() {
    let t = TestContext::new();
    t.write("items.csv", "JobId,WorkItemId\nJ1,A\nJ1,A\nJ2,B\n");
    t.plan(
        r#"
[job]
name = "repeats"
state = "state.db"
[source]
csv = "items.csv"
key = "{WorkItemId}"
[[step]]
run = { shell = "echo {WorkItemId} >> ran.txt" }
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress", "--metrics", "m.json"])
        .expect_code(0);
    assert!(
        out.stderr
            .contains("1 row of the source repeats an earlier row exactly"),
        "{}",
        out.stderr
    );
    assert_eq!(t.read("ran.txt"), "A\nB\n");
    let metrics: serde_json::Value = serde_json::from_str(&t.read("m.json")).unwrap();
    assert_eq!(metrics["repeated_rows"], 1);
    assert_eq!(metrics["duplicate_keys"], 0);
}

/// `--max-errors 3`: a run whose items all fail for one cause stops starting items after the
/// third failure; the rest stay pending for a rerun.
#[test]
fn max_errors_stops_a_run_whose_items_keep_failing() {
    let t = TestContext::new();
    let keys: String = (0..50).map(|i| format!("k{i:02}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(
        r#"
[job]
name = "maxerr"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "missing/{line}", to = "out/{line}" }
[limits]
items = 1
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--max-errors", "3", "--no-progress"])
        .expect_code(1);
    assert!(out.stderr.contains("--max-errors"), "{}", out.stderr);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'failed'"),
        3
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'pending'"),
        47
    );
    // The failures as JSON lines, for scripts.
    let failed = t.redrive(&["failed", "plan.toml", "--json"]).expect_code(0);
    let lines: Vec<serde_json::Value> = failed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", failed.stdout);
    assert_eq!(lines[0]["key"], "k00");
    assert_eq!(lines[0]["step"], "copy");
    assert_eq!(lines[0]["fields"]["line"], "k00");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("not found"),
        "{}",
        lines[0]
    );
    let out = t.redrive(&["run", "plan.toml", "--max-errors", "0"]);
    assert_eq!(out.code, 2, "0 is refused: {}", out.stderr);
}

/// A run stopped by `--max-errors` while its source is still being loaded says so: the items
/// pending in the state are not all that is left.
#[test]
fn max_errors_before_the_source_is_loaded_does_not_count_the_unloaded_rows_as_gone() {
    let t = TestContext::new();
    let keys: String = (0..200_000).map(|i| format!("k{i:06}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(
        r#"
[job]
name = "maxerr-load"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "missing/{line}", to = "out/{line}" }
[limits]
items = 1
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--max-errors", "1", "--no-progress"])
        .expect_code(1);
    let pending = t.count("SELECT count(*) FROM items WHERE status = 'pending'");
    assert!(
        out.stderr
            .contains(&format!("; {pending} loaded items are not started yet")),
        "{}",
        out.stderr
    );
    let complete = t.count("SELECT source_complete FROM job") == 1;
    let total = t.count("SELECT count(*) FROM items");
    assert_eq!(complete, total == 200_000, "{total} loaded");
    assert_eq!(
        out.stderr
            .contains("the rest of the source is not loaded yet"),
        !complete,
        "{}",
        out.stderr
    );
}

/// `run --json`: the end summary as one JSON object on stdout (the `--metrics` fields), with
/// the human summary still on stderr.
#[test]
fn run_json_prints_the_end_summary_on_stdout() {
    let t = TestContext::new();
    t.write("keys.txt", "a\nb\nc\n");
    t.plan(
        r#"
[job]
name = "summary"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = { shell = "test {line} != b" }
[limits]
retries = 0
"#,
    );
    let out = t
        .redrive(&["run", "plan.toml", "--no-progress", "--json"])
        .expect_code(1);
    let value: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!(value["done"], 2, "{value}");
    assert_eq!(value["failed"], 1, "{value}");
    assert!(out.stderr.contains("This run: done 2"), "{}", out.stderr);
    let refused = t.redrive(&["run", "plan.toml", "--json", "--progress-json"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}

/// `validate --json`: the checked plan for scripts, or where and why it is wrong (exit 2),
/// one JSON object on stdout either way.
#[test]
fn validate_json_describes_the_plan_or_its_error() {
    let t = TestContext::new();
    t.write("keys.txt", "a\nb\n");
    t.plan(
        r#"
[job]
name = "described"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
name = "touch"
run = { shell = "touch {line}" }
"#,
    );
    let out = t
        .redrive(&["validate", "plan.toml", "--json"])
        .expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(value["ok"], true, "{value}");
    assert_eq!(value["job"], "described");
    assert_eq!(value["source"]["kind"], "lines");
    assert_eq!(value["source"]["fields"], serde_json::json!(["line"]));
    assert_eq!(value["steps"], serde_json::json!(["touch"]));

    t.plan(
        &t.read("plan.toml")
            .replace("[source]", "[source]\nduplicates = \"last\""),
    );
    let out = t
        .redrive(&["validate", "plan.toml", "--json"])
        .expect_code(2);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(value["ok"], false, "{value}");
    assert_eq!(value["table"], "source", "{value}");
    assert!(
        value["message"]
            .as_str()
            .is_some_and(|m| m.contains("`duplicates`")),
        "{value}"
    );

    t.plan("[job\nname = ");
    let out = t
        .redrive(&["validate", "plan.toml", "--json"])
        .expect_code(2);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(value["ok"], false, "{value}");
    assert!(
        value["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1")),
        "{value}"
    );
}

/// A plan with mistakes in three tables used to be refused one mistake per run. `validate`
/// (and `run`) now says every table's problem at once, and `--json` lists them in `errors`.
#[test]
fn validate_reports_every_tables_problem_at_once() {
    let t = TestContext::new();
    t.write("keys.txt", "a\n");
    t.plan(
        r#"
[job]
name = "many"
state = "state.db"
[source]
lines = "keys.txt"
duplicates = "last"
[limits]
items = 0
[[step]]
copy = { from = "{line}", to = "s3:/bucket/{line}" }
[[step]]
run = { shell = "true" }
"#,
    );
    let out = t.redrive(&["validate", "plan.toml"]).expect_code(2);
    for table in [
        "in [source]: `duplicates`",
        "in [limits]",
        "in [step 1 (copy)]",
    ] {
        assert!(out.stderr.contains(table), "{table}: {}", out.stderr);
    }
    assert!(out.stderr.contains("3 problems"), "{}", out.stderr);
    let out = t
        .redrive(&["validate", "plan.toml", "--json"])
        .expect_code(2);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let tables: Vec<&str> = value["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["table"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(tables, ["source", "step 1 (copy)", "limits"], "{value}");
    assert_eq!(value["table"], "source", "{value}");
}

/// `redrive completions SHELL` prints a completion script that knows the commands and flags.
#[test]
fn completions_know_the_commands_and_their_flags() {
    let t = TestContext::new();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = t.redrive(&["completions", shell]).expect_code(0);
        assert!(
            out.stdout.contains("retry-failed") && out.stdout.contains("validate"),
            "{shell}: {}",
            out.stdout.chars().take(300).collect::<String>()
        );
    }
    let out = t.redrive(&["completions", "tcsh"]).expect_code(2);
    assert!(out.stderr.contains("bash"), "{}", out.stderr);
}

/// `include`, `exclude` and `min_size` on a source, and `cp --include/--exclude`: only the
/// matching files are items, on a first run and when it resumes.
#[test]
fn filters_narrow_a_source_and_cp_to_the_matching_files() {
    let t = TestContext::new();
    for (path, body) in [
        ("in/a.json", "{\"a\":1}"),
        ("in/b.txt", "text"),
        ("in/deep/c.json", "{\"c\":2}"),
        ("in/skip/d.json", "{\"d\":3}"),
        ("in/e.json", ""),
    ] {
        std::fs::create_dir_all(t.path(path).parent().unwrap()).unwrap();
        std::fs::write(t.path(path), body).unwrap();
    }
    t.plan(&format!(
        r#"
[job]
name = "filters"
state = "state.db"
[source]
list = "{src}/"
include = ["*.json"]
exclude = ["skip/**"]
min_size = 1
[[step]]
copy = {{ from = "{{url}}", to = "out/{{rel}}" }}
"#,
        src = t.path("in").display()
    ));
    t.redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(0);
    let mut copied: Vec<String> = walk(&t.path("out"));
    copied.sort();
    assert_eq!(
        copied,
        ["a.json", "deep/c.json"],
        "the empty e.json and skip/ are left out"
    );

    let out = t
        .redrive(&[
            "cp",
            &t.path("in").display().to_string(),
            &t.path("cp-out").display().to_string(),
            "--include",
            "*.json",
            "--exclude",
            "deep/*",
        ])
        .expect_code(0);
    let mut copied: Vec<String> = walk(&t.path("cp-out"));
    copied.sort();
    assert_eq!(
        copied,
        ["a.json", "e.json", "skip/d.json"],
        "{}",
        out.stderr
    );

    // A filter the source cannot apply is a plan error.
    t.write("keys.txt", "x\n");
    t.plan(
        r#"
[job]
name = "bad-filter"
state = "bad.db"
[source]
lines = "keys.txt"
max_size = "1MiB"
[[step]]
run = { shell = "true" }
"#,
    );
    let out = t.redrive(&["validate", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr
            .contains("`min_size` and `max_size` bound the `size` field"),
        "{}",
        out.stderr
    );
}

/// `-v` says what each item's steps did, one line each, as rclone's `Copied (new)` does.
#[test]
fn verbose_prints_one_line_per_finished_step() {
    let t = TestContext::new();
    make_inputs(&t, 2);
    t.plan(COPY_PLAN);
    let out = t
        .redrive(&["run", "plan.toml", "-v", "--no-progress"])
        .expect_code(0);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("copy f0000") && l.contains(" ms"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("f00001.txt → ") && l.contains("out/f00001.txt")),
        "{}",
        out.stderr
    );
}

/// `status --watch=1 --json` into a pipe prints the job again every second, one JSON line
/// each, until Ctrl-C, then exits 0 (`status | head` and friends need no table redraws).
#[test]
fn status_watch_prints_again_until_ctrl_c() {
    use std::io::BufRead as _;
    let t = TestContext::new();
    t.write("keys.txt", "a\nb\n");
    t.plan(
        r#"
[job]
name = "watched"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = { shell = "true" }
"#,
    );
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(0);
    let mut child = t
        .command(&["status", "plan.toml", "--watch=1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let line = lines.next().expect("a refresh").expect("read");
        let value: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(value["items"]["done"], 2, "{line}");
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "the second refresh came a second after the first"
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "Ctrl-C ends the watch with exit 0: {status}"
    );
}

/// `redrive man` prints redrive's man page (roff), `redrive man run` the page of `run`, and an
/// unknown command is an error naming the ones there are.
#[test]
fn man_prints_the_page_of_redrive_and_of_each_command() {
    let t = TestContext::new();
    let page = t.redrive(&["man"]).expect_code(0).stdout;
    assert!(page.contains(".TH redrive 1"), "{page}");
    assert!(
        page.contains("redrive\\-run(1)"),
        "it lists the commands' pages: {page}"
    );
    let run = t.redrive(&["man", "run"]).expect_code(0).stdout;
    assert!(run.contains(".TH redrive-run 1"), "{run}");
    assert!(run.contains("\\fBredrive run\\fR"), "{run}");
    assert!(run.contains("\\-\\-retry\\-failed"), "{run}");
    let out = t.redrive(&["man", "nope"]).expect_code(2);
    assert!(
        out.stderr
            .contains("`nope` is not a redrive command; one of: run, validate"),
        "{}",
        out.stderr
    );
}

/// One `GET` of `http://addr/metrics`: the response's status line and body, or `None` while
/// nothing listens.
fn scrape(addr: &str) -> Option<(String, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// `run --metrics-addr` serves OpenMetrics text while the run goes: the job's items by status
/// (adding up to the job), each step's outcomes, durations and items in flight; a port that
/// is taken stops the run before it starts (exit 2), naming the address.
#[test]
fn run_serves_live_metrics_for_prometheus_while_it_runs() {
    let t = TestContext::new();
    t.write(
        "keys.txt",
        (1..=12).map(|i| format!("k{i}\n")).collect::<String>(),
    );
    t.plan(
        r#"
[job]
name = "metered"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
name = "slow"
run = { shell = "sleep 0.3" }
[limits]
items = 2
"#,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = t
        .command(&["run", "plan.toml", "-q", "--metrics-addr", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let mut seen = None;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Some((status, body)) = scrape(&addr)
            && body.contains("redrive_step_items_total{step=\"slow\",outcome=\"done\"}")
        {
            seen = Some((status, body));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, body) = seen.expect("a scrape while the run goes");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |name: &str| -> i64 {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {body}"))
    };
    let statuses = ["pending", "running", "done", "skipped", "failed"];
    let sum: i64 = statuses
        .iter()
        .map(|s| value(&format!("redrive_items{{status=\"{s}\"}}")))
        .sum();
    assert_eq!(sum, 12, "every item once: {body}");
    assert!(value("redrive_items{status=\"done\"}") >= 1, "{body}");
    assert!(
        value("redrive_step_in_flight{step=\"slow\"}") <= 2,
        "{body}"
    );
    assert!(body.contains("redrive_step_seconds_bucket{"), "{body}");
    assert_eq!(
        value("redrive_step_concurrency_limit{step=\"slow\"}"),
        2,
        "the adaptive limit, at its ceiling: {body}"
    );
    assert!(value("redrive_state_commit_seconds_count") >= 1, "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    // A second run (of its own state) meanwhile cannot have the port, and starts nothing.
    let taken = t.redrive(&[
        "run",
        "plan.toml",
        "-q",
        "--state",
        "other.db",
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(taken.code, 2, "{}", taken.stderr);
    assert!(
        taken
            .stderr
            .contains(&format!("cannot serve metrics on `{addr}`")),
        "{}",
        taken.stderr
    );
    assert!(
        !t.path("other.db").exists(),
        "the port is taken before the state is opened"
    );
    assert!(child.wait().expect("wait").success());
}

/// `run --workers 2 --metrics-addr HOST:PORT`: worker i serves its own metrics on PORT + i
/// while the run goes, each counting its shard; a port taken stops the run before any worker
/// starts, naming the port.
#[test]
fn each_worker_serves_its_metrics_on_its_own_port() {
    let t = TestContext::new();
    t.write(
        "keys.txt",
        (1..=16).map(|i| format!("k{i}\n")).collect::<String>(),
    );
    t.plan(
        r#"
[job]
name = "metered-workers"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
name = "slow"
run = { shell = "sleep 0.3" }
[limits]
items = 2
"#,
    );
    // Two free ports in a row.
    let port = (0..50)
        .find_map(|_| {
            let first = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let port = first.local_addr().ok()?.port();
            std::net::TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
            Some(port)
        })
        .expect("two free ports in a row");
    let addr = format!("127.0.0.1:{port}");
    let mut child = t
        .command(&[
            "run",
            "plan.toml",
            "-q",
            "--workers",
            "2",
            "--metrics-addr",
            &addr,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let mut totals = [None, None];
    while started.elapsed() < std::time::Duration::from_secs(30) && totals.contains(&None) {
        for (i, total) in totals.iter_mut().enumerate() {
            let worker = format!("127.0.0.1:{}", port + i as u16);
            if let Some((_, body)) = scrape(&worker)
                && body.contains("redrive_step_items_total{step=\"slow\",outcome=\"done\"}")
            {
                let sum: i64 = body
                    .lines()
                    .filter(|l| l.starts_with("redrive_items{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
                    .sum();
                *total = Some(sum);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let [Some(a), Some(b)] = totals else {
        panic!("both workers scraped while they ran: {totals:?}");
    };
    assert_eq!(a + b, 16, "each worker counts its shard: {a} + {b}");
    assert!(child.wait().expect("wait").success());

    // A port taken: nothing starts.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port + 1)).expect("bind");
    let out = t.redrive(&[
        "run",
        "plan.toml",
        "--workers",
        "2",
        "--restart",
        "--yes",
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("worker 1's metrics on `127.0.0.1:{}`", port + 1)),
        "{}",
        out.stderr
    );
}

/// `--log-file FILE --log-format json`: the log lines go to FILE as JSON objects (time, level,
/// the item's key and error), not to stderr; text lines in a file carry their time; a log
/// file that cannot be opened stops redrive before anything runs.
#[test]
fn log_lines_go_to_a_log_file_as_json_or_text() {
    let t = TestContext::new();
    t.write("keys.txt", "a\nbad\nc\n");
    t.plan(
        r#"
[job]
name = "logged"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = { shell = "test {line} != bad" }
[limits]
retries = 0
"#,
    );
    let run = t
        .redrive(&[
            "run",
            "plan.toml",
            "-v",
            "--no-progress",
            "--log-file",
            "log.jsonl",
            "--log-format",
            "json",
        ])
        .expect_code(1);
    assert!(
        !run.stderr.contains("Item failed"),
        "the log is not on stderr: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 item failed"),
        "the summary stays on stderr: {}",
        run.stderr
    );
    let log = t.read("log.jsonl");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string()),
        "{log}"
    );
    let failed = lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["fields"]["key"] == "bad")
        .unwrap_or_else(|| panic!("no failure line for `bad`: {log}"));
    assert_eq!(failed["fields"]["step"], "run", "{failed}");
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("run a:")),
        "-v: one line per finished item: {log}"
    );

    t.redrive(&[
        "run",
        "plan.toml",
        "--retry-failed",
        "--no-progress",
        "--log-file",
        "log.txt",
    ])
    .expect_code(1);
    let text = t.read("log.txt");
    let line = text
        .lines()
        .find(|l| l.contains("Item failed"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("20") && line.as_bytes()[10] == b'T',
        "a time first: {line}"
    );

    let bad = t
        .redrive(&["status", "plan.toml", "--log-file", "no/such/folder/x.log"])
        .expect_code(2);
    assert!(
        bad.stderr
            .contains("cannot open the log file no/such/folder/x.log"),
        "{}",
        bad.stderr
    );
}

/// `cp --dry-run` lists what would be copied and copies nothing, writes no plan or state in
/// `.redrive/`; after a real copy, a dry run lists only what is new.
#[test]
fn cp_dry_run_lists_what_would_be_copied_and_writes_nothing() {
    let t = TestContext::new();
    t.write("src/a.txt", "a");
    t.write("src/sub/b.txt", "b");
    let dry = t
        .redrive(&[
            "cp",
            "src",
            "dst",
            "--dry-run",
            "--manifest",
            "m/manifest.jsonl",
        ])
        .expect_code(0);
    assert!(!t.path("m").exists(), "a dry run creates no manifest");
    assert_eq!(dry.stdout.lines().count(), 2, "{}", dry.stdout);
    assert!(
        dry.stdout.contains("dst/sub/b.txt (if absent)"),
        "{}",
        dry.stdout
    );
    assert!(dry.stderr.contains("would run 2 items"), "{}", dry.stderr);
    assert!(!t.path("dst").exists(), "nothing copied");
    assert!(!t.path(".redrive").exists(), "no plan or state written");

    t.redrive(&["cp", "src", "dst", "-q"]).expect_code(0);
    t.write("src/c.txt", "c");
    let again = t.redrive(&["cp", "src", "dst", "--dry-run"]).expect_code(0);
    assert_eq!(again.stdout.lines().count(), 1, "{}", again.stdout);
    assert!(again.stdout.contains("dst/c.txt"), "{}", again.stdout);
    assert!(
        again.stderr.contains("would run 1 item; already 2 done"),
        "{}",
        again.stderr
    );
    assert!(!t.path("dst/c.txt").exists());
}

/// An `exists` check whose URL an empty value turns into its folder (`done/{name}` with an
/// empty `name`: `done/`, which is there) fails the item, naming the URL, instead of skipping
/// it as "exists"; a URL written with a trailing `/` checks a folder.
#[test]
fn an_exists_check_left_naming_a_folder_by_an_empty_value_fails_the_item() {
    let t = TestContext::new();
    t.write("list.csv", "id,name\n1,a.txt\n2,\n");
    t.write("done/a.txt", "a was done");
    t.write("runs/1/log", "");
    t.plan(
        r#"
[job]
name = "empty"
state = "state.db"
[source]
csv = "list.csv"
key = "{id}"
[[step]]
exists = "done/{name}"
[[step]]
exists = "runs/{id}/"
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(1);
    let status = |key: &str| {
        t.state()
            .query_row(
                "SELECT status || ': ' || coalesce(error, '') FROM items WHERE key = ?1",
                [key],
                |r| r.get::<_, String>(0),
            )
            .unwrap()
    };
    assert_eq!(status("1"), "skipped: exists", "{}", out.stderr);
    assert!(
        status("2").starts_with("failed: `done/` names a folder, not an object"),
        "{}",
        status("2")
    );

    // The folder of item 1's run is there; item 2's is not.
    t.write("list.csv", "id,name\n1,x\n2,y\n");
    t.redrive(&["run", "plan.toml", "--restart", "--yes"])
        .expect_code(0);
    assert_eq!(status("1"), "skipped: exists");
    assert_eq!(status("2"), "done: ");
}

/// `run --dry-run --check-targets` asks the stores what is there now: an item an `exists`
/// step would skip says so (and its later steps are not counted), a copy whose target is
/// present says so; the end says how many, and the requests the run would make per step.
/// A closed stdout ends the dry run quietly.
#[test]
fn dry_run_checks_targets_and_counts_the_requests_a_run_would_make() {
    let t = TestContext::new();
    t.write("keys.txt", "a\nb\nc\n");
    for key in ["a", "b", "c"] {
        t.write(&format!("in/{key}"), key);
    }
    t.write("done/b", "b was done");
    t.write("out/c", "c is there");
    t.plan(
        r#"
[job]
name = "checked"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
name = "done-before"
exists = "done/{line}"
[[step]]
copy = { from = "in/{line}", to = "out/{line}" }
"#,
    );
    let plain = t.redrive(&["run", "plan.toml", "--dry-run"]).expect_code(0);
    assert!(
        plain
            .stderr
            .contains("Requests it would make: done-before: 3 stats; copy: 3 file writes."),
        "{}",
        plain.stderr
    );
    assert!(
        !plain.stdout.contains('→'),
        "no check without --check-targets: {}",
        plain.stdout
    );

    let checked = t
        .redrive(&["run", "plan.toml", "--dry-run", "--check-targets"])
        .expect_code(0);
    let line = |key: &str| {
        checked
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key}\t")))
            .unwrap_or_else(|| panic!("no line for {key}: {}", checked.stdout))
            .to_owned()
    };
    assert!(line("b").ends_with("→ skipped: exists"), "{}", line("b"));
    assert!(!line("b").contains("copy:"), "{}", line("b"));
    assert!(line("c").ends_with("→ target present"), "{}", line("c"));
    assert!(!line("a").contains('→'), "{}", line("a"));
    assert!(
        checked.stderr.contains(
            "would run 3 items (of those, as the stores say now: 1 skipped by a step, 1 target present)"
        ),
        "{}",
        checked.stderr
    );
    assert!(
        checked
            .stderr
            .contains("done-before: 3 stats; copy: 2 file writes."),
        "{}",
        checked.stderr
    );
    assert!(!t.path("state.db").exists(), "a dry run records nothing");
    assert_eq!(t.read("out/c"), "c is there");
    assert!(!t.path("out/a").exists());

    // --check-targets needs --dry-run.
    t.redrive(&["run", "plan.toml", "--check-targets"])
        .expect_code(2);

    // A reader that stops reading: exit 0, no error.
    let many: String = (0..20_000).map(|i| format!("k{i}\n")).collect();
    t.write("keys.txt", many);
    let piped = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; '{}' run plan.toml --dry-run | head -1",
                env!("CARGO_BIN_EXE_redrive")
            ),
        ])
        .current_dir(t.path(""))
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// A `lines` file ending in `.gz` and a `csv` file ending in `.zst` are read through their
/// compression; a `.gz` that is not gzip stops the run naming the file.
#[test]
fn compressed_lines_and_csv_files_are_read_by_their_extension() {
    use std::io::Write as _;
    let t = TestContext::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"a\nb\n").expect("gzip");
    t.write("keys.txt.gz", gz.finish().expect("gzip"));
    t.plan(
        r#"
[job]
name = "gz"
state = "state.db"
[source]
lines = "keys.txt.gz"
[[step]]
run = { shell = "true" }
"#,
    );
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done' AND key IN ('a', 'b')"),
        2
    );

    let z = TestContext::new();
    let rows = ruzstd::encoding::compress_to_vec(
        &b"JobId,File\nJ1,x.json\nJ2,y.json\n"[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    z.write("rows.csv.zst", rows);
    z.plan(
        r#"
[job]
name = "zst"
state = "state.db"
[source]
csv = "rows.csv.zst"
key = "{JobId}"
[[step]]
run = { shell = "test -n {File}" }
"#,
    );
    z.redrive(&["run", "plan.toml", "-q"]).expect_code(0);
    assert_eq!(
        z.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );

    let bad = TestContext::new();
    bad.write("keys.txt.gz", "plain text, not gzip\n");
    bad.plan("[job]\nname = \"bad\"\nstate = \"state.db\"\n[source]\nlines = \"keys.txt.gz\"\n[[step]]\nrun = { shell = \"true\" }\n");
    let out = bad.redrive(&["run", "plan.toml", "-q"]).expect_code(2);
    assert!(
        out.stderr
            .contains("keys.txt.gz:1: cannot decompress it as gzip"),
        "{}",
        out.stderr
    );
}

/// A `jsonl` source: one item per JSON object, its members as fields (checked against the
/// plan's templates like any source's), gzip-compressed too.
#[test]
fn a_jsonl_source_makes_one_item_per_object() {
    use std::io::Write as _;
    let t = TestContext::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"key\": \"a.json\", \"size\": 3}\n{\"key\": \"b.json\", \"size\": 5}\n")
        .expect("gzip");
    t.write("failed.jsonl.gz", gz.finish().expect("gzip"));
    let plan = |step: &str| {
        format!(
            "[job]\nname = \"jl\"\nstate = \"state.db\"\n[source]\njsonl = \"failed.jsonl.gz\"\nkey = \"{{key}}\"\n[[step]]\n{step}\n"
        )
    };
    t.write("plan.toml", plan("run = { shell = \"test {size} -gt 2\" }"));
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );
    // A template naming a member the objects lack is refused before anything runs.
    t.write("plan.toml", plan("run = { shell = \"echo {colour}\" }"));
    let out = t.redrive(&["validate", "plan.toml"]).expect_code(2);
    assert!(out.stderr.contains("colour"), "{}", out.stderr);
}

/// A field's value in a `require` pattern is matched as written: `a[1]` needs `in/a[1].json`,
/// not `in/a1.json` (which the pattern `in/a[1].json` matches); a key without wildcards in a
/// template without any is a plain path, and the template's own `*` still globs.
#[test]
fn a_required_inputs_field_value_is_matched_as_written() {
    let t = TestContext::new();
    t.write("keys.txt", "a[1]\nb\n");
    t.write("in/a1.json", "wrong");
    t.write("in/b-2026.json", "b");
    t.plan(
        r#"
[job]
name = "required"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
require = "in/{line}*.json"
copy = { from = "{input}", to = "out/{line}" }
"#,
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        out.stderr.contains("This run: done 1, skipped 1"),
        "{}",
        out.stderr
    );
    assert!(!t.path("out/a[1]").exists(), "bound to in/a1.json");
    assert_eq!(t.read("out/b"), "b");
    t.write("in/a[1].json", "right");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(t.read("out/a[1]"), "right");
}

/// A step with `require`: the dry run counts the look for the requirement and the step's own
/// requests, and `--check-targets` says which items have no input yet.
#[test]
fn dry_run_counts_a_required_steps_requests_and_checks_its_input() {
    let t = TestContext::new();
    t.write("keys.txt", "a\nb\n");
    t.write("in/a", "a");
    t.plan(
        r#"
[job]
name = "required"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
require = "in/{line}"
copy = { from = "{input}", to = "out/{line}" }
"#,
    );
    let dry = t
        .redrive(&["run", "plan.toml", "--dry-run", "--check-targets"])
        .expect_code(0);
    let b = dry
        .stdout
        .lines()
        .find(|l| l.starts_with("b\t"))
        .unwrap_or("");
    assert!(b.ends_with("→ skipped: no input"), "{}", dry.stdout);
    assert!(dry.stderr.contains("1 skipped by a step"), "{}", dry.stderr);
    assert!(
        dry.stderr.contains("copy: 2 stats, 1 file write."),
        "{}",
        dry.stderr
    );
}
