//! `sql = { url, table, key, columns, where, batch }`: a table's rows, streamed by keyset
//! pagination (`WHERE key > last ORDER BY key LIMIT batch`), never OFFSET, never the whole
//! table in memory.
//!
//! Only the key goes into the state. The other `columns` (an XML payload, say) are read by
//! [`Source::hydrate`] for a handful of rows just before they run, so the state stays small and
//! a resumed run reads only what is not done. With a shard and an integer key, the shard's
//! filter (`key mod N = I`) is part of the query; with another key type it is applied to the
//! keys as they arrive.

pub(crate) mod config;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::sources::SqlSourceSpec;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use redrive_core::item::{Fields, StoredItem};
use redrive_core::source::{Shard, Source, SourceError};
use tokio::sync::{OnceCell, mpsc};

use crate::sql::{Database, Dialect, Param, SqlError, is_integer_type};

/// Pages read ahead of the engine.
const CHANNEL: usize = 2;

/// Rows of a table.
#[derive(Debug)]
pub struct SqlSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    spec: SqlSourceSpec,
    db: Database,
    shard: Option<Shard>,
    /// Whether the key column is an integer, read from the catalog on first use.
    integer_key: OnceCell<bool>,
}

impl SqlSource {
    /// The source as the plan describes it, restricted to `shard` when given.
    pub fn new(spec: SqlSourceSpec, shard: Option<Shard>) -> Result<Self, SourceError> {
        let url = spec
            .url
            .render(&Fields::new())
            .map_err(|e| SourceError::Input {
                location: "sql.url".to_owned(),
                message: e.to_string(),
            })?;
        let db = Database::connect(&url, 4).map_err(|e| SourceError::Input {
            location: "sql.url".to_owned(),
            message: e.message,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                spec,
                db,
                shard,
                integer_key: OnceCell::new(),
            }),
        })
    }
}

impl Inner {
    fn location(&self) -> String {
        format!("{} table {}", self.db.shown(), self.spec.table)
    }

    fn failed(&self, error: SqlError) -> SourceError {
        SourceError::Io {
            location: self.location(),
            source: Box::new(error),
        }
    }

    async fn integer_key(&self) -> Result<bool, SourceError> {
        self.integer_key
            .get_or_try_init(|| async {
                let types = self
                    .db
                    .column_types(&self.spec.table)
                    .await
                    .map_err(|e| self.failed(e))?;
                let Some(kind) = types.get(&self.spec.key.to_lowercase()) else {
                    return Err(SourceError::Input {
                        location: self.location(),
                        message: format!(
                            "the table has no column `{}` (its columns: {})",
                            self.spec.key,
                            sorted(types.keys())
                        ),
                    });
                };
                for column in &self.spec.columns {
                    if !types.contains_key(&column.to_lowercase()) {
                        return Err(SourceError::Input {
                            location: self.location(),
                            message: format!(
                                "the table has no column `{column}` (its columns: {})",
                                sorted(types.keys())
                            ),
                        });
                    }
                }
                Ok(is_integer_type(kind))
            })
            .await
            .copied()
    }

    fn as_text(&self, column: &str) -> String {
        self.db.dialect().as_text(column)
    }

