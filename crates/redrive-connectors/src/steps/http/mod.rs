//! `http = { url, method, headers, form | json, batch, max_wait, rate, concurrency,
//! idempotency_key }`: an API call per item, or per batch of items.
//!
//! Batches are gathered by [`crate::batch::Batcher`]: a batch is sent when it holds `batch`
//! items or its first item has waited `max_wait`. Every item of a batch shares its outcome: 2xx → done; 4xx → failed with an
//! excerpt of the response; 429, 5xx and timeouts → retried (honouring Retry-After), each item
//! joining a new batch. Delivery is at least once: a batch the API accepted just before a crash,
//! not yet recorded, is sent again on resume; with `idempotency_key` it carries the same
//! `Idempotency-Key` header, so an API that honours it sees the resend as the same request.

pub(crate) mod config;

use std::sync::Arc;
use std::time::Duration;

use self::config::{HttpBody, HttpSpec};
use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::item::Fields;
use redrive_core::secrets::redact;
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::TemplateError;
use redrive_core::throttle::Rate;
use tokio::sync::Semaphore;

use crate::batch::Batcher;

/// What `application/x-www-form-urlencoded` leaves as is.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'*');
/// The header `idempotency_key` sets.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Characters of a response body quoted in an error.
const EXCERPT: usize = 300;

/// A batch's outcome, shared by its items.
#[derive(Clone, Debug)]
struct Failure {
    class: ErrorClass,
    message: String,
    retry_after: Option<Duration>,
}

struct Inner {
    spec: HttpSpec,
    client: reqwest::Client,
    rate: Option<Rate>,
    in_flight: Option<Semaphore>,
}

/// Calls an HTTP API.
pub struct HttpStep {
    inner: Arc<Inner>,
    batcher: Batcher<Fields, Failure>,
}

impl std::fmt::Debug for HttpStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStep")
            .field("url", &self.inner.spec.url)
            .field("batch", &self.inner.spec.batch)
            .finish()
    }
}

impl HttpStep {
    /// A step as the plan describes it.
    pub fn new(spec: HttpSpec) -> Self {
        let client = crate::http_client::client(Duration::from_secs(60));
        let rate = spec.rate.and_then(Rate::per_second);
        let in_flight = spec.concurrency.map(Semaphore::new);
        let (size, max_wait) = (spec.batch, spec.max_wait);
        let inner = Arc::new(Inner {
            spec,
            client,
            rate,
            in_flight,
        });
        let sender = Arc::clone(&inner);
        let send: crate::batch::Send<Fields, Failure> = Arc::new(move |items: Vec<Fields>| {
            let inner = Arc::clone(&sender);
            Box::pin(async move {
                let result = inner.send(&items).await;
                vec![result; items.len()]
            })
        });
        Self {
            inner,
            batcher: Batcher::new(size, max_wait, send),
        }
    }
}

impl Inner {
    /// The body of one request for `items`, and its content type.
    fn body(&self, items: &[Fields]) -> Result<(String, Option<&'static str>), TemplateError> {
        match &self.spec.body {
            HttpBody::Empty => Ok((String::new(), None)),
            HttpBody::Form(form) => {
                let mut pairs = Vec::with_capacity(items.len() * form.len());
                for fields in items {
                    for (name, value) in form {
                        let value = value.render(fields)?;
                        pairs.push(format!(
                            "{}={}",
                            utf8_percent_encode(name, FORM),
                            utf8_percent_encode(&value, FORM)
                        ));
                    }
                }
                Ok((pairs.join("&"), Some("application/x-www-form-urlencoded")))
            }
            HttpBody::Json(template) => {
                let values = items
                    .iter()
                    .map(|fields| template.render(fields))
                    .collect::<Result<Vec<_>, _>>()?;
                let body = if self.spec.batch == 1 && values.len() == 1 {
                    values.into_iter().next().unwrap_or_default()
                } else {
                    format!("[{}]", values.join(","))
                };
                Ok((body, Some("application/json")))
            }
        }
    }

