//! The one place redrive talks to SQL databases as a source, a target or a hook: a URL
//! becomes a pool (PostgreSQL, MySQL or MariaDB); reads page by key; writes are multi-row
//! statements with every value bound as a parameter, never written into the SQL.
//!
//! Identifiers (tables, columns) come from the plan, checked to be plain names
//! ([`redrive_core::job::check_identifier`]), and are written unquoted, so they mean what
//! they mean in the user's own SQL.

use std::collections::HashMap;
use std::time::Duration;

use crate::steps::OnConflict;
use redrive_core::error::ErrorClass;
use redrive_core::secrets::redact;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};

#[cfg(feature = "mssql")]
mod mssql;

/// Most parameters one statement may carry (PostgreSQL and MySQL allow 65,535).
const MAX_PARAMETERS: usize = 60_000;
/// Most parameters one SQL Server statement may carry (it allows 2,100).
#[cfg(feature = "mssql")]
const MAX_MSSQL_PARAMETERS: usize = 2_000;

/// A database call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// Retry or not.
    pub class: ErrorClass,
    /// What failed, where, and the server's words (secrets masked).
    pub message: String,
}

/// Which SQL is spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQL Server (feature `mssql`).
    MsSql,
}

impl Dialect {
    /// `column` as text.
    pub fn as_text(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("{column}::text"),
            Dialect::MySql => format!("CAST({column} AS CHAR)"),
            Dialect::MsSql => format!("CAST({column} AS NVARCHAR(MAX))"),
        }
    }

    /// `SELECT columns FROM rest` limited to the first `n` rows (`rest` ends with its ORDER BY).
    pub fn first_rows(self, columns: &str, rest: &str, n: usize) -> String {
        match self {
            Dialect::MsSql => format!("SELECT TOP ({n}) {columns} FROM {rest}"),
            Dialect::Postgres | Dialect::MySql => format!("SELECT {columns} FROM {rest} LIMIT {n}"),
        }
    }

    /// The `n`-th placeholder (1-based): `$n`, `?` or `@Pn`.
    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql => "?".to_owned(),
            Dialect::MsSql => format!("@P{n}"),
        }
    }
}

#[derive(Clone, Debug)]
enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
    #[cfg(feature = "mssql")]
    MsSql(std::sync::Arc<mssql::Pool>),
}

/// A connection pool to one database.
#[derive(Clone, Debug)]
pub struct Database {
    pool: Pool,
    /// The URL with its password masked, for messages.
    shown: String,
}

/// A multi-row insert, prepared once for a table.
#[derive(Clone, Debug)]
pub struct Insert {
    /// The table.
    pub table: String,
    /// Its columns, in value order.
    pub columns: Vec<String>,
    /// The unique columns for `ON CONFLICT`.
    pub key: Vec<String>,
    /// What a conflict does.
    pub on_conflict: OnConflict,
}

