//! A local HTTP server that answers like Kusto's REST query endpoint (v1/v2 JSON): the one
//! hand-written fake, since no Kusto emulator exists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub authorization: String,
    pub db: String,
    pub csl: String,
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

pub struct FakeKusto {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeKusto {
    pub fn start(handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || serve(stream, &*handler, &seen));
            }
        });
        Self { url, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: std::net::TcpStream, handler: &Handler, seen: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let Some(http) = crate::common::read_request(&mut reader) else {
        return;
    };
    let (path, body) = (http.path, http.body);
    let authorization = http
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let request = Request {
        path,
        authorization,
        db: json["db"].as_str().unwrap_or_default().to_owned(),
        csl: json["csl"].as_str().unwrap_or_default().to_owned(),
    };
    seen.lock().unwrap().push(request.clone());
    let (status, body) = handler(&request);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A v2 response (a list of frames) with `columns` and `rows` as its primary result.
pub fn v2(columns: &[&str], rows: &[Vec<String>]) -> String {
    let columns: Vec<serde_json::Value> = columns
        .iter()
        .map(|c| serde_json::json!({"ColumnName": c, "ColumnType": "string"}))
        .collect();
    serde_json::json!([
        {"FrameType": "DataSetHeader", "IsProgressive": false, "Version": "v2.0"},
        {"FrameType": "DataTable", "TableId": 0, "TableKind": "QueryProperties", "TableName": "@ExtendedProperties",
         "Columns": [{"ColumnName": "Value", "ColumnType": "dynamic"}], "Rows": [[{"Visualization": null}]]},
        {"FrameType": "DataTable", "TableId": 1, "TableKind": "PrimaryResult", "TableName": "PrimaryResult",
         "Columns": columns, "Rows": rows},
        {"FrameType": "DataTable", "TableId": 2, "TableKind": "QueryCompletionInformation", "TableName": "QueryCompletionInformation",
         "Columns": [{"ColumnName": "Level", "ColumnType": "int"}], "Rows": [[4]]},
        {"FrameType": "DataSetCompletion", "HasErrors": false, "Cancelled": false}
    ])
    .to_string()
}

/// Kusto's error body.
pub fn error(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": "Request is invalid and cannot be executed.",
        "@type": "Kusto.Data.Exceptions.SemanticException", "@message": message, "@permanent": true}})
    .to_string()
}