    async fn send(&self, items: &[Fields]) -> Result<(), Failure> {
        let permanent = |message: String| Failure {
            class: ErrorClass::Permanent,
            message,
            retry_after: None,
        };
        let first = items.first().cloned().unwrap_or_default();
        let url = self
            .spec
            .url
            .render(&first)
            .map_err(|e| permanent(e.to_string()))?;
        let (body, content_type) = self.body(items).map_err(|e| permanent(e.to_string()))?;
        let method = reqwest::Method::from_bytes(self.spec.method.as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let mut request = self.client.request(method, &url);
        for (name, value) in &self.spec.headers {
            request = request.header(
                name,
                value.render(&first).map_err(|e| permanent(e.to_string()))?,
            );
        }
        if let Some(key) = &self.spec.idempotency_key {
            let key = idempotency_key(key, items).map_err(|e| permanent(e.to_string()))?;
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type).body(body);
        }
        if let Some(rate) = &self.rate {
            rate.wait().await;
        }
        let _permit = match &self.in_flight {
            Some(semaphore) => semaphore.acquire().await.ok(),
            None => None,
        };
        let shown = redact(&url).into_owned();
        let response = request.send().await.map_err(|e| Failure {
            class: ErrorClass::Transient,
            message: redact(&format!("{} {shown} failed: {e}", self.spec.method)).into_owned(),
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if let Some(redirect) = crate::http_client::unfollowed_redirect(&response) {
            return Err(Failure {
                class: ErrorClass::Permanent,
                message: format!("{} {shown} answered {status}: {redirect}", self.spec.method),
                retry_after: None,
            });
        }
        let retry_after = crate::response::retry_after(response.headers());
        let text: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(EXCERPT)
            .collect();
        let class = match status.as_u16() {
            429 | 503 => ErrorClass::Throttled,
            408 | 500..=599 => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        Err(Failure {
            class,
            message: redact(&format!(
                "{} {shown} answered {status}: {}",
                self.spec.method,
                text.trim()
            ))
            .into_owned(),
            retry_after,
        })
    }
}

#[async_trait]
impl Step for HttpStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        // A body that cannot be made fails this item alone, before it joins a batch.
        self.inner
            .body(std::slice::from_ref(fields))
            .map_err(|e| StepError::permanent(e.to_string()))?;
        if let HttpBody::Json(template) = &self.inner.spec.body {
            let text = template
                .render(fields)
                .map_err(|e| StepError::permanent(e.to_string()))?;
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                StepError::permanent(format!(
                    "the `json` body is not valid JSON for this item: {e}: {}",
                    redact(&text)
                ))
            })?;
        }
        let target = self
            .inner
            .spec
            .url
            .render(fields)
            .map(|u| redact(&u).into_owned())
            .unwrap_or_default();
        let result = if self.inner.spec.batch <= 1 {
            self.inner.send(std::slice::from_ref(fields)).await
        } else {
            self.batcher
                .submit(fields.clone(), || Failure {
                    class: ErrorClass::Transient,
                    message: "the batch was dropped".to_owned(),
                    retry_after: None,
                })
                .await
        };
        match result {
            Ok(()) => Ok(Outcome::done_to(0, target)),
            Err(failure) => {
                let mut error = StepError::new(failure.class, failure.message);
                if let Some(delay) = failure.retry_after {
                    error = error.with_retry_after(delay);
                }
                Err(error)
            }
        }
    }

    fn calls(&self, _fields: &Fields) -> Vec<(&'static str, u64)> {
        // One request per item, or per batch.
        vec![("HTTP request", 1)]
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let url = self.inner.spec.url.render(fields)?;
        let (body, _) = self.inner.body(std::slice::from_ref(fields))?;
        let batch = match self.inner.spec.batch {
            1 => String::new(),
            n => format!(" (in batches of {n})"),
        };
        Ok(format!("{} {url}{batch} {body}", self.inner.spec.method))
    }
}

