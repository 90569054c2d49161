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

    // Paced, so that it is still under way when the second run starts, however loaded the
    // machine (unpaced, 3,000 local copies can end before a `status` process first answers).
    let mut first = t
        .command(&["run", "plan.toml", "--rate", "300"])
        .spawn()
        .expect("spawn");
    // Once it is under way, a second run on the same job joins it.
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
        if let Ok(Some(code)) = first.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = first.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the first run ended early ({code}):\n{stderr}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let first = first.wait_with_output().expect("wait");
    assert_eq!(
        first.status.code(),
        Some(0),
        "the first run failed:\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
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

/// A job of `n` keys (`lines`), each copied create-only from `in/` to `out/`, on the
/// PostgreSQL state (its URL read from the environment, as a deployment would), with a short
/// lease so a dead worker's items come back quickly.
fn shared_job(t: &TestContext, job: &str, n: usize) {
    let keys: String = (0..n).map(|i| format!("k{i:05}\n")).collect();
    t.write("keys.txt", keys);
    for i in 0..n {
        t.write(&format!("in/k{i:05}"), format!("item {i}"));
    }
    t.plan(&format!(
        r#"
[job]
name = "{job}"
state = "${{REDRIVE_TEST_POSTGRES_URL}}"
[source]
lines = "keys.txt"
[[step]]
copy = {{ from = "in/{{line}}", to = "out/{{line}}" }}
[limits]
items = 8
lease = "3s"
"#
    ));
    server("REDRIVE_TEST_POSTGRES_URL");
}

/// Runs `sql` on the job's schema and returns the first column of each row as text.
fn query(job: &str, sql: &str) -> Vec<String> {
    try_query(job, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `query`, or its error (the schema may not exist yet).
fn try_query(job: &str, sql: &str) -> Result<Vec<String>, sqlx::Error> {
    let url = server("REDRIVE_TEST_POSTGRES_URL");
    let schema = format!("redrive_{}", job.replace('-', "_"));
    crate::common::runtime().block_on(async {
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{schema}\""
        )))
        .execute(&mut connection)
        .await?;
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut connection)
            .await
    })
}

fn assert_every_item_done_once(t: &TestContext, job: &str, n: usize) {
    let counts = query(
        job,
        "SELECT status || ' ' || count(*) FROM items GROUP BY status ORDER BY status",
    );
    assert_eq!(counts, [format!("done {n}")], "items by status");
    for i in (0..n).step_by(97) {
        assert_eq!(t.read(&format!("out/k{i:05}")), format!("item {i}"));
    }
    // (A copy cut off by SIGKILL may leave its temporary file beside the targets.)
    let outputs = std::fs::read_dir(t.path("out"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.len() == 6 && name.starts_with('k')
        })
        .count();
    assert_eq!(outputs, n, "every target once");
}

