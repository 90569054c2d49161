//! Work lists kept in a store: `csv`, `lines`, `jsonl` and `parquet` at an `s3://` URL (moto
//! server started by `scripts/test`), read through their compression, streamed; inventory
//! reports of S3 (CSV and Parquet, on moto) and of Azure (on Azurite); and a local list that
//! is not a file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::common::{
    TestContext, azure_env, azure_operator, create_bucket, create_container, get, put, s3_env,
    s3_operator, unique,
};

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// A Parquet file (SNAPPY pages) of text columns `texts` and 64-bit columns `numbers`
/// (`TIMESTAMP_MILLIS` when named in `times`), `per_group` rows a row group.
fn parquet_file(
    texts: &[&str],
    numbers: &[&str],
    times: &[&str],
    rows: &[(Vec<&str>, Vec<i64>)],
    per_group: usize,
) -> Vec<u8> {
    let mut message = String::from("message m {");
    for name in texts {
        message.push_str(&format!(" required binary {name} (UTF8);"));
    }
    for name in numbers {
        let logical = if times.contains(name) {
            " (TIMESTAMP_MILLIS)"
        } else {
            ""
        };
        message.push_str(&format!(" required int64 {name}{logical};"));
    }
    message.push_str(" }");
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&message).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props).unwrap();
    for group in rows.chunks(per_group) {
        let mut row_group = writer.next_row_group().unwrap();
        for column in 0..texts.len() {
            let values: Vec<ByteArray> =
                group.iter().map(|r| ByteArray::from(r.0[column])).collect();
            let mut writer = row_group.next_column().unwrap().unwrap();
            writer
                .typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            writer.close().unwrap();
        }
        for column in 0..numbers.len() {
            let values: Vec<i64> = group.iter().map(|r| r.1[column]).collect();
            let mut writer = row_group.next_column().unwrap().unwrap();
            writer
                .typed::<Int64Type>()
                .write_batch(&values, None, None)
                .unwrap();
            writer.close().unwrap();
        }
        row_group.close().unwrap();
    }
    writer.into_inner().unwrap()
}

fn zstd(text: &str) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(text.as_bytes(), ruzstd::encoding::CompressionLevel::Fastest)
}

fn copy_plan(t: &TestContext, bucket: &str, source: &str, key: &str) {
    t.plan(&format!(
        r#"
[job]
name = "lists"
state = "state.db"
[source]
{source}
key = "{key}"
[[step]]
copy = {{ from = "s3://{bucket}/src/{key}", to = "s3://{bucket}/dst/{key}" }}
"#
    ));
}

#[test]
fn csv_lines_and_jsonl_lists_are_read_from_a_bucket_through_their_compression() {
    let bucket = unique("rd-lists");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    for n in 0..6 {
        put(
            &operator,
            &format!("src/f{n}.txt"),
            format!("body {n}").as_bytes(),
        );
    }
    put(
        &operator,
        "lists/failed.csv.gz",
        &gzip("name,reason\nf0.txt,timeout\nf1.txt,reset\n"),
    );
    put(&operator, "lists/more.txt.zst", &zstd("f2.txt\n\nf3.txt\n"));
    put(
        &operator,
        "lists/last.jsonl",
        b"{\"name\": \"f4.txt\", \"size\": 6}\n",
    );

    let csv = s3_env(TestContext::new());
    copy_plan(
        &csv,
        &bucket,
        &format!("csv = \"s3://{bucket}/lists/failed.csv.gz\""),
        "{name}",
    );
    csv.redrive(&["run", "plan.toml"]).expect_code(0);
    let lines = s3_env(TestContext::new());
    copy_plan(
        &lines,
        &bucket,
        &format!("lines = \"s3://{bucket}/lists/more.txt.zst\""),
        "{line}",
    );
    lines.redrive(&["run", "plan.toml"]).expect_code(0);
    let jsonl = s3_env(TestContext::new());
    copy_plan(
        &jsonl,
        &bucket,
        &format!("jsonl = \"s3://{bucket}/lists/last.jsonl\""),
        "{name}",
    );
    jsonl.redrive(&["run", "plan.toml"]).expect_code(0);
    for n in 0..5 {
        assert_eq!(
            get(&operator, &format!("dst/f{n}.txt")),
            Some(format!("body {n}").into_bytes()),
            "f{n}.txt"
        );
    }
    assert_eq!(get(&operator, "dst/f5.txt"), None, "not listed");
    assert_eq!(
        csv.count("SELECT count(*) FROM items WHERE status = 'done'"),
        2
    );

    // The list object replaced with a longer one (a new ETag): the rerun reads it again and
    // runs only the new row.
    put(
        &operator,
        "lists/failed.csv.gz",
        &gzip("name,reason\nf0.txt,timeout\nf1.txt,reset\nf5.txt,late\n"),
    );
    let again = csv.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        again.stderr.contains("This run: done 1"),
        "{}",
        again.stderr
    );
    assert_eq!(get(&operator, "dst/f5.txt"), Some(b"body 5".to_vec()));
}