    /// One page of keys after `after`.
    async fn page(&self, after: Option<&str>) -> Result<Vec<String>, SourceError> {
        let integer = self.integer_key().await?;
        let key = &self.spec.key;
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(filter) = &self.spec.filter {
            conditions.push(format!("({filter})"));
        }
        if let (Some(shard), true) = (self.shard, integer) {
            conditions.push(format!(
                "(({key} % {n}) + {n}) % {n} = {i}",
                n = shard.count,
                i = shard.index
            ));
        }
        if let Some(after) = after {
            conditions.push(format!("{key} > ?"));
            params.push(
                key_param(after, integer).map_err(|message| SourceError::Input {
                    location: self.location(),
                    message,
                })?,
            );
        }
        let clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        // The text column gets its own name: `ORDER BY key` must sort by the column itself,
        // not by a text output column of the same name (1, 10, 100, 2, …).
        let sql = self.db.dialect().first_rows(
            &format!("{} AS redrive_key", self.as_text(key)),
            &format!("{}{clause} ORDER BY {key}", self.spec.table),
            self.spec.batch,
        );
        let rows = self
            .db
            .query_text(&sql, &params)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect())
    }

    /// Streams keys after `after` page by page, one page read ahead.
    fn stream(
        self: &Arc<Self>,
        after: Option<String>,
    ) -> BoxStream<'static, Result<Fields, SourceError>> {
        let (sender, receiver) = mpsc::channel::<Result<Vec<String>, SourceError>>(CHANNEL);
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let mut after = after;
            loop {
                let page = inner.page(after.as_deref()).await;
                let (last, full) = match &page {
                    Ok(keys) => (keys.last().cloned(), keys.len() >= inner.spec.batch),
                    Err(_) => (None, false),
                };
                if sender.send(page).await.is_err() || !full {
                    return;
                }
                after = last;
            }
        });
        let key = self.spec.key.clone();
        let shard = self.shard;
        let inner = Arc::clone(self);
        let pages = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|page| (page, receiver))
        });
        Box::pin(futures::StreamExt::flat_map(pages, move |page| {
            let items: Vec<Result<Fields, SourceError>> = match page {
                Err(error) => vec![Err(error)],
                Ok(keys) => {
                    // An integer key was filtered by the query; others are filtered here.
                    let filter_here = shard.filter(|_| inner.integer_key.get() != Some(&true));
                    keys.into_iter()
                        .filter(|k| filter_here.is_none_or(|shard| shard.owns(k)))
                        .map(|k| Ok(Fields::from([(key.clone(), k)])))
                        .collect()
                }
            };
            futures::stream::iter(items)
        }))
    }

    async fn hydrate(&self, items: &mut [StoredItem]) -> Result<(), SourceError> {
        if self.spec.columns.is_empty() {
            return Ok(());
        }
        let integer = self.integer_key().await?;
        let key = &self.spec.key;
        let keys: Vec<&str> = items
            .iter()
            .filter_map(|item| item.fields.get(key).map(String::as_str))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut select = vec![self.as_text(key)];
        select.extend(self.spec.columns.iter().map(|c| self.as_text(c)));
        let bad_key = |message: String| SourceError::Input {
            location: self.location(),
            message,
        };
        let (condition, params) = match self.db.dialect() {
            Dialect::Postgres if integer => (
                format!("{key} = ANY(?)"),
                vec![Param::Ints(
                    keys.iter()
                        .map(|k| {
                            k.parse::<i64>()
                                .map_err(|_| bad_key(format!("key `{k}` is not an integer")))
                        })
                        .collect::<Result<_, _>>()?,
                )],
            ),
            Dialect::Postgres => (
                format!("{key} = ANY(?)"),
                vec![Param::Texts(keys.iter().map(|k| (*k).to_owned()).collect())],
            ),
            Dialect::MySql | Dialect::MsSql => (
                format!("{key} IN ({})", vec!["?"; keys.len()].join(", ")),
                keys.iter()
                    .map(|k| key_param(k, integer).map_err(bad_key))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {condition}",
            select.join(", "),
            self.spec.table
        );
        let rows = self
            .db
            .query_text(&sql, &params)
            .await
            .map_err(|e| self.failed(e))?;
        let mut by_key: HashMap<String, Vec<Option<String>>> = HashMap::with_capacity(rows.len());
        for mut row in rows {
            if row.is_empty() {
                continue;
            }
            if let Some(k) = row.remove(0) {
                by_key.insert(k, row);
            }
        }
        for item in items.iter_mut() {
            let Some(values) = item.fields.get(key).and_then(|k| by_key.remove(k)) else {
                continue;
            };
            for (column, value) in self.spec.columns.iter().zip(values) {
                // NULL is the empty string: fields are text.
                item.fields
                    .insert(column.clone(), value.unwrap_or_default());
            }
        }
        Ok(())
    }
}

fn key_param(key: &str, integer: bool) -> Result<Param, String> {
    if integer {
        key.parse::<i64>()
            .map(Param::Int)
            .map_err(|_| format!("key `{key}` is not an integer"))
    } else {
        Ok(Param::Text(key.to_owned()))
    }
}

fn sorted<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut names: Vec<&str> = names.map(String::as_str).collect();
    names.sort_unstable();
    names.join(", ")
}

impl Source for SqlSource {
    fn fields(&self) -> BTreeSet<String> {
        let mut fields: BTreeSet<String> = self.inner.spec.columns.iter().cloned().collect();
        fields.insert(self.inner.spec.key.clone());
        fields
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        self.inner.stream(None)
    }

    fn items_after(
        &self,
        last: &Fields,
    ) -> Option<BoxStream<'static, Result<Fields, SourceError>>> {
        let after = last.get(&self.inner.spec.key)?.clone();
        Some(self.inner.stream(Some(after)))
    }

    fn hydrate<'a>(
        &'a self,
        items: &'a mut [StoredItem],
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(self.inner.hydrate(items))
    }
}