#[test]
fn three_workers_share_a_job_and_take_over_a_killed_workers_items() {
    let t = TestContext::new();
    let job = unique("pg-3w");
    let n = 20_000;
    shared_job(&t, &job, n);
    let mut workers: Vec<std::process::Child> = (0..3)
        .map(|_| {
            t.command(&["run", "plan.toml", "-q"])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();

    // Kill worker 0 once it has finished some items and holds leases.
    let victim = workers[0].id();
    let started = Instant::now();
    loop {
        let finished = try_query(
            &job,
            &format!("SELECT finished::text FROM workers WHERE pid = {victim}"),
        )
        .unwrap_or_default();
        if finished
            .first()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
            > 500
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "worker 0 made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    let victim_id = query(
        &job,
        &format!("SELECT id FROM workers WHERE pid = {victim}"),
    );
    let victim_id = victim_id.first().expect("the victim registered").clone();
    let held = query(
        &job,
        &format!(
            "SELECT id::text FROM items WHERE lease_owner = '{victim_id}' AND status = 'running'"
        ),
    );
    assert!(!held.is_empty(), "the killed worker held no leases");

    for worker in &mut workers[1..] {
        let status = worker.wait().unwrap();
        assert_eq!(status.code(), Some(0), "a surviving worker failed");
    }
    assert_every_item_done_once(&t, &job, n);
    // Its items were taken over by the others, and finished by them.
    let left = query(
        &job,
        &format!(
            "SELECT id::text FROM items WHERE lease_owner = '{victim_id}' AND id = ANY('{{{}}}'::bigint[])",
            held.join(",")
        ),
    );
    assert!(left.is_empty(), "still the dead worker's: {left:?}");

    let status = t.redrive(&["status", "plan.toml"]).expect_code(0);
    assert!(status.stdout.contains("Workers (3)"), "{}", status.stdout);
    let json = t.redrive(&["status", "plan.toml", "--json"]).expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        value["workers"].as_array().map(Vec::len),
        Some(3),
        "{value}"
    );
    assert_eq!(value["items"]["done"], n);
}

#[test]
fn two_workers_racing_to_load_a_job_record_each_item_once() {
    let t = TestContext::new();
    let job = unique("pg-race");
    let n = 5_000;
    shared_job(&t, &job, n);
    let runs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            t.command(&["run", "plan.toml", "-q"])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_every_item_done_once(&t, &job, n);
    assert_eq!(
        query(&job, "SELECT count(DISTINCT key)::text FROM items"),
        [n.to_string()]
    );
    assert_eq!(query(&job, "SELECT count(*)::text FROM workers"), ["2"]);
}

/// A PostgreSQL state that cannot be reached gets a PostgreSQL hint, not the SQLite one
/// ("check that the state file's disk is writable").
#[test]
fn an_unreachable_postgres_state_is_hinted_as_postgres() {
    let t = TestContext::new();
    make_inputs(&t, 1);
    plan(&t, &unique("pg-missing"));
    let url = server("REDRIVE_TEST_POSTGRES_URL");
    let (base, _) = url.rsplit_once('/').expect("a database in the URL");
    let missing = format!("{base}/redrive_no_such_database");
    let out = t
        .redrive(&["run", "plan.toml", "--state", &missing, "--no-progress"])
        .expect_code(2);
    assert!(
        out.stderr.contains("redrive_no_such_database"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("PostgreSQL server"), "{}", out.stderr);
    assert!(!out.stderr.contains("state file's disk"), "{}", out.stderr);
}

/// A worker frozen (SIGSTOP) past its lease while holding a claimed batch: the others take
/// its items over, and when it thaws it starts none of them again. What runs twice is at
/// most what it had in flight when it was frozen (`items = 8`), not the batch it claimed.
#[test]
fn a_worker_paused_past_its_lease_does_not_repeat_the_items_taken_over() {
    let t = TestContext::new();
    let job = unique("pg-pause");
    // Enough that every worker keeps claiming full batches of 128 while the victim freezes.
    let n = 1200;
    let keys: String = (0..n).map(|i| format!("k{i:05}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "{job}"
state = "${{REDRIVE_TEST_POSTGRES_URL}}"
[source]
lines = "keys.txt"
[[step]]
run = {{ shell = "echo {{line}} >> effects.log; sleep 0.2" }}
[limits]
items = 8
lease = "3s"
"#
    ));
    server("REDRIVE_TEST_POSTGRES_URL");
    let workers: Vec<std::process::Child> = (0..4)
        .map(|_| {
            t.command(&["run", "plan.toml"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();

    // Freeze worker 0 once it is under way, and keep it frozen well past its lease.
    let victim = workers[0].id();
    let started = Instant::now();
    while query_u64(
        &job,
        &format!("SELECT finished::text FROM workers WHERE pid = {victim}"),
    ) < 8
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker 0 made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(victim, "STOP");
    // Claimed: running, or waiting for a slot (pending under its lease).
    let frozen_with = query_u64(
        &job,
        &format!(
            "SELECT count(*)::text FROM items i JOIN workers w ON i.lease_owner = w.id
             WHERE w.pid = {victim} AND i.status IN ('pending', 'running')"
        ),
    );
    std::thread::sleep(Duration::from_secs(9));
    signal(victim, "CONT");

    let mut victim_stderr = String::new();
    for (i, worker) in workers.into_iter().enumerate() {
        let out = worker.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "worker {i} failed: {stderr}");
        if i == 0 {
            victim_stderr = stderr;
        }
    }
    let counts = query(
        &job,
        "SELECT status || ' ' || count(*) FROM items GROUP BY status ORDER BY status",
    );
    assert_eq!(counts, [format!("done {n}")], "items by status");

    let effects = t.read("effects.log");
    let mut runs: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for line in effects.lines() {
        *runs.entry(line).or_default() += 1;
    }
    assert_eq!(runs.len(), n, "every item ran");
    let repeated: usize = runs.values().map(|c| c - 1).sum();
    assert!(
        frozen_with > 8,
        "the frozen worker held only {frozen_with} items: the test proves nothing"
    );
    assert!(
        repeated <= 8,
        "{repeated} side effects repeated; at most the 8 in flight may be (the frozen worker held {frozen_with})"
    );
    assert!(
        victim_stderr.contains("taken over by other workers"),
        "{victim_stderr}"
    );
}

/// The first column of the first row as a number; 0 when there is none yet.
fn query_u64(job: &str, sql: &str) -> u64 {
    try_query(job, sql)
        .ok()
        .and_then(|rows| rows.first()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `signal` (`STOP`, `CONT`) to one process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
