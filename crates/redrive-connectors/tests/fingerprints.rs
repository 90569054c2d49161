#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Golden fingerprints. A state records its plan's fingerprint and refuses another, so a change
//! here strands every running job: change these values only with a way for existing states to
//! resume (see `Plan::earlier_fingerprints`), and say so in the README's upgrade note.

use std::path::Path;

use redrive_connectors::plan::Plan;

fn load(path: &str) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    Plan::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (plan, canonical fingerprint, what release 8793c89 recorded for it)
const GOLDEN: &[(&str, &str, &str)] = &[
    (
        "../../examples/local/plan.toml",
        "595e316116f51abc",
        "31ce607c642f688b",
    ),
    (
        "../../examples/s1-reupload/plan.toml",
        "ac20a5b5f98a8958",
        "55247d47b951d0d2",
    ),
    (
        "../../examples/s4-backfill/plan.toml",
        "cfd553adaba027d7",
        "13404bff92e43bca",
    ),
    (
        "../redrive/tests/fixtures/state-8793c89/plan.toml",
        "7c1de9c867a7128a",
        "30ccd4fb6b15caf2",
    ),
    (
        "tests/fingerprints/dates.toml",
        "2602e5a6356cfba6",
        "22beb1102638a6ce",
    ),
    (
        "tests/fingerprints/defaults-absent.toml",
        "6173e9e6ed2ca0b4",
        "88a054df092a5afc",
    ),
    (
        "tests/fingerprints/defaults-explicit.toml",
        "6173e9e6ed2ca0b4",
        "15b8b0af7b1ece98",
    ),
    (
        "tests/fingerprints/every-step.toml",
        "d4fcfa4f05ccdb69",
        "dc0eac047ab778fa",
    ),
    (
        "tests/fingerprints/kusto-dates.toml",
        "576a33b06c6d872e",
        "ca842bbc505f1e2e",
    ),
    (
        "tests/fingerprints/sql-xml.toml",
        "e37ea36f6f18e242",
        "e6c6676b0dea33d0",
    ),
];

#[test]
fn fingerprints_are_pinned() {
    let mut wrong = Vec::new();
    for (path, canonical, _) in GOLDEN {
        let plan = load(path);
        if plan.fingerprint != *canonical {
            wrong.push(format!("{path}: {} (pinned {canonical})", plan.fingerprint));
        }
    }
    assert!(
        wrong.is_empty(),
        "fingerprints changed:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn states_of_release_8793c89_are_recognised() {
    for (path, _, legacy) in GOLDEN {
        let plan = load(path);
        assert_eq!(
            plan.earlier_fingerprints,
            vec![(*legacy).to_owned()],
            "{path}: the fingerprint release 8793c89 recorded"
        );
    }
}

#[test]
fn a_default_written_out_is_the_same_plan() {
    assert_eq!(
        load("tests/fingerprints/defaults-absent.toml").fingerprint,
        load("tests/fingerprints/defaults-explicit.toml").fingerprint
    );
}

#[test]
fn limits_stores_and_comments_do_not_count_but_the_work_does() {
    let base = "[job]\nname = \"j\"\n[source]\nlines = \"x.txt\"\n[[step]]\ncopy = { from = \"a/{line}\", to = \"b/{line}\" }\n";
    let fingerprint = |text: &str| {
        Plan::parse(text, Path::new("plan.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .fingerprint
    };
    let same = [
        format!("# a comment\n{base}"),
        format!("{base}[limits]\nitems = 3\n"),
        format!("{base}[store.\"s3://b\"]\nregion = \"eu-west-1\"\n"),
        base.replace(
            "copy = { from = \"a/{line}\", to = \"b/{line}\" }",
            "copy = { to = \"b/{line}\", from = \"a/{line}\", parts = 8 }",
        ),
        base.replace(
            "[job]\nname = \"j\"\n",
            "[job]\nname = \"j\"\nlogs = \"logs\"\n",
        ),
    ];
    for text in &same {
        assert_eq!(fingerprint(text), fingerprint(base), "{text}");
    }
    let different = [
        base.replace("b/{line}", "c/{line}"),
        base.replace("name = \"j\"", "name = \"k\""),
        format!("{base}[[step]]\nrun = {{ shell = \"true\" }}\n"),
        base.replace(
            "to = \"b/{line}\"",
            "to = \"b/{line}\", if_exists = \"overwrite\"",
        ),
    ];
    for text in &different {
        assert_ne!(fingerprint(text), fingerprint(base), "{text}");
    }
}
