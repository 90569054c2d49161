//! The conformance suite every [`StateStore`] must pass. Call [`run_all`] with a factory that
//! makes a fresh, empty store for each check.
//!
//! Checks panic with a message naming what broke: this module is meant for tests.

use std::future::Future;
use std::pin::Pin;

use redrive_core::item::{Fields, NewItem, Status, StoredItem};
use redrive_core::state::{JobInfo, Requeue, StateError, StateStore, Transition};

/// Makes a fresh, empty store.
pub type Factory<'a> =
    &'a (dyn Fn() -> Pin<Box<dyn Future<Output = Box<dyn StateStore>> + Send>> + Sync);

fn job(fingerprint: &str) -> JobInfo {
    JobInfo {
        name: "conformance".to_owned(),
        fingerprint: fingerprint.to_owned(),
        earlier_fingerprints: Vec::new(),
    }
}

fn items(keys: &[&str]) -> Vec<NewItem> {
    keys.iter()
        .map(|key| {
            let mut fields = Fields::new();
            fields.insert("name".to_owned(), (*key).to_owned());
            NewItem {
                key: (*key).to_owned(),
                fields,
            }
        })
        .collect()
}

fn ok<T>(result: Result<T, StateError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

/// Runs every check, each on a store from `factory`.
pub async fn run_all(factory: Factory<'_>) {
    begin_accepts_same_plan_and_refuses_another(factory().await.as_ref()).await;
    begin_upgrades_an_earlier_fingerprint(factory().await.as_ref()).await;
    insert_ignores_known_keys(factory().await.as_ref()).await;
    insert_reporting_hands_back_the_rows_of_known_keys(factory().await.as_ref()).await;
    transitions_are_visible_after_record(factory().await.as_ref()).await;
    runnable_pages_in_id_order(factory().await.as_ref()).await;
    requeue_and_skip(factory().await.as_ref()).await;
    source_complete_flag(factory().await.as_ref()).await;
    concurrent_records_all_land(factory().await.as_ref()).await;
    children_belong_to_their_parent(factory().await.as_ref()).await;
    last_item_is_the_last_top_level_item(factory().await.as_ref()).await;
    a_lone_process_claims_holds_and_gives_back(factory().await.as_ref()).await;
    record_all_answers_each_transition_in_order(factory().await.as_ref()).await;
    statuses_of_reads_each_known_keys_status(factory().await.as_ref()).await;
    claim_targets_keeps_each_targets_first_key(factory().await.as_ref()).await;
}

/// `activity` (for a store that keeps clocks): the span, items done per time bucket with their
/// bytes, durations counted by bucket, the slowest items first.
pub async fn activity_aggregates_when_items_ran(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["a", "b", "c"])).await, "insert");
    let ids: Vec<_> = ok(store.runnable(0, 10).await, "runnable")
        .iter()
        .map(|item| item.id)
        .collect();
    for id in &ids {
        let start = Transition::Started {
            id: *id,
            step: 0,
            step_name: "copy".into(),
        };
        ok(store.record(start).await, "start");
    }
    let finish = |id, bytes| Transition::Finished {
        id,
        status: Status::Done,
        bytes,
        reason: None,
        output: None,
    };
    ok(store.record(finish(ids[1], 5)).await, "finish b");
    let fail = Transition::Failed {
        id: ids[2],
        error: "boom".into(),
    };
    ok(store.record(fail).await, "fail c");
    // `a` takes 100 ms to 1 s; `b` well under 100 ms, even on a loaded machine (its start
    // and finish are a few commits apart: under 10 ms when the machine is idle, but not on
    // 2 cores that also compile and run other tests).
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    ok(store.record(finish(ids[0], 100)).await, "finish a");
    // Two runs (or workers) add their step times; the sums are kept per step and bucket.
    let times = |step: usize, name: &str, took: &[f64]| {
        let mut times = redrive_core::state::StepTimes::new(step, name);
        for seconds in took {
            times.add(*seconds);
        }
        times
    };
    let first = vec![times(0, "copy", &[0.005, 0.5]), times(1, "notify", &[20.0])];
    ok(store.add_step_times(first).await, "add step times");
    let second = vec![times(0, "copy", &[0.5, 0.25])];
    ok(store.add_step_times(second).await, "add step times again");

    let activity = ok(store.activity(10, 5).await, "activity");
    let Some((start, end)) = activity.span else {
        panic!("no span once items finished: {activity:?}");
    };
    assert!(
        end - start >= 0.1,
        "span {start}..{end} covers the 150 ms wait"
    );
    assert!(activity.bucket_seconds > 0.0);
    let done: u64 = activity.timeline.iter().map(|b| b.items).sum();
    let bytes: u64 = activity.timeline.iter().map(|b| b.bytes).sum();
    assert_eq!((done, bytes), (2, 105), "timeline: {:?}", activity.timeline);
    assert!(
        activity.timeline.iter().all(|b| b.index <= 10),
        "{:?}",
        activity.timeline
    );
    assert_eq!(
        activity.durations.len(),
        redrive_core::state::DURATION_BOUNDS.len() + 1
    );
    assert_eq!(
        activity.durations.iter().sum::<u64>(),
        2,
        "{:?}",
        activity.durations
    );
    assert_eq!(
        (
            activity.durations[0] + activity.durations[1],
            activity.durations[2]
        ),
        (1, 1),
        "b took under 100 ms, a 100 ms to 1 s: {:?}",
        activity.durations
    );
    let steps: Vec<_> = activity
        .steps
        .iter()
        .map(|s| (s.step, s.name.as_str(), s.counts.clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (0, "copy", vec![1, 0, 3, 0, 0, 0, 0]),
            (1, "notify", vec![0, 0, 0, 0, 1, 0, 0])
        ],
        "step times"
    );
    assert!((activity.steps[0].seconds - 1.255).abs() < 1e-6);
    assert!((activity.steps[1].seconds - 20.0).abs() < 1e-6);
    let slowest: Vec<_> = activity.slowest.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(slowest.len(), 3, "{:?}", activity.slowest);
    assert_eq!(slowest[0], "a", "{:?}", activity.slowest);
    assert!(activity.slowest[0].seconds >= 0.1);
    assert_eq!(
        (activity.slowest[0].status, activity.slowest[0].bytes),
        (Status::Done, 100)
    );
}