impl Database {
    /// A pool for `url` (`postgres://`, `mysql://` or `mariadb://`), connecting on first use.
    pub fn connect(url: &str, connections: u32) -> Result<Self, SqlError> {
        let shown = mask_password(url);
        let bad = |e: sqlx::Error| SqlError {
            class: ErrorClass::Permanent,
            message: format!("`{shown}` is not a usable database URL: {e}"),
        };
        let timeout = Duration::from_secs(10);
        let pool = match url.split("://").next().unwrap_or_default() {
            "postgres" | "postgresql" => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(connections)
                    .acquire_timeout(timeout)
                    .connect_lazy(url)
                    .map_err(bad)?,
            ),
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                Pool::MySql(
                    MySqlPoolOptions::new()
                        .max_connections(connections)
                        .acquire_timeout(timeout)
                        .connect_lazy(&url)
                        .map_err(bad)?,
                )
            }
            #[cfg(feature = "mssql")]
            "mssql" | "sqlserver" => {
                let config = mssql::config(url).map_err(|e| SqlError {
                    class: ErrorClass::Permanent,
                    message: format!("`{shown}` is not a usable SQL Server URL: {e}"),
                })?;
                Pool::MsSql(std::sync::Arc::new(mssql::Pool::new(config, connections)))
            }
            #[cfg(not(feature = "mssql"))]
            "mssql" | "sqlserver" => {
                return Err(SqlError {
                    class: ErrorClass::Permanent,
                    message: format!(
                        "`{shown}`: this redrive was built without SQL Server support; build it with `cargo install --features mssql`"
                    ),
                });
            }
            scheme => {
                return Err(SqlError {
                    class: ErrorClass::Permanent,
                    message: format!(
                        "`{shown}`: unknown database scheme `{scheme}`; use postgres://, mysql:// (mariadb://) or mssql://"
                    ),
                });
            }
        };
        Ok(Self { pool, shown })
    }

    /// The SQL this database speaks.
    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Postgres(_) => Dialect::Postgres,
            Pool::MySql(_) => Dialect::MySql,
            #[cfg(feature = "mssql")]
            Pool::MsSql(_) => Dialect::MsSql,
        }
    }

    /// The URL, password masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn error(&self, what: &str, error: sqlx::Error) -> SqlError {
        let cause = match error {
            sqlx::Error::PoolTimedOut => "no connection within 10 s: is the server up at this address, and are the user and password right?".to_owned(),
            ref other => other.to_string(),
        };
        SqlError {
            class: classify(&error),
            message: redact(&format!("{what} on `{}`: {cause}", self.shown)).into_owned(),
        }
    }

    #[cfg(feature = "mssql")]
    fn named(&self, error: SqlError) -> SqlError {
        SqlError {
            class: error.class,
            message: redact(&format!("{} on `{}`", error.message, self.shown)).into_owned(),
        }
    }

    /// Runs one or more statements as written (a hook).
    pub async fn execute_script(&self, sql: &str) -> Result<(), SqlError> {
        let script = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()));
        let result = match &self.pool {
            Pool::Postgres(pool) => script.execute(pool).await.map(|_| ()),
            Pool::MySql(pool) => script.execute(pool).await.map(|_| ()),
            #[cfg(feature = "mssql")]
            Pool::MsSql(pool) => return pool.execute_script(sql).await.map_err(|e| self.named(e)),
        };
        result.map_err(|e| self.error("the statement failed", e))
    }

    /// Each column of `table` and its type as the server names it (`integer`, `text`, `int`).
    /// Names are lower-cased.
    pub async fn column_types(&self, table: &str) -> Result<HashMap<String, String>, SqlError> {
        let rows: Vec<(String, String)> = match &self.pool {
            Pool::Postgres(pool) => sqlx::query_as(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(table.to_lowercase())
            .fetch_all(pool)
            .await
            .map_err(|e| self.error(&format!("cannot read the columns of `{table}`"), e))?,
            Pool::MySql(pool) => {
                let (schema, name) = match table.split_once('.') {
                    Some((schema, name)) => (Some(schema), name),
                    None => (None, table),
                };
                sqlx::query_as(
                    "SELECT CAST(column_name AS CHAR), CAST(data_type AS CHAR) FROM information_schema.columns
                     WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
                )
                .bind(schema)
                .bind(name)
                .fetch_all(pool)
                .await
                .map_err(|e| self.error(&format!("cannot read the columns of `{table}`"), e))?
            }
            #[cfg(feature = "mssql")]
            Pool::MsSql(pool) => {
                let (schema, name) = match table.split_once('.') {
                    Some((schema, name)) => (schema.to_owned(), name.to_owned()),
                    None => (String::new(), table.to_owned()),
                };
                pool.query_text(
                    "SELECT COLUMN_NAME, DATA_TYPE FROM INFORMATION_SCHEMA.COLUMNS
                     WHERE TABLE_NAME = @P1 AND (@P2 = '' OR TABLE_SCHEMA = @P2)",
                    &[Param::Text(name), Param::Text(schema)],
                )
                .await
                .map_err(|e| self.named(e))?
                .into_iter()
                .filter_map(|row| {
                    let mut row = row.into_iter();
                    Some((row.next()??, row.next()??))
                })
                .collect()
            }
        };
        if rows.is_empty() {
            return Err(SqlError {
                class: ErrorClass::Permanent,
                message: format!("`{}` has no table `{table}`", self.shown),
            });
        }
        Ok(rows
            .into_iter()
            .map(|(name, kind)| (name.to_lowercase(), kind.to_lowercase()))
            .collect())
    }

    /// Runs `sql` (with `?` placeholders, rewritten to `$n` for PostgreSQL), binding `params`,
    /// and returns every column of each row as text (`None` for NULL).
    pub async fn query_text(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Vec<Option<String>>>, SqlError> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let sql = numbered(sql);
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for param in params {
                    query = match param {
                        Param::Int(n) => query.bind(*n),
                        Param::Text(t) => query.bind(t.clone()),
                        Param::Ints(n) => query.bind(n.clone()),
                        Param::Texts(t) => query.bind(t.clone()),
                    };
                }
                let rows = query
                    .fetch_all(pool)
                    .await
                    .map_err(|e| self.error("the query failed", e))?;
                rows.iter()
                    .map(|row| pg_text(row).map_err(|e| self.error("cannot read a row", e)))
                    .collect()
            }
            Pool::MySql(pool) => {
                let mut query = sqlx::query(AssertSqlSafe(sql.to_owned()));
                for param in params {
                    query = match param {
                        Param::Int(n) => query.bind(*n),
                        Param::Text(t) => query.bind(t.clone()),
                        Param::Ints(_) | Param::Texts(_) => {
                            return Err(SqlError {
                                class: ErrorClass::Permanent,
                                message: "array parameters are PostgreSQL only".to_owned(),
                            });
                        }
                    };
                }
                let rows = query
                    .fetch_all(pool)
                    .await
                    .map_err(|e| self.error("the query failed", e))?;
                rows.iter()
                    .map(|row| my_text(row).map_err(|e| self.error("cannot read a row", e)))
                    .collect()
            }
            #[cfg(feature = "mssql")]
            Pool::MsSql(pool) => pool
                .query_text(&mssql_numbered(sql), params)
                .await
                .map_err(|e| self.named(e)),
        }
    }

    /// Inserts `rows` (each value as text, cast to the column's type on PostgreSQL) in one
    /// transaction, as few multi-row statements as the parameter limit allows.
    pub async fn insert(
        &self,
        insert: &Insert,
        types: &HashMap<String, String>,
        rows: &[Vec<String>],
    ) -> Result<(), SqlError> {
        if rows.is_empty() {
            return Ok(());
        }
        let per_statement = (MAX_PARAMETERS / insert.columns.len().max(1)).max(1);
        let what = format!("inserting {} row(s) into `{}`", rows.len(), insert.table);
        // The same for each sqlx driver (their query and transaction types differ).
        macro_rules! insert_in_transaction {
            ($pool:expr, $dialect:expr) => {{
                let mut tx = $pool.begin().await.map_err(|e| self.error(&what, e))?;
                for chunk in rows.chunks(per_statement) {
                    let sql = insert_sql($dialect, insert, types, chunk.len());
                    let mut query = sqlx::query(AssertSqlSafe(sql));
                    for value in chunk.iter().flatten() {
                        query = query.bind(value.as_str());
                    }
                    query
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.error(&what, e))?;
                }
                tx.commit().await.map_err(|e| self.error(&what, e))
            }};
        }
        match &self.pool {
            Pool::Postgres(pool) => insert_in_transaction!(pool, Dialect::Postgres),
            Pool::MySql(pool) => insert_in_transaction!(pool, Dialect::MySql),
            #[cfg(feature = "mssql")]
            Pool::MsSql(pool) => {
                let per_statement = (MAX_MSSQL_PARAMETERS / insert.columns.len().max(1)).max(1);
                let statements = rows
                    .chunks(per_statement)
                    .map(|chunk| {
                        (
                            insert_sql(Dialect::MsSql, insert, types, chunk.len()),
                            chunk.iter().flatten().map(String::as_str).collect(),
                        )
                    })
                    .collect();
                pool.execute_in_transaction(statements)
                    .await
                    .map_err(|e| self.named(e))
            }
        }
    }
}