#[test]
fn a_list_that_is_missing_or_not_what_its_name_says_is_named() {
    let bucket = unique("rd-lists-bad");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    put(&operator, "lists/plain.csv.gz", b"name\nf0.txt\n");

    let t = s3_env(TestContext::new());
    copy_plan(
        &t,
        &bucket,
        &format!("csv = \"s3://{bucket}/lists/none.csv\""),
        "{name}",
    );
    let missing = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        missing
            .stderr
            .contains(&format!("s3://{bucket}/lists/none.csv")),
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    copy_plan(
        &t,
        &bucket,
        &format!("csv = \"s3://{bucket}/lists/plain.csv.gz\""),
        "{name}",
    );
    let garbled = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        garbled.stderr.contains("cannot decompress it as gzip"),
        "{}",
        garbled.stderr
    );
    assert!(
        garbled
            .stderr
            .contains(&format!("s3://{bucket}/lists/plain.csv.gz")),
        "{}",
        garbled.stderr
    );
}

/// A local list that is a folder, or a pipe (`mkfifo`, a shell's `<(…)`), is refused before
/// the state is made, saying why. A pipe made `run` wait for a writer forever (its check opened
/// it), and what it then read could not be read again on resume; a folder failed only once
/// the run had begun, with "Is a directory".
#[test]
fn a_local_list_that_is_a_folder_or_a_pipe_is_refused_saying_why() {
    let t = TestContext::new();
    std::fs::create_dir(t.path("keys")).unwrap();
    let plan = r#"
[job]
name = "t"
state = "state.db"
[source]
lines = "keys"
[[step]]
run = { shell = "true" }
"#;
    t.plan(plan);
    let folder = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        folder.stderr.contains("keys: is a folder") && folder.stderr.contains("use `glob"),
        "{}",
        folder.stderr
    );
    assert!(!t.path("state.db").exists(), "refused before the state");

    std::fs::remove_dir(t.path("keys")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(t.path("keys"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut child = t
        .command(&["run", "plan.toml"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("`run` waited on the pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("keys: is not a file (a pipe or a device)"),
        "{stderr}"
    );
}

/// Where the test's report is, as S3 writes it: `PREFIX/SOURCE/CONFIG/DATE/manifest.json`
/// and `PREFIX/SOURCE/CONFIG/data/*.csv.gz`.
const REPORT: &str = "inventory/src/daily";

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a CSV inventory of `source` whose data files hold `files` (rows of `Bucket, Key,
/// Size`, keys URL-encoded as S3 writes them); `md5` overrides each file's checksum.
fn write_report(
    operator: &opendal::Operator,
    source: &str,
    files: &[&[(&str, u64)]],
    md5: impl Fn(usize, &str) -> String,
) -> String {
    let mut entries = Vec::new();
    for (n, rows) in files.iter().enumerate() {
        let text: String = rows
            .iter()
            .map(|(key, size)| format!("\"{source}\",\"{key}\",\"{size}\"\n"))
            .collect();
        let body = gzip(&text);
        let key = format!("{REPORT}/data/part-{n}.csv.gz");
        put(operator, &key, &body);
        entries.push(format!(
            r#"{{"key": "{key}", "size": {}, "MD5checksum": "{}"}}"#,
            body.len(),
            md5(n, &md5_hex(&body))
        ));
    }
    let manifest = format!(
        r#"{{"sourceBucket": "{source}", "destinationBucket": "arn:aws:s3:::inv",
  "version": "2016-11-30", "creationTimestamp": "1764550800000",
  "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size",
  "files": [{}]}}"#,
        entries.join(", ")
    );
    let key = format!("{REPORT}/2026-12-01T01-00Z/manifest.json");
    put(operator, &key, manifest.as_bytes());
    key
}

fn inventory_plan(t: &TestContext, manifest: &str, dst: &str) {
    t.plan(&format!(
        r#"
[job]
name = "inventory"
state = "state.db"
[source]
inventory = "{manifest}"
[[step]]
copy = {{ from = "{{url}}", to = "s3://{dst}/{{key}}" }}
"#
    ));
}

#[test]
fn objects_an_s3_csv_inventory_lists_are_copied_with_their_keys_decoded() {
    let (src, inv, dst) = (unique("rd-inv-src"), unique("rd-inv"), unique("rd-inv-dst"));
    for bucket in [&src, &inv, &dst] {
        create_bucket(bucket);
    }
    let source = s3_operator(&src);
    let keys = ["a b.txt", "c+d.txt", "été/ü.txt", "plain/e.txt"];
    for key in keys {
        put(&source, key, key.as_bytes());
    }
    let report = s3_operator(&inv);
    let manifest = write_report(
        &report,
        &src,
        &[
            &[("a+b.txt", 5), ("c%2Bd.txt", 7)],
            &[("%C3%A9t%C3%A9/%C3%BC.txt", 10), ("plain/e.txt", 11)],
        ],
        |_, md5| md5.to_owned(),
    );
    let t = s3_env(TestContext::new());
    inventory_plan(&t, &format!("s3://{inv}/{manifest}"), &dst);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let target = s3_operator(&dst);
    for key in keys {
        assert_eq!(get(&target, key), Some(key.as_bytes().to_vec()), "{key}");
    }
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        4
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE key = 'été/ü.txt' AND json_extract(fields, '$.size') = '10'"),
        1
    );
}

#[test]
fn a_wrong_md5_or_a_missing_data_file_stops_the_load_naming_the_file() {
    let (src, inv, dst) = (unique("rd-inv-src"), unique("rd-inv"), unique("rd-inv-dst"));
    for bucket in [&src, &inv, &dst] {
        create_bucket(bucket);
    }
    let source = s3_operator(&src);
    for key in ["a", "b", "c"] {
        put(&source, key, b"x");
    }
    let report = s3_operator(&inv);
    let manifest = write_report(&report, &src, &[&[("a", 1)], &[("b", 1)]], |n, md5| {
        if n == 1 {
            "0".repeat(32)
        } else {
            md5.to_owned()
        }
    });
    let t = s3_env(TestContext::new());
    inventory_plan(&t, &format!("s3://{inv}/{manifest}"), &dst);
    let bad = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(bad.stderr.contains("part-1.csv.gz"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("but the manifest says 00000000"),
        "{}",
        bad.stderr
    );

    // A report whose last file is missing: the rows before it are loaded and run, and the
    // run stops naming the missing one.
    let t = s3_env(TestContext::new());
    let files: &[&[(&str, u64)]] = &[&[("a", 1)], &[("b", 1)], &[("c", 1)]];
    let manifest = write_report(&report, &src, files, |_, md5| md5.to_owned());
    crate::common::runtime()
        .block_on(report.delete(&format!("{REPORT}/data/part-2.csv.gz")))
        .unwrap();
    inventory_plan(&t, &format!("s3://{inv}/{manifest}"), &dst);
    let missing = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        missing
            .stderr
            .contains(&format!("s3://{inv}/{REPORT}/data/part-2.csv.gz"))
            && missing.stderr.contains("the manifest lists this data file"),
        "{}",
        missing.stderr
    );
    assert_eq!(get(&s3_operator(&dst), "b"), Some(b"x".to_vec()));

    // The missing file restored, and the first one now unreadable: the resumed load starts
    // after the last row recorded (in the second file) and never reads the first again.
    // (gzip of the same rows is the same bytes: the manifest is unchanged.)
    write_report(&report, &src, files, |_, md5| md5.to_owned());
    put(
        &report,
        &format!("{REPORT}/data/part-0.csv.gz"),
        b"not gzip any more",
    );
    let resumed = t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        resumed.stderr.contains("This run: done 1"),
        "{}",
        resumed.stderr
    );
    assert_eq!(get(&s3_operator(&dst), "c"), Some(b"x".to_vec()));
}

