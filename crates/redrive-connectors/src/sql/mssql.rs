//! SQL Server through tiberius (feature `mssql`): a small pool of clients, `@Pn` parameters,
//! every value sent and read as text. No server runs in CI: this compiles there, and the SQL
//! it sends is unit-tested in `sql.rs`.

use std::sync::Mutex;

use redrive_core::error::ErrorClass;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, ToSql};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{Param, SqlError};

type Connection = Client<Compat<TcpStream>>;

/// Connections to one SQL Server database.
pub(super) struct Pool {
    config: Config,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mssql::Pool").finish_non_exhaustive()
    }
}

/// `mssql://USER:PASSWORD@HOST[:PORT]/DATABASE[?encrypt=false|true&trust_server_certificate=true]`.
pub(super) fn config(url: &str) -> Result<Config, String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, host) = authority
        .rsplit_once('@')
        .ok_or("give USER:PASSWORD@HOST")?;
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (host, port) = match host.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("`{port}` is not a port"))?,
        ),
        None => (host, 1433),
    };
    let mut config = Config::new();
    config.host(host);
    config.port(port);
    if !database.is_empty() {
        config.database(decode(database));
    }
    config.authentication(AuthMethod::sql_server(decode(user), decode(password)));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("encrypt", "false") => config.encryption(EncryptionLevel::Off),
            ("encrypt", "true") => config.encryption(EncryptionLevel::Required),
            ("trust_server_certificate", "true") => config.trust_cert(),
            (key, _) => {
                return Err(format!(
                    "unknown option `{key}`; use encrypt=true|false, trust_server_certificate=true"
                ));
            }
        }
    }
    Ok(config)
}

fn failed(what: &str, error: tiberius::error::Error) -> SqlError {
    let class = match &error {
        tiberius::error::Error::Io { .. } | tiberius::error::Error::Routing { .. } => {
            ErrorClass::Transient
        }
        // Deadlock victim, lock timeout, too busy.
        tiberius::error::Error::Server(token)
            if matches!(token.code(), 1205 | 1222 | 40501 | 40613) =>
        {
            ErrorClass::Transient
        }
        tiberius::error::Error::Server(token) if matches!(token.code(), 18456 | 229 | 230) => {
            ErrorClass::Fatal
        }
        _ => ErrorClass::Permanent,
    };
    SqlError {
        class,
        message: format!("{what}: {error}"),
    }
}

impl Pool {
    pub(super) fn new(config: Config, connections: u32) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(connections.max(1) as usize),
        }
    }

    /// Runs `work` on a pooled connection; a connection that saw an error is not reused.
    async fn with<T>(
        &self,
        work: impl AsyncFnOnce(&mut Connection) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let _slot = self.slots.acquire().await.map_err(|_| SqlError {
            class: ErrorClass::Fatal,
            message: "the SQL Server pool is closed".to_owned(),
        })?;
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut connection = match idle {
            Some(connection) => connection,
            None => {
                let tcp = TcpStream::connect(self.config.get_addr())
                    .await
                    .map_err(|e| SqlError {
                        class: ErrorClass::Transient,
                        message: format!("cannot connect to {}: {e}", self.config.get_addr()),
                    })?;
                let _ = tcp.set_nodelay(true);
                Client::connect(self.config.clone(), tcp.compat_write())
                    .await
                    .map_err(|e| failed("cannot log in", e))?
            }
        };
        let result = work(&mut connection).await;
        if result.is_ok()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(connection);
        }
        result
    }

    pub(super) async fn execute_script(&self, sql: &str) -> Result<(), SqlError> {
        self.with(async |c| {
            c.simple_query(sql)
                .await
                .map_err(|e| failed("the statement failed", e))?
                .into_results()
                .await
                .map_err(|e| failed("the statement failed", e))?;
            Ok(())
        })
        .await
    }

    /// Runs `sql` (`@P1`, `@P2`, …) and returns each column as text.
    pub(super) async fn query_text(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Vec<Option<String>>>, SqlError> {
        let values: Vec<Value> = params.iter().map(Value::from).collect::<Result<_, _>>()?;
        self.with(async |c| {
            let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
            let rows = c
                .query(sql, &params)
                .await
                .map_err(|e| failed("the query failed", e))?
                .into_first_result()
                .await
                .map_err(|e| failed("the query failed", e))?;
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| {
                            row.try_get::<&str, _>(i)
                                .map(|v| v.map(str::to_owned))
                                .map_err(|e| failed("cannot read a row", e))
                        })
                        .collect()
                })
                .collect()
        })
        .await
    }

    /// Runs the statements in one transaction, each with its text parameters.
    pub(super) async fn execute_in_transaction(
        &self,
        statements: Vec<(String, Vec<&str>)>,
    ) -> Result<(), SqlError> {
        self.with(async |c| {
            c.simple_query("BEGIN TRANSACTION")
                .await
                .map_err(|e| failed("cannot begin", e))?
                .into_results()
                .await
                .map_err(|e| failed("cannot begin", e))?;
            for (sql, values) in &statements {
                let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
                if let Err(error) = c.execute(sql.as_str(), &params).await {
                    let _ = c.simple_query("IF @@TRANCOUNT > 0 ROLLBACK").await;
                    return Err(failed("the insert failed", error));
                }
            }
            c.simple_query("COMMIT")
                .await
                .map_err(|e| failed("cannot commit", e))?
                .into_results()
                .await
                .map_err(|e| failed("cannot commit", e))?;
            Ok(())
        })
        .await
    }
}

/// A parameter as tiberius takes it.
enum Value {
    Int(i64),
    Text(String),
}

impl Value {
    fn from(param: &Param) -> Result<Self, SqlError> {
        match param {
            Param::Int(n) => Ok(Value::Int(*n)),
            Param::Text(t) => Ok(Value::Text(t.clone())),
            Param::Ints(_) | Param::Texts(_) => Err(SqlError {
                class: ErrorClass::Permanent,
                message: "array parameters are PostgreSQL only".to_owned(),
            }),
        }
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> tiberius::ColumnData<'_> {
        match self {
            Value::Int(n) => n.to_sql(),
            Value::Text(t) => t.to_sql(),
        }
    }
}