/// `claim_targets`: a target belongs to the first key that claims it, in this call or an
/// earlier one; the same key claiming again is no conflict; steps claim apart.
pub async fn claim_targets_keeps_each_targets_first_key(store: &dyn StateStore) {
    use redrive_core::state::TargetClaim;
    let claim = |step: usize, target: &str, key: &str| TargetClaim {
        step,
        target: target.to_owned(),
        key: key.to_owned(),
    };
    ok(store.begin(&job("a")).await, "begin");
    let taken = ok(
        store
            .claim_targets(vec![
                claim(0, "out/a", "J1/A"),
                claim(0, "out/a", "J2/A"),
                claim(1, "out/a", "J3/A"),
                claim(0, "out/b", "B"),
            ])
            .await,
        "first claims",
    );
    assert_eq!(taken, [(claim(0, "out/a", "J2/A"), "J1/A".to_owned())]);
    let again = ok(
        store
            .claim_targets(vec![claim(0, "out/a", "J1/A"), claim(0, "out/b", "C")])
            .await,
        "claims again",
    );
    assert_eq!(again, [(claim(0, "out/b", "C"), "B".to_owned())]);
}

/// `statuses_of` answers for the known keys only, each with its status.
pub async fn statuses_of_reads_each_known_keys_status(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["a", "b"])).await, "insert");
    let a = ok(store.runnable(0, 1).await, "runnable").remove(0);
    ok(
        store
            .record(Transition::Finished {
                id: a.id,
                status: Status::Done,
                bytes: 0,
                reason: None,
                output: None,
            })
            .await,
        "finish",
    );
    let mut found = ok(
        store
            .statuses_of(vec!["a".to_owned(), "b".to_owned(), "zz".to_owned()])
            .await,
        "statuses",
    );
    found.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        found,
        [
            ("a".to_owned(), Status::Done),
            ("b".to_owned(), Status::Pending)
        ]
    );
}

