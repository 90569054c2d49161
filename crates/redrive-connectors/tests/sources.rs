//! The source conformance suite: every source kind that runs on this machine, the same checks.
//!
//! 1. A second read yields the same items in the same order (resume relies on keys).
//! 2. `items_after(last)`, where a source can seek, continues exactly after `last`.
//! 3. A source that cannot be read says which one (its file or URL) in its error.
//!
//! `sql` needs the PostgreSQL `scripts/test` starts (`REDRIVE_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use futures::StreamExt;
use redrive_connectors::storage::Env;
use redrive_connectors::{Plan, build_with};
use redrive_core::engine::Pipeline;
use redrive_core::item::Fields;

fn plan(dir: &Path, source: &str) -> Plan {
    let text = format!(
        "[job]\nname = \"conformance\"\n[source]\n{source}\n[[step]]\nexists = \"{}/nothing/{{n}}\"\n",
        dir.display()
    );
    let text = text.replace("{n}", "x");
    Plan::parse(&text, &dir.join("plan.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn build(plan: &Plan) -> Pipeline {
    build_with(plan, Env::from_pairs([])).unwrap_or_else(|e| panic!("{e}"))
}

async fn keys(
    pipeline: &Pipeline,
    items: futures::stream::BoxStream<'static, Result<Fields, redrive_core::SourceError>>,
) -> Vec<(String, Fields)> {
    items
        .map(|item| {
            let fields = item.unwrap_or_else(|e| panic!("{e}"));
            (pipeline.key.render(&fields).unwrap(), fields)
        })
        .collect()
        .await
}

/// Checks 1 and 2 on the plan's source; `seeks`: the source must continue after a key.
async fn conforms(name: &str, plan: &Plan, seeks: bool) {
    let pipeline = build(plan);
    let first = keys(&pipeline, pipeline.source.items(&Fields::new())).await;
    assert!(first.len() >= 3, "{name}: the fixture has items");
    let second = keys(&pipeline, pipeline.source.items(&Fields::new())).await;
    let names =
        |items: &[(String, Fields)]| items.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&first),
        names(&second),
        "{name}: a second read is the same"
    );
    let mut unique = names(&first);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), first.len(), "{name}: keys are unique");
    match pipeline.source.items_after(&first[1].1) {
        Some(rest) => {
            let rest = keys(&pipeline, rest).await;
            assert_eq!(
                names(&rest),
                names(&first[2..]),
                "{name}: continues right after the key"
            );
        }
        None => assert!(!seeks, "{name}: can seek"),
    }
}

