//! `run --metrics-addr HOST:PORT`: the run's figures as OpenMetrics text at `/metrics` while it
//! runs, for Prometheus (what rclone's `--rc` metrics give). The text is prometheus-client's;
//! the server only answers `GET /metrics`, one response per connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use redrive_core::engine::{StepEvent, StepStatus};
use redrive_core::item::Status;
use redrive_core::state::Summary;
use redrive_core::throttle::AdaptiveLimit;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::progress::Counters;

type Labels = Vec<(String, String)>;

/// A request head larger than this is not a scrape.
const MAX_REQUEST: usize = 8 * 1024;

/// Takes `addr` (`HOST:PORT`) for the metrics endpoint.
pub(crate) async fn listen(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot serve metrics on `{addr}`; give a free HOST:PORT, e.g. `--metrics-addr 127.0.0.1:9187`"
        )
    })
}

/// The figures a scrape reads: the steps' kept here as they finish, the rest taken from the
/// run's counters at each scrape.
pub(crate) struct Exporter {
    registry: Registry,
    items: Family<Labels, Gauge>,
    step_items: Family<Labels, Counter>,
    step_seconds: Family<Labels, Histogram>,
    in_flight: Family<Labels, Gauge>,
    bytes: Counter,
    retries: Counter,
    throttled: Counter,
    step_retries: Family<Labels, Counter>,
    step_limit: Family<Labels, Gauge>,
    step_throttled_responses: Family<Labels, Gauge>,
    /// The steps' adaptive limits, read at each scrape.
    limits: std::sync::Mutex<Vec<(String, Arc<AdaptiveLimit>)>>,
    /// One scrape at a time brings the counters up to date (two at once would add twice).
    scrape: std::sync::Mutex<()>,
    /// Items running a step now, over all steps.
    running: std::sync::atomic::AtomicI64,
    /// The state's items by status when the run began.
    before: Vec<(Status, u64)>,
    /// This run runs the failed items again (`--retry-failed`): they count as pending.
    retry_failed: bool,
}

fn step_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Commits of the state store, into a histogram (see `redrive_core::state::commits`).
struct CommitSeconds(Histogram);

impl redrive_core::state::commits::CommitObserver for CommitSeconds {
    fn committed(&self, seconds: f64, _writes: usize) {
        self.0.observe(seconds);
    }
}

