//! An HTTP proxy on 127.0.0.1 between redrive and a real server (moto, Azurite), that lets a
//! test change requests on their way (flip a byte of a body), answer them itself (a 500, a 429
//! with Retry-After, a 503 SlowDown), or fail the connection: reset before any answer, cut the
//! answer's body short, or stall.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufReader, Write as _};
use std::sync::{Arc, Mutex};

use crate::common::HttpRequest;

/// What the proxy does with one request, decided by the test's rule.
pub enum Action {
    /// Sends it on (as the rule may have changed it).
    Forward,
    /// Answers it with this status and body; the server never sees it.
    Answer(u16, String),
    /// Answers it with this status, extra headers and body.
    AnswerWith(u16, Vec<(String, String)>, String),
    /// Closes the connection without answering (the server never sees the request).
    Reset,
    /// Forwards it, then sends the server's answer with half its body and closes.
    Truncate,
    /// Forwards it, then sends half the body with a Content-Length that says so: a short body
    /// only a size or checksum can tell.
    Short,
    /// Forwards it, then sends the body one byte per interval (a trickle no per-read timeout
    /// trips).
    Trickle(std::time::Duration),
    /// Waits this long before doing anything (longer than the client's timeout: a stall).
    Stall(std::time::Duration),
}

/// A running proxy: its address, and each request it saw as `METHOD PATH`.
pub struct Proxy {
    pub address: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (e.g. `http://127.0.0.1:5000`). `rule` sees every
    /// request, in order, and may change it.
    pub fn start(
        upstream: String,
        rule: impl Fn(&mut HttpRequest) -> Action + Send + Sync + 'static,
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::new();
        let (requests, rule) = (Arc::clone(&log), Arc::new(rule));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (upstream, log, rule, client) = (
                    upstream.clone(),
                    Arc::clone(&requests),
                    Arc::clone(&rule),
                    client.clone(),
                );
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    while let Some(mut request) = crate::common::read_request(&mut reader) {
                        log.lock()
                            .unwrap()
                            .push(format!("{} {}", request.method, request.path));
                        let head_request = request.method == "HEAD";
                        let mut action = rule(&mut request);
                        if let Action::Stall(time) = action {
                            std::thread::sleep(time);
                            break;
                        }
                        let (mut truncate, mut short, mut trickle) = (false, false, None);
                        let (status, headers, body) = match action {
                            Action::Answer(status, body) => {
                                action = Action::AnswerWith(status, Vec::new(), body);
                                answer(&action)
                            }
                            Action::AnswerWith(..) => answer(&action),
                            Action::Reset => break,
                            Action::Truncate => {
                                truncate = true;
                                forward(&client, &upstream, request)
                            }
                            Action::Short => {
                                short = true;
                                forward(&client, &upstream, request)
                            }
                            Action::Trickle(every) => {
                                trickle = Some(every);
                                forward(&client, &upstream, request)
                            }
                            Action::Forward | Action::Stall(_) => {
                                forward(&client, &upstream, request)
                            }
                        };
                        let mut head = format!(
                            "HTTP/1.1 {} {}\r\n",
                            status.as_u16(),
                            status.canonical_reason().unwrap_or("")
                        );
                        for (name, value) in &headers {
                            if !matches!(
                                name.as_str(),
                                "content-length" | "transfer-encoding" | "connection"
                            ) {
                                head.push_str(&format!(
                                    "{name}: {}\r\n",
                                    value.to_str().unwrap_or("")
                                ));
                            }
                        }
                        // A HEAD answer has no body but tells the object's length.
                        let length = match headers.get("content-length") {
                            Some(length) if head_request => {
                                length.to_str().unwrap_or("0").to_owned()
                            }
                            _ if short => (body.len() / 2).to_string(),
                            _ => body.len().to_string(),
                        };
                        head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
                        let sent = if truncate || short {
                            body.len() / 2
                        } else {
                            body.len()
                        };
                        if let Some(every) = trickle {
                            if stream.write_all(head.as_bytes()).is_err() {
                                break;
                            }
                            for byte in &body {
                                std::thread::sleep(every);
                                if stream.write_all(std::slice::from_ref(byte)).is_err() {
                                    break;
                                }
                            }
                            continue;
                        }
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(&body[..sent]).is_err()
                            || truncate
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self { address, log }
    }

    /// The requests seen so far, as `METHOD PATH`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The response an `AnswerWith` describes.
fn answer(action: &Action) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let Action::AnswerWith(status, extra, body) = action else {
        unreachable!("answer() is called for answers only")
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in extra {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_str(value).unwrap(),
        );
    }
    (
        reqwest::StatusCode::from_u16(*status).unwrap(),
        headers,
        body.clone().into_bytes(),
    )
}

fn forward(
    client: &reqwest::Client,
    upstream: &str,
    request: HttpRequest,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    crate::common::runtime().block_on(async {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
        let mut forward = client.request(method, format!("{upstream}{}", request.path));
        for (name, value) in &request.headers {
            if !matches!(
                name.as_str(),
                "host" | "content-length" | "connection" | "transfer-encoding"
            ) {
                forward = forward.header(name, value);
            }
        }
        let response = forward.body(request.body).send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.bytes().await.unwrap().to_vec())
    })
}
