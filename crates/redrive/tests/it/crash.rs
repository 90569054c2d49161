//! Crash safety, proven on the S1 job (seed 000) on Azurite: 5,000 files, each copied
//! create-only and announced by a queue message. The run is killed with SIGKILL at random
//! instants twenty times in a row, resumed each time, then let finish: every file is there once
//! with its content, nothing that existed was overwritten, the state says every file is done,
//! and every file's message is in the queue at least once (the duplicates are counted: a
//! message sent just before a kill, whose completion was not yet recorded, is sent again).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use crate::common::{azure_connection_string, azure_operator, put};
use crate::s1::{Size, assert_all_copied, assert_every_message_at_least_once, setup_with};

const KILLS: usize = 20;

/// xorshift64: random enough for kill instants, and replayable from the printed seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn the_s1_job_killed_twenty_times_at_random_instants_loses_and_overwrites_nothing() {
    let s1 = setup_with(
        Size {
            work_items: 200,
            files: 25,
        },
        &azure_connection_string(),
    );
    put(
        &azure_operator(&s1.results),
        "wi130-file10.json",
        b"EXISTED BEFORE",
    );
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut seed = first;
    let done = || {
        s1.t.try_count("SELECT count(*) FROM items WHERE parent IS NOT NULL AND status = 'done'")
            .unwrap_or(0)
    };
    let mut progress = Vec::new();
    for kill in 0..KILLS {
        let mut child =
            s1.t.command(&["run", "plan.toml"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
        // Anywhere from the state's opening to well into the copies.
        std::thread::sleep(Duration::from_millis(100 + next(&mut seed) % 900));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "run {kill} ended ({status}) before its kill (seed {first}): the job is too short for {KILLS} kills"
            );
        }
        std::process::Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("kill");
        child.wait().expect("wait");
        progress.push(done());
    }
    let before_last = done();
    assert!(
        before_last < 5_000,
        "the kills came after the work: {progress:?}"
    );
    s1.t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_all_copied(&s1, &[("wi130-file10.json", "EXISTED BEFORE")]);
    let duplicates = assert_every_message_at_least_once(&s1);
    eprintln!(
        "{KILLS} kills (seed {first}); files done after each kill: {progress:?}; {duplicates} duplicate queue messages of 5000"
    );
    // Each kill can cut off at most the messages in flight (items × per_item = 20).
    assert!(
        duplicates <= KILLS * 20,
        "{duplicates} duplicates: more than the kills could cause"
    );
}
