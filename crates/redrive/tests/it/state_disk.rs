//! The state store under failure: its disk full, read-only, or its file locked by another
//! process. Each stops the run with an error that names the state file and says what to do,
//! never a panic; what was recorded stays, and a rerun once the cause is gone finishes the job
//! with every item done once.
//!
//! A full or read-only disk is a small tmpfs mounted for the test, which needs root (CI and
//! these machines run as root); elsewhere those two tests say so and return.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::TestContext;

/// A tmpfs mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("not run: mounting a tmpfs needs root");
            return None;
        }
        Some(Self(dir.to_owned()))
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `n` keys, each copied create-only from `in/` to `out/`, the state in `st/state.db`.
fn job(t: &TestContext, n: usize) {
    let keys: String = (0..n).map(|i| format!("k{i:06}\n")).collect();
    t.write("keys.txt", keys);
    for i in 0..n {
        t.write(&format!("in/k{i:06}"), format!("item {i}"));
    }
    t.plan(
        r#"
[job]
name = "disk"
state = "st/state.db"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "in/{line}", to = "out/{line}" }
"#,
    );
}

/// Every item done once in the state, and every target there with the right bytes.
fn assert_all_done(t: &TestContext, n: usize) {
    let state = rusqlite::Connection::open(t.path("st/state.db")).unwrap();
    let done: i64 = state
        .query_row(
            "SELECT count(*) FROM items WHERE status = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let total: i64 = state
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    assert_eq!((done, total), (n as i64, n as i64));
    for i in 0..n {
        assert_eq!(t.read(&format!("out/k{i:06}")), format!("item {i}"));
    }
}

#[test]
fn a_full_state_disk_stops_the_run_clearly_and_a_rerun_finishes() {
    let t = TestContext::new();
    let n = 3000;
    job(&t, n);
    let Some(disk) = Tmpfs::mount(&t.path("st"), "160k") else {
        return;
    };
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("st/state.db") && out.stderr.contains("disk is full"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    disk.remount("size=64m");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_all_done(&t, n);
}

#[test]
fn a_read_only_state_disk_stops_the_run_clearly_and_status_still_reads_it() {
    let t = TestContext::new();
    let n = 200;
    job(&t, n);
    let Some(disk) = Tmpfs::mount(&t.path("st"), "16m") else {
        return;
    };
    t.redrive(&["run", "plan.toml", "--limit", "50"])
        .expect_code(0);
    disk.remount("ro");
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("st/state.db") && out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("writable"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    disk.remount("rw");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_all_done(&t, n);
}

#[test]
fn a_state_locked_by_another_process_is_named_and_left_whole() {
    let t = TestContext::new();
    let n = 100;
    job(&t, n);
    t.redrive(&["run", "plan.toml", "--limit", "10"])
        .expect_code(0);

    // Another program holds a write lock on the state: the run waits for it, then stops.
    let other = rusqlite::Connection::open(t.path("st/state.db")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("st/state.db") && out.stderr.contains("locked"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("no other"), "{}", out.stderr);
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);

    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_all_done(&t, n);
}

/// A job of `n` lines, each a `run` step that records its key and takes a moment.
fn slow_job(t: &TestContext, n: usize) {
    let lines: String = (0..n).map(|i| format!("k{i:03}\n")).collect();
    t.write("keys.txt", lines);
    t.plan(
        r#"
[job]
name = "wal"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = { shell = "echo {line} >> effects.log; sleep 0.05" }
[limits]
items = 4
"#,
    );
}

/// A clean exit leaves the whole state in its file: no write-ahead log beside it.
#[test]
fn a_clean_exit_leaves_no_write_ahead_log() {
    let t = TestContext::new();
    slow_job(&t, 20);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(t.path("state.db").exists());
    assert!(!t.path("state.db-wal").exists(), "the log outlived the run");
    // And the state still resumes: nothing left to do.
    let out = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(out.stderr.contains("done 0"), "{}", out.stderr);
}

/// A run killed with -9 leaves its progress in the log; a person who then deletes the log
/// (it looks like litter) used to get a silent restart that redid every side effect. The
/// state is refused with an explanation instead, and `--restart` still starts over.
#[test]
fn a_killed_runs_state_without_its_log_is_refused() {
    let t = TestContext::new();
    slow_job(&t, 200);
    let mut child = t
        .command(&["run", "plan.toml", "-q"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while t
        .try_count("SELECT count(*) FROM items WHERE status = 'done'")
        .unwrap_or(0)
        < 20
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        t.path("state.db-wal").exists(),
        "a killed run keeps its log"
    );
    std::fs::remove_file(t.path("state.db-wal")).unwrap();
    let _ = std::fs::remove_file(t.path("state.db-shm"));

    // A command of the killed run may still be writing its line for a moment (its death
    // signal comes with redrive's, asynchronously): counted once the log stops growing.
    let mut before = t.read("effects.log").lines().count();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = t.read("effects.log").lines().count();
        if now == before {
            break;
        }
        before = now;
    }
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("was not closed cleanly") && out.stderr.contains("state.db-wal"),
        "{}",
        out.stderr
    );
    assert_eq!(
        t.read("effects.log").lines().count(),
        before,
        "a refused state ran nothing"
    );
    t.redrive(&["run", "plan.toml", "--restart", "--yes"])
        .expect_code(0);
}

/// A state file emptied by hand (`: > state.db`) is not taken for a new job.
#[test]
fn a_truncated_state_is_refused() {
    let t = TestContext::new();
    slow_job(&t, 5);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    std::fs::write(t.path("state.db"), b"").unwrap();
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("it is empty (0 bytes)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        t.read("effects.log").lines().count(),
        5,
        "nothing ran again"
    );
}
