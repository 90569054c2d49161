//! Work lists kept in a store: `csv`, `lines` and `jsonl` at an `s3://` URL (moto server
//! started by `scripts/test`), read through their compression, streamed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use crate::common::{TestContext, create_bucket, get, put, s3_env, s3_operator, unique};

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
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
