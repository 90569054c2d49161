//! `run` steps' commands and redrive's own end: a command never outlives a redrive killed with
//! SIGKILL (a resumed run would start it a second time, beside the first), and a Ctrl-C at the
//! terminal (SIGINT to the whole process group) lets the commands in flight finish instead of
//! killing them and recording their items failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use crate::common::TestContext;

fn plan(t: &TestContext, shell: &str, items: usize) {
    let keys: String = (0..items).map(|i| format!("k{i}\n")).collect();
    t.write("keys.txt", keys);
    std::fs::create_dir_all(t.path("pids")).unwrap();
    t.plan(&format!(
        r#"
[job]
name = "children"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = {{ shell = "{shell}" }}
[limits]
items = {items}
retries = 0
"#
    ));
}

fn pids(t: &TestContext) -> Vec<u32> {
    std::fs::read_dir(t.path("pids"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|text| text.trim().parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A process that died and was reaped has no /proc entry; a zombie is dead too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn commands_die_with_a_redrive_killed_by_sigkill() {
    let t = TestContext::new();
    plan(&t, "echo $$ > pids/{line}.pid; exec sleep 60", 3);
    let mut child = t.command(&["run", "plan.toml"]).spawn().expect("spawn");
    wait_until("three commands running", Duration::from_secs(30), || {
        pids(&t).len() == 3
    });
    let running = pids(&t);
    assert!(running.iter().all(|pid| alive(*pid)), "{running:?}");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    wait_until("the commands are gone", Duration::from_secs(10), || {
        running.iter().all(|pid| !alive(*pid))
    });
}

/// The process group of `pid` (field 5 of /proc/PID/stat).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(2)?.parse().ok()
}

#[test]
fn ctrl_c_at_the_terminal_lets_the_commands_finish_and_records_them_done() {
    let t = TestContext::new();
    plan(&t, "echo $$ > pids/{line}.pid; sleep 2; echo ok", 2);
    // redrive leads its own process group here, as a terminal's foreground job does.
    let mut command = t.command(&["run", "plan.toml"]);
    command.process_group(0);
    let child = command.spawn().expect("spawn");
    wait_until("the commands running", Duration::from_secs(30), || {
        pids(&t).len() == 2
    });
    // A terminal's Ctrl-C goes to the foreground process group: the commands are not in it.
    for pid in pids(&t) {
        let group = process_group(pid);
        assert!(
            group.is_some() && group != Some(child.id()),
            "command {pid} is in redrive's group"
        );
    }
    let status = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'failed'"),
        0,
        "no item failed: {stderr}"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2,
        "the commands in flight finished: {stderr}"
    );
}

/// What a command started in the background outlives the command (and `--pdeathsig`, which
/// reaches only the command): after a kill -9, the resumed run kills what the dead run's
/// commands left before it starts the same work again, so the two never overlap.
#[test]
fn a_resumed_run_kills_what_the_dead_runs_commands_left_in_the_background() {
    let t = TestContext::new();
    plan(
        &t,
        "sleep 97 > /dev/null 2>&1 & echo $! > pids/{line}.pid; exec sleep 60",
        2,
    );
    let mut first = t.command(&["run", "plan.toml"]).spawn().expect("spawn");
    wait_until("two commands started", Duration::from_secs(30), || {
        pids(&t).len() == 2
    });
    let left = pids(&t);
    first.kill().expect("SIGKILL");
    first.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        left.iter().all(|pid| alive(*pid)),
        "the background commands outlive the dead run: {left:?}"
    );
    for entry in std::fs::read_dir(t.path("pids")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let mut resumed = t.command(&["run", "plan.toml"]).spawn().expect("spawn");
    wait_until(
        "the dead run's background commands are killed",
        Duration::from_secs(30),
        || left.iter().all(|pid| !alive(*pid)),
    );
    wait_until(
        "the resumed run's commands",
        Duration::from_secs(30),
        || pids(&t).len() == 2,
    );
    let mine = pids(&t);
    assert!(
        mine.iter().all(|pid| alive(*pid) && !left.contains(pid)),
        "the resumed run's own commands run: {mine:?}"
    );
    resumed.kill().expect("SIGKILL");
    resumed.wait().expect("wait");
    for pid in mine {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}