#[test]
fn a_parquet_list_in_a_bucket_is_read_a_row_group_at_a_time() {
    let bucket = unique("rd-pq-list");
    create_bucket(&bucket);
    let operator = s3_operator(&bucket);
    let names = ["a b.txt", "c+d.txt", "é.txt"];
    for name in names {
        put(&operator, &format!("src/{name}"), name.as_bytes());
    }
    let rows: Vec<(Vec<&str>, Vec<i64>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (vec![*name], vec![i as i64]))
        .collect();
    put(
        &operator,
        "lists/failed.parquet",
        &parquet_file(&["name"], &["attempt"], &[], &rows, 2),
    );
    let t = s3_env(TestContext::new());
    copy_plan(
        &t,
        &bucket,
        &format!("parquet = \"s3://{bucket}/lists/failed.parquet\""),
        "{name}",
    );
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    for name in names {
        assert_eq!(
            get(&operator, &format!("dst/{name}")),
            Some(name.as_bytes().to_vec())
        );
    }
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE json_extract(fields, '$.attempt') = '2'"),
        1
    );

    // Not Parquet: the file is named.
    put(&operator, "lists/not.parquet", b"name\na b.txt\n");
    let t = s3_env(TestContext::new());
    copy_plan(
        &t,
        &bucket,
        &format!("parquet = \"s3://{bucket}/lists/not.parquet\""),
        "{name}",
    );
    let out = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        out.stderr.contains("lists/not.parquet") && out.stderr.contains("not a Parquet file"),
        "{}",
        out.stderr
    );
}

