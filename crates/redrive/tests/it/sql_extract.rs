//! S5 (seed 004): rows of a SQL table → `xml` keeps one element with its ancestors →
//! `sql_insert` upserts it into a staging table, on PostgreSQL and MariaDB, and over
//! `--workers`. The source table holds 20,000 rows of ~20 KB XML (5% without the element, 1%
//! malformed); each row's expected result is known by construction, not by redrive's code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::common::{TestContext, runtime, server, unique};

const ROWS: i64 = 20_000;
/// The source table, shared by the tests (created once per database; its name carries the
/// generator's version).
const SOURCE: &str = "s5_src_v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postgres,
    MariaDb,
}

pub(crate) struct Db {
    kind: Kind,
    pub(crate) url: String,
}

impl Db {
    pub(crate) fn postgres() -> Self {
        Self {
            kind: Kind::Postgres,
            url: server("REDRIVE_TEST_POSTGRES_URL"),
        }
    }

    fn mariadb() -> Self {
        Self {
            kind: Kind::MariaDb,
            url: server("REDRIVE_TEST_MYSQL_URL"),
        }
    }

    pub(crate) fn execute(&self, sql: &str) {
        runtime().block_on(async {
            let script = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()));
            let result = match self.kind {
                Kind::Postgres => {
                    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                        .await
                        .unwrap();
                    script.execute(&mut c).await.map(|_| ())
                }
                Kind::MariaDb => {
                    let mut c = <sqlx::MySqlConnection as sqlx::Connection>::connect(&self.url)
                        .await
                        .unwrap();
                    script.execute(&mut c).await.map(|_| ())
                }
            };
            result.unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }

    /// Rows of (integer, text) from `sql`.
    fn pairs(&self, sql: &str) -> Vec<(i64, String)> {
        runtime().block_on(async {
            match self.kind {
                Kind::Postgres => {
                    let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                        .await
                        .unwrap();
                    let rows = query
                        .fetch_all(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                    rows.iter()
                        .map(|r| {
                            (
                                r.get::<i64, _>(0),
                                r.get::<Option<String>, _>(1).unwrap_or_default(),
                            )
                        })
                        .collect()
                }
                Kind::MariaDb => {
                    let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                    let mut c = <sqlx::MySqlConnection as sqlx::Connection>::connect(&self.url)
                        .await
                        .unwrap();
                    let rows = query
                        .fetch_all(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                    rows.iter()
                        .map(|r| {
                            (
                                r.get::<i64, _>(0),
                                r.get::<Option<String>, _>(1).unwrap_or_default(),
                            )
                        })
                        .collect()
                }
            }
        })
    }

    pub(crate) fn count(&self, sql: &str) -> i64 {
        self.pairs(&format!("SELECT CAST(({sql}) AS {}), ''", self.bigint()))[0].0
    }

    fn bigint(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "BIGINT",
            Kind::MariaDb => "SIGNED",
        }
    }

    fn text(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "TEXT",
            Kind::MariaDb => "LONGTEXT",
        }
    }

    /// Creates the source table once per database and process (a table left by an earlier
    /// run with every row is kept).
    fn ensure_source(&self) {
        static PG: OnceLock<()> = OnceLock::new();
        static MY: OnceLock<()> = OnceLock::new();
        let once = match self.kind {
            Kind::Postgres => &PG,
            Kind::MariaDb => &MY,
        };
        once.get_or_init(|| {
            self.execute(&format!(
                "CREATE TABLE IF NOT EXISTS {SOURCE} (app_id BIGINT PRIMARY KEY, app_XML {} NULL)",
                self.text()
            ));
            if self.count(&format!("SELECT count(*) FROM {SOURCE}")) == ROWS {
                return;
            }
            self.execute(&format!("DELETE FROM {SOURCE}"));
            runtime().block_on(self.fill());
        });
    }

