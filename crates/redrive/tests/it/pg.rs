//! Jobs whose state is in PostgreSQL (`state = "postgres://…"`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::{TestContext, make_inputs, server, unique};

fn plan(t: &TestContext, job: &str) {
    t.plan(&format!(
        r#"
[job]
name = "{job}"
state = "{url}"
[source]
glob = "in/*.txt"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "out/{{name}}" }}
[limits]
items = 4
"#,
        url = server("REDRIVE_TEST_POSTGRES_URL")
    ));
}

#[test]
fn a_job_runs_resumes_and_restarts_on_postgres_state() {
    let t = TestContext::new();
    make_inputs(&t, 3_000);
    let job = unique("pg");
    plan(&t, &job);

    let mut first = t.command(&["run", "plan.toml"]).spawn().expect("spawn");
    // Once it is under way, a second run on the same job is refused.
    let started = Instant::now();
    loop {
        let status = t.redrive(&["status", "plan.toml", "--json"]);
        let done = serde_json::from_str::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|v| v["items"]["done"].as_u64())
            .unwrap_or(0);
        if done > 0 {
            break;
        }
        assert!(
            first.try_wait().ok().flatten().is_none(),
            "the first run ended early"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = t.redrive(&["run", "plan.toml"]);
    let status = first.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    if second.code != 0 {
        // (When the first run finished before the second started, the second simply found nothing to do.)
        assert_eq!(second.code, 2, "{}", second.stderr);
        assert!(
            second.stderr.contains("is in use by another `redrive run`"),
            "{}",
            second.stderr
        );
    }
    assert_eq!(t.read("out/f02999.txt"), "body 2999");

    let status = t.redrive(&["status", "plan.toml", "--json"]).expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(value["items"]["done"], 3_000);
    assert!(
        value["state"]
            .as_str()
            .unwrap()
            .ends_with(&format!("#redrive_{}", job.replace('-', "_"))),
        "{value}"
    );

    let again = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        again.stderr.contains("This run: done 0"),
        "{}",
        again.stderr
    );
    t.redrive(&["reset", "plan.toml", "f00001.txt"])
        .expect_code(0);
    let redo = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(redo.stderr.contains("This run: done 1"), "{}", redo.stderr);
    let fresh = t
        .redrive(&["run", "plan.toml", "--restart", "--yes"])
        .expect_code(0);
    assert!(
        fresh.stderr.contains("This run: done 3000"),
        "{}",
        fresh.stderr
    );
}

#[test]
fn status_on_postgres_state_needs_the_plan() {
    let t = TestContext::new();
    let url = server("REDRIVE_TEST_POSTGRES_URL");
    let out = t
        .redrive(&["status", "missing.toml", "--state", &url])
        .expect_code(2);
    assert!(
        out.stderr.contains("a PostgreSQL state holds many jobs"),
        "{}",
        out.stderr
    );
}