/// `record_all` lands every transition and answers each, in order, as `record` would.
pub async fn record_all_answers_each_transition_in_order(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["a", "b", "c"])).await, "insert");
    let claimed = ok(store.claim(0, 10).await, "claim");
    let starts = claimed
        .iter()
        .map(|item| Transition::Started {
            id: item.id,
            step: 1,
            step_name: "second".to_owned(),
        })
        .collect();
    let answers = store.record_all(starts).await;
    assert_eq!(answers.len(), 3, "one answer per transition");
    for answer in answers {
        ok(answer, "start");
    }
    let summary = ok(store.summary().await, "summary");
    assert_eq!(summary.count(Status::Running), 3, "every start landed");
    let page = ok(store.runnable(0, 10).await, "runnable");
    assert!(
        page.iter().all(|item| item.step == 1 && item.attempts == 1),
        "each at its step, one attempt: {page:?}"
    );
    let ends = vec![
        Transition::Finished {
            id: claimed[0].id,
            status: Status::Done,
            bytes: 7,
            reason: None,
            output: None,
        },
        Transition::Failed {
            id: claimed[1].id,
            error: "boom".to_owned(),
        },
    ];
    for answer in store.record_all(ends).await {
        ok(answer, "end");
    }
    assert_eq!(
        store.record_all(Vec::new()).await.len(),
        0,
        "nothing to record"
    );
    let summary = ok(store.summary().await, "summary");
    assert_eq!(
        (
            summary.count(Status::Done),
            summary.count(Status::Failed),
            summary.count(Status::Running),
            summary.bytes
        ),
        (1, 1, 1, 7)
    );
}

/// `insert_reporting` adds as `insert` does and hands back (at least) every row it ignored
/// for a known key, with its own fields; `fields_of` reads the fields recorded for keys.
pub async fn insert_reporting_hands_back_the_rows_of_known_keys(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["k1"])).await, "insert");
    let mut again = items(&["k1", "k2"]);
    again[0]
        .fields
        .insert("name".to_owned(), "other".to_owned());
    let inserted = ok(store.insert_reporting(again).await, "insert_reporting");
    assert_eq!(inserted.added, 1, "k2 is new");
    let handed: Vec<(&str, &str)> = inserted
        .candidates
        .iter()
        .map(|row| (row.key.as_str(), row.fields["name"].as_str()))
        .collect();
    assert!(handed.contains(&("k1", "other")), "{handed:?}");
    assert!(!handed.iter().any(|(key, _)| *key == "k2"), "{handed:?}");
    ok(store.flush().await, "flush");
    let stored = ok(
        store
            .fields_of(vec!["k1".to_owned(), "nope".to_owned()])
            .await,
        "fields_of",
    );
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "k1");
    assert_eq!(stored[0].1["name"], "k1", "the first row's fields stay");
}

/// `last_item` is the top-level item recorded last (children do not count), or none.
pub async fn last_item_is_the_last_top_level_item(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    assert!(ok(store.last_item().await, "last of none").is_none());
    ok(store.insert(items(&["k1", "k2"])).await, "insert");
    ok(store.flush().await, "flush");
    let last = ok(store.last_item().await, "last").map(|i| i.key);
    assert_eq!(last.as_deref(), Some("k2"));
    let parents = ok(store.runnable(0, 10).await, "runnable");
    ok(
        store
            .insert_children(parents[0].id, items(&["c1", "c2"]))
            .await,
        "children",
    );
    ok(store.insert(items(&["k0"])).await, "insert again");
    ok(store.flush().await, "flush");
    let last = ok(store.last_item().await, "last").map(|i| (i.key, i.fields));
    assert_eq!(
        last,
        Some(("k0".to_owned(), items(&["k0"]).remove(0).fields)),
        "the last recorded, not the greatest key; children do not count"
    );
}