    async fn fill(&self) {
        let chunk = 50;
        let mut pg = None;
        let mut my = None;
        match self.kind {
            Kind::Postgres => {
                pg = Some(
                    <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                        .await
                        .unwrap(),
                )
            }
            Kind::MariaDb => {
                my = Some(
                    <sqlx::MySqlConnection as sqlx::Connection>::connect(&self.url)
                        .await
                        .unwrap(),
                )
            }
        }
        for first in (1..=ROWS).step_by(chunk) {
            let ids: Vec<i64> = (first..(first + chunk as i64).min(ROWS + 1)).collect();
            let values: Vec<String> = ids
                .iter()
                .enumerate()
                .map(|(i, _)| match self.kind {
                    Kind::Postgres => format!("(${}, ${})", 2 * i + 1, 2 * i + 2),
                    Kind::MariaDb => "(?, ?)".to_owned(),
                })
                .collect();
            let sql = format!(
                "INSERT INTO {SOURCE} (app_id, app_XML) VALUES {}",
                values.join(", ")
            );
            macro_rules! insert {
                ($c:expr) => {{
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in &ids {
                        query = query.bind(*id).bind(document(*id));
                    }
                    query.execute($c).await.map(|_| ())
                }};
            }
            match (&mut pg, &mut my) {
                (Some(c), _) => insert!(c),
                (_, Some(c)) => insert!(c),
                _ => unreachable!(),
            }
            .unwrap();
        }
    }

    /// A fresh staging table with a secondary index, as in the seed.
    fn staging(&self, name: &str) {
        self.execute(&format!("DROP TABLE IF EXISTS {name}"));
        self.execute(&format!(
            "CREATE TABLE {name} (app_id BIGINT NOT NULL PRIMARY KEY, app_XML {} NULL)",
            self.text()
        ));
        self.execute(&format!("CREATE INDEX ix_{name} ON {name} (app_id)"));
    }

    fn index_exists(&self, table: &str) -> bool {
        let sql = match self.kind {
            Kind::Postgres => {
                format!("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_{table}'")
            }
            Kind::MariaDb => format!(
                "SELECT count(*) FROM information_schema.statistics WHERE table_schema = DATABASE() AND index_name = 'ix_{table}'"
            ),
        };
        self.count(&sql) > 0
    }

    fn drop_index(&self, table: &str) -> String {
        match self.kind {
            Kind::Postgres => format!("DROP INDEX IF EXISTS ix_{table}"),
            Kind::MariaDb => format!("DROP INDEX IF EXISTS ix_{table} ON {table}"),
        }
    }

    /// `app_id` → SHA-256 of the staged text, computed by the database.
    fn staged_hashes(&self, table: &str) -> BTreeMap<i64, String> {
        let hash = match self.kind {
            Kind::Postgres => "encode(sha256(convert_to(app_XML, 'UTF8')), 'hex')",
            Kind::MariaDb => "SHA2(app_XML, 256)",
        };
        self.pairs(&format!(
            "SELECT CAST(app_id AS {}), {hash} FROM {table}",
            self.bigint()
        ))
        .into_iter()
        .collect()
    }
}

/// What each row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Good,
    /// No `CustData` under `Request` (5%).
    Missing,
    /// Cut short (1%).
    Malformed,
}

fn shape(id: i64) -> Shape {
    if id % 100 == 1 {
        Shape::Malformed
    } else if id % 20 == 0 {
        Shape::Missing
    } else {
        Shape::Good
    }
}

const PROLOG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

fn root_tag() -> &'static str {
    "<p:Provenir xmlns:p=\"urn:provenir\" xmlns=\"urn:default\" version=\"2.1\">"
}

fn request_tag() -> &'static str {
    "<p:Request type=\"full\" note=\"a &amp; b\">"
}

