//! `redrive report`: one HTML file that opens offline, from a SQLite or PostgreSQL state;
//! rendered in a real headless Chromium when `scripts/test` found one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{TestContext, server, unique};

/// A job of 41 items: those ending in 0 or 7 fail for one reason (each with its key in the
/// message), the rest are done; one key that would break HTML, and fails.
fn job(t: &TestContext, state: &str) {
    // First, so that it is the first failure's example.
    let mut keys = String::from("<b>&x0\n");
    for i in 0..40 {
        keys.push_str(&format!("k{i:02}\n"));
    }
    t.write("keys.txt", keys);
    t.write(
        "work.sh",
        "#!/bin/sh\ncase \"$1\" in *0|*7) echo \"converter crashed on $1\" >&2; exit 3;; esac\n\
         printf 'payload-%s' \"$1\" > \"out-$1\"\n",
    );
    std::process::Command::new("chmod")
        .args(["+x", &t.path("work.sh").display().to_string()])
        .status()
        .expect("chmod");
    t.plan(&format!(
        r#"
[job]
name = "reported"
state = "{state}"
[source]
lines = "keys.txt"
[[step]]
name = "convert"
run = {{ cmd = ["./work.sh", "{{line}}"] }}
[limits]
items = 4
retries = 0
"#
    ));
}

fn body_between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the report"));
    let rest = &html[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// How many times the `convert` step ended, as the step-durations table says.
fn step_ended(html: &str) -> u64 {
    let steps = body_between(html, "How long each step took", "</table>");
    let row = body_between(steps, "<td><code>convert</code></td>", "</tr>");
    let ended = body_between(row, "<td class=\"n\">", "</td>");
    ended["<td class=\"n\">".len()..]
        .parse()
        .unwrap_or_else(|_| panic!("no count of steps ended: {steps}"))
}

fn check_page(html: &str) {
    assert!(
        html.starts_with("<!DOCTYPE html>"),
        "{}",
        &html[..80.min(html.len())]
    );
    // Self-contained: nothing fetched from anywhere.
    for external in [
        "<script", "<link", " src=", "url(", "@import", "http://", "https://",
    ] {
        assert!(
            !html.contains(external),
            "the report refers outside itself: {external}"
        );
    }
    assert!(html.contains("redrive report: reported"), "job name");
    assert!(
        html.contains("<b>41</b><span>items</span>"),
        "totals: {html}"
    );
    // <b>&x0 k00 k07 k10 k17 k20 k27 k30 k37 fail: one reason, the key left out of it.
    let failures = body_between(html, "Failures by reason", "</table>");
    assert!(failures.contains("<td class=\"n\">9</td>"), "{failures}");
    assert!(failures.contains("converter crashed on …"), "{failures}");
    assert!(
        failures.contains("<code>k00</code>"),
        "examples: {failures}"
    );
    assert!(
        html.contains("Throughput over time") && html.contains("<rect"),
        "chart"
    );
    assert!(html.contains("How long items took"), "durations");
    assert_eq!(step_ended(html), 41, "each item's one step, once");
    assert!(html.contains("Slowest items"), "slowest");
    // The key with markup in it is text, not markup.
    assert!(!html.contains("<b>&x"), "a key is escaped");
    assert!(
        html.contains("<code>&lt;b&gt;&amp;x0</code>"),
        "the key is shown escaped"
    );
}

#[test]
fn report_writes_one_self_contained_page_from_a_sqlite_state() {
    let t = TestContext::new();
    job(&t, "state.db");
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(1);
    let out = t
        .redrive(&["report", "plan.toml", "-o", "job.html"])
        .expect_code(0);
    assert!(out.stderr.contains("Wrote job.html"), "{}", out.stderr);
    let html = t.read("job.html");
    check_page(&html);

    // `-o -` writes to stdout; a closed stdout ends quietly.
    let stdout = t
        .redrive(&["report", "plan.toml", "-o", "-"])
        .expect_code(0);
    check_page(&stdout.stdout);
    screenshot(&t, "job.html");

    // A second run's step times add to the first's: the 9 failed items ran again.
    t.redrive(&["run", "plan.toml", "-q", "--retry-failed"])
        .expect_code(1);
    let again = t
        .redrive(&["report", "plan.toml", "-o", "-"])
        .expect_code(0);
    assert_eq!(step_ended(&again.stdout), 50);
}

#[test]
fn report_reads_a_postgresql_state() {
    let t = TestContext::new();
    let url = server("REDRIVE_TEST_POSTGRES_URL");
    let name = unique("report");
    job(&t, &url);
    // The job name decides the schema: make it unique per run.
    let plan = t
        .read("plan.toml")
        .replace("name = \"reported\"", &format!("name = \"{name}\""));
    t.write("plan.toml", plan);
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(1);
    t.redrive(&["report", "plan.toml", "-o", "pg.html"])
        .expect_code(0);
    let html = t.read("pg.html").replace(&name, "reported");
    check_page(&html);
}

#[test]
fn report_without_a_state_says_to_run_first() {
    let t = TestContext::new();
    job(&t, "state.db");
    let out = t.redrive(&["report", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("redrive run plan.toml"),
        "{}",
        out.stderr
    );
    assert!(!t.path("report.html").exists());
}

/// With `REDRIVE_TEST_CHROMIUM` (set by `scripts/test` when it has Chromium): the page renders
/// in a real browser, offline, into a screenshot that is not blank.
fn screenshot(t: &TestContext, page: &str) {
    let Ok(chromium) = std::env::var("REDRIVE_TEST_CHROMIUM") else {
        eprintln!(
            "report screenshot not checked: REDRIVE_TEST_CHROMIUM is not set (scripts/test sets it)"
        );
        return;
    };
    let png = t.path("shot.png");
    let output = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            // Offline: any request outside the file would fail.
            "--proxy-server=127.0.0.1:9",
            "--window-size=1000,1400",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", t.path(page).display()),
        ])
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert_eq!(&bytes[1..4], b"PNG", "a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 1400));
    // A blank 1000 × 1400 page compresses to a few KB; charts, cards and tables do not.
    assert!(
        bytes.len() > 30_000,
        "the screenshot looks blank: {} bytes",
        bytes.len()
    );
}