/// A Parquet file of text columns, two rows a row group.
fn parquet(dir: &Path, name: &str, columns: &[&str], rows: &[&[&str]]) -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    let fields: String = columns
        .iter()
        .map(|c| format!(" required binary {c} (UTF8);"))
        .collect();
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type(&format!("message m {{{fields} }}")).unwrap(),
    );
    let props = std::sync::Arc::new(parquet::file::properties::WriterProperties::builder().build());
    let mut writer =
        parquet::file::writer::SerializedFileWriter::new(Vec::new(), schema, props).unwrap();
    for group in rows.chunks(2) {
        let mut row_group = writer.next_row_group().unwrap();
        for column in 0..columns.len() {
            let values: Vec<ByteArray> = group.iter().map(|r| ByteArray::from(r[column])).collect();
            let mut column = row_group.next_column().unwrap().unwrap();
            column
                .typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            column.close().unwrap();
        }
        row_group.close().unwrap();
    }
    let bytes = writer.into_inner().unwrap();
    std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn every_local_source_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write(
        dir,
        "items.csv",
        "JobId,WorkItemId\nJ1,A\nJ1,B\nJ2,A\nJ2,C\n",
    );
    write(dir, "items.txt", "k1\nk2\n\nk3\nk4\n");
    write(
        dir,
        "items.jsonl",
        "{\"id\": \"j1\"}\n{\"id\": \"j2\"}\n\n{\"id\": \"j3\"}\n{\"id\": \"j4\"}\n",
    );
    for name in ["d/a.json", "d/b.json", "d/sub/c.json", "d/e.json"] {
        write(dir, name, "{}");
    }
    // An S3 Inventory report kept in a local folder, as S3 lays it out: two data files.
    let mut files = Vec::new();
    for (n, rows) in [
        "\"src\",\"a+1\",\"1\"\n\"src\",\"b\",\"2\"\n\"src\",\"c\",\"3\"\n",
        "\"src\",\"d%2F4\",\"4\"\n",
    ]
    .iter()
    .enumerate()
    {
        let key = format!("inv/src/cfg/data/{n}.csv");
        write(dir, &key, rows);
        let md5: String = <md5::Md5 as md5::Digest>::digest(rows.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        files.push(format!(
            "{{\"key\": \"{key}\", \"size\": {}, \"MD5checksum\": \"{md5}\"}}",
            rows.len()
        ));
    }
    write(
        dir,
        "inv/src/cfg/2026-12-01T01-00Z/manifest.json",
        &format!(
            "{{\"sourceBucket\": \"src\", \"destinationBucket\": \"arn:aws:s3:::inv\", \"fileFormat\": \"CSV\", \"fileSchema\": \"Bucket, Key, Size\", \"files\": [{}]}}",
            files.join(", ")
        ),
    );
    parquet(
        dir,
        "items.parquet",
        &["id"],
        &[&["p1"], &["p2"], &["p3"], &["p4"]],
    );
    // An Azure Blob Inventory report in Parquet, kept in a local folder.
    let data = parquet(
        dir,
        "azinv/2026/12/01/01-00-00/r/r_0.parquet",
        &["Name", "Content-Length"],
        &[
            &["c1/a", "1"],
            &["c1/b", "2"],
            &["c2/a", "3"],
            &["c2/d/e", "4"],
        ],
    );
    write(
        dir,
        "azinv/2026/12/01/01-00-00/r/r-manifest.json",
        &format!(
            "{{\"destinationContainer\": \"azinv\", \"files\": [{{\"blob\": \"2026/12/01/01-00-00/r/r_0.parquet\", \"size\": {}}}], \"ruleDefinition\": {{\"format\": \"parquet\", \"objectType\": \"blob\", \"schemaFields\": [\"Name\", \"Content-Length\"]}}, \"status\": \"Succeeded\"}}",
            data.len()
        ),
    );
    let cases = [
        (
            "parquet",
            "parquet = \"items.parquet\"\nkey = \"{id}\"".to_owned(),
        ),
        (
            "inventory (Azure, Parquet)",
            "inventory = \"azinv/2026/12/01/01-00-00/r/r-manifest.json\"".to_owned(),
        ),
        (
            "csv",
            "csv = \"items.csv\"\nkey = \"{JobId}/{WorkItemId}\"".to_owned(),
        ),
        ("lines", "lines = \"items.txt\"".to_owned()),
        (
            "jsonl",
            "jsonl = \"items.jsonl\"\nkey = \"{id}\"".to_owned(),
        ),
        (
            "inventory",
            "inventory = \"inv/src/cfg/2026-12-01T01-00Z/manifest.json\"".to_owned(),
        ),
        ("glob", "glob = \"d/**/*.json\"".to_owned()),
        ("list", format!("list = \"{}/d/\"", dir.display())),
        (
            "dates",
            "dates = { from = \"2026-01-01\", to = \"2026-01-05\" }".to_owned(),
        ),
    ];
    let mut tested: Vec<&str> = Vec::new();
    for (name, source) in &cases {
        conforms(name, &plan(dir, source), false).await;
        tested.push(name);
    }
    // Every registered kind is here, or in a test of its own below (sql) or in the CLI suite
    // against its fake server (kusto).
    for kind in redrive_connectors::plan::SOURCE_KINDS {
        assert!(
            tested.contains(kind) || ["sql", "kusto"].contains(kind),
            "source kind `{kind}` is not in the conformance suite"
        );
    }
}

#[tokio::test]
async fn a_source_that_cannot_be_read_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for (source, names) in [
        ("csv = \"missing.csv\"\nkey = \"{a}\"", "missing.csv"),
        ("lines = \"missing.txt\"", "missing.txt"),
        ("jsonl = \"missing.jsonl\"\nkey = \"{a}\"", "missing.jsonl"),
        (
            "parquet = \"missing.parquet\"\nkey = \"{a}\"",
            "missing.parquet",
        ),
        (
            "inventory = \"missing-manifest.json\"",
            "missing-manifest.json",
        ),
    ] {
        let error = match build_with(&plan(dir, source), Env::from_pairs([])) {
            Ok(_) => panic!("{source}: opened a missing file"),
            Err(error) => error,
        };
        let mut chain = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(e) = cause {
            chain.push_str(&format!(": {e}"));
            cause = e.source();
        }
        assert!(chain.contains(names), "{source}: {chain}");
    }
}

#[tokio::test]
async fn the_sql_source_conforms_and_seeks() {
    let url = std::env::var("REDRIVE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("REDRIVE_TEST_POSTGRES_URL is not set: this test needs the PostgreSQL that `scripts/test` starts; run `scripts/test`")
    });
    // The table name is this test's own (no input reaches these statements).
    let table = format!("conformance_{}", std::process::id());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, body TEXT)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 25) g"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source =
        format!("sql = {{ url = \"{url}\", table = \"{table}\", key = \"id\", batch = 7 }}");
    conforms("sql", &plan(dir.path(), &source), true).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}