/// The element to keep: entities, CDATA, a namespace of its own, non-ASCII, ~20 KB.
fn cust_data(id: i64) -> String {
    let mut lines = String::new();
    for n in 0..180 {
        lines.push_str(&format!(
            "\n    <Line n=\"{n}\">Payment {id}-{n} &lt;ok&gt; &amp; settled — ünïcode</Line>"
        ));
    }
    format!(
        "<p:CustData xmlns:x=\"urn:x\" id=\"{id}\"><Name>A &amp; B {id} &#169;</Name><![CDATA[<raw> & {id}]]><x:Note>é</x:Note>{lines}\n  </p:CustData>"
    )
}

fn document(id: i64) -> String {
    let decoy = "<p:Response><p:CustData>decoy</p:CustData></p:Response>";
    let request = match shape(id) {
        Shape::Missing => format!("{}<p:Other/></p:Request>", request_tag()),
        _ => format!(
            "{}\n  {}\n  <p:Other/></p:Request>",
            request_tag(),
            cust_data(id)
        ),
    };
    let doc = format!(
        "{PROLOG}\n<!-- row {id} -->\n{}\n{decoy}\n{request}\n</p:Provenir>\n",
        root_tag()
    );
    match shape(id) {
        Shape::Malformed => doc[..doc.len() - 40].to_owned(),
        _ => doc,
    }
}

