//! S4 (seed 003) end to end: a day range, a converter per day when its input exists, the
//! output uploaded to S3 (moto), per-stage resume and a telemetry CSV.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{TestContext, create_bucket, get, put, s3_env, s3_operator, unique};

const CONVERTER: &str = r#"#!/bin/sh
# convert.sh INPUT OUTPUT: a stand-in for the seed's CSV → CDF converter.
echo "$1" >> calls.log
if grep -q FAIL "$1"; then echo "reading $1" >&2; echo "bad row 17: value out of range" >&2; exit 3; fi
if grep -q HANG "$1"; then sleep 60; fi
mkdir -p "$(dirname "$2")"
echo "converted $(wc -l < "$1") rows from $(basename "$1")" > "$2"
echo "wrote $2"
"#;

fn setup(bucket: &str, days_with_input: &[u32], marker: &[(u32, &str)]) -> TestContext {
    let t = s3_env(TestContext::new());
    let converter = t.write("convert.sh", CONVERTER);
    std::fs::set_permissions(
        &converter,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for day in days_with_input {
        let extra = marker.iter().find(|(d, _)| d == day).map_or("", |(_, m)| m);
        t.write(
            &format!("in/REACH-1_202601{day:02}_QUICKLOOK.csv"),
            format!("a,b\n1,2\n3,4\n{extra}\n"),
        );
    }
    t.plan(&format!(
        r#"
[job]
name = "backfill"
state = "state.db"

[source]
dates = {{ from = "2026-01-01", to = "2026-01-10" }}

[[step]]
name = "process"
require = "in/*_{{yyyymmdd}}_*.csv"
run = {{ cmd = ["./convert.sh", "{{input}}", "out/{{date}}.txt"], output = "out/{{date}}.txt", timeout = "3s" }}

[[step]]
name = "upload"
copy = {{ from = "out/{{date}}.txt", to = "s3://{bucket}/{{yyyy}}/{{date}}.txt", if_exists = "fail" }}

[limits]
retries = 0
"#
    ));
    t
}

fn telemetry_rows(t: &TestContext) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(t.path("telemetry.csv")).unwrap();
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "time",
            "key",
            "parent",
            "step",
            "status",
            "seconds",
            "bytes",
            "output",
            "target",
            "error_type",
            "error_message"
        ]
    );
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn calls(t: &TestContext) -> usize {
    std::fs::read_to_string(t.path("calls.log"))
        .map(|c| c.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_backfill_converts_and_uploads_each_day_with_per_stage_resume() {
    let bucket = unique("rd-s4");
    create_bucket(&bucket);
    let s3 = s3_operator(&bucket);
    // Days 8 and 9 will fail to upload: their targets exist and the plan says if_exists = "fail".
    put(&s3, "2026/2026-01-08.txt", b"SOMEONE ELSE");
    put(&s3, "2026/2026-01-09.txt", b"SOMEONE ELSE");
    let t = setup(&bucket, &[1, 2, 3, 5, 6, 8, 9, 10], &[(5, "FAIL")]);

    let out = t
        .redrive(&["run", "plan.toml", "--telemetry", "telemetry.csv"])
        .expect_code(1);
    assert!(
        out.stderr.contains("done 5, skipped 2, failed 3"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("(2 skipped for `no input`: tried again on the next run)"),
        "{}",
        out.stderr
    );
    for day in [1, 2, 3, 6, 10] {
        let body = get(&s3, &format!("2026/2026-01-{day:02}.txt")).expect("uploaded");
        assert!(
            String::from_utf8(body)
                .unwrap()
                .starts_with(&format!("converted 4 rows from REACH-1_202601{day:02}"))
        );
    }
    assert_eq!(get(&s3, "2026/2026-01-05.txt"), None);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'skipped' AND error = 'no input'"),
        2
    );
    let error: String = t
        .state()
        .query_row(
            "SELECT error FROM items WHERE key = '2026-01-05'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(error.contains("exited with code 3: reading "), "{error}");
    assert!(error.contains("bad row 17: value out of range"), "{error}");
    assert!(
        t.read("backfill-logs/2026-01-05.process.log")
            .contains("bad row 17"),
        "the log keeps stderr"
    );
    assert!(
        t.read("backfill-logs/2026-01-01.process.log")
            .contains("wrote out/2026-01-01.txt"),
        "and stdout"
    );
    let size: i64 = t
        .state()
        .query_row(
            "SELECT o.bytes FROM outputs o JOIN items i ON i.id = o.item WHERE i.key = '2026-01-01'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let on_disk = std::fs::metadata(t.path("out/2026-01-01.txt"))
        .unwrap()
        .len();
    assert_eq!(
        size as u64, on_disk,
        "the output's path and size are recorded"
    );

    // Telemetry: a row per transition.
    let rows = telemetry_rows(&t);
    let row = |key: &str, step: &str, status: &str| {
        rows.iter()
            .find(|r| r[1] == key && r[3] == step && r[4] == status)
            .cloned()
    };
    let processed = row("2026-01-01", "process", "done").expect("process done row");
    assert!(
        processed[7].ends_with("/out/2026-01-01.txt"),
        "{processed:?}"
    );
    let uploaded = row("2026-01-01", "upload", "done").expect("upload done row");
    assert_eq!(
        (uploaded[6].clone(), uploaded[8].clone()),
        (
            on_disk.to_string(),
            format!("s3://{bucket}/2026/2026-01-01.txt")
        )
    );
    let failed = row("2026-01-05", "process", "failed").expect("failed row");
    assert_eq!(failed[9], "permanent");
    assert!(failed[10].contains("bad row 17"), "{failed:?}");
    assert_eq!(
        row("2026-01-04", "process", "skipped")
            .map(|r| r[10].clone())
            .as_deref(),
        Some("no input")
    );
    assert_eq!(rows.len(), 5 * 4 + 2 * 2 + 2 + 2 * 4, "{rows:#?}");
    assert_eq!(calls(&t), 8);

    // A missing input appears: that day runs, nothing else does (failed days wait for --retry-failed).
    t.write("in/REACH-1_20260104_QUICKLOOK.csv", "a,b\n1,2\n");
    let out = t
        .redrive(&["run", "plan.toml", "--telemetry", "telemetry.csv"])
        .expect_code(1);
    assert!(
        out.stderr.contains("This run: done 1, skipped 1, failed 0"),
        "{}",
        out.stderr
    );
    assert_eq!(calls(&t), 9, "only day 4 was converted");
    assert!(get(&s3, "2026/2026-01-04.txt").is_some());

    // Day 8: upload failed and its output was deleted → processed again, then uploaded.
    // Day 9: upload failed, output still on disk → uploaded only.
    std::fs::remove_file(t.path("out/2026-01-08.txt")).unwrap();
    crate::common::runtime().block_on(async {
        s3.delete("2026/2026-01-08.txt").await.unwrap();
        s3.delete("2026/2026-01-09.txt").await.unwrap();
    });
    let before = calls(&t);
    let out = t
        .redrive(&[
            "run",
            "plan.toml",
            "--retry-failed",
            "--telemetry",
            "telemetry.csv",
        ])
        .expect_code(1);
    assert!(
        out.stderr.contains("This run: done 2, skipped 1, failed 1"),
        "{}",
        out.stderr
    );
    let converted: Vec<String> = std::fs::read_to_string(t.path("calls.log"))
        .unwrap()
        .lines()
        .skip(before)
        .map(str::to_owned)
        .collect();
    assert_eq!(
        converted.len(),
        2,
        "day 5 (failing again) and day 8: {converted:?}"
    );
    assert!(
        converted.iter().any(|c| c.contains("20260108"))
            && !converted.iter().any(|c| c.contains("20260109"))
    );
    assert!(
        String::from_utf8(get(&s3, "2026/2026-01-09.txt").unwrap())
            .unwrap()
            .contains("20260109")
    );
    assert!(
        String::from_utf8(get(&s3, "2026/2026-01-08.txt").unwrap())
            .unwrap()
            .contains("20260108")
    );
}

#[test]
fn limit_counts_from_the_first_incomplete_day_and_dry_run_changes_nothing() {
    let bucket = unique("rd-s4lim");
    create_bucket(&bucket);
    let s3 = s3_operator(&bucket);
    let t = setup(&bucket, &(1..=10).collect::<Vec<_>>(), &[]);

    let dry = t.redrive(&["run", "plan.toml", "--dry-run"]).expect_code(0);
    let lines: Vec<&str> = dry.stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{}", dry.stdout);
    assert!(
        lines[0].starts_with("2026-01-01\tprocess: needs "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("run ") && lines[0].contains("convert.sh"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!(
            "upload: copy out/2026-01-01.txt -> s3://{bucket}/2026/2026-01-01.txt"
        )),
        "{}",
        lines[0]
    );
    assert!(!t.path("state.db").exists() && !t.path("out").exists() && calls(&t) == 0);
    assert_eq!(get(&s3, "2026/2026-01-01.txt"), None);

    t.redrive(&["run", "plan.toml", "--limit", "3"])
        .expect_code(0);
    let done: Vec<String> = {
        let state = t.state();
        let mut statement = state
            .prepare("SELECT key FROM items WHERE status = 'done' ORDER BY key")
            .unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(done, ["2026-01-01", "2026-01-02", "2026-01-03"]);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE attempts > 0"),
        3,
        "no other day started"
    );
    t.redrive(&["run", "plan.toml", "--limit", "3"])
        .expect_code(0);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        6
    );
    assert_eq!(calls(&t), 6);
}

#[test]
fn a_converter_that_hangs_is_killed_at_its_timeout() {
    let bucket = unique("rd-s4hang");
    create_bucket(&bucket);
    let t = setup(&bucket, &[1], &[(1, "HANG")]);
    let started = std::time::Instant::now();
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let error: String = t
        .state()
        .query_row(
            "SELECT error FROM items WHERE key = '2026-01-01'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        error.contains("did not finish within 3s and was killed"),
        "{error}"
    );
}
