//! The inputs kept under `fuzz/regressions/TARGET/` (what the fuzzers found, and hand-made
//! nasty inputs) run through the same entry points as the fuzz targets, in every test run: none
//! may panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in inputs(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked", path.display());
    }
}

#[test]
fn plan_inputs() {
    replay("plan", redrive_connectors::fuzz::plan);
}

#[test]
fn template_inputs() {
    replay("template", redrive_connectors::fuzz::template);
}

#[test]
fn csv_inputs() {
    replay("csv", redrive_connectors::fuzz::csv);
}

#[test]
fn xml_inputs() {
    replay("xml", redrive_connectors::fuzz::xml);
}