impl Database {
    /// Inserts one row. With `on_conflict = "fail"`, a row whose key exists with these very
    /// values is not a conflict: an earlier attempt committed it (the process died between
    /// the commit and the state's record), and the item is done, once. A key that exists with
    /// other values is the conflict it always was.
    pub async fn insert_one(
        &self,
        insert: &Insert,
        types: &HashMap<String, String>,
        row: &[String],
    ) -> Result<Inserted, SqlError> {
        let what = format!("inserting 1 row into `{}`", insert.table);
        macro_rules! insert_or_same {
            ($pool:expr, $dialect:expr) => {{
                let mut query = sqlx::query(AssertSqlSafe(insert_sql($dialect, insert, types, 1)));
                for value in row {
                    query = query.bind(value.as_str());
                }
                match query.execute($pool).await {
                    Ok(_) => Ok(Inserted::New),
                    Err(sqlx::Error::Database(e))
                        if e.is_unique_violation() && insert.on_conflict == OnConflict::Fail =>
                    {
                        let mut same =
                            sqlx::query(AssertSqlSafe(same_row_sql($dialect, insert, types)));
                        for value in row {
                            same = same.bind(value.as_str());
                        }
                        match same.fetch_optional($pool).await {
                            Ok(Some(_)) => Ok(Inserted::AlreadyThere),
                            Ok(None) => Err(self.error(&what, sqlx::Error::Database(e))),
                            Err(check) => Err(self.error(&what, check)),
                        }
                    }
                    Err(e) => Err(self.error(&what, e)),
                }
            }};
        }
        match &self.pool {
            Pool::Postgres(pool) => insert_or_same!(pool, Dialect::Postgres),
            Pool::MySql(pool) => insert_or_same!(pool, Dialect::MySql),
            #[cfg(feature = "mssql")]
            Pool::MsSql(_) => self
                .insert(insert, types, std::slice::from_ref(&row.to_vec()))
                .await
                .map(|()| Inserted::New),
        }
    }
}

