use redrive_core::job::{DEFAULT_LEASE, DEFAULT_PER_ITEM, DEFAULT_RETRIES, parse_size};

use super::*;
use crate::checksum::Checksum;
use crate::sources::{DEFAULT_SQL_BATCH, DatesSpec, LinesSpec};
use crate::steps::{HttpBody, Missing, OnConflict};

fn parse(text: &str) -> Result<Plan, String> {
    Plan::parse(text, Path::new("/jobs/plan.toml")).map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

const MINIMAL: &str = r#"
[job]
name = "j"
[source]
lines = "keys.txt"
[[step]]
copy = { from = "in/{line}", to = "out/{line}" }
"#;

#[test]
fn minimal_plan_has_defaults() {
    let plan = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.name, "j");
    assert_eq!(plan.state, "/jobs/.redrive/j.db");
    assert_eq!(
        plan.source.kind,
        SourceKind::Lines(LinesSpec {
            path: crate::sources::InputPath::Local(PathBuf::from("/jobs/keys.txt"))
        })
    );
    assert_eq!(plan.steps[0].name, "copy");
    assert_eq!(
        plan.limits,
        Limits {
            items: DEFAULT_ITEMS,
            per_item: DEFAULT_PER_ITEM,
            retries: DEFAULT_RETRIES,
            lease: DEFAULT_LEASE,
        }
    );
    assert_eq!(
        plan.key().map(|k| k.raw().to_owned()).ok(),
        Some("{line}".to_owned())
    );
}

