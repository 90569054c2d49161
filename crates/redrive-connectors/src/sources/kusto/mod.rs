//! `kusto = { cluster, database, query }`: an Azure Data Explorer query; each result row is an
//! item, its columns the fields.
//!
//! One POST to `CLUSTER/v2/rest/query` (or `v1`) with `{"db": …, "csl": …}` and a bearer
//! token. Both response formats are read: v1 (`{"Tables": […]}`, first table) and v2 (a list of
//! frames; the first `PrimaryResult` table). A result is bounded by Kusto's own limits
//! (500,000 rows or 64 MB by default), so it is read whole.

pub(crate) mod config;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::sources::KustoSpec;
use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::secrets::redact;
use redrive_core::source::{Source, SourceError};
use serde_json::Value;

use crate::azure_auth::TokenSource;
use crate::storage::Env;

/// A Kusto query.
#[derive(Debug)]
pub struct KustoSource {
    spec: KustoSpec,
    client: reqwest::Client,
    tokens: Arc<TokenSource>,
}

impl KustoSource {
    /// A source for the query; credentials come from `token` or `env`.
    pub fn new(spec: KustoSpec, env: Env) -> Self {
        let client = crate::http_client::client(Duration::from_secs(300));
        let tokens = Arc::new(TokenSource::new(&spec.cluster, env));
        Self {
            spec,
            client,
            tokens,
        }
    }

    fn location(&self) -> String {
        format!("kusto {}/{}", self.spec.cluster, self.spec.database)
    }

    async fn query(&self, context: &Fields) -> Result<Vec<Fields>, SourceError> {
        let location = self.location();
        let input = |message: String| SourceError::Input {
            location: location.clone(),
            message: redact(&message).into_owned(),
        };
        let csl = self
            .spec
            .query
            .render(context)
            .map_err(|e| input(e.to_string()))?;
        let token = match &self.spec.token {
            Some(token) => token.render(context).map_err(|e| input(e.to_string()))?,
            None => self.tokens.token(&self.client).await.map_err(input)?,
        };
        let url = format!("{}/{}/rest/query", self.spec.cluster, self.spec.api);
        let body = serde_json::json!({ "db": self.spec.database, "csl": csl }).to_string();
        let response = self
            .client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json; charset=utf-8")
            .header("accept", "application/json")
            .header("x-ms-app", "redrive")
            .body(body)
            .send()
            .await
            .map_err(|e| SourceError::Io {
                location: location.clone(),
                source: Box::new(e),
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| SourceError::Io {
            location: location.clone(),
            source: Box::new(e),
        })?;
        if !status.is_success() {
            let detail = error_message(&text).unwrap_or_else(|| text.chars().take(300).collect());
            let message = match status.as_u16() {
                401 => format!(
                    "Kusto refused the token (401 Unauthorized): {detail}; check the credentials (`az login`, AZURE_CLIENT_ID/SECRET, or `token`)"
                ),
                403 => format!(
                    "Kusto denied access (403 Forbidden): {detail}; the identity needs the viewer role on database `{}`",
                    self.spec.database
                ),
                code => format!("Kusto answered {code}: {detail}"),
            };
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                SourceError::Io {
                    location,
                    source: message.into(),
                }
            } else {
                input(message)
            });
        }
        parse(&text).map_err(input)
    }
}

impl Source for KustoSource {
    fn fields(&self) -> BTreeSet<String> {
        self.spec.fields().unwrap_or_default().into_iter().collect()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        let source = Self {
            spec: self.spec.clone(),
            client: self.client.clone(),
            tokens: Arc::clone(&self.tokens),
        };
        let context = context.clone();
        futures::stream::once(async move { source.query(&context).await })
            .flat_map(|result| match result {
                Ok(rows) => futures::stream::iter(rows.into_iter().map(Ok)).boxed(),
                Err(error) => futures::stream::once(async { Err(error) }).boxed(),
            })
            .boxed()
    }
}

/// Kusto's own message in an error body: `error.@message`, else `error.message`.
fn error_message(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    let error = value.get("error")?;
    let message = error
        .get("@message")
        .or_else(|| error.get("message"))
        .and_then(Value::as_str)?;
    let code = error.get("code").and_then(Value::as_str).unwrap_or("error");
    Some(format!("{code}: {message}"))
}

