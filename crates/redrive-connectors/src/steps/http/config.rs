//! `http = { url, method, headers, form | json, batch, max_wait, rate, concurrency,
//! idempotency_key }`.

use std::collections::BTreeMap;
use std::sync::Arc;

use redrive_core::job::{parse_duration, template};
use redrive_core::step::{Step, StepTraits};
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::HttpStep;
use crate::plan::unless_default;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};

/// `http = { url, method, headers, form | json, batch, max_wait, rate, concurrency }`.
#[derive(Clone, Debug)]
pub struct HttpSpec {
    /// The endpoint.
    pub url: Template,
    /// `POST` by default.
    pub method: String,
    /// Header values may use `${ENV}` (masked everywhere).
    pub headers: Vec<(String, Template)>,
    /// The body.
    pub body: HttpBody,
    /// Items per request (1 by default).
    pub batch: usize,
    /// Longest an item waits for its batch to fill.
    pub max_wait: std::time::Duration,
    /// Requests per second at most.
    pub rate: Option<f64>,
    /// Requests in flight at most.
    pub concurrency: Option<usize>,
    /// Sent as `Idempotency-Key`: the item's rendered value, or for a batch the SHA-256 of its
    /// items' values, so a request sent again after a crash carries the key it had.
    pub idempotency_key: Option<Template>,
}

/// The body of an HTTP step.
#[derive(Clone, Debug)]
pub enum HttpBody {
    /// `application/x-www-form-urlencoded`: each item adds its values (fields repeat).
    Form(Vec<(String, Template)>),
    /// `application/json`: a JSON array of each item's rendered template (a single value when
    /// `batch = 1`).
    Json(Template),
    /// No body.
    Empty,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    form: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

impl StepKind for HttpSpec {
    type Raw = RawHttp;

    fn check(raw: &RawHttp, _cx: &CheckContext<'_>) -> Result<Self, String> {
        let method = raw
            .method
            .clone()
            .unwrap_or_else(|| "POST".to_owned())
            .to_ascii_uppercase();
        if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
            return Err(format!(
                "`http.method` = `{method}`; use GET, POST, PUT, PATCH or DELETE"
            ));
        }
        let body = match (&raw.form, &raw.json) {
            (Some(_), Some(_)) => {
                return Err("give `http.form` or `http.json`, not both".to_owned());
            }
            (Some(form), None) => HttpBody::Form(
                form.iter()
                    .map(|(k, v)| Ok((k.clone(), template(&format!("http.form.{k}"), v)?)))
                    .collect::<Result<Vec<_>, String>>()?,
            ),
            (None, Some(json)) => HttpBody::Json(template("http.json", json)?),
            (None, None) => HttpBody::Empty,
        };
        let batch = raw.batch.unwrap_or(1);
        if batch == 0 {
            return Err("`http.batch` must be at least 1".to_owned());
        }
        if let Some(rate) = raw.rate
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(format!(
                "`http.rate` must be a positive number of requests per second, got {rate}"
            ));
        }
        if raw.concurrency == Some(0) {
            return Err("`http.concurrency` must be at least 1".to_owned());
        }
        let max_wait = match raw.max_wait.as_deref() {
            Some(text) => parse_duration(text).ok_or_else(|| {
                format!("`http.max_wait` = `{text}` is not a duration; write e.g. `2s`")
            })?,
            None => std::time::Duration::from_secs(1),
        };
        if raw.idempotency_key.is_some()
            && let Some(name) = raw
                .headers
                .keys()
                .find(|name| name.eq_ignore_ascii_case(super::IDEMPOTENCY_KEY))
        {
            return Err(format!(
                "`http.headers` has `{name}` and `http.idempotency_key` sets it too: give one"
            ));
        }
        Ok(HttpSpec {
            url: template("http.url", &raw.url)?,
            method,
            headers: raw
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), template(&format!("http.headers.{k}"), v)?)))
                .collect::<Result<Vec<_>, String>>()?,
            body,
            batch,
            max_wait,
            rate: raw.rate,
            concurrency: raw.concurrency,
            idempotency_key: raw
                .idempotency_key
                .as_deref()
                .map(|key| template("http.idempotency_key", key))
                .transpose()?,
        })
    }

    fn canonicalize(http: &mut RawHttp) {
        unless_default(&mut http.method, |m| m.eq_ignore_ascii_case("POST"));
        unless_default(&mut http.batch, |b| *b == 1);
        unless_default(&mut http.max_wait, |w| {
            parse_duration(w) == Some(std::time::Duration::from_secs(1))
        });
    }
}

impl StepConfig for HttpSpec {
    fn templates(&self) -> Vec<&Template> {
        let mut all = vec![&self.url];
        all.extend(self.headers.iter().map(|(_, t)| t));
        all.extend(&self.idempotency_key);
        match &self.body {
            HttpBody::Form(form) => all.extend(form.iter().map(|(_, t)| t)),
            HttpBody::Json(json) => all.push(json),
            HttpBody::Empty => {}
        }
        all
    }

    /// Its own `rate` (which `--rate` sets), `concurrency` and batches pace the API.
    fn traits(&self) -> StepTraits {
        StepTraits::batching(self.batch, self.max_wait)
    }

    fn override_rate(&mut self, rate: f64) {
        self.rate = Some(rate);
    }

    fn build(&self, _cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(HttpStep::new(self.clone())))
    }
}