/// Children are keyed within their parent, paged per parent, counted, and summed up apart.
pub async fn children_belong_to_their_parent(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["p1", "p2"])).await, "insert parents");
    let parents = ok(store.runnable(0, 10).await, "runnable");
    let (p1, p2) = (parents[0].id, parents[1].id);
    assert_eq!(
        ok(
            store.insert_children(p1, items(&["a", "b", "c"])).await,
            "children"
        ),
        3
    );
    assert_eq!(
        ok(
            store.insert_children(p1, items(&["a", "d"])).await,
            "children again"
        ),
        1,
        "keys are unique per parent"
    );
    assert_eq!(
        ok(
            store.insert_children(p2, items(&["a"])).await,
            "children of p2"
        ),
        1,
        "the same key under another parent"
    );
    ok(store.set_expanded(p1).await, "expanded");
    assert_eq!(
        ok(store.runnable(0, 10).await, "runnable").len(),
        2,
        "children are not top-level items"
    );
    let children = ok(store.runnable_children(p1, 0, 10).await, "children");
    assert_eq!(
        children.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert_eq!(children[0].parent_key.as_deref(), Some("p1"));
    ok(
        store
            .record(Transition::Finished {
                id: children[0].id,
                status: Status::Done,
                bytes: 5,
                reason: None,
                output: None,
            })
            .await,
        "done",
    );
    ok(
        store
            .record(Transition::Failed {
                id: children[1].id,
                error: "x".into(),
            })
            .await,
        "failed",
    );
    let counts = ok(store.child_counts(p1).await, "counts");
    assert_eq!(
        (counts.total, counts.done, counts.failed, counts.skipped),
        (4, 1, 1, 0)
    );
    assert_eq!(
        ok(store.runnable_children(p1, 0, 10).await, "children").len(),
        2,
        "finished children are not runnable"
    );
    ok(
        store
            .record(Transition::Started {
                id: p1,
                step: 0,
                step_name: "expand".into(),
            })
            .await,
        "start p1",
    );
    let overview = ok(
        store.parents(&[Status::Running, Status::Failed], 10).await,
        "parents",
    );
    assert_eq!(overview.len(), 1, "only expanded parents");
    assert_eq!((overview[0].0.key.as_str(), overview[0].1.total), ("p1", 4));
    let summary = ok(store.summary().await, "summary");
    assert_eq!(summary.total(), 2);
    assert_eq!(
        (
            summary.children_total(),
            summary.children(Status::Done),
            summary.children(Status::Failed)
        ),
        (5, 1, 1)
    );
    assert!(
        ok(store.runnable(0, 10).await, "runnable")
            .iter()
            .any(|p| p.id == p1 && p.expanded)
    );
}

/// A state refuses a plan with another fingerprint or job name.
pub async fn begin_accepts_same_plan_and_refuses_another(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "first begin");
    ok(
        store.begin(&job("a")).await,
        "begin again with the same plan",
    );
    assert!(
        matches!(
            store.begin(&job("b")).await,
            Err(StateError::PlanChanged { .. })
        ),
        "a changed plan must be refused"
    );
    let other = JobInfo {
        name: "other".to_owned(),
        fingerprint: "a".to_owned(),
        earlier_fingerprints: Vec::new(),
    };
    assert!(
        matches!(store.begin(&other).await, Err(StateError::OtherJob { .. })),
        "another job must be refused"
    );
}

/// A state whose fingerprint an earlier release computed for the same plan resumes, and
/// records the current fingerprint from then on.
pub async fn begin_upgrades_an_earlier_fingerprint(store: &dyn StateStore) {
    ok(
        store.begin(&job("legacy")).await,
        "begin with the old fingerprint",
    );
    let upgraded = JobInfo {
        earlier_fingerprints: vec!["other".to_owned(), "legacy".to_owned()],
        ..job("canonical")
    };
    ok(
        store.begin(&upgraded).await,
        "begin with an earlier fingerprint listed",
    );
    ok(
        store.begin(&job("canonical")).await,
        "the state now records the current fingerprint",
    );
    assert!(
        matches!(
            store.begin(&job("legacy")).await,
            Err(StateError::PlanChanged { .. })
        ),
        "the old fingerprint no longer matches once upgraded"
    );
    let unrelated = JobInfo {
        earlier_fingerprints: vec!["legacy".to_owned()],
        ..job("third")
    };
    assert!(
        matches!(
            store.begin(&unrelated).await,
            Err(StateError::PlanChanged { .. })
        ),
        "an earlier fingerprint that is not the stored one changes nothing"
    );
}

/// Inserting a key twice keeps one item, untouched.
pub async fn insert_ignores_known_keys(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    assert_eq!(ok(store.insert(items(&["a", "b"])).await, "insert"), 2);
    let first = ok(store.runnable(0, 10).await, "runnable");
    ok(
        store
            .record(Transition::Finished {
                id: first[0].id,
                status: Status::Done,
                bytes: 3,
                reason: None,
                output: None,
            })
            .await,
        "record",
    );
    assert_eq!(
        ok(store.insert(items(&["b", "a", "c"])).await, "insert again"),
        1,
        "only `c` is new"
    );
    let summary = ok(store.summary().await, "summary");
    assert_eq!(summary.total(), 3);
    assert_eq!(
        summary.count(Status::Done),
        1,
        "a known key keeps its status"
    );
}

