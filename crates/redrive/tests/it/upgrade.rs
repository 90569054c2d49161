//! A state written by an earlier release resumes under this one when the plan did not change.
//!
//! `tests/fixtures/state-8793c89` holds a job that release 8793c89 ran with `--limit 3`: three
//! items done (copied, their command run once), three pending. Its state records the
//! fingerprint that release computed, which is not today's canonical one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::common::TestContext;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The fixture job in a folder of its own, its state where the plan looks for it.
fn fixture_job() -> TestContext {
    let context = TestContext::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-8793c89");
    copy_dir(&fixture, context.dir.path());
    std::fs::create_dir_all(context.path(".redrive")).expect("mkdir");
    std::fs::rename(
        context.path("state.db"),
        context.path(".redrive/upgrade.db"),
    )
    .expect("place the state");
    context
}

#[test]
fn a_state_of_release_8793c89_resumes() {
    let context = fixture_job();

    let out = context
        .redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(0);
    assert!(
        out.stderr.contains("done 3"),
        "only the three pending items run:\n{}",
        out.stderr
    );
    // Each command ran exactly once over both releases, in item order.
    assert_eq!(
        context.read("ran.txt").lines().collect::<Vec<_>>(),
        ["f1.txt", "f2.txt", "f3.txt", "f4.txt", "f5.txt", "f6.txt"]
    );
    for n in 1..=6 {
        assert_eq!(
            context.read(&format!("output/f{n}.txt")),
            format!("item {n}\n")
        );
    }
    // The state now records the canonical fingerprint: a later run starts nothing.
    let state = rusqlite::Connection::open(context.path(".redrive/upgrade.db")).expect("open");
    let fingerprint: String = state
        .query_row("SELECT fingerprint FROM job", [], |row| row.get(0))
        .expect("fingerprint");
    assert_ne!(
        fingerprint, "30ccd4fb6b15caf2",
        "upgraded to the canonical fingerprint"
    );
    let again = context
        .redrive(&["run", "plan.toml", "--no-progress"])
        .expect_code(0);
    assert!(again.stderr.contains("done 0"), "{}", again.stderr);
    assert_eq!(context.read("ran.txt").lines().count(), 6);
}

#[test]
fn a_changed_plan_is_still_refused() {
    let context = fixture_job();
    let plan = context.read("plan.toml").replace(
        "output/{line}\", if_exists",
        "elsewhere/{line}\", if_exists",
    );
    context.plan(&plan);
    let out = context.redrive(&["run", "plan.toml", "--no-progress"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("different plan"), "{}", out.stderr);
    assert_eq!(context.read("ran.txt").lines().count(), 3, "nothing ran");
}