/// A request's `Idempotency-Key`: its one item's value, or for a batch the SHA-256 (hex) of
/// its items' values in order — the same batch sent again has the same key.
fn idempotency_key(
    key: &redrive_core::Template,
    items: &[Fields],
) -> Result<String, TemplateError> {
    if let [one] = items {
        return key.render(one);
    }
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for fields in items {
        hasher.update(key.render(fields)?.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redrive_core::template::Template;

    fn spec(body: HttpBody, batch: usize) -> HttpSpec {
        HttpSpec {
            url: Template::parse("http://127.0.0.1:9/api").unwrap_or_else(|e| panic!("{e}")),
            method: "POST".to_owned(),
            headers: Vec::new(),
            body,
            batch,
            max_wait: Duration::from_millis(10),
            rate: None,
            concurrency: None,
            idempotency_key: None,
        }
    }

    fn item(id: &str) -> Fields {
        Fields::from([("id".to_owned(), id.to_owned())])
    }

    fn template(text: &str) -> Template {
        Template::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_form_repeats_each_item_s_fields() {
        let step = HttpStep::new(spec(
            HttpBody::Form(vec![("crash_ids".to_owned(), template("{id}"))]),
            3,
        ));
        let body = step
            .inner
            .body(&[item("a b"), item("c&d")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            body,
            (
                "crash_ids=a%20b&crash_ids=c%26d".to_owned(),
                Some("application/x-www-form-urlencoded")
            )
        );
    }

    #[test]
    fn json_is_an_array_when_batched_and_a_value_when_not() {
        let batched = HttpStep::new(spec(HttpBody::Json(template(r#"{"id":"{id}"}"#)), 2));
        assert_eq!(
            batched
                .inner
                .body(&[item("a"), item("b")])
                .map(|b| b.0)
                .ok(),
            Some(r#"[{"id":"a"},{"id":"b"}]"#.to_owned())
        );
        let single = HttpStep::new(spec(HttpBody::Json(template(r#"{"id":"{id}"}"#)), 1));
        assert_eq!(
            single.inner.body(&[item("a")]).map(|b| b.0).ok(),
            Some(r#"{"id":"a"}"#.to_owned())
        );
    }

    #[tokio::test]
    async fn an_invalid_json_body_fails_its_item_before_it_joins_a_batch() {
        let step = HttpStep::new(spec(HttpBody::Json(template(r#"{"id":{id}}"#)), 2));
        let counter = NoBytes;
        let cx = StepContext {
            bytes: &counter,
            key: "k",
            throttle: redrive_core::throttle::Throttle::none(),
        };
        let error = step
            .run(&item("not-json"), &cx)
            .await
            .map(|_| ())
            .map_err(|e| (e.class(), e.to_string()));
        let (class, message) = error
            .err()
            .unwrap_or((ErrorClass::Transient, String::new()));
        assert_eq!(class, ErrorClass::Permanent);
        assert!(
            message.starts_with("the `json` body is not valid JSON for this item"),
            "{message}"
        );
    }

    struct NoBytes;
    impl redrive_core::step::ByteCounter for NoBytes {
        fn add(&self, _: u64) {}
    }

    /// A one-thread HTTP server on 127.0.0.1: `answer` gives each request's response from its
    /// head (request line and headers); every head is kept.
    fn serve(
        answer: impl Fn(&str) -> String + Send + 'static,
    ) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let heads = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let mut reader = std::io::BufReader::new(clone);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let response = answer(&head);
                if let Ok(mut heads) = heads.lock() {
                    heads.push(head);
                }
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (port, seen)
    }

    /// Runs the step for one item, as the engine would, with nothing counting bytes.
    async fn run_alone(step: &HttpStep, fields: &Fields) -> Result<Outcome, StepError> {
        let cx = StepContext {
            bytes: &NoBytes,
            key: "k",
            throttle: redrive_core::throttle::Throttle::none(),
        };
        step.run(fields, &cx).await
    }

    fn with_secret(url: String) -> HttpSpec {
        HttpSpec {
            url: template(&url),
            headers: vec![
                ("auth-token".to_owned(), template("secret-token-1234")),
                ("x-api-key".to_owned(), template("secret-key-5678")),
            ],
            ..spec(HttpBody::Empty, 1)
        }
    }

    #[tokio::test]
    async fn each_request_carries_its_idempotency_key_alone_or_for_its_batch() {
        let (port, seen) = serve(|_| {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        });
        let keyed = |batch| HttpSpec {
            url: template(&format!("http://127.0.0.1:{port}/api")),
            idempotency_key: Some(template("job-{id}")),
            ..spec(HttpBody::Json(template("\"{id}\"")), batch)
        };
        let step = HttpStep::new(keyed(1));
        run_alone(&step, &item("a"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let step = HttpStep::new(keyed(2));
        let (b, c) = (item("b"), item("c"));
        let (x, y) = tokio::join!(run_alone(&step, &b), run_alone(&step, &c));
        x.and(y).unwrap_or_else(|e| panic!("{e}"));
        let heads = seen.lock().map(|h| h.clone()).unwrap_or_default();
        let key_of = |head: &String| {
            head.lines()
                .find_map(|l| l.strip_prefix("idempotency-key: "))
                .map(str::to_owned)
        };
        assert_eq!(key_of(&heads[0]).as_deref(), Some("job-a"));
        let batch = key_of(&heads[1]).unwrap_or_default();
        assert_eq!(batch.len(), 64, "{heads:?}");
        let again = idempotency_key(&template("job-{id}"), &[item("b"), item("c")]);
        let other = idempotency_key(&template("job-{id}"), &[item("c"), item("b")]);
        assert_eq!(
            again.ok().as_deref(),
            Some(batch.as_str()),
            "the same batch, the same key"
        );
        assert_ne!(other.ok().as_deref(), Some(batch.as_str()));
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed_so_no_secret_goes_there() {
        let (other, other_seen) = serve(|_| {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        });
        // `localhost` is another host than `127.0.0.1`, as far as origins go.
        let (api, _) = serve(move |_| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://localhost:{other}/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        });
        let step = HttpStep::new(with_secret(format!("http://127.0.0.1:{api}/submit")));
        let error = match run_alone(&step, &item("a")).await {
            Ok(outcome) => panic!("followed the redirect: {outcome:?}"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("307"), "{error}");
        assert!(
            error.contains(&format!("localhost:{other}/elsewhere")),
            "{error}"
        );
        assert!(error.contains("does not follow it"), "{error}");
        let seen = other_seen.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        assert_eq!(seen, 0, "the other host got no request");
    }

    #[tokio::test]
    async fn a_redirect_within_the_api_is_followed_with_its_headers() {
        let (api, seen) = serve(|head| {
            if head.starts_with("POST /submit") {
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: /v2/submit\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            }
        });
        let step = HttpStep::new(with_secret(format!("http://127.0.0.1:{api}/submit")));
        if let Err(error) = run_alone(&step, &item("a")).await {
            panic!("{error}");
        }
        let heads = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(heads[1].starts_with("POST /v2/submit"), "{heads:?}");
        assert!(
            heads[1]
                .to_ascii_lowercase()
                .contains("x-api-key: secret-key-5678"),
            "{heads:?}"
        );
    }
}