/// Each transition is visible once `record` returns.
pub async fn transitions_are_visible_after_record(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["x"])).await, "insert");
    let item = ok(store.runnable(0, 10).await, "runnable").remove(0);
    assert_eq!(
        (item.status, item.step, item.attempts),
        (Status::Pending, 0, 0)
    );
    assert_eq!(item.fields.get("name").map(String::as_str), Some("x"));

    let start = Transition::Started {
        id: item.id,
        step: 0,
        step_name: "copy".into(),
    };
    ok(store.record(start.clone()).await, "start");
    let running = ok(store.runnable(0, 10).await, "runnable").remove(0);
    assert_eq!(
        (running.status, running.attempts),
        (Status::Running, 1),
        "started → running, attempt 1"
    );

    // A start recorded ahead of a slot, the run stopping before the item ran.
    ok(
        store.record(Transition::Unstarted { id: item.id }).await,
        "unstart",
    );
    let unstarted = ok(store.runnable(0, 10).await, "runnable").remove(0);
    assert_eq!(
        (unstarted.status, unstarted.step, unstarted.attempts),
        (Status::Pending, 0, 0),
        "unstarted → pending, the attempt not counted"
    );
    ok(store.record(start).await, "start again");

    ok(
        store
            .record(Transition::Advanced {
                id: item.id,
                step: 1,
                step_name: "notify".into(),
                bytes: 10,
                output: None,
            })
            .await,
        "advance",
    );
    let advanced = ok(store.runnable(0, 10).await, "runnable").remove(0);
    assert_eq!(
        (advanced.step, advanced.bytes),
        (1, 10),
        "advanced → next step, bytes added"
    );

    ok(
        store
            .record(Transition::Released {
                id: item.id,
                error: "no bucket".into(),
            })
            .await,
        "release",
    );
    let released = ok(store.runnable(0, 10).await, "runnable").remove(0);
    assert_eq!(
        (released.status, released.step, released.error.as_deref()),
        (Status::Pending, 1, Some("no bucket")),
        "released → pending at its step, error kept"
    );

    ok(
        store
            .record(Transition::Failed {
                id: item.id,
                error: "boom".into(),
            })
            .await,
        "fail",
    );
    assert!(
        ok(store.runnable(0, 10).await, "runnable").is_empty(),
        "failed items are not runnable"
    );
    let failed = ok(
        store.items_with_status(Status::Failed, 0, 10).await,
        "failed",
    );
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].step, failed[0].error.as_deref()),
        (1, Some("boom")),
        "fails at its step"
    );
}

/// `runnable` pages through pending and running items by id, skipping finished ones.
pub async fn runnable_pages_in_id_order(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    ok(store.insert(items(&refs)).await, "insert");
    let all = ok(store.runnable(0, 100).await, "runnable");
    assert_eq!(all.len(), 25);
    for done in all.iter().step_by(5) {
        ok(
            store
                .record(Transition::Finished {
                    id: done.id,
                    status: Status::Done,
                    bytes: 0,
                    reason: None,
                    output: None,
                })
                .await,
            "finish",
        );
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = ok(store.runnable(cursor, 7).await, "page");
        let Some(last) = page.last() else { break };
        cursor = last.id;
        seen.extend(page.into_iter().map(|item| item.key));
    }
    assert_eq!(seen.len(), 20, "finished items are not runnable");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "id order is insertion order");
}