impl Exporter {
    pub(crate) fn new(before: &Summary, retry_failed: bool) -> Self {
        let mut registry = Registry::with_prefix("redrive");
        let items = Family::<Labels, Gauge>::default();
        registry.register(
            "items",
            "The job's items by status (pending, running, done, skipped, failed)",
            items.clone(),
        );
        let step_items = Family::<Labels, Counter>::default();
        registry.register(
            "step_items",
            "Items whose step finished in this run, by step and outcome (done, skipped, failed)",
            step_items.clone(),
        );
        let step_seconds =
            Family::<Labels, Histogram>::new_with_constructor(step_seconds as fn() -> Histogram);
        registry.register(
            "step_seconds",
            "How long a step took for an item, retries included",
            step_seconds.clone(),
        );
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "step_in_flight",
            "Items running a step now",
            in_flight.clone(),
        );
        let bytes = Counter::default();
        registry.register("bytes", "Bytes moved by this run", bytes.clone());
        let retries = Counter::default();
        registry.register("retries", "Step attempts retried", retries.clone());
        let throttled = Counter::default();
        registry.register(
            "throttled",
            "Retries because a service throttled (429, 503 SlowDown, ServerBusy)",
            throttled.clone(),
        );
        let step_retries = Family::<Labels, Counter>::default();
        registry.register(
            "step_retries",
            "Attempts of a step retried, by step and why (throttled: the service asked to slow down; error: anything else)",
            step_retries.clone(),
        );
        let step_limit = Family::<Labels, Gauge>::default();
        registry.register(
            "step_concurrency_limit",
            "A step's adaptive limit on calls in flight now (halved when its endpoint throttles, raised again as calls succeed)",
            step_limit.clone(),
        );
        let step_throttled_responses = Family::<Labels, Gauge>::default();
        registry.register(
            "step_throttled_responses",
            "Throttled answers a step's endpoint gave, those its store layer retried on the spot included",
            step_throttled_responses.clone(),
        );
        // Commits take from well under a millisecond (SQLite) to tens of milliseconds (a
        // remote PostgreSQL): 0.1 ms to ~1.6 s.
        let commits = Histogram::new(exponential_buckets(0.0001, 4.0, 8));
        registry.register(
            "state_commit_seconds",
            "How long a state store transaction took, from its start to its commit",
            commits.clone(),
        );
        // One process, one run: a second exporter (none is made) would find the first set.
        redrive_core::state::commits::observe(Box::new(CommitSeconds(commits)));
        Self {
            registry,
            items,
            step_items,
            step_seconds,
            in_flight,
            bytes,
            retries,
            throttled,
            step_retries,
            step_limit,
            step_throttled_responses,
            limits: std::sync::Mutex::new(Vec::new()),
            scrape: std::sync::Mutex::new(()),
            running: std::sync::atomic::AtomicI64::new(0),
            before: before.by_status.clone(),
            retry_failed,
        }
    }

    /// Answers scrapes on `listener` (see [`listen`]) until the process ends.
    pub(crate) fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        counters: Arc<Counters>,
    ) {
        if let Ok(bound) = listener.local_addr() {
            tracing::info!("Metrics at http://{bound}/metrics");
        }
        let exporter = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (exporter, counters) = (Arc::clone(&exporter), Arc::clone(&counters));
                tokio::spawn(async move { exporter.answer(stream, &counters).await });
            }
        });
    }

    async fn answer(&self, mut stream: tokio::net::TcpStream, counters: &Counters) {
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer))
                .await
            {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buffer[..n]),
                _ => return,
            }
        }
        let line = String::from_utf8_lossy(&head);
        let target = line.split_whitespace().nth(1).unwrap_or_default();
        let (status, kind, body) = if line.starts_with("GET ")
            && (target == "/metrics" || target.starts_with("/metrics?"))
        {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.text(counters),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "redrive serves its metrics at /metrics\n".to_owned(),
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// The figures now, as OpenMetrics text.
    fn text(&self, counters: &Counters) -> String {
        let _one = self.scrape.lock();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let before = |status: Status| {
            self.before
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n)
        };
        let running = u64::try_from(self.running.load(Ordering::Relaxed)).unwrap_or(0);
        let done = before(Status::Done) + load(&counters.done);
        let skipped = before(Status::Skipped) + load(&counters.skipped);
        let failed_before = if self.retry_failed {
            0
        } else {
            before(Status::Failed)
        };
        let failed = failed_before + load(&counters.failed);
        let total = load(&counters.total);
        // The run's own counters, brought up to date (a counter only goes up).
        for (counter, now) in [
            (&self.bytes, load(&counters.bytes)),
            (&self.retries, load(&counters.retries)),
            (&self.throttled, load(&counters.throttled)),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        if let Ok(limits) = self.limits.lock() {
            for (step, limit) in limits.iter() {
                let labels = vec![("step".to_owned(), step.clone())];
                let report = limit.report();
                self.step_limit
                    .get_or_create(&labels)
                    .set(i64::try_from(report.now).unwrap_or(i64::MAX));
                self.step_throttled_responses
                    .get_or_create(&labels)
                    .set(i64::try_from(report.throttled).unwrap_or(i64::MAX));
            }
        }
        let pending = total.saturating_sub(done + skipped + failed + running);
        for (status, n) in [
            (Status::Pending, pending),
            (Status::Running, running),
            (Status::Done, done),
            (Status::Skipped, skipped),
            (Status::Failed, failed),
        ] {
            self.items
                .get_or_create(&vec![("status".to_owned(), status.as_str().to_owned())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text = "# the metrics could not be encoded\n".to_owned();
        }
        text
    }

    /// A step is retried.
    pub(crate) fn retried(&self, step: &str, throttled: bool) {
        let why = if throttled { "throttled" } else { "error" };
        self.step_retries
            .get_or_create(&vec![
                ("step".to_owned(), step.to_owned()),
                ("why".to_owned(), why.to_owned()),
            ])
            .inc();
    }

    /// The run's adaptive limits, per step.
    pub(crate) fn limits(&self, limits: &[(String, Arc<AdaptiveLimit>)]) {
        if let Ok(mut kept) = self.limits.lock() {
            *kept = limits.to_vec();
        }
    }

    /// A step started or finished for an item.
    pub(crate) fn step(&self, event: &StepEvent<'_>) {
        let step = vec![("step".to_owned(), event.step.to_owned())];
        let outcome = match event.status {
            StepStatus::Running => {
                self.in_flight.get_or_create(&step).inc();
                self.running.fetch_add(1, Ordering::Relaxed);
                return;
            }
            StepStatus::Done => "done",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
        };
        self.in_flight.get_or_create(&step).dec();
        self.running.fetch_sub(1, Ordering::Relaxed);
        let mut labels = step.clone();
        labels.push(("outcome".to_owned(), outcome.to_owned()));
        self.step_items.get_or_create(&labels).inc();
        self.step_seconds
            .get_or_create(&step)
            .observe(event.seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_limits_and_commits_are_in_the_text() {
        let exporter = Exporter::new(&Summary::default(), false);
        let limit = Arc::new(AdaptiveLimit::new(8));
        exporter.limits(&[("copy".to_owned(), Arc::clone(&limit))]);
        exporter.retried("copy", true);
        exporter.retried("copy", false);
        exporter.retried("copy", false);
        limit.throttled();
        redrive_core::state::commits::committed(std::time::Instant::now(), 3);
        let text = exporter.text(&Counters::default());
        for line in [
            "redrive_step_retries_total{step=\"copy\",why=\"throttled\"} 1",
            "redrive_step_retries_total{step=\"copy\",why=\"error\"} 2",
            "redrive_step_concurrency_limit{step=\"copy\"} 4",
            "redrive_step_throttled_responses{step=\"copy\"} 1",
            "redrive_state_commit_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