#[test]
fn unknown_key_names_key_table_and_allowed_keys() {
    let e = error(&MINIMAL.replace("[job]\n", "[job]\nnmae = 1\n"));
    assert!(e.starts_with("/jobs/plan.toml: in `job.nmae`"), "{e}");
    assert!(e.contains("unknown field `nmae`"), "{e}");
    assert!(e.contains("expected one of `name`, `state`, `logs`"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn unknown_key_in_a_step_names_the_step() {
    let e = error(&MINIMAL.replace("to = \"out/{line}\"", "to = \"out/{line}\", speed = 1"));
    assert!(e.contains("in `step[0].copy.speed`"), "{e}");
    assert!(e.contains("unknown field `speed`"), "{e}");
    assert!(
        e.contains("`from`, `to`, `if_exists`, `content_type`"),
        "{e}"
    );
}

#[test]
fn the_state_may_come_from_the_environment() {
    let plan = MINIMAL.replace(
        "[job]\n",
        "[job]\nstate = \"${REDRIVE_TEST_PLAN_STATE_URL}\"\n",
    );
    assert!(plan.contains("REDRIVE_TEST_PLAN_STATE_URL"), "{plan}");
    let e = error(&plan);
    assert!(
        e.contains("`state`") && e.contains("REDRIVE_TEST_PLAN_STATE_URL"),
        "{e}"
    );
    let e = error(&MINIMAL.replace("[job]\n", "[job]\nstate = \"{line}.db\"\n"));
    assert!(e.contains("`state`") && e.contains("line"), "{e}");
}

#[test]
fn a_lease_is_a_duration_of_a_second_or_more() {
    let plan =
        parse(&format!("{MINIMAL}[limits]\nlease = \"5s\"\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.limits.lease, std::time::Duration::from_secs(5));
    for bad in ["\"soon\"", "\"100ms\""] {
        let e = error(&format!("{MINIMAL}[limits]\nlease = {bad}\n"));
        assert!(
            e.contains("`lease`") && e.contains("write e.g. `30s`"),
            "{e}"
        );
    }
}

#[test]
fn wrong_type_names_key_and_expected_type() {
    let e = error(&format!("{MINIMAL}[limits]\nitems = \"many\"\n"));
    assert!(e.contains("in `limits.items`"), "{e}");
    assert!(
        e.contains("invalid type: string \"many\", expected a whole number"),
        "{e}"
    );
}

#[test]
fn a_step_given_a_list_or_a_value_for_its_table_is_told_a_table_without_rust_type_names() {
    let copy = "copy = { from = \"in/{line}\", to = \"out/{line}\" }";
    let e = error(&MINIMAL.replace(copy, "copy = [\"in/{line}\", \"out/{line}\"]"));
    assert!(
        e.contains("invalid type: a list, expected a table (`{ … }`) with named fields"),
        "{e}"
    );
    let e = error(&MINIMAL.replace(copy, "copy = 5"));
    assert!(
        e.contains("invalid type: integer `5`, expected a table (`{ … }`) with named fields"),
        "{e}"
    );
    for e in [
        error(&MINIMAL.replace(copy, "copy = [\"in/{line}\", \"out/{line}\"]")),
        error(&MINIMAL.replace(copy, "http = true")),
    ] {
        assert!(!e.contains("struct") && !e.contains("Raw"), "{e}");
    }
}

#[test]
fn unknown_table_is_named() {
    let e = error(&format!("{MINIMAL}[limit]\nitems = 2\n"));
    assert!(e.contains("unknown field `limit`"), "{e}");
    assert!(
        e.contains("`job`, `source`, `expand`, `step`, `limits`, `store`"),
        "{e}"
    );
}

#[test]
fn malformed_toml_names_line() {
    let e = error("[job\nname = 1");
    assert!(
        e.starts_with("/jobs/plan.toml: TOML parse error at line 1"),
        "{e}"
    );
}

#[test]
fn missing_job_name() {
    let e = error("[job]\n[source]\nlines = \"a\"\n[[step]]\nexists = \"{line}\"\n");
    assert!(e.contains("missing field `name`"), "{e}");
}

#[test]
fn source_needs_exactly_one_kind() {
    let e = error(&MINIMAL.replace("lines = \"keys.txt\"", "lines = \"a\"\ncsv = \"b\""));
    assert_eq!(
        e,
        "/jobs/plan.toml: in [source]: give exactly one of `csv`, `lines`, `jsonl`, `parquet`, `inventory`, `glob`, `list`, `kusto`, `dates`, `sql` (found csv, lines); e.g. `csv = \"items.csv\"`"
    );
}

#[test]
fn csv_source_needs_a_key() {
    let e = error(&MINIMAL.replace("lines = \"keys.txt\"", "csv = \"b.csv\""));
    assert!(e.contains("a `csv` source needs a `key`"), "{e}");
}

#[test]
fn step_with_two_actions() {
    let e = error(&MINIMAL.replace("copy = {", "exists = \"x\"\ncopy = {"));
    assert!(
        e.contains("in [step 1]: a step holds one action; put `exists` and `copy` in separate"),
        "{e}"
    );
}

#[test]
fn step_without_action() {
    let e = error(&MINIMAL.replace(
        "copy = { from = \"in/{line}\", to = \"out/{line}\" }",
        "name = \"x\"",
    ));
    assert!(
        e.contains(
            "in [step 1 (x)]: the step has no action; give one of `exists`, `copy`, `enqueue`, `run`"
        ),
        "{e}"
    );
}

#[test]
fn plan_without_steps() {
    let e = error("[job]\nname = \"j\"\n[source]\nlines = \"a\"\n");
    assert!(e.contains("the plan has no steps"), "{e}");
}

#[test]
fn bad_if_exists_value() {
    let e = error(&MINIMAL.replace(
        "to = \"out/{line}\"",
        "to = \"out/{line}\", if_exists = \"replace\"",
    ));
    assert!(e.contains("unknown variant `replace`"), "{e}");
    assert!(e.contains("`skip`, `overwrite`, `fail`"), "{e}");
}

#[test]
fn bad_filter_in_a_step() {
    let e = error(&MINIMAL.replace("out/{line}", "out/{line|shout}"));
    assert!(
        e.contains("in [step 1 (copy)]: `copy.to`: unknown filter `shout`"),
        "{e}"
    );
}

#[test]
fn unknown_field_is_a_plan_error_before_the_run() {
    let plan =
        parse(&MINIMAL.replace("out/{line}", "out/{nope}")).unwrap_or_else(|e| panic!("{e}"));
    let fields: BTreeSet<String> = ["line".to_owned()].into();
    let e = plan.check_fields(&fields, None).map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err("/jobs/plan.toml: in [step 1 (copy)]: `copy`: field `nope` used in `out/{nope}` does not exist; available fields: line".to_owned())
    );
}

#[test]
fn duplicate_step_names() {
    let e = error(&format!(
        "{MINIMAL}[[step]]\nname = \"copy\"\nexists = \"x\"\n"
    ));
    assert!(e.contains("step name `copy` is used twice"), "{e}");
}

#[test]
fn default_step_names_are_unique() {
    let plan = parse(&format!(
        "{MINIMAL}[[step]]\ncopy = {{ from = \"a\", to = \"b\" }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["copy", "copy-2"]);
}

#[test]
fn http_store_endpoint_needs_allow_http() {
    let e = error(&format!(
        "{MINIMAL}[store.\"s3://b\"]\nendpoint = \"http://127.0.0.1:9\"\n"
    ));
    assert!(e.contains("in [store.\"s3://b\"]: endpoint `http://127.0.0.1:9` is plain http; add `allow_http = true`"), "{e}");
    let ok = parse(&format!(
        "{MINIMAL}[store.\"s3://b\"]\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\n"
    ));
    assert!(ok.is_ok());
}

#[test]
fn fingerprint_ignores_limits_but_not_steps() {
    let a = parse(MINIMAL).map(|p| p.fingerprint).unwrap_or_default();
    let b = parse(&format!("{MINIMAL}[limits]\nitems = 3\n"))
        .map(|p| p.fingerprint)
        .unwrap_or_default();
    let c = parse(&MINIMAL.replace("out/", "out2/"))
        .map(|p| p.fingerprint)
        .unwrap_or_default();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn exists_table_form() {
    let plan = parse(&MINIMAL.replace(
        "copy = { from = \"in/{line}\", to = \"out/{line}\" }",
        "exists = { url = \"out/{line}\", negate = true }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        plan.steps[0].action,
        Action::Exists(crate::steps::ExistsSpec { negate: true, .. })
    ));
}

const EXPAND: &str = r#"
[job]
name = "j"
[source]
csv = "w.csv"
key = "{WorkItemId}"
[expand]
list = "az://src/{JobId}/{WorkItemId}/"
[[step]]
copy = { from = "{url}", to = "az://results/{WorkItemId}-{name}" }
"#;

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn expand_steps_see_parent_and_child_fields() {
    let plan = parse(EXPAND).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.expand_key().ok().flatten().map(|k| k.raw().to_owned()),
        Some("{key}".to_owned())
    );
    let parent = set(&["JobId", "WorkItemId"]);
    let children = set(&["key", "name", "size", "url"]);
    assert!(plan.check_fields(&parent, Some(&children)).is_ok());
}

#[test]
fn expand_location_may_only_use_parent_fields() {
    let plan =
        parse(&EXPAND.replace("{WorkItemId}/\"", "{name}/\"")).unwrap_or_else(|e| panic!("{e}"));
    let e = plan
        .check_fields(
            &set(&["JobId", "WorkItemId"]),
            Some(&set(&["key", "name", "size", "url"])),
        )
        .map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err("/jobs/plan.toml: in [expand]: `list`: field `name` used in `az://src/{JobId}/{name}/` does not exist; available fields: JobId, WorkItemId".to_owned())
    );
}

#[test]
fn expand_needs_a_listing_source() {
    let e = error(&EXPAND.replace(
        "list = \"az://src/{JobId}/{WorkItemId}/\"",
        "csv = \"x.csv\"\nkey = \"{a}\"",
    ));
    assert!(
        e.contains("in [expand]: a `csv` source cannot expand an item"),
        "{e}"
    );
}

#[test]
fn enqueue_step() {
    let plan = parse(&format!(
        "{MINIMAL}[[step]]\nenqueue = {{ queue = \"azq://q\", body = '{{\"blob\":\"{{line}}\"}}', base64 = true }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    match &plan.steps[1].action {
        Action::Enqueue(spec) => {
            assert_eq!(spec.body.raw(), "{\"blob\":\"{line}\"}");
            assert!(spec.base64);
        }
        other => panic!("{other:?}"),
    }
    let e = error(&format!(
        "{MINIMAL}[[step]]\nenqueue = {{ queue = \"azq://q\" }}\n"
    ));
    assert!(e.contains("missing field `body`"), "{e}");
}

#[test]
fn kusto_columns_come_from_the_last_project_or_are_required() {
    let plan = parse(&EXPAND.replace(
        "list = \"az://src/{JobId}/{WorkItemId}/\"",
        "kusto = { cluster = \"https://c.kusto.windows.net/\", database = \"db\", query = \"Files | where WorkItemId == {WorkItemId|kql} | project Uri, Name = FileName\" }\nkey = \"{Name}\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let Some(SourceSpec {
        kind: SourceKind::Kusto(kusto),
        ..
    }) = &plan.expand
    else {
        panic!("kusto expand expected");
    };
    assert_eq!(kusto.cluster, "https://c.kusto.windows.net");
    assert_eq!(
        kusto.fields(),
        Some(vec!["Uri".to_owned(), "Name".to_owned()])
    );
    let e = error(&EXPAND.replace(
        "list = \"az://src/{JobId}/{WorkItemId}/\"",
        "kusto = { cluster = \"https://c\", database = \"db\", query = \"Files | take 10\" }\nkey = \"{x}\"",
    ));
    assert!(e.contains("cannot tell the query's columns"), "{e}");
    let e = error(&EXPAND.replace(
        "list = \"az://src/{JobId}/{WorkItemId}/\"",
        "kusto = { cluster = \"c\", database = \"db\", query = \"T\", columns = [\"a\"] }\nkey = \"{a}\"",
    ));
    assert!(e.contains("`kusto.cluster` must be a URL"), "{e}");
}

#[test]
fn dates_source_and_its_errors() {
    let plan = parse(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "dates = { from = \"2026-01-30\", to = \"2026-02-02\" }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        plan.source.kind,
        SourceKind::Dates(DatesSpec { step_hours: 24, .. })
    ));
    assert_eq!(
        plan.key().map(|k| k.raw().to_owned()).ok(),
        Some("{date}".to_owned())
    );
    let hourly = parse(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "dates = { from = \"2026-01-30\", to = \"2026-01-30\", step = \"6h\" }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        hourly.source.kind,
        SourceKind::Dates(DatesSpec { step_hours: 6, .. })
    ));
    let e = error(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "dates = { from = \"2026-02-30\", to = \"2026-03-01\" }",
    ));
    assert!(
        e.contains("`dates.from` = `2026-02-30` is not a date"),
        "{e}"
    );
    let e = error(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "dates = { from = \"2026-03-02\", to = \"2026-03-01\" }",
    ));
    assert!(
        e.contains("`dates.to` (2026-03-01) is before `dates.from` (2026-03-02)"),
        "{e}"
    );
    let e = error(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "dates = { from = \"2026-03-01\", to = \"2026-03-01\", step = \"1w\" }",
    ));
    assert!(e.contains("`dates.step` = `1w` is not a step"), "{e}");
}

const BACKFILL: &str = r#"
[job]
name = "backfill"
state = "state.db"
[source]
dates = { from = "2026-01-01", to = "2026-01-10" }
[[step]]
name = "process"
require = "in/*{yyyymmdd}*.csv"
run = { cmd = ["./convert", "{input}", "out/{date}.cdf"], timeout = "2m", output = "out/{date}.cdf" }
[[step]]
name = "upload"
copy = { from = "out/{date}.cdf", to = "s3://b/{yyyy}/{date}.cdf" }
"#;

#[test]
fn run_steps_with_require_bind_input_and_run_one_at_a_time() {
    let plan = parse(BACKFILL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.limits.items, 1,
        "plans that run commands run one item at a time by default"
    );
    assert_eq!(plan.log_dir, PathBuf::from("/jobs/backfill-logs"));
    let require = plan.steps[0]
        .require
        .as_ref()
        .map(|r| (r.path.raw().to_owned(), r.field.clone()));
    assert_eq!(
        require,
        Some(("/jobs/in/*{yyyymmdd}*.csv".to_owned(), "input".to_owned()))
    );
    let Action::Run(run) = &plan.steps[0].action else {
        panic!("run")
    };
    assert_eq!(run.timeout, Some(std::time::Duration::from_secs(120)));
    let fields = set(&["date", "yyyymmdd", "yyyy", "mm", "dd", "doy"]);
    assert!(
        plan.check_fields(&fields, None).is_ok(),
        "{{input}} is bound by `require`"
    );
}

#[test]
fn a_run_step_may_be_its_command_alone_as_a_list() {
    let table = parse(&MINIMAL.replace(
        "copy = { from = \"in/{line}\", to = \"out/{line}\" }",
        "run = { cmd = [\"./convert\", \"{line}\"] }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let list = parse(&MINIMAL.replace(
        "copy = { from = \"in/{line}\", to = \"out/{line}\" }",
        "run = [\"./convert\", \"{line}\"]",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let Action::Run(run) = &list.steps[0].action else {
        panic!("run")
    };
    let cmd: Vec<&str> = run.cmd.iter().map(Template::raw).collect();
    assert_eq!(cmd, ["./convert", "{line}"]);
    assert_eq!(run.timeout, None);
    assert_eq!(
        list.fingerprint, table.fingerprint,
        "one plan, two spellings"
    );
    // Anything else says both forms.
    let e = error(&MINIMAL.replace(
        "copy = { from = \"in/{line}\", to = \"out/{line}\" }",
        "run = \"./convert {line}\"",
    ));
    assert!(
        e.contains("expected a table") && e.contains("or the command as a list"),
        "{e}"
    );
}

#[test]
fn run_step_errors() {
    let e = error(&BACKFILL.replace("timeout = \"2m\"", "timeout = \"soon\""));
    assert!(
        e.contains("`run.timeout` = `soon` is not a duration"),
        "{e}"
    );
    let e = error(&BACKFILL.replace(
        "cmd = [\"./convert\", \"{input}\", \"out/{date}.cdf\"], ",
        "",
    ));
    assert!(e.contains("`run` needs `cmd`"), "{e}");
    let plan = parse(&BACKFILL.replace("require = \"in/*{yyyymmdd}*.csv\"\n", ""))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = plan
        .check_fields(&set(&["date", "yyyymmdd", "yyyy"]), None)
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("field `input` used in `{input}` does not exist"),
        "{e}"
    );
}

#[test]
fn store_timeout_is_a_duration() {
    let plan = parse(&format!("{MINIMAL}[store.\"s3://b\"]\ntimeout = \"5m\"\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.stores[0].1.timeout(),
        Some(std::time::Duration::from_secs(300))
    );
    let e = error(&format!(
        "{MINIMAL}[store.\"s3://b\"]\ntimeout = \"later\"\n"
    ));
    assert!(
        e.contains("in [store.\"s3://b\"]: `timeout` = `later` is not a duration"),
        "{e}"
    );
}

#[test]
fn store_min_rate_is_a_rate() {
    for (text, bytes) in [("64KiB/s", 65_536), ("1MB/s", 1_048_576), ("512", 512)] {
        let plan = parse(&format!(
            "{MINIMAL}[store.\"s3://b\"]\nmin_rate = \"{text}\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.stores[0].1.min_rate(), Some(bytes), "{text}");
    }
    let e = error(&format!(
        "{MINIMAL}[store.\"s3://b\"]\nmin_rate = \"fast\"\n"
    ));
    assert!(
        e.contains(
            "in [store.\"s3://b\"]: `min_rate` = `fast` is not a rate; write e.g. `64KiB/s`"
        ),
        "{e}"
    );
}

#[test]
fn http_step_and_its_errors() {
    let plan = parse(&format!(
        "{MINIMAL}[[step]]\nhttp = {{ url = \"https://api/x\", form = {{ crash_ids = \"{{line}}\" }}, batch = 10, rate = 2.5 }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let Action::Http(http) = &plan.steps[1].action else {
        panic!("http")
    };
    assert_eq!(
        (http.method.as_str(), http.batch, http.rate),
        ("POST", 10, Some(2.5))
    );
    assert!(matches!(&http.body, HttpBody::Form(form) if form.len() == 1));
    let e = error(&format!(
        "{MINIMAL}[[step]]\nhttp = {{ url = \"u\", form = {{ a = \"b\" }}, json = \"{{}}\" }}\n"
    ));
    assert!(
        e.contains("give `http.form` or `http.json`, not both"),
        "{e}"
    );
    let e = error(&format!(
        "{MINIMAL}[[step]]\nhttp = {{ url = \"u\", batch = 0 }}\n"
    ));
    assert!(e.contains("`http.batch` must be at least 1"), "{e}");
    let e = error(&format!(
        "{MINIMAL}[[step]]\nhttp = {{ url = \"u\", method = \"FETCH\" }}\n"
    ));
    assert!(e.contains("`http.method` = `FETCH`"), "{e}");
}

#[test]
fn copy_parts_checksum_and_manifest() {
    let plan = parse(&MINIMAL.replace(
        "to = \"out/{line}\" }",
        "to = \"out/{line}\", part_size = \"8MiB\", parts = 4, checksum = \"sha256\", manifest = \"manifest.jsonl\" }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let Action::Copy(copy) = &plan.steps[0].action else {
        panic!("copy")
    };
    assert_eq!(
        (copy.part_size, copy.parts, copy.checksum),
        (8 * 1024 * 1024, 4, Some(Checksum::Sha256))
    );
    assert_eq!(
        copy.manifest.as_deref(),
        Some(Path::new("/jobs/manifest.jsonl"))
    );
    let e = error(&MINIMAL.replace(
        "to = \"out/{line}\" }",
        "to = \"out/{line}\", part_size = \"12 parsecs\" }",
    ));
    assert!(e.contains("`copy.part_size` = `12 parsecs`"), "{e}");
    assert_eq!(
        copy.copy_cutoff,
        5 * 1024 * 1024 * 1024,
        "S3's limit by default"
    );
    for (cutoff, expected) in [
        ("\"1GiB\"", Ok(1024 * 1024 * 1024)),
        ("\"6GiB\"", Err(())),
        ("\"1MiB\"", Err(())),
    ] {
        let text = MINIMAL.replace(
            "to = \"out/{line}\" }",
            &format!("to = \"out/{{line}}\", copy_cutoff = {cutoff} }}"),
        );
        match expected {
            Ok(bytes) => {
                let plan = parse(&text).unwrap_or_else(|e| panic!("{e}"));
                let Action::Copy(copy) = &plan.steps[0].action else {
                    panic!("copy")
                };
                assert_eq!(copy.copy_cutoff, bytes);
            }
            Err(()) => {
                let e = error(&text);
                assert!(
                    e.contains("`copy.copy_cutoff`") && e.contains("from 5MiB to 5GiB"),
                    "{e}"
                );
            }
        }
    }
    let e = error(&MINIMAL.replace(
        "to = \"out/{line}\" }",
        "to = \"out/{line}\", checksum = \"md4\" }",
    ));
    assert!(
        e.contains("unknown variant `md4`, expected one of `md5`, `crc32c`, `sha256`"),
        "{e}"
    );
    assert_eq!(parse_size("16MiB"), Some(16 * 1024 * 1024));
    assert_eq!(parse_size("5 mb"), Some(5 * 1024 * 1024));
    assert_eq!(parse_size("1024"), Some(1024));
}

#[test]
fn two_steps_copying_to_the_same_target_are_refused() {
    let e = error(&format!(
        "{MINIMAL}[[step]]\ncopy = {{ from = \"b/{{line}}\", to = \"out/{{line}}\" }}\n"
    ));
    assert!(
        e.contains("steps `copy` and `copy-2` both copy to `out/{line}`"),
        "{e}"
    );
}

const S5: &str = r#"
[job]
name = "s5"
[[job.before]]
url = "postgres://app@db/x"
sql = "DROP INDEX IF EXISTS ix"
[source]
sql = { url = "postgres://app@db:5432/x", table = "dbo.app_xml", key = "app_id", columns = ["app_XML"] }
[[step]]
xml = { field = "app_XML", path = "/p:Provenir/Request/CustData", namespaces = { p = "urn:p" }, keep_ancestors = true, into = "CustXml", missing = "skip" }
[[step]]
sql_insert = { url = "mysql://root@db/x", table = "staging", columns = { app_id = "{app_id}", app_XML = "{CustXml}" }, key = ["app_id"], on_conflict = "update", batch = 250 }
"#;

#[test]
fn the_s5_plan_parses_with_its_defaults() {
    let plan = parse(S5).unwrap_or_else(|e| panic!("{e}"));
    let SourceKind::Sql(sql) = &plan.source.kind else {
        panic!("not a sql source: {:?}", plan.source.kind)
    };
    assert_eq!((sql.key.as_str(), sql.batch), ("app_id", DEFAULT_SQL_BATCH));
    assert_eq!(
        plan.key().map(|k| k.raw().to_owned()).ok(),
        Some("{app_id}".to_owned())
    );
    let Action::Xml(xml) = &plan.steps[0].action else {
        panic!("not xml")
    };
    assert_eq!(xml.path.steps[0].namespace.as_deref(), Some("urn:p"));
    assert_eq!(xml.missing, Missing::Skip);
    let Action::SqlInsert(insert) = &plan.steps[1].action else {
        panic!("not sql_insert")
    };
    assert_eq!(
        (insert.batch, insert.on_conflict),
        (250, OnConflict::Update)
    );
    assert_eq!(plan.before.len(), 1);
    assert!(plan.after.is_empty());
    // Enough items in flight to fill a batch.
    assert_eq!(plan.limits.items, 500);
    // `into` is a field for later steps; a field nobody makes is an error.
    let fields: BTreeSet<String> = ["app_id", "app_XML"].map(str::to_owned).into();
    plan.check_fields(&fields, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let only_key: BTreeSet<String> = ["app_id"].map(str::to_owned).into();
    let e = match plan.check_fields(&only_key, None) {
        Ok(()) => panic!("app_XML is not a field"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("`xml.field` names `app_XML`, which items do not have"),
        "{e}"
    );
}

#[test]
fn bad_sql_parts_are_refused_with_the_fix() {
    for (from, to, says) in [
        (
            "postgres://app@db:5432/x",
            "oracle://db/x",
            "is not a database URL",
        ),
        (
            "table = \"dbo.app_xml\"",
            "table = \"app; drop table x\"",
            "is not a plain SQL name",
        ),
        (
            "key = \"app_id\", columns",
            "key = \"app id\", columns",
            "is not a plain SQL name",
        ),
        (
            "path = \"/p:Provenir/Request/CustData\"",
            "path = \"/q:Provenir\"",
            "prefix `q` is not declared",
        ),
        (
            "path = \"/p:Provenir/Request/CustData\"",
            "path = \"Provenir\"",
            "must start with `/`",
        ),
        (
            "missing = \"skip\"",
            "missing = \"maybe\"",
            "unknown variant `maybe`",
        ),
        (
            "on_conflict = \"update\"",
            "on_conflict = \"merge\"",
            "unknown variant `merge`",
        ),
        (
            "key = [\"app_id\"], on_conflict",
            "key = [], on_conflict",
            "needs `key = [\"COLUMN\"]`",
        ),
        (
            "key = [\"app_id\"], on_conflict",
            "key = [\"id\"], on_conflict",
            "`sql_insert.key` names `id`",
        ),
        (
            "batch = 250",
            "batch = 0",
            "`sql_insert.batch` must be at least 1",
        ),
        (
            "url = \"mysql://root@db/x\"",
            "url = \"mysql://root@db/{app_id}\"",
            "cannot use item fields",
        ),
        (
            "columns = { app_id",
            "columns = { \"app-id\"",
            "is not a plain SQL name",
        ),
        (
            "sql = \"DROP INDEX IF EXISTS ix\"",
            "sql = \" \"",
            "`job.before.sql` is empty",
        ),
        (
            "url = \"postgres://app@db/x\"",
            "url = \"http://db/x\"",
            "`job.before.url`",
        ),
    ] {
        assert!(S5.contains(from), "{from}");
        let e = error(&S5.replacen(from, to, 1));
        assert!(e.contains(says), "{to}: {e}");
    }
}

#[test]
fn the_keys_a_plan_error_lists_come_from_the_registries() {
    let e = error(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "lines = \"keys.txt\"\nrecursiv = true",
    ));
    assert!(e.contains("in `source.recursiv`"), "{e}");
    let kinds: Vec<String> = crate::sources::SOURCE_KINDS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect();
    assert!(
        e.contains(&format!("expected one of {}, `key`", kinds.join(", "))),
        "{e}"
    );
    assert!(e.contains("line 6"), "{e}");

    let e = error(&MINIMAL.replace("copy = {", "cpoy = {"));
    let kinds: Vec<String> = crate::steps::STEP_KINDS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect();
    assert!(e.contains("unknown field `cpoy`"), "{e}");
    assert!(
        e.contains(&format!(
            "expected one of `name`, `require`, {}",
            kinds.join(", ")
        )),
        "{e}"
    );
}

#[test]
fn a_source_option_of_the_wrong_type_or_kind_is_named() {
    let e = error(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "list = \"s3://b/p/\"\nrecursive = \"yes\"",
    ));
    assert!(
        e.contains("in [source]: `recursive` must be true or false"),
        "{e}"
    );
    let e = error(&MINIMAL.replace(
        "lines = \"keys.txt\"",
        "lines = \"keys.txt\"\ndelimiter = \";\"",
    ));
    assert!(
        e.contains("`delimiter` applies to a `csv` source only"),
        "{e}"
    );
}

#[test]
fn a_misspelt_key_or_value_gets_a_suggestion() {
    let e = error(&format!("{MINIMAL}[limits]\nitmes = 8\n"));
    assert!(
        e.contains("unknown field `itmes`") && e.contains("did you mean `items`?"),
        "{e}"
    );
    let e = error(&MINIMAL.replace("copy = {", "copy = { if_exist = \"skip\", "));
    assert!(e.contains("did you mean `if_exists`?"), "{e}");
}

#[test]
fn fifo_ids_are_for_sqs_and_a_fifo_queue_needs_a_group() {
    let plan = |queue: &str, extra: &str| {
        format!(
            "[job]\nname = \"q\"\n[source]\nlines = \"k.txt\"\n[[step]]\nenqueue = {{ queue = \"{queue}\", body = \"{{line}}\"{extra} }}\n"
        )
    };
    let e = error(&plan("azq://jobs", ", dedup_id = \"{line}\""));
    assert!(
        e.contains("for SQS FIFO queues") && e.contains("azq://jobs"),
        "{e}"
    );
    let e = error(&plan("sqs://jobs.fifo", ""));
    assert!(e.contains("group_id"), "{e}");
    let parsed = parse(&plan(
        "sqs://jobs.fifo",
        ", dedup_id = \"{line}\", group_id = \"g\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let Action::Enqueue(enqueue) = &parsed.steps[0].action else {
        panic!("enqueue")
    };
    assert!(enqueue.dedup_id.is_some() && enqueue.group_id.is_some());
}

#[test]
fn an_idempotency_key_is_set_once() {
    let plan = |headers: &str| {
        format!(
            "[job]\nname = \"h\"\n[source]\nlines = \"k.txt\"\n[[step]]\nhttp = {{ url = \"http://api/x\", idempotency_key = \"{{line}}\"{headers} }}\n"
        )
    };
    parse(&plan("")).unwrap_or_else(|e| panic!("{e}"));
    let e = error(&plan(", headers = { idempotency-key = \"x\" }"));
    assert!(
        e.contains("`idempotency-key`") && e.contains("give one"),
        "{e}"
    );
}