/// `requeue` and `skip` change exactly the items asked for.
pub async fn requeue_and_skip(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["a", "b", "c", "d"])).await, "insert");
    let all = ok(store.runnable(0, 10).await, "runnable");
    ok(
        store
            .record(Transition::Advanced {
                id: all[0].id,
                step: 1,
                step_name: "two".into(),
                bytes: 1,
                output: None,
            })
            .await,
        "advance",
    );
    ok(
        store
            .record(Transition::Failed {
                id: all[0].id,
                error: "e".into(),
            })
            .await,
        "fail a",
    );
    ok(
        store
            .record(Transition::Failed {
                id: all[1].id,
                error: "e".into(),
            })
            .await,
        "fail b",
    );
    ok(
        store
            .record(Transition::Finished {
                id: all[2].id,
                status: Status::Done,
                bytes: 0,
                reason: None,
                output: None,
            })
            .await,
        "done c",
    );

    assert_eq!(
        ok(store.requeue(Requeue::Failed).await, "requeue failed"),
        2
    );
    let runnable = ok(store.runnable(0, 10).await, "runnable");
    assert_eq!(runnable.len(), 3);
    assert_eq!(
        (runnable[0].key.as_str(), runnable[0].step),
        ("a", 1),
        "--retry-failed resumes at the failed step"
    );

    assert_eq!(
        ok(
            store
                .requeue(Requeue::Keys(vec!["a".into(), "zz".into()]))
                .await,
            "reset a"
        ),
        1
    );
    let a = ok(store.runnable(0, 1).await, "runnable").remove(0);
    assert_eq!(
        (a.key.as_str(), a.step, a.bytes),
        ("a", 0, 0),
        "reset restarts from the first step"
    );

    assert_eq!(
        ok(
            store.requeue(Requeue::Status(Status::Done)).await,
            "reset done"
        ),
        1
    );
    assert_eq!(
        ok(store.skip(vec!["d".into()], "by hand".into()).await, "skip"),
        1
    );
    let skipped = ok(
        store.items_with_status(Status::Skipped, 0, 10).await,
        "skipped",
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].error.as_deref(), Some("by hand"));
}

/// The source-complete flag survives reopening (it is part of the job).
pub async fn source_complete_flag(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    assert!(!ok(store.source_complete().await, "flag"));
    ok(store.set_source_complete().await, "set");
    assert!(ok(store.source_complete().await, "flag"));
    assert!(ok(store.summary().await, "summary").source_complete);
}

/// Many tasks recording at once: every transition lands.
pub async fn concurrent_records_all_land(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    ok(store.insert(items(&refs)).await, "insert");
    let all = ok(store.runnable(0, 5_000).await, "runnable");
    let records = all.iter().map(|item| {
        store.record(Transition::Finished {
            id: item.id,
            status: Status::Done,
            bytes: 1,
            reason: None,
            output: None,
        })
    });
    for result in futures::future::join_all(records).await {
        ok(result, "concurrent record");
    }
    let summary = ok(store.summary().await, "summary");
    assert_eq!(summary.count(Status::Done), 2_000);
    assert_eq!(summary.bytes, 2_000);
}

/// Claims, as one process sees them whatever the store: a claim hands out runnable items in id
/// order, at most `limit`, each held by this process; a finished item is never handed out
/// again; a lone process holds the loader role and sees no one else busy. (Items given back
/// go to other processes: [`run_shared`].)
pub async fn a_lone_process_claims_holds_and_gives_back(store: &dyn StateStore) {
    ok(store.begin(&job("a")).await, "begin");
    ok(store.insert(items(&["a", "b", "c", "d"])).await, "insert");
    assert!(
        ok(store.take_loader_role().await, "loader role"),
        "a lone process loads"
    );
    assert!(
        ok(store.take_loader_role().await, "loader role"),
        "and keeps the role"
    );
    let claimed = ok(store.claim(0, 3).await, "claim");
    let keys: Vec<&str> = claimed.iter().map(|item| item.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b", "c"],
        "claimed in id order, at most the limit"
    );
    for item in &claimed {
        assert!(
            ok(store.holds(item.id).await, "holds"),
            "{} is held",
            item.key
        );
    }
    assert!(!ok(store.others_busy().await, "others busy"), "no one else");
    ok(
        store
            .record(Transition::Started {
                id: claimed[0].id,
                step: 0,
                step_name: "s".to_owned(),
            })
            .await,
        "start",
    );
    ok(
        store
            .record(Transition::Finished {
                id: claimed[0].id,
                status: Status::Done,
                bytes: 0,
                reason: None,
                output: None,
            })
            .await,
        "finish",
    );
    let again = ok(store.claim(0, 10).await, "claim again");
    let keys: Vec<&str> = again.iter().map(|item| item.key.as_str()).collect();
    assert!(
        keys.contains(&"d") && !keys.contains(&"a"),
        "the unclaimed item comes, the finished one never: {keys:?}"
    );
    ok(store.release_claims().await, "release");
}