#[test]
fn objects_an_s3_parquet_inventory_lists_are_copied_and_filtered_by_age() {
    let (src, inv, dst) = (unique("rd-pqi-src"), unique("rd-pqi"), unique("rd-pqi-dst"));
    for bucket in [&src, &inv, &dst] {
        create_bucket(bucket);
    }
    let source = s3_operator(&src);
    // Parquet keys are not URL-encoded.
    let keys = ["a b.txt", "c+d.txt", "été/ü.txt", "old.txt"];
    for key in keys {
        put(&source, key, key.as_bytes());
    }
    let day = 1_764_547_200_000; // 2025-12-01
    let row =
        |key: &'static str, time: i64| (vec![src.as_str(), key], vec![key.len() as i64, time]);
    let files = [
        parquet_file(
            &["bucket", "key"],
            &["size", "last_modified_date"],
            &["last_modified_date"],
            &[row("a b.txt", day), row("c+d.txt", day), row("old.txt", 0)],
            2,
        ),
        parquet_file(
            &["bucket", "key"],
            &["size", "last_modified_date"],
            &["last_modified_date"],
            &[row("été/ü.txt", day)],
            2,
        ),
    ];
    let report = s3_operator(&inv);
    let mut entries = Vec::new();
    for (n, body) in files.iter().enumerate() {
        let key = format!("{REPORT}/data/part-{n}.parquet");
        put(&report, &key, body);
        entries.push(format!(
            r#"{{"key": "{key}", "size": {}, "MD5checksum": "{}"}}"#,
            body.len(),
            md5_hex(body)
        ));
    }
    let manifest = format!(
        r#"{{"sourceBucket": "{src}", "destinationBucket": "arn:aws:s3:::{inv}",
  "fileFormat": "Parquet",
  "fileSchema": "message s3.inventory {{ required binary bucket (STRING); required binary key (STRING); optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); }}",
  "files": [{}]}}"#,
        entries.join(", ")
    );
    let manifest_key = format!("{REPORT}/2026-12-01T01-00Z/manifest.json");
    put(&report, &manifest_key, manifest.as_bytes());

    let t = s3_env(TestContext::new());
    inventory_plan(&t, &format!("s3://{inv}/{manifest_key}"), &dst);
    let plan = t
        .read("plan.toml")
        .replace("[[step]]", "newer_than = \"2020-01-01\"\n[[step]]");
    t.write("plan.toml", plan);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let target = s3_operator(&dst);
    for key in ["a b.txt", "c+d.txt", "été/ü.txt"] {
        assert_eq!(get(&target, key), Some(key.as_bytes().to_vec()), "{key}");
    }
    assert_eq!(get(&target, "old.txt"), None, "older than newer_than");
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE key = 'été/ü.txt' AND json_extract(fields, '$.last_modified_date') = '2025-12-01T00:00:00Z' AND json_extract(fields, '$.inventory_row') = '1'"),
        1
    );

    // A damaged Parquet file is refused by its MD5 before any of its rows is read.
    put(
        &report,
        &format!("{REPORT}/data/part-1.parquet"),
        b"PAR1 damaged PAR1",
    );
    let fresh = unique("rd-pqi-dst");
    create_bucket(&fresh);
    let t = s3_env(TestContext::new());
    inventory_plan(&t, &format!("s3://{inv}/{manifest_key}"), &fresh);
    let bad = t.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        bad.stderr.contains("part-1.parquet") && bad.stderr.contains("but the manifest says"),
        "{}",
        bad.stderr
    );
}