/// What [`Database::insert_one`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The row was inserted.
    New,
    /// The same row was there already (committed by an earlier attempt).
    AlreadyThere,
}

/// A query that finds a row holding exactly these values (compared as the column's type
/// prints them on PostgreSQL, so `xml` and `json` columns compare too).
fn same_row_sql(dialect: Dialect, insert: &Insert, types: &HashMap<String, String>) -> String {
    let conditions: Vec<String> = insert
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| match dialect {
            Dialect::Postgres => match types.get(&column.to_lowercase()) {
                Some(kind) if kind != "text" => format!(
                    "CAST({column} AS text) = CAST(CAST(${n} AS {kind}) AS text)",
                    n = i + 1
                ),
                _ => format!("{column} = ${n}", n = i + 1),
            },
            Dialect::MySql | Dialect::MsSql => format!("{column} = {}", dialect.placeholder(i + 1)),
        })
        .collect();
    format!(
        "SELECT 1 FROM {} WHERE {} LIMIT 1",
        insert.table,
        conditions.join(" AND ")
    )
}

/// `?` → `@P1`, `@P2`, … outside quotes.
#[cfg(feature = "mssql")]
fn mssql_numbered(sql: &str) -> String {
    numbered(sql).replace('$', "@P")
}

/// A bound parameter.
#[derive(Clone, Debug)]
pub enum Param {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Integers (PostgreSQL `= ANY(?)`).
    Ints(Vec<i64>),
    /// Texts (PostgreSQL `= ANY(?)`).
    Texts(Vec<String>),
}

/// Is a column of this type an integer (so a shard filter `key % N` works)?
pub fn is_integer_type(kind: &str) -> bool {
    let kind = kind.trim_end_matches(" unsigned");
    matches!(
        kind,
        "integer"
            | "bigint"
            | "smallint"
            | "int"
            | "tinyint"
            | "mediumint"
            | "int2"
            | "int4"
            | "int8"
    )
}

/// The SQL of one multi-row insert of `rows` rows.
fn insert_sql(
    dialect: Dialect,
    insert: &Insert,
    types: &HashMap<String, String>,
    rows: usize,
) -> String {
    let columns = insert.columns.join(", ");
    let mut sql = format!("INSERT INTO {} ({columns}) VALUES ", insert.table);
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, column) in insert.columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            n += 1;
            match dialect {
                // Text parameters, cast to the column's own type: `integer`, `xml`, `timestamp`.
                Dialect::Postgres => match types.get(&column.to_lowercase()) {
                    Some(kind) if kind != "text" => sql.push_str(&format!("CAST(${n} AS {kind})")),
                    _ => sql.push_str(&format!("${n}")),
                },
                Dialect::MySql | Dialect::MsSql => sql.push_str(&dialect.placeholder(n)),
            }
        }
        sql.push(')');
    }
    if dialect == Dialect::MsSql && insert.on_conflict != OnConflict::Fail {
        return mssql_merge(insert, rows);
    }
    let others: Vec<&String> = insert
        .columns
        .iter()
        .filter(|c| !insert.key.iter().any(|k| k.eq_ignore_ascii_case(c)))
        .collect();
    match (dialect, insert.on_conflict) {
        (_, OnConflict::Fail) => {}
        // Handled above.
        (Dialect::MsSql, _) => {}
        (Dialect::Postgres, OnConflict::Skip) => sql.push_str(" ON CONFLICT DO NOTHING"),
        (Dialect::Postgres, OnConflict::Update) if others.is_empty() => {
            sql.push_str(" ON CONFLICT DO NOTHING");
        }
        (Dialect::Postgres, OnConflict::Update) => {
            let set: Vec<String> = others
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                insert.key.join(", "),
                set.join(", ")
            ));
        }
        // `INSERT IGNORE` would also turn bad values into warnings; a no-op update does not.
        (Dialect::MySql, OnConflict::Skip) => {
            let first = &insert.columns[0];
            sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {first} = {first}"));
        }
        (Dialect::MySql, OnConflict::Update) => {
            let first = &insert.columns[0];
            let set: Vec<String> = if others.is_empty() {
                vec![format!("{first} = {first}")]
            } else {
                others
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect()
            };
            sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {}", set.join(", ")));
        }
    }
    sql
}