/// The minimal document `keep_ancestors` must produce, made by hand.
fn expected(id: i64) -> Option<String> {
    (shape(id) == Shape::Good).then(|| {
        format!(
            "{PROLOG}{}{}{}</p:Request></p:Provenir>",
            root_tag(),
            request_tag(),
            cust_data(id)
        )
    })
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn plan(t: &TestContext, db: &Db, table: &str, state: &str) {
    t.plan(&format!(
        r#"
[job]
name = "s5-{table}"
state = "{state}"

[[job.before]]
url = "{url}"
sql = "{drop}"

[[job.after]]
url = "{url}"
sql = "CREATE INDEX ix_{table} ON {table} (app_id)"

[source]
sql = {{ url = "{url}", table = "{SOURCE}", key = "app_id", columns = ["app_XML"], batch = 500 }}

[[step]]
xml = {{ field = "app_XML", path = "/p:Provenir/p:Request[@type='full']/p:CustData", namespaces = {{ p = "urn:provenir" }}, keep_ancestors = true, into = "CustXml", missing = "skip" }}

[[step]]
sql_insert = {{ url = "{url}", table = "{table}", columns = {{ app_id = "{{app_id}}", app_XML = "{{CustXml}}" }}, key = ["app_id"], on_conflict = "update", batch = 200, max_wait = "200ms" }}
"#,
        url = db.url,
        drop = db.drop_index(table),
    ));
}

fn expected_hashes() -> BTreeMap<i64, String> {
    (1..=ROWS)
        .filter_map(|id| expected(id).map(|e| (id, sha256(&e))))
        .collect()
}

fn counts(t: &TestContext, state: &str) -> BTreeMap<String, i64> {
    let c = rusqlite::Connection::open(t.path(state)).unwrap();
    let mut statement = c
        .prepare("SELECT status, count(*) FROM items GROUP BY status")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn good() -> i64 {
    (1..=ROWS).filter(|id| shape(*id) == Shape::Good).count() as i64
}

fn missing() -> i64 {
    (1..=ROWS).filter(|id| shape(*id) == Shape::Missing).count() as i64
}

fn malformed() -> i64 {
    (1..=ROWS)
        .filter(|id| shape(*id) == Shape::Malformed)
        .count() as i64
}

/// The whole scenario on one database.
fn stages_exactly_the_extracted_elements(db: &Db) {
    db.ensure_source();
    let t = TestContext::new();
    let table = unique("s5_stage").replace('-', "_");
    db.staging(&table);
    plan(&t, db, &table, "state.db");

    // The index is dropped while rows are loaded, and back after.
    let mut run = t
        .command(&["run", "plan.toml", "--metrics", "m.json"])
        .spawn()
        .unwrap();
    let mut seen_loading = 0;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        let staged = db.count(&format!("SELECT count(*) FROM {table}"));
        if staged > 0 && staged < good() {
            assert!(
                !db.index_exists(&table),
                "the index exists during the load ({staged} rows staged)"
            );
            seen_loading += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run takes too long"
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        status.code(),
        Some(1),
        "malformed rows fail the run: {stderr}"
    );
    assert!(seen_loading > 0, "the load was never observed");
    assert!(
        db.index_exists(&table),
        "the after hook recreates the index"
    );

    assert_eq!(
        db.staged_hashes(&table),
        expected_hashes(),
        "staged rows differ from the independent extraction"
    );
    let by_status = counts(&t, "state.db");
    assert_eq!(by_status.get("done"), Some(&good()));
    assert_eq!(by_status.get("skipped"), Some(&missing()));
    assert_eq!(by_status.get("failed"), Some(&malformed()));
    let state = t.state();
    let error: String = state
        .query_row("SELECT error FROM items WHERE key = '101'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        error.contains("malformed XML at line") && error.contains("app_XML"),
        "{error}"
    );
    let reason: String = state
        .query_row("SELECT error FROM items WHERE key = '20'", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("not found"), "{reason}");
    // The state records keys, not payloads.
    let widest: i64 = state
        .query_row("SELECT max(length(fields)) FROM items", [], |r| r.get(0))
        .unwrap();
    assert!(
        widest < 64,
        "a payload reached the state: {widest} bytes of fields"
    );
    let metrics: serde_json::Value = serde_json::from_str(&t.read("m.json")).unwrap();
    assert_eq!(metrics["processed"], ROWS);
    assert_eq!(metrics["skipped"], missing());

    // A rerun finds nothing to do and runs no hook; the table does not change.
    let before = db.staged_hashes(&table);
    let again = t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(
        again
            .stderr
            .contains("This run: done 0, skipped 0, failed 0"),
        "{}",
        again.stderr
    );
    assert!(!again.stderr.contains("Running [[job."), "{}", again.stderr);
    // Starting over upserts every row again: still the same rows.
    t.redrive(&["run", "plan.toml", "--restart", "--yes"])
        .expect_code(1);
    assert_eq!(
        db.staged_hashes(&table),
        before,
        "an upsert rerun changed the table"
    );
    db.execute(&format!("DROP TABLE {table}"));
}

#[test]
fn s5_on_postgres_stages_exactly_the_extracted_elements() {
    stages_exactly_the_extracted_elements(&Db::postgres());
}

#[test]
fn s5_on_mariadb_stages_exactly_the_extracted_elements() {
    stages_exactly_the_extracted_elements(&Db::mariadb());
}

#[test]
fn s5_workers_split_the_rows_and_a_killed_worker_is_resumed() {
    let db = Db::postgres();
    db.ensure_source();
    let t = TestContext::new();
    let table = unique("s5_workers").replace('-', "_");
    db.staging(&table);
    plan(&t, &db, &table, "state.db");
    let plan_path = t.path("plan.toml").display().to_string();

    let run = t
        .command(&[
            "run",
            &plan_path,
            "--workers",
            "4",
            "--metrics",
            "metrics/aggregate.json",
        ])
        .spawn()
        .unwrap();
    // Once rows flow, kill worker 1 outright.
    let started = Instant::now();
    let pid = loop {
        let staged = db.count(&format!("SELECT count(*) FROM {table}"));
        let found = std::process::Command::new("pgrep")
            .args(["-f", &format!("{plan_path} --shard 1/4")])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        if staged >= 1_000 && !pid.is_empty() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a dead worker fails the run: {stderr}"
    );
    assert!(
        stderr.contains("worker 1 (shard 1/4) was killed by signal 9"),
        "{stderr}"
    );
    assert!(
        !db.index_exists(&table),
        "no after hook while a shard is unfinished"
    );

    let rerun = t
        .redrive(&[
            "run",
            &plan_path,
            "--workers",
            "4",
            "--metrics",
            "metrics/aggregate.json",
        ])
        .expect_code(1);
    assert!(rerun.stderr.contains("failed"), "{}", rerun.stderr);
    assert!(
        db.index_exists(&table),
        "the after hook ran once every shard ended"
    );

    // Every good row staged once, with the right content.
    assert_eq!(db.staged_hashes(&table), expected_hashes());
    // The shards are disjoint and together hold every row, each ended.
    let mut all = BTreeSet::new();
    for index in 0..4 {
        let state =
            rusqlite::Connection::open(t.path(&format!("state.shard-{index}-of-4.db"))).unwrap();
        let mut statement = state.prepare("SELECT key, status FROM items").unwrap();
        let rows: Vec<(String, String)> = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (key, status) in rows {
            let id: i64 = key.parse().unwrap();
            assert_eq!(id % 4, i64::from(index), "key {key} in shard {index}");
            assert!(
                matches!(status.as_str(), "done" | "skipped" | "failed"),
                "{key}: {status}"
            );
            assert!(all.insert(id), "key {key} in two shards");
        }
    }
    assert_eq!(all, (1..=ROWS).collect::<BTreeSet<_>>());

    // The aggregate is the sum of the workers' metrics.
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&t.read(&format!("metrics/{name}"))).unwrap()
    };
    let aggregate = read("aggregate.json");
    for key in ["processed", "done", "failed", "skipped"] {
        let sum: u64 = (0..4)
            .map(|i| read(&format!("worker-{i}.json"))[key].as_u64().unwrap())
            .sum();
        assert_eq!(aggregate[key].as_u64(), Some(sum), "{key}");
    }
    assert_eq!(aggregate["workers"], 4);
    for i in 0..4 {
        let worker = read(&format!("worker-{i}.json"));
        for key in [
            "processed",
            "failed",
            "skipped",
            "duration_s",
            "rows_per_sec",
            "finished_at",
        ] {
            assert!(!worker[key].is_null(), "worker-{i}.json has no {key}");
        }
    }

    // `status` reads every shard.
    let status = t.redrive(&["status", &plan_path, "--json"]).expect_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["total"], ROWS);
    assert_eq!(status["shards"].as_array().map(Vec::len), Some(4));
    db.execute(&format!("DROP TABLE {table}"));
}

