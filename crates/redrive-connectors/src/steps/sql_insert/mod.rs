//! `sql_insert = { url, table, columns, key, batch, max_wait, on_conflict }`: one row per item,
//! gathered into multi-row statements committed in one transaction. An item is done only once
//! its row is committed.
//!
//! When a batch fails for a reason its data causes (a constraint, a bad value), its rows are
//! tried one by one, so only the rows at fault fail. Errors a later attempt can fix (a lost
//! connection, a deadlock) fail the whole batch as retryable: each item joins a new batch.

pub(crate) mod config;

use std::collections::HashMap;
use std::sync::Arc;

use self::config::SqlInsertSpec;
use async_trait::async_trait;
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::item::Fields;
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::TemplateError;
use tokio::sync::OnceCell;

use crate::batch::Batcher;
use crate::sql::{Database, Insert, Inserted, SqlError};

/// Connections per target database: batches in flight.
const CONNECTIONS: u32 = 4;

/// A failed row, shared by the items of a failed batch.
#[derive(Clone, Debug)]
struct Failure {
    class: ErrorClass,
    message: String,
}

impl From<SqlError> for Failure {
    fn from(error: SqlError) -> Self {
        Self {
            class: error.class,
            message: error.message,
        }
    }
}

struct Inner {
    spec: SqlInsertSpec,
    insert: Insert,
    url: String,
    db: OnceCell<Database>,
    types: OnceCell<HashMap<String, String>>,
}

/// Inserts rows.
pub struct SqlInsertStep {
    inner: Arc<Inner>,
    batcher: Batcher<Vec<String>, Failure>,
}

impl std::fmt::Debug for SqlInsertStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlInsertStep")
            .field("table", &self.inner.spec.table)
            .field("batch", &self.inner.spec.batch)
            .finish()
    }
}

impl SqlInsertStep {
    /// A step as the plan describes it.
    pub fn new(spec: SqlInsertSpec) -> Result<Self, TemplateError> {
        let url = spec.url.render(&Fields::new())?;
        let insert = Insert {
            table: spec.table.clone(),
            columns: spec.columns.iter().map(|(c, _)| c.clone()).collect(),
            key: spec.key.clone(),
            on_conflict: spec.on_conflict,
        };
        let (size, max_wait) = (spec.batch, spec.max_wait);
        let inner = Arc::new(Inner {
            spec,
            insert,
            url,
            db: OnceCell::new(),
            types: OnceCell::new(),
        });
        let sender = Arc::clone(&inner);
        let send: crate::batch::Send<Vec<String>, Failure> = Arc::new(move |rows| {
            let inner = Arc::clone(&sender);
            Box::pin(async move { inner.send(rows).await })
        });
        Ok(Self {
            inner,
            batcher: Batcher::new(size, max_wait, send),
        })
    }
}

impl Inner {
    async fn db(&self) -> Result<(&Database, &HashMap<String, String>), Failure> {
        let db = self
            .db
            .get_or_try_init(|| async { Database::connect(&self.url, CONNECTIONS) })
            .await?;
        let types = self
            .types
            .get_or_try_init(|| async {
                let types = db.column_types(&self.spec.table).await?;
                for column in &self.insert.columns {
                    if !types.contains_key(&column.to_lowercase()) {
                        return Err(SqlError {
                            class: ErrorClass::Permanent,
                            message: format!(
                                "`{}` has no column `{column}` in `{}`",
                                db.shown(),
                                self.spec.table
                            ),
                        });
                    }
                }
                Ok(types)
            })
            .await?;
        Ok((db, types))
    }

    /// Inserts a batch; on an error the data causes, each row alone.
    async fn send(&self, rows: Vec<Vec<String>>) -> Vec<Result<(), Failure>> {
        let (db, types) = match self.db().await {
            Ok(db) => db,
            Err(failure) => return vec![Err(failure); rows.len()],
        };
        match db.insert(&self.insert, types, &rows).await {
            Ok(()) => vec![Ok(()); rows.len()],
            Err(error) if error.class == ErrorClass::Permanent => {
                // One by one: a row already there with the same values was committed by an
                // attempt that died before the state recorded it, and is done.
                let mut results = Vec::with_capacity(rows.len());
                for row in &rows {
                    results.push(
                        match db.insert_one(&self.insert, types, row).await {
                            Ok(Inserted::New) => Ok(()),
                            Ok(Inserted::AlreadyThere) => {
                                tracing::debug!(table = %self.spec.table, "The row was committed by an earlier attempt.");
                                Ok(())
                            }
                            Err(error) => Err(error.into()),
                        },
                    );
                }
                results
            }
            Err(error) => vec![Err(error.into()); rows.len()],
        }
    }

    fn row(&self, fields: &Fields) -> Result<Vec<String>, TemplateError> {
        self.spec
            .columns
            .iter()
            .map(|(_, value)| value.render(fields))
            .collect()
    }
}

#[async_trait]
impl Step for SqlInsertStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        // A row that cannot be made fails this item alone, before it joins a batch.
        let row = self
            .inner
            .row(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let target = format!("{} {}", self.inner.url_shown(), self.inner.spec.table);
        let result = if self.inner.spec.batch <= 1 {
            self.inner.send(vec![row]).await.pop().unwrap_or(Ok(()))
        } else {
            self.batcher
                .submit(row, || Failure {
                    class: ErrorClass::Transient,
                    message: "the batch was dropped".to_owned(),
                })
                .await
        };
        match result {
            Ok(()) => Ok(Outcome::done_to(0, target)),
            Err(failure) => Err(StepError::new(failure.class, failure.message)),
        }
    }

    fn calls(&self, _fields: &Fields) -> Vec<(&'static str, u64)> {
        // One statement per item, or per batch of rows.
        vec![("INSERT", 1)]
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let values = self.inner.row(fields)?;
        let shown: Vec<String> = self
            .inner
            .insert
            .columns
            .iter()
            .zip(values)
            .map(|(column, value)| {
                let value = if value.chars().count() > 40 {
                    format!(
                        "{}… ({} bytes)",
                        value.chars().take(40).collect::<String>(),
                        value.len()
                    )
                } else {
                    value
                };
                format!("{column}={value}")
            })
            .collect();
        Ok(format!(
            "insert into {} ({}){}",
            self.inner.spec.table,
            shown.join(", "),
            match self.inner.spec.batch {
                1 => String::new(),
                n => format!(" in batches of {n}"),
            }
        ))
    }
}

impl Inner {
    fn url_shown(&self) -> String {
        crate::sql::mask_password(&self.url)
    }
}