/// SQL Server has no `ON CONFLICT`: a MERGE of the rows on the key columns (with `HOLDLOCK`,
/// so two batches cannot both insert one key).
fn mssql_merge(insert: &Insert, rows: usize) -> String {
    let columns = insert.columns.join(", ");
    let mut values = Vec::with_capacity(rows);
    let mut n = 0;
    for _ in 0..rows {
        let row: Vec<String> = insert
            .columns
            .iter()
            .map(|_| {
                n += 1;
                format!("@P{n}")
            })
            .collect();
        values.push(format!("({})", row.join(", ")));
    }
    let on: Vec<String> = insert
        .key
        .iter()
        .map(|k| format!("target.{k} = source.{k}"))
        .collect();
    let on = if on.is_empty() {
        // No key: every row is new (the table's own constraints still apply).
        "1 = 0".to_owned()
    } else {
        on.join(" AND ")
    };
    let set: Vec<String> = insert
        .columns
        .iter()
        .filter(|c| !insert.key.iter().any(|k| k.eq_ignore_ascii_case(c)))
        .map(|c| format!("{c} = source.{c}"))
        .collect();
    let matched = match insert.on_conflict {
        OnConflict::Update if !set.is_empty() => {
            format!(" WHEN MATCHED THEN UPDATE SET {}", set.join(", "))
        }
        _ => String::new(),
    };
    let source: Vec<String> = insert
        .columns
        .iter()
        .map(|c| format!("source.{c}"))
        .collect();
    format!(
        "MERGE INTO {table} WITH (HOLDLOCK) AS target USING (VALUES {values}) AS source ({columns}) ON {on}{matched} WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({source});",
        table = insert.table,
        values = values.join(", "),
        source = source.join(", ")
    )
}

/// `?` → `$1`, `$2`, … outside quotes.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut quote = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), c) if q == c => {
                quote = None;
                out.push(c);
            }
            (None, '?') => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            _ => out.push(c),
        }
    }
    out
}

fn pg_text(row: &PgRow) -> Result<Vec<Option<String>>, sqlx::Error> {
    (0..row.len())
        .map(|i| row.try_get::<Option<String>, _>(i))
        .collect()
}