#[test]
fn blobs_an_azure_inventory_lists_are_copied_by_their_container_and_name() {
    let (one, two, inv) = (unique("rd-azi-a"), unique("rd-azi-b"), unique("rd-azi-inv"));
    for container in [&one, &two, &inv] {
        create_container(container);
    }
    put(&azure_operator(&one), "x/a b.json", b"one");
    put(&azure_operator(&two), "y.json", b"two");
    put(&azure_operator(&two), "not-listed.json", b"no");
    // As Azure writes it: a header row naming the schema fields, then one blob a row.
    let csv = format!(
        "Name,Content-Length,Last-Modified,BlobType\n\
         {one}/x/a b.json,3,\"Mon, 30 Nov 2026 10:00:00 GMT\",BlockBlob\n\
         {two}/y.json,3,\"Mon, 30 Nov 2026 11:00:00 GMT\",BlockBlob\n"
    );
    let run = "2026/12/01/01-00-00/daily";
    let report = azure_operator(&inv);
    put(
        &report,
        &format!("{run}/daily_1000000_0.csv"),
        csv.as_bytes(),
    );
    let manifest = format!(
        r#"{{"destinationContainer": "{inv}", "endpoint": "http://127.0.0.1",
  "files": [{{"blob": "{run}/daily_1000000_0.csv", "size": {}}}],
  "ruleDefinition": {{"filters": {{"blobTypes": ["blockBlob"]}}, "format": "csv", "objectType": "blob",
    "schedule": "daily", "schemaFields": ["Name", "Content-Length", "Last-Modified", "BlobType"]}},
  "ruleName": "daily", "status": "Succeeded", "version": "1.0"}}"#,
        csv.len()
    );
    put(
        &report,
        &format!("{run}/daily-manifest.json"),
        manifest.as_bytes(),
    );

    let t = azure_env(TestContext::new());
    t.plan(&format!(
        r#"
[job]
name = "azure-inventory"
state = "state.db"
[source]
inventory = "az://{inv}/{run}/daily-manifest.json"
min_size = 1
[[step]]
copy = {{ from = "{{url}}", to = "out/{{key}}" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(
        std::fs::read(t.path(&format!("out/{one}/x/a b.json"))).ok(),
        Some(b"one".to_vec())
    );
    assert_eq!(
        std::fs::read(t.path(&format!("out/{two}/y.json"))).ok(),
        Some(b"two".to_vec())
    );
    assert!(!t.path(&format!("out/{two}/not-listed.json")).exists());
    assert_eq!(
        t.count(&format!("SELECT count(*) FROM items WHERE key = '{two}/y.json' AND json_extract(fields, '$.container') = '{two}' AND json_extract(fields, '$.blob') = 'y.json' AND json_extract(fields, '$.size') = '3'")),
        1
    );

    // A data file whose size is not the manifest's: the load stops naming it.
    put(
        &report,
        &format!("{run}/daily_1000000_0.csv"),
        format!("{csv}{one}/z,1,x,BlockBlob\n").as_bytes(),
    );
    let t2 = azure_env(TestContext::new());
    t2.write("plan.toml", t.read("plan.toml"));
    let bad = t2.redrive(&["run", "plan.toml"]).expect_code(2);
    assert!(
        bad.stderr.contains("daily_1000000_0.csv") && bad.stderr.contains("but the manifest says"),
        "{}",
        bad.stderr
    );
}