/// Opens a handle on the shared store `name` (the same name: the same store, each handle
/// another process with its own leases of about a second). The first call for a name starts
/// from an empty store.
pub type SharedOpener<'a> =
    &'a (dyn Fn(&str) -> Pin<Box<dyn Future<Output = Box<dyn StateStore>> + Send>> + Sync);

/// The checks of a store that several processes share (PostgreSQL's leases): claims are
/// disjoint, a process that dies leaves its items to the others once its leases expire (and
/// live leases are never taken), and one process at a time holds the loader role.
pub async fn run_shared(open: SharedOpener<'_>) {
    processes_claim_disjoint_items_and_take_over_a_dead_ones(open).await;
    one_process_at_a_time_holds_the_loader_role(open).await;
}

fn ids(items: &[StoredItem]) -> Vec<i64> {
    items.iter().map(|item| item.id).collect()
}

/// Two processes claiming at once get different items; the one that dies (its handle
/// dropped, its heartbeat stopped) leaves its items to the other once its leases expire; a
/// live process's leases are never taken; given back, they are claimed at once.
pub async fn processes_claim_disjoint_items_and_take_over_a_dead_ones(open: SharedOpener<'_>) {
    let name = "claims";
    let a = open(name).await;
    let b = open(name).await;
    ok(a.begin(&job("a")).await, "begin");
    ok(b.begin(&job("a")).await, "begin");
    let keys: Vec<String> = (0..300).map(|i| format!("k{i:05}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    ok(a.insert(items(&refs)).await, "insert");
    let (x, y) = futures::join!(a.claim(0, 200), b.claim(0, 200));
    let (x, y) = (ids(&ok(x, "claim a")), ids(&ok(y, "claim b")));
    assert!(!x.is_empty() && !y.is_empty(), "both claim: {x:?} {y:?}");
    assert!(x.iter().all(|id| !y.contains(id)), "an item claimed twice");
    assert!(
        ok(b.others_busy().await, "others busy"),
        "a holds live leases"
    );

    drop(a);
    let mut taken = Vec::new();
    let started = std::time::Instant::now();
    while taken.len() < x.len() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "a dead process's items were not taken over: {taken:?} of {x:?}"
        );
        let claimed = ids(&ok(b.claim(0, 128).await, "claim"));
        taken.extend(claimed.into_iter().filter(|id| x.contains(id)));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `b`'s leases are renewed while it lives: a newcomer takes none of them.
    let c = open(name).await;
    ok(c.begin(&job("a")).await, "begin");
    let stolen = ids(&ok(c.claim(0, 128).await, "claim"));
    assert!(
        stolen
            .iter()
            .all(|id| !y.contains(id) && !taken.contains(id)),
        "a live process's leases were taken: {stolen:?}"
    );
    ok(b.release_claims().await, "release");
    let freed = ids(&ok(c.claim(0, 128).await, "claim"));
    assert!(
        !freed.is_empty() && freed.iter().all(|id| y.contains(id) || taken.contains(id)),
        "leases given back are claimed at once: {freed:?}"
    );
}

/// The loader role: held by one process at a time, kept by its holder, freed by its death,
/// and open to anyone once the source is complete.
pub async fn one_process_at_a_time_holds_the_loader_role(open: SharedOpener<'_>) {
    let name = "loader";
    let a = open(name).await;
    let b = open(name).await;
    ok(a.begin(&job("a")).await, "begin");
    ok(b.begin(&job("a")).await, "begin");
    assert!(ok(a.take_loader_role().await, "role"), "a takes it");
    assert!(ok(a.take_loader_role().await, "role"), "and keeps it");
    assert!(!ok(b.take_loader_role().await, "role"), "held by a");
    drop(a);
    let started = std::time::Instant::now();
    while !ok(b.take_loader_role().await, "role") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "a dead process kept the loader role"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ok(b.set_source_complete().await, "complete");
    let c = open(name).await;
    ok(c.begin(&job("a")).await, "begin");
    assert!(
        ok(c.take_loader_role().await, "role"),
        "open to anyone once the source is complete"
    );
}
