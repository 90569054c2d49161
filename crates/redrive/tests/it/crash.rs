//! Crash safety, proven on the S1 job (seed 000) on Azurite: 5,000 files, each copied
//! create-only and announced by a queue message. The run is killed with SIGKILL at random
//! instants twenty times in a row, resumed each time, then let finish: every file is there once
//! with its content, nothing that existed was overwritten, the state says every file is done,
//! and every file's message is in the queue at least once (the duplicates are counted: a
//! message sent just before a kill, whose completion was not yet recorded, is sent again).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use crate::azure_reupload::{
    Size, assert_all_copied, assert_every_message_at_least_once, setup_with,
};
use crate::common::{azure_connection_string, azure_operator, put};

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
        // Its stderr in a file, so that a run that ends early says why.
        let err = std::fs::File::create(s1.t.path(&format!("run{kill}.err"))).expect("err file");
        let mut child =
            s1.t.command(&["run", "plan.toml"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(err))
                .spawn()
                .expect("spawn");
        // Anywhere from the state's opening to well into the copies.
        std::thread::sleep(Duration::from_millis(100 + next(&mut seed) % 900));
        if let Ok(Some(status)) = child.try_wait() {
            let said = s1.t.read(&format!("run{kill}.err"));
            panic!(
                "run {kill} ended ({status}) before its kill (seed {first}): the job is too short for {KILLS} kills, or it failed: {said}"
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

/// Small local copies killed with -9 while their starts are recorded ahead of free slots
/// (each item far under 10 ms): the target folder holds only whole targets after each kill,
/// the resumed run finishes every item once. What a kill leaves `running` is bounded by the
/// items in flight, those started ahead and those settling (written, waiting for their names:
/// at most 512), and each of them is started exactly once more: the attempts beyond one an
/// item are the items left running, summed over the kills.
#[test]
fn small_local_copies_killed_while_started_ahead_lose_nothing_and_leave_nothing() {
    let t = crate::common::TestContext::new();
    let (n, in_flight, kills) = (3_000, 16, 3);
    let body = |i: usize| format!("{i:06}\n").repeat(64);
    for i in 0..n {
        t.write(&format!("in/f{i:05}.txt"), body(i));
    }
    t.plan(&format!(
        r#"
[job]
name = "small"
state = "state.db"
[source]
glob = "in/*.txt"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "out/{{name}}", if_exists = "skip" }}
[limits]
items = {in_flight}
"#
    ));
    let targets = |t: &crate::common::TestContext| -> Vec<String> {
        std::fs::read_dir(t.path("out"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut cut_off = 0;
    let mut left_running = 0;
    for round in 1..=kills {
        let mut child = t
            .command(&["run", "plan.toml", "-q"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let start = std::time::Instant::now();
        while targets(&t).len() < round * n / (kills + 1)
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        cut_off += usize::from(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        let running = t.count("SELECT count(*) FROM items WHERE status = 'running'");
        assert!(
            running <= (2 * in_flight + 512) as i64,
            "{running} items left running by a kill"
        );
        left_running += running;
        for name in targets(&t) {
            let i: usize = name
                .strip_prefix('f')
                .and_then(|rest| rest.strip_suffix(".txt"))
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("left in the target folder: {name}"));
            assert_eq!(
                t.read(&format!("out/{name}")),
                body(i),
                "{name} is not whole"
            );
        }
    }
    assert!(
        cut_off > 0,
        "no run was killed before it ended: this tested nothing"
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(targets(&t).len(), n, "only the targets, all of them");
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
    let extra = t.count("SELECT sum(attempts) FROM items") - n as i64;
    assert_eq!(
        extra, left_running,
        "attempts beyond one an item: each item a kill left running, started once more"
    );
}

/// Local copies killed with -9 while in flight: the target folder holds only finished targets
/// (a create-only copy writes a file without a name, which dies with the process; it used to
/// leave a temporary file beside the targets forever), and the resumed run completes every
/// target whole.
#[test]
fn a_killed_local_copy_leaves_nothing_in_the_target_folder() {
    killed_local_copies("skip", 0);
}

/// The same with `if_exists = "overwrite"`: a copy's temporary file is in the logs folder's
/// `.partial`, never beside the targets. At a kill, the files there are those of the 8 copies
/// in flight and of the copies written and waiting for their names (outside their slots):
/// at most each of the 24 items once, at each of the 3 kills.
#[test]
fn a_killed_overwriting_local_copy_leaves_nothing_in_the_target_folder() {
    killed_local_copies("overwrite", 3 * 24);
}

fn killed_local_copies(if_exists: &str, most_partial: usize) {
    let t = crate::common::TestContext::new();
    let n = 24;
    let body = |i: usize| format!("{i:08} ").repeat(800_000);
    for i in 0..n {
        t.write(&format!("in/f{i:02}.bin"), body(i));
    }
    t.plan(
        &r#"
[job]
name = "local"
state = "state.db"
[source]
glob = "in/*.bin"
key = "{name}"
[[step]]
copy = { from = "{path}", to = "out/{name}", part_size = "1MiB", if_exists = "IF_EXISTS" }
[limits]
items = 8
"#
        .replace("IF_EXISTS", if_exists),
    );
    for round in 0..3 {
        let mut child = t
            .command(&["run", "plan.toml", "-q"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Killed once a few more targets are finished: copies are in flight then.
        let finished = |t: &crate::common::TestContext| {
            std::fs::read_dir(t.path("out"))
                .map(|d| {
                    d.filter(|e| {
                        let name = e.as_ref().unwrap().file_name();
                        let name = name.to_string_lossy();
                        name.starts_with('f') && name.ends_with(".bin")
                    })
                    .count()
                })
                .unwrap_or(0)
        };
        let target = finished(&t) + 2 + round;
        let start = std::time::Instant::now();
        while finished(&t) < target && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let stray: Vec<String> = std::fs::read_dir(t.path("out"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|name| !(name.starts_with('f') && name.ends_with(".bin")))
                    .collect()
            })
            .unwrap_or_default();
        assert!(stray.is_empty(), "left in the target folder: {stray:?}");
    }
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    for i in 0..n {
        assert!(
            t.read(&format!("out/f{i:02}.bin")) == body(i),
            "f{i:02}.bin is not whole"
        );
    }
    let names = std::fs::read_dir(t.path("out")).unwrap().count();
    assert_eq!(names, n, "only the targets");
    // Beside the state: the state, its lock and the logs folder, no log left (a clean exit);
    // the killed copies' temporary files, if any, wait in `.partial` until a later run finds
    // them stale.
    let mut beside: Vec<String> = std::fs::read_dir(t.path("."))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !matches!(name.as_str(), "in" | "out" | "plan.toml"))
        .collect();
    beside.sort();
    assert_eq!(beside, ["local-logs", "state.db", "state.db.lock"]);
    let partial = std::fs::read_dir(t.path("local-logs/.partial"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(partial <= most_partial, "{partial} temporary files");
}

/// `redrive cp` of a local folder tree killed at random instants, the first while it is still
/// listing the folder: after each kill every file in the target tree is a whole copy of its
/// source (no temporary file, no torn copy beside the targets), and a last run copies the
/// rest: the target tree is the source tree, file for file, and the job's own folder keeps
/// at most the temporary files of the copies cut off.
#[test]
fn a_cp_of_a_local_folder_killed_while_listing_and_copying_loses_nothing_and_leaves_nothing() {
    let t = crate::common::TestContext::new();
    let (folders, per) = (40, 100);
    let body = |d: usize, f: usize| format!("{d:03}/{f:03} ").repeat(9);
    for d in 0..folders {
        for f in 0..per {
            t.write(&format!("in/d{d:03}/f{f:03}.bin"), body(d, f));
        }
    }
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut seed = first;
    let mut kills = 0;
    for kill in 0..6 {
        let mut child = t
            .command(&["cp", "in", "out", "-q"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // The first kill lands in the listing, the others anywhere.
        let wait = if kill == 0 {
            20 + next(&mut seed) % 60
        } else {
            50 + next(&mut seed) % 400
        };
        std::thread::sleep(Duration::from_millis(wait));
        if let Ok(Some(status)) = child.try_wait() {
            assert!(
                status.success(),
                "cp {kill} ended ({status}) before its kill (seed {first})"
            );
            break;
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
        kills += 1;
        for (relative, content) in files_under(&t.path("out")) {
            let (d, f) = parse_target(&relative).unwrap_or_else(|| {
                panic!("left in the target tree after kill {kill}: {relative} (seed {first})")
            });
            assert!(
                content == body(d, f).as_bytes(),
                "{relative} is not whole after kill {kill} (seed {first})"
            );
        }
    }
    eprintln!("{kills} kills (seed {first})");
    assert!(
        kills >= 2,
        "the copy ended before a second kill (seed {first}): more files"
    );
    t.redrive(&["cp", "in", "out", "-q"]).expect_code(0);
    let copied = files_under(&t.path("out"));
    assert_eq!(
        copied.len(),
        folders * per,
        "every file copied, nothing else (seed {first}, {kills} kills)"
    );
    for (relative, content) in &copied {
        let (d, f) = parse_target(relative).unwrap_or_else(|| panic!("not a target: {relative}"));
        assert!(*content == body(d, f).as_bytes(), "{relative} is not whole");
    }
    // The state's own folder: at most the temporary files of the copies cut off (a small
    // copy's file has no name until it is whole, where the file system allows it).
    let partial = files_under(&t.path(".redrive"))
        .into_iter()
        .filter(|(relative, _)| relative.contains(".partial/"))
        .count();
    assert!(
        partial <= kills * 64,
        "{partial} temporary files after {kills} kills"
    );
}

/// Every file under `root`, by its path relative to `root`, with its content.
fn files_under(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    crate::common::walk(root)
        .into_iter()
        .map(|relative| {
            let content = std::fs::read(root.join(&relative)).unwrap_or_default();
            (relative, content)
        })
        .collect()
}

/// `dDDD/fFFF.bin` → (DDD, FFF).
fn parse_target(relative: &str) -> Option<(usize, usize)> {
    let (d, f) = relative.split_once('/')?;
    let d = d.strip_prefix('d')?.parse().ok()?;
    let f = f.strip_prefix('f')?.strip_suffix(".bin")?.parse().ok()?;
    Some((d, f))
}

/// A `run` step killed ten times at random instants: every item's command ran, and a command
/// ran twice only for an item in flight at a kill (at most `items` = 4 per kill). The figures
/// are printed for `docs/guarantees.md`.
#[test]
fn a_run_step_killed_ten_times_loses_nothing_and_repeats_only_what_was_in_flight() {
    const RUN_KILLS: usize = 10;
    let t = crate::common::TestContext::new();
    let n = 1500;
    let keys: String = (0..n).map(|i| format!("k{i:04}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(
        r#"
[job]
name = "killrun"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
run = { shell = "echo {line} >> effects.log; sleep 0.02" }
[limits]
items = 4
"#,
    );
    let (kills, first) = kill_loop(&t, RUN_KILLS);
    assert_eq!(kills, RUN_KILLS, "every run was killed (seed {first})");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let runs = tally(t.read("effects.log").lines());
    assert_each_once_repeats_bounded("commands ran twice", &runs, n, (kills, first), 4);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
}

/// Runs `redrive run plan.toml -q` up to `kills` times, each killed with SIGKILL 150–500 ms
/// after its start; a run that ends first (the work is done) must end well, and ends the loop.
/// Returns the kills made and the seed of their instants (printed by the callers to replay).
pub(crate) fn kill_loop(t: &crate::common::TestContext, kills: usize) -> (usize, u64) {
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    let mut seed = first;
    for kill in 0..kills {
        // Its stderr in a file, so that a run that ends early says why.
        let err = std::fs::File::create(t.path(&format!("run{kill}.err"))).expect("err file");
        let mut child = t
            .command(&["run", "plan.toml", "-q"])
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(150 + next(&mut seed) % 350));
        if let Ok(Some(status)) = child.try_wait() {
            let said = t.read(&format!("run{kill}.err"));
            assert!(
                status.success(),
                "run {kill} ended ({status}) before its kill (seed {first}): {said}"
            );
            return (kill, first);
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
    (kills, first)
}

/// The side effects a kill loop left (a message's text, a command's line), each counted.
pub(crate) fn tally<S: Into<String>>(
    effects: impl IntoIterator<Item = S>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for effect in effects {
        *counts.entry(effect.into()).or_default() += 1;
    }
    counts
}

/// Checks a kill loop's side effects (`counts`, see [`tally`]): each of the `n` items' effect
/// is there (none lost), and what is there twice (`what`: `items submitted twice`) is no more
/// than what was in flight at the kills (`loop`: kills made and their seed); says the figures.
pub(crate) fn assert_each_once_repeats_bounded(
    what: &str,
    counts: &std::collections::BTreeMap<String, usize>,
    n: usize,
    (kills, seed): (usize, u64),
    in_flight: usize,
) {
    assert_eq!(
        counts.len(),
        n,
        "every item's effect is there (seed {seed})"
    );
    let repeated: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("{kills} kills (seed {seed}): 0 lost, {repeated} {what} of {n}");
    assert!(
        repeated <= kills * in_flight,
        "{repeated} {what}: more than the items in flight at {kills} kills (seed {seed})"
    );
}

/// An `http` step (batches of 10, 40 items in flight) killed at random instants: every item
/// was submitted, and an item was submitted twice only if its batch was in flight at a kill.
#[test]
fn an_http_step_killed_at_random_instants_loses_nothing_and_repeats_only_what_was_in_flight() {
    const HTTP_KILLS: usize = 6;
    const IN_FLIGHT: usize = 40;
    let t = crate::common::TestContext::new();
    let receiver = crate::crash_reprocessing::receiver(false);
    let n = 30_000;
    let keys: String = (0..n).map(|i| format!("k{i:05}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "killhttp"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
http = {{ url = "{url}", form = {{ crash_ids = "{{line}}" }}, batch = 10, max_wait = "50ms" }}
[limits]
items = {IN_FLIGHT}
"#,
        url = receiver.url
    ));
    let (kills, first) = kill_loop(&t, HTTP_KILLS);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let sent = tally(
        receiver
            .accepted
            .lock()
            .expect("accepted")
            .iter()
            .flatten()
            .cloned(),
    );
    assert_each_once_repeats_bounded("items submitted twice", &sent, n, (kills, first), IN_FLIGHT);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
}

/// `sql_insert` into a PostgreSQL table with a primary key, killed at random instants: every
/// row is there once, and no item fails as a "duplicate" of the row its own crashed batch had
/// committed before the state recorded it.
#[test]
fn a_sql_insert_killed_at_random_instants_leaves_each_row_once_and_no_item_failed() {
    const SQL_KILLS: usize = 8;
    let db = crate::sql_extract::Db::postgres();
    let table = crate::common::unique("kill_rows").replace('-', "_");
    db.execute(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
    ));
    let t = crate::common::TestContext::new();
    let n = 20_000;
    let keys: String = (1..=n).map(|i| format!("{i}\n")).collect();
    t.write("ids.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "killsql"
state = "state.db"
[source]
lines = "ids.txt"
[[step]]
sql_insert = {{ url = "{url}", table = "{table}", columns = {{ id = "{{line}}", body = "row {{line}}" }}, key = ["id"], batch = 50, max_wait = "100ms" }}
[limits]
items = 200
"#,
        url = db.url
    ));
    let (kills, first) = kill_loop(&t, SQL_KILLS);
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 0, "seed {first}: {}", out.stderr);
    assert_eq!(
        db.count(&format!("SELECT count(*) FROM {table}")),
        n,
        "every row, once (seed {first})"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM {table} WHERE body <> 'row ' || id"
        )),
        0
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n,
        "no item failed (seed {first})"
    );
    eprintln!("{kills} kills (seed {first}): {n} rows, each once, 0 items failed");
    db.execute(&format!("DROP TABLE {table}"));
}

/// Local → S3 create-only copies (16 in flight) killed at random instants on moto: every file
/// lands once with its content, an object that existed before is kept, and the state says
/// every item is done. (A copy in flight at a kill is made again; its conditional create finds
/// the object that landed.)
#[test]
fn an_s3_copy_killed_at_random_instants_loses_and_overwrites_nothing() {
    use crate::common::{create_bucket, get, make_inputs, put, s3_env, s3_operator, unique};
    const S3_KILLS: usize = 6;
    let bucket = unique("rd-s3k");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    put(&operator, "dst/f00007.txt", b"EXISTED BEFORE");
    let t = s3_env(crate::common::TestContext::new());
    let n = 1500;
    make_inputs(&t, n);
    t.plan(&format!(
        r#"
[job]
name = "kills3"
state = "state.db"
[source]
glob = "in/*.txt"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "s3://{bucket}/dst/{{name}}" }}
[limits]
items = 16
"#
    ));
    let (kills, first) = kill_loop(&t, S3_KILLS);
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 0, "seed {first}: {}", out.stderr);
    for i in 0..n {
        let name = format!("dst/f{i:05}.txt");
        let want = if i == 7 {
            "EXISTED BEFORE".to_owned()
        } else {
            format!("body {i}")
        };
        assert_eq!(
            get(&operator, &name).as_deref(),
            Some(want.as_bytes()),
            "{name} (seed {first})"
        );
    }
    let listed = crate::common::runtime()
        .block_on(async { operator.list_with("dst/").recursive(true).await })
        .expect("list");
    let objects = listed.iter().filter(|e| !e.path().ends_with('/')).count();
    assert_eq!(objects, n, "only the targets (seed {first})");
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
    eprintln!("{kills} kills (seed {first}): {n} objects, 0 lost, 0 overwritten");
}

/// `enqueue` to an Azure Queue (one message a call, 20 items in flight) killed at random
/// instants on Azurite: every item's message is on the queue, and one is there twice only if
/// its item was in flight at a kill.
#[test]
fn an_azure_queue_enqueue_killed_at_random_instants_loses_no_message_and_repeats_only_what_was_in_flight()
 {
    use crate::common::{azure_env, create_queue, take_messages, unique};
    const AZQ_KILLS: usize = 5;
    const IN_FLIGHT: usize = 20;
    let queue = unique("rd-azqk");
    create_queue(&queue);
    let t = azure_env(crate::common::TestContext::new());
    let n = 2000;
    let keys: String = (0..n).map(|i| format!("k{i:05}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "killazq"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "azq://{queue}", body = "m-{{line}}" }}
[limits]
items = {IN_FLIGHT}
"#
    ));
    let (kills, first) = kill_loop(&t, AZQ_KILLS);
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 0, "seed {first}: {}", out.stderr);
    let counts = tally(take_messages(&queue));
    assert!(
        counts.keys().all(|text| text.starts_with("m-k")),
        "only the items' messages"
    );
    assert_each_once_repeats_bounded("messages sent twice", &counts, n, (kills, first), IN_FLIGHT);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
}

/// Writes `n` objects `in/f00000.json`… (`body N`) concurrently, and one target that exists
/// before the run (`out/f00007.json`, `EXISTED BEFORE`).
fn server_copy_inputs(
    source: &opendal::Operator,
    target: &opendal::Operator,
    n: usize,
    content_type: Option<&str>,
) {
    use crate::common::write_typed;
    use futures::StreamExt as _;
    crate::common::runtime().block_on(async {
        futures::stream::iter(0..n)
            .map(|i| async move {
                let path = format!("in/f{i:05}.json");
                write_typed(
                    source,
                    &path,
                    format!("body {i}").into_bytes(),
                    content_type,
                )
                .await;
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        let existed = b"EXISTED BEFORE".to_vec();
        write_typed(target, "out/f00007.json", existed, content_type).await;
    });
}

/// Copies what `FROM/in/` lists to `TO/out/` server-side (`mode = "server"`, 16 in flight),
/// killed at random instants five times, then let finish: see [`assert_server_copies`].
fn kill_server_copies(
    t: &crate::common::TestContext,
    from: &str,
    to: &str,
    target: &opendal::Operator,
    n: usize,
) {
    t.plan(&format!(
        r#"
[job]
name = "kill-server-copies"
state = "state.db"
[source]
list = "{from}/in/"
key = "{{name}}"
[[step]]
copy = {{ from = "{{url}}", to = "{to}/out/{{name}}", mode = "server" }}
[limits]
items = 16
"#
    ));
    let kills = kill_loop(t, 5);
    assert_server_copies(t, target, n, kills);
}

/// After a kill loop of server-side copies: each target is its source's bytes (the one that
/// existed before kept), nothing else is in the target's folder, every item is done.
fn assert_server_copies(
    t: &crate::common::TestContext,
    target: &opendal::Operator,
    n: usize,
    (kills, first): (usize, u64),
) {
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 0, "seed {first}: {}", out.stderr);
    let listed = crate::common::runtime()
        .block_on(async { target.list_with("out/").recursive(true).await })
        .expect("list");
    let objects: Vec<String> = listed
        .iter()
        .filter(|e| !e.path().ends_with('/'))
        .map(|e| e.path().to_owned())
        .collect();
    assert_eq!(objects.len(), n, "only the targets (seed {first})");
    for i in 0..n {
        let name = format!("out/f{i:05}.json");
        let want = if i == 7 {
            "EXISTED BEFORE".to_owned()
        } else {
            format!("body {i}")
        };
        assert_eq!(
            crate::common::get(target, &name).as_deref(),
            Some(want.as_bytes()),
            "{name} (seed {first})"
        );
    }
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
    eprintln!("{kills} kills (seed {first}): {n} server-side copies, 0 lost, 0 overwritten");
}

/// Azure → Azure copied by the service (Copy Blob From URL), killed at random instants on
/// Azurite: a copy in flight at a kill is sent again and its `If-None-Match: *` finds the blob
/// that landed; the blob that existed before is kept.
#[test]
fn an_azure_server_side_copy_killed_at_random_instants_loses_and_overwrites_nothing() {
    use crate::common::{azure_env, azure_operator, create_container, unique};
    let (src, dst) = (unique("rd-azsk"), unique("rd-azdk"));
    create_container(&src);
    create_container(&dst);
    let (source, target) = (azure_operator(&src), azure_operator(&dst));
    let n = 2000;
    server_copy_inputs(&source, &target, n, None);
    let t = azure_env(crate::common::TestContext::new());
    kill_server_copies(
        &t,
        &format!("az://{src}"),
        &format!("az://{dst}"),
        &target,
        n,
    );
}

/// S3 → S3 copied by the service (CopyObject, `mode = "server"`), killed at random instants,
/// on moto behind a proxy that answers a conditional copy onto an existing object with `412`
/// as AWS S3 does (moto itself ignores the condition on a copy).
#[test]
fn an_s3_server_side_copy_killed_at_random_instants_loses_and_overwrites_nothing() {
    use crate::common::{create_bucket, s3_endpoint, s3_operator, unique};
    let (src, dst) = (unique("rd-s3sk"), unique("rd-s3dk"));
    create_bucket(&src);
    create_bucket(&dst);
    let (source, target) = (s3_operator(&src), s3_operator(&dst));
    let n = 1500;
    server_copy_inputs(&source, &target, n, None);
    let (looker, dst_bucket) = (target.clone(), dst.clone());
    let proxy = crate::proxy::Proxy::start(s3_endpoint(), move |request| {
        let conditional = request.headers.get("if-none-match").map(String::as_str) == Some("*");
        if !(conditional && request.headers.contains_key("x-amz-copy-source")) {
            return crate::proxy::Action::Forward;
        }
        // Is the target there? (Asked with the bucket's keys: moto refuses anonymous HEADs.)
        let key = request
            .path
            .strip_prefix(&format!("/{dst_bucket}/"))
            .unwrap_or_default()
            .to_owned();
        let exists = crate::common::runtime().block_on(async { looker.stat(&key).await.is_ok() });
        if exists {
            crate::proxy::Action::Answer(
                412,
                "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>".to_owned(),
            )
        } else {
            crate::proxy::Action::Forward
        }
    });
    let t = crate::common::s3_env_at(crate::common::TestContext::new(), &proxy.address);
    kill_server_copies(
        &t,
        &format!("s3://{src}"),
        &format!("s3://{dst}"),
        &target,
        n,
    );
}

/// GCS → GCS copied by the service (rewrite, `mode = "server"`), killed at random instants, on
/// gcp-storage-emulator behind a proxy that answers a create-only rewrite onto an existing
/// object with `412` as GCS does (the emulator ignores `ifGenerationMatch`).
#[test]
fn a_gcs_server_side_copy_killed_at_random_instants_loses_and_overwrites_nothing() {
    use crate::common::{GCS_CONTENT_TYPE, create_gcs_bucket, gcs_endpoint, gcs_operator, unique};
    let (src, dst) = (unique("rd-gssk"), unique("rd-gsdk"));
    create_gcs_bucket(&src);
    create_gcs_bucket(&dst);
    let (source, target) = (gcs_operator(&src), gcs_operator(&dst));
    let n = 600; // the emulator (Python) takes ~60 ms an object to load
    server_copy_inputs(&source, &target, n, Some(GCS_CONTENT_TYPE));
    let (looker, into) = (target.clone(), format!("/rewriteTo/b/{dst}/o/"));
    let proxy = crate::proxy::Proxy::start(gcs_endpoint(), move |request| {
        let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
        let Some(key) = path.split_once(&into).map(|(_, key)| key) else {
            return crate::proxy::Action::Forward;
        };
        if !query.contains("ifGenerationMatch=0") {
            return crate::proxy::Action::Forward;
        }
        let key = key.replace("%2F", "/");
        let exists = crate::common::runtime().block_on(async { looker.stat(&key).await.is_ok() });
        if exists {
            crate::proxy::Action::Answer(
                412,
                r#"{"error":{"code":412,"message":"At least one of the pre-conditions you specified did not hold."}}"#.to_owned(),
            )
        } else {
            crate::proxy::Action::Forward
        }
    });
    let t = crate::common::gcs_env_at(crate::common::TestContext::new(), &proxy.address);
    kill_server_copies(
        &t,
        &format!("gs://{src}"),
        &format!("gs://{dst}"),
        &target,
        n,
    );
}

/// An inventory report loaded while the run is killed at random instants (six times), then
/// let finish: every row of every data file is an item exactly once, each run once, however
/// the kills fell across the load (a resumed load starts after the last row recorded).
#[test]
fn an_inventory_load_killed_at_random_instants_loads_every_row_once() {
    use std::io::Write as _;
    let t = crate::common::TestContext::new();
    let (files, per_file) = (6, 20_000);
    let mut entries = Vec::new();
    for n in 0..files {
        let text: String = (0..per_file)
            .map(|i| format!("\"src\",\"f{n}/k+{i:05}\",\"{i}\"\n"))
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let body = gz.finish().unwrap();
        let key = format!("inv/src/daily/data/{n}.csv.gz");
        t.write(&key, &body);
        let md5: String = <md5::Md5 as md5::Digest>::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        entries.push(format!(
            r#"{{"key": "{key}", "size": {}, "MD5checksum": "{md5}"}}"#,
            body.len()
        ));
    }
    t.write(
        "inv/src/daily/2026-12-01T01-00Z/manifest.json",
        format!(
            r#"{{"sourceBucket": "src", "destinationBucket": "arn:aws:s3:::inv", "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size", "files": [{}]}}"#,
            entries.join(", ")
        ),
    );
    t.plan(
        r#"
[job]
name = "inventory-kills"
state = "state.db"
[source]
inventory = "inv/src/daily/2026-12-01T01-00Z/manifest.json"
[[step]]
exists = "nothing/{key}"
[limits]
items = 64
"#,
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    eprintln!("seed {seed}");
    let mut mid_load = 0;
    for _ in 0..6 {
        let mut child = t
            .command(&["run", "plan.toml", "-q"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(150 + next(&mut seed) % 500));
        child.kill().unwrap();
        child.wait().unwrap();
        let loaded = t.try_count("SELECT count(*) FROM items").unwrap_or(0);
        let complete = t.try_count("SELECT source_complete FROM job").unwrap_or(0);
        if complete == 0 && loaded > 0 {
            mid_load += 1;
        }
        eprintln!("killed with {loaded} rows loaded, source complete: {complete}");
    }
    eprintln!("{mid_load} of 6 kills fell inside the load");
    t.redrive(&["run", "plan.toml", "-q"]).expect_code(0);
    let rows = i64::from(files * per_file);
    assert_eq!(
        t.count("SELECT count(*) FROM items"),
        rows,
        "every row once"
    );
    assert_eq!(
        t.count("SELECT count(DISTINCT json_extract(fields, '$.inventory_file') || ':' || json_extract(fields, '$.inventory_row')) FROM items"),
        rows,
        "each (file, row) once"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        rows
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE key = 'f5/k 19999' AND attempts >= 1"),
        1,
        "the last row, key decoded"
    );
}
