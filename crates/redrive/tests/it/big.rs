//! Big objects: multipart / block uploads with inline checksums and a manifest, on moto and
//! Azurite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sha2::Digest;

use crate::common::{
    TestContext, azure_env, azure_operator, create_bucket, create_container, get, s3_env,
    s3_operator, unique,
};

const MIB: usize = 1024 * 1024;

/// Deterministic, incompressible-looking bytes.
fn data(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn plan(t: &TestContext, to: &str, checksum: &str) {
    t.plan(&format!(
        r#"
[job]
name = "big"
state = "state.db"
[source]
glob = "in/*.bin"
key = "{{name}}"
[[step]]
copy = {{ from = "{{path}}", to = "{to}/{{name}}", part_size = "5MiB", parts = 2, checksum = "{checksum}", manifest = "manifest.jsonl" }}
"#
    ));
}

fn manifest(t: &TestContext) -> Vec<serde_json::Value> {
    t.read("manifest.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_big_object_goes_up_in_parts_to_s3_with_its_checksum_in_the_manifest() {
    let bucket = unique("rd-big");
    create_bucket(&bucket);
    let t = s3_env(TestContext::new());
    let big = data(24 * MIB + 123);
    t.write("in/big.bin", &big);
    t.write("in/small.bin", b"hello world");
    plan(&t, &format!("s3://{bucket}/up"), "sha256");
    let out = t
        .redrive(&["run", "plan.toml", "--metrics", "metrics.json"])
        .expect_code(0);
    let s3 = s3_operator(&bucket);
    assert!(get(&s3, "up/big.bin").unwrap() == big, "byte-equal");
    let lines = manifest(&t);
    let line = lines
        .iter()
        .find(|l| l["target"].as_str().unwrap().ends_with("/big.bin"))
        .unwrap();
    assert_eq!(line["size"], big.len());
    assert_eq!(line["checksum"]["algorithm"], "sha256");
    assert_eq!(
        line["checksum"]["value"],
        format!("{:x}", sha2::Sha256::digest(&big))
    );
    assert!(
        line["etag"].as_str().unwrap().contains('-'),
        "a multipart ETag: {line}"
    );
    let metrics: serde_json::Value = serde_json::from_str(&t.read("metrics.json")).unwrap();
    assert!(
        metrics["peak_rss_mb"].as_f64().unwrap() < 100.0,
        "{metrics} {}",
        out.stderr
    );
}

#[test]
fn md5_is_checked_against_the_store_and_crc32c_recorded() {
    let bucket = unique("rd-md5");
    create_bucket(&bucket);
    let t = s3_env(TestContext::new());
    t.write("in/small.bin", b"hello world");
    plan(&t, &format!("s3://{bucket}/up"), "md5");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    // A single-part upload: S3's ETag is the MD5, and it matched.
    assert_eq!(
        manifest(&t)[0]["checksum"]["value"],
        "5eb63bbbe01eeed093cb22bb8f5acdc3"
    );
    assert_eq!(
        manifest(&t)[0]["etag"],
        "\"5eb63bbbe01eeed093cb22bb8f5acdc3\""
    );

    let t = s3_env(TestContext::new());
    t.write("in/nine.bin", b"123456789");
    plan(&t, &format!("s3://{bucket}/crc"), "crc32c");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(manifest(&t)[0]["checksum"]["value"], "e3069283");
}

#[test]
fn a_big_object_goes_up_in_blocks_to_azure() {
    let container = unique("rd-bigaz");
    create_container(&container);
    let t = azure_env(TestContext::new());
    let big = data(12 * MIB + 7);
    t.write("in/big.bin", &big);
    plan(&t, &format!("az://{container}/up"), "md5");
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(
        get(&azure_operator(&container), "up/big.bin").unwrap() == big,
        "byte-equal"
    );
    let md5 = manifest(&t)[0]["checksum"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(md5.len(), 32);
}