fn my_text(row: &MySqlRow) -> Result<Vec<Option<String>>, sqlx::Error> {
    (0..row.len())
        .map(|i| match row.try_get::<Option<String>, _>(i) {
            Ok(value) => Ok(value),
            // A binary collation: the bytes must still be UTF-8 text.
            Err(_) => row.try_get::<Option<Vec<u8>>, _>(i).and_then(|bytes| {
                bytes
                    .map(|b| String::from_utf8(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
                    .transpose()
            }),
        })
        .collect()
}

/// Retry what a later attempt can fix: lost connections, deadlocks, serialization failures,
/// a server that is starting or full; not what the data causes (constraints, bad values).
fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ErrorClass::Transient
        }
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => ErrorClass::Transient,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                // PostgreSQL: connection, resources, operator intervention, deadlock/serialization.
                c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") => {
                    ErrorClass::Transient
                }
                "40001" | "40P01" => ErrorClass::Transient,
                // MySQL: too many connections, deadlock, lock wait timeout.
                "1040" | "HY000" if db.message().contains("connections") => ErrorClass::Throttled,
                "1213" | "1205" | "40000" => ErrorClass::Transient,
                "28000" | "28P01" | "42501" => ErrorClass::Fatal,
                _ => ErrorClass::Permanent,
            }
        }
        _ => ErrorClass::Permanent,
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub(crate) fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact(url).into_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{credentials}@{host}"),
        },
        None => authority.to_owned(),
    };
    redact(&format!("{scheme}://{authority}{path}")).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn insert(on_conflict: OnConflict) -> Insert {
        Insert {
            table: "staging".into(),
            columns: vec!["app_id".into(), "app_xml".into()],
            key: vec!["app_id".into()],
            on_conflict,
        }
    }

    #[test]
    fn the_same_row_is_found_by_every_value_compared_as_text() {
        let types = HashMap::from([
            ("app_id".to_owned(), "integer".to_owned()),
            ("app_xml".to_owned(), "xml".to_owned()),
        ]);
        assert_eq!(
            same_row_sql(Dialect::Postgres, &insert(OnConflict::Fail), &types),
            "SELECT 1 FROM staging WHERE CAST(app_id AS text) = CAST(CAST($1 AS integer) AS text) AND CAST(app_xml AS text) = CAST(CAST($2 AS xml) AS text) LIMIT 1"
        );
        assert_eq!(
            same_row_sql(Dialect::MySql, &insert(OnConflict::Fail), &types),
            "SELECT 1 FROM staging WHERE app_id = ? AND app_xml = ? LIMIT 1"
        );
    }

    #[test]
    fn inserts_bind_every_value_and_cast_on_postgres() {
        let types = HashMap::from([
            ("app_id".to_owned(), "integer".to_owned()),
            ("app_xml".to_owned(), "text".to_owned()),
        ]);
        assert_eq!(
            insert_sql(Dialect::Postgres, &insert(OnConflict::Update), &types, 2),
            "INSERT INTO staging (app_id, app_xml) VALUES (CAST($1 AS integer), $2), (CAST($3 AS integer), $4) ON CONFLICT (app_id) DO UPDATE SET app_xml = EXCLUDED.app_xml"
        );
        assert_eq!(
            insert_sql(Dialect::Postgres, &insert(OnConflict::Skip), &types, 1),
            "INSERT INTO staging (app_id, app_xml) VALUES (CAST($1 AS integer), $2) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            insert_sql(Dialect::MySql, &insert(OnConflict::Update), &types, 1),
            "INSERT INTO staging (app_id, app_xml) VALUES (?, ?) ON DUPLICATE KEY UPDATE app_xml = VALUES(app_xml)"
        );
        assert_eq!(
            insert_sql(Dialect::MySql, &insert(OnConflict::Fail), &types, 1),
            "INSERT INTO staging (app_id, app_xml) VALUES (?, ?)"
        );
    }

    #[test]
    fn sql_server_upserts_are_merges() {
        let types = HashMap::new();
        assert_eq!(
            insert_sql(Dialect::MsSql, &insert(OnConflict::Update), &types, 2),
            "MERGE INTO staging WITH (HOLDLOCK) AS target USING (VALUES (@P1, @P2), (@P3, @P4)) AS source (app_id, app_xml) ON target.app_id = source.app_id WHEN MATCHED THEN UPDATE SET app_xml = source.app_xml WHEN NOT MATCHED THEN INSERT (app_id, app_xml) VALUES (source.app_id, source.app_xml);"
        );
        assert_eq!(
            insert_sql(Dialect::MsSql, &insert(OnConflict::Skip), &types, 1),
            "MERGE INTO staging WITH (HOLDLOCK) AS target USING (VALUES (@P1, @P2)) AS source (app_id, app_xml) ON target.app_id = source.app_id WHEN NOT MATCHED THEN INSERT (app_id, app_xml) VALUES (source.app_id, source.app_xml);"
        );
        assert_eq!(
            insert_sql(Dialect::MsSql, &insert(OnConflict::Fail), &types, 1),
            "INSERT INTO staging (app_id, app_xml) VALUES (@P1, @P2)"
        );
        assert_eq!(
            Dialect::MsSql.first_rows("CAST(k AS NVARCHAR(MAX)) AS redrive_key", "t ORDER BY k", 5),
            "SELECT TOP (5) CAST(k AS NVARCHAR(MAX)) AS redrive_key FROM t ORDER BY k"
        );
    }

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            numbered("a = ? AND b = '?' AND c > ?"),
            "a = $1 AND b = '?' AND c > $2"
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:s3cret@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            mask_password("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let error = Database::connect("oracle://x/y", 1).unwrap_err();
        assert!(error.message.contains("unknown database scheme"), "{error}");
    }
}