#[test]
fn s5_a_missing_table_column_or_server_is_named() {
    let db = Db::postgres();
    db.ensure_source();
    let t = TestContext::new();
    let table = unique("s5_bad").replace('-', "_");
    db.staging(&table);
    for (from, to, says) in [
        (
            "columns = [\"app_XML\"]",
            "columns = [\"app_XML\", \"nope\"]",
            "the table has no column `nope` (its columns: app_id, app_xml)",
        ),
        (
            &format!("table = \"{SOURCE}\""),
            "table = \"no_such_table\"",
            "no_such_table",
        ),
        (
            &format!("url = \"{}\", table = \"{SOURCE}\"", db.url),
            &format!("url = \"postgres://postgres@127.0.0.1:1/test\", table = \"{SOURCE}\""),
            "postgres://postgres@127.0.0.1:1/test",
        ),
    ] {
        plan(&t, &db, &table, "bad.db");
        let text = t.read("plan.toml");
        assert!(text.contains(from), "{from}");
        t.write("plan.toml", text.replacen(from, to, 1));
        let out = t.redrive(&["run", "plan.toml", "--no-hooks", "--restart", "--yes"]);
        assert_eq!(out.code, 2, "{to}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{to}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    // A staging column that does not exist fails the items with its name.
    plan(&t, &db, &table, "bad.db");
    let text = t
        .read("plan.toml")
        .replace("app_XML = \"{CustXml}\"", "app_XMLx = \"{CustXml}\"");
    t.write("plan.toml", text);
    let out = t.redrive(&[
        "run",
        "plan.toml",
        "--no-hooks",
        "--restart",
        "--yes",
        "--limit",
        "5",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("has no column `app_XMLx`"),
        "{}",
        out.stderr
    );
    db.execute(&format!("DROP TABLE {table}"));
}

#[test]
fn s5_ctrl_c_reaches_every_worker_and_the_rerun_completes() {
    let db = Db::postgres();
    db.ensure_source();
    let t = TestContext::new();
    let table = unique("s5_sigint").replace('-', "_");
    db.staging(&table);
    plan(&t, &db, &table, "state.db");
    let plan_path = t.path("plan.toml").display().to_string();

    let run = t
        .command(&["run", &plan_path, "--workers", "2", "--no-hooks"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while db.count(&format!("SELECT count(*) FROM {table}")) < 500 {
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        !stderr.contains("died"),
        "the workers drained, none died: {stderr}"
    );
    // The workers stopped too: none is left running.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("{plan_path} --shard")])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "workers still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let staged = db.count(&format!("SELECT count(*) FROM {table}"));
    assert!(
        staged < good(),
        "interrupted before the end ({staged} rows)"
    );

    t.redrive(&["run", &plan_path, "--workers", "2", "--no-hooks"])
        .expect_code(1);
    assert_eq!(db.count(&format!("SELECT count(*) FROM {table}")), good());
    db.execute(&format!("DROP TABLE {table}"));
}

/// A crash between a batch's commit and the state's record leaves rows in the table whose
/// items are not done. With a unique key and `on_conflict = "fail"` (the default), the rerun
/// recognises a row that is there with the very values it would insert and records the item
/// done; a key that is there with other values still fails, naming the conflict.
fn rows_committed_before_a_crash_are_recognised(db: &Db) {
    let t = TestContext::new();
    let table = unique("s5_crash").replace('-', "_");
    // On PostgreSQL the body is `xml` (no `=` operator): it is compared as text.
    let body = match db.kind {
        Kind::Postgres => "XML",
        Kind::MariaDb => "LONGTEXT",
    };
    db.execute(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, body {body} NOT NULL)"
    ));
    db.execute(&format!(
        "INSERT INTO {table} (id, body) VALUES (1, '<r>1</r>'), (2, '<r>other</r>')"
    ));
    t.write("ids.txt", "1\n2\n3\n4\n");
    t.plan(&format!(
        r#"
[job]
name = "crash-rows"
state = "state.db"
[source]
lines = "ids.txt"
[[step]]
sql_insert = {{ url = "{url}", table = "{table}", columns = {{ id = "{{line}}", body = "<r>{{line}}</r>" }}, key = ["id"], max_wait = "100ms" }}
"#,
        url = db.url
    ));
    let out = t.redrive(&["run", "plan.toml"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        3,
        "{}",
        out.stderr
    );
    let failed: String = t
        .state()
        .query_row(
            "SELECT key || ': ' || error FROM items WHERE status = 'failed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        failed.starts_with("2: ") && failed.to_lowercase().contains("duplicate"),
        "{failed}"
    );
    assert_eq!(db.count(&format!("SELECT count(*) FROM {table}")), 4);
    let body = match db.kind {
        Kind::Postgres => "CAST(body AS TEXT)",
        Kind::MariaDb => "body",
    };
    let kept = db.pairs(&format!(
        "SELECT CAST(id AS {}), {body} FROM {table} WHERE id = 2",
        db.bigint()
    ));
    assert_eq!(
        kept,
        [(2, "<r>other</r>".to_owned())],
        "the conflict was kept"
    );
    db.execute(&format!("DROP TABLE {table}"));
}

#[test]
fn sql_insert_on_postgres_recognises_rows_committed_before_a_crash() {
    rows_committed_before_a_crash_are_recognised(&Db::postgres());
}

#[test]
fn sql_insert_on_mariadb_recognises_rows_committed_before_a_crash() {
    rows_committed_before_a_crash_are_recognised(&Db::mariadb());
}