/// Rows of the primary result as fields, from a v1 or v2 response.
pub(crate) fn parse(text: &str) -> Result<Vec<Fields>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the response is not JSON: {e}"))?;
    let table = match &value {
        Value::Array(frames) => {
            for frame in frames {
                if frame.get("FrameType").and_then(Value::as_str) == Some("DataSetCompletion")
                    && frame.get("HasErrors").and_then(Value::as_bool) == Some(true)
                {
                    let errors = frame
                        .get("OneApiErrors")
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    return Err(format!(
                        "the query failed: {}",
                        first_error(frame).unwrap_or(errors)
                    ));
                }
            }
            frames
                .iter()
                .find(|f| {
                    f.get("FrameType").and_then(Value::as_str) == Some("DataTable")
                        && f.get("TableKind").and_then(Value::as_str) == Some("PrimaryResult")
                })
                .ok_or("the response has no PrimaryResult table")?
        }
        Value::Object(object) if object.contains_key("Tables") => object
            .get("Tables")
            .and_then(Value::as_array)
            .and_then(|tables| tables.first())
            .ok_or("the response has no table")?,
        Value::Object(object) if object.contains_key("error") => {
            return Err(error_message(text).unwrap_or_else(|| text.to_owned()));
        }
        _ => return Err("the response is neither a v1 nor a v2 Kusto result".to_owned()),
    };
    let columns: Vec<String> = table
        .get("Columns")
        .and_then(Value::as_array)
        .ok_or("the result table has no Columns")?
        .iter()
        .map(|c| {
            c.get("ColumnName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let rows = table
        .get("Rows")
        .and_then(Value::as_array)
        .ok_or("the result table has no Rows")?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(cells) = row.as_array() else {
            // A v2 table reports a failure part-way as an error object among the rows.
            return Err(format!(
                "the query failed part-way: {}",
                first_error(row).unwrap_or_else(|| row.to_string())
            ));
        };
        items.push(
            columns
                .iter()
                .cloned()
                .zip(cells.iter().map(cell))
                .collect(),
        );
    }
    Ok(items)
}

fn first_error(value: &Value) -> Option<String> {
    let error = value
        .get("OneApiErrors")?
        .as_array()?
        .first()?
        .get("error")?;
    let message = error
        .get("@message")
        .or_else(|| error.get("message"))?
        .as_str()?;
    Some(message.to_owned())
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"Uri","DataType":"String","ColumnType":"string"},{"ColumnName":"Size","DataType":"Int64","ColumnType":"long"}],"Rows":[["https://a/b.json",12],["https://a/c.json",null]]},{"TableName":"Table_1","Columns":[{"ColumnName":"Value","DataType":"String"}],"Rows":[["x"]]}]}"#;

    const V2: &str = r#"[{"FrameType":"DataSetHeader","IsProgressive":false,"Version":"v2.0"},
        {"FrameType":"DataTable","TableId":0,"TableKind":"QueryProperties","TableName":"@ExtendedProperties","Columns":[{"ColumnName":"TableId","ColumnType":"int"}],"Rows":[[1]]},
        {"FrameType":"DataTable","TableId":1,"TableKind":"PrimaryResult","TableName":"PrimaryResult","Columns":[{"ColumnName":"Uri","ColumnType":"string"},{"ColumnName":"FileName","ColumnType":"string"},{"ColumnName":"Ok","ColumnType":"bool"}],"Rows":[["u1","f1",true],["u2","f2",false]]},
        {"FrameType":"DataTable","TableId":2,"TableKind":"QueryCompletionInformation","TableName":"QueryCompletionInformation","Columns":[{"ColumnName":"Level","ColumnType":"int"}],"Rows":[[4]]},
        {"FrameType":"DataSetCompletion","HasErrors":false,"Cancelled":false}]"#;

    #[test]
    fn v1_first_table_rows_become_fields() {
        let rows = parse(V1).unwrap_or_default();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["Uri"], "https://a/b.json");
        assert_eq!(rows[0]["Size"], "12");
        assert_eq!(rows[1]["Size"], "");
    }

    #[test]
    fn v2_primary_result_among_several_tables() {
        let rows = parse(V2).unwrap_or_default();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1]["FileName"].as_str(), rows[1]["Ok"].as_str()),
            ("f2", "false")
        );
    }

    #[test]
    fn errors_say_what_kusto_said() {
        let body = r#"{"error":{"code":"General_BadRequest","message":"Request is invalid and cannot be executed.","@type":"Kusto.Data.Exceptions.SyntaxException","@message":"Syntax error: Query could not be parsed","@permanent":true}}"#;
        assert_eq!(
            parse(body),
            Err("General_BadRequest: Syntax error: Query could not be parsed".to_owned())
        );
        let partial = r#"[{"FrameType":"DataTable","TableKind":"PrimaryResult","Columns":[{"ColumnName":"a"}],"Rows":[["1"],{"OneApiErrors":[{"error":{"code":"LimitsExceeded","message":"Request is invalid","@message":"Query result set has exceeded the internal record count limit"}}]}]},{"FrameType":"DataSetCompletion","HasErrors":true,"Cancelled":false,"OneApiErrors":[{"error":{"code":"LimitsExceeded","@message":"Query result set has exceeded the internal record count limit"}}]}]"#;
        assert_eq!(
            parse(partial),
            Err(
                "the query failed: Query result set has exceeded the internal record count limit"
                    .to_owned()
            )
        );
        assert!(parse("<html>").is_err_and(|e| e.starts_with("the response is not JSON")));
    }
}
