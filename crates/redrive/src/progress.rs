//! Progress on stderr: a bar on a terminal, a plain line every 5 seconds otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use redrive_core::ObjectProgress;
use redrive_core::engine::Reporter;
use redrive_core::item::Status;

use crate::summary::human_bytes;

/// How often the plain progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How often a worker reports its progress to `--workers` (a JSON line on stdout).
const JSON_EVERY: Duration = Duration::from_millis(500);
/// Large objects shown at once, each on its own line.
const OBJECTS_SHOWN: usize = 8;

/// Counters the engine updates and the display reads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) total: AtomicU64,
    pub(crate) finished_before: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) children_total: AtomicU64,
    pub(crate) children_finished: AtomicU64,
    pub(crate) children_failed: AtomicU64,
}

impl Counters {
    /// What the run did, as counted here (for a run the engine could not report on).
    pub(crate) fn report(&self, duration: std::time::Duration) -> redrive_core::engine::RunReport {
        redrive_core::engine::RunReport {
            done: self.done.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            duration,
            ..Default::default()
        }
    }

    fn finished(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }
}

/// One large object moving: its bytes so far, for its progress line.
#[derive(Debug)]
pub(crate) struct Moving {
    name: String,
    size: Option<u64>,
    bytes: AtomicU64,
    started: Instant,
}

/// The large objects moving now.
type Objects = Arc<Mutex<Vec<Arc<Moving>>>>;

/// The engine's reporter: counts, and keeps the bar (if any) up to date.
pub(crate) struct Progress {
    counters: Arc<Counters>,
    telemetry: Option<crate::telemetry::Telemetry>,
    bar: Option<(MultiProgress, ProgressBar)>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    objects: Objects,
    started: Instant,
    exporter: Option<Arc<crate::exporter::Exporter>>,
}

/// One large object's progress: its bar on a terminal, its line in the plain output.
struct ObjectHandle {
    moving: Arc<Moving>,
    objects: Objects,
    bar: Option<ProgressBar>,
}

impl ObjectProgress for ObjectHandle {
    fn add(&self, n: u64) {
        self.moving.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

impl Drop for ObjectHandle {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Ok(mut objects) = self.objects.lock() {
            objects.retain(|o| !Arc::ptr_eq(o, &self.moving));
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Display {
    Bar,
    Lines,
    /// JSON lines on stdout, for the `--workers` parent.
    Json,
    Off,
}

impl Progress {
    pub(crate) fn start(
        display: Display,
        total: u64,
        finished_before: u64,
        telemetry: Option<crate::telemetry::Telemetry>,
        exporter: Option<Arc<crate::exporter::Exporter>>,
    ) -> Arc<Self> {
        let counters = Arc::new(Counters::default());
        let objects = Objects::default();
        counters.total.store(total, Ordering::Relaxed);
        counters
            .finished_before
            .store(finished_before, Ordering::Relaxed);
        let (bar, ticker) = match display {
            Display::Bar => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let bar = multi.add(ProgressBar::new(total));
                let style = ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} items {per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_position(finished_before);
                bar.enable_steady_tick(Duration::from_millis(200));
                (Some((multi, bar)), None)
            }
            Display::Lines => {
                let counters = Arc::clone(&counters);
                let objects = Arc::clone(&objects);
                let ticker = tokio::spawn(async move {
                    let started = Instant::now();
                    let mut interval = tokio::time::interval(LINE_EVERY);
                    interval.tick().await;
                    loop {
                        interval.tick().await;
                        eprintln!("{}", line(&counters, started.elapsed()));
                        let moving = objects.lock().map(|o| o.clone()).unwrap_or_default();
                        for object in moving.iter().take(OBJECTS_SHOWN) {
                            eprintln!("{}", object_line(object, object.started.elapsed()));
                        }
                    }
                });
                (None, Some(ticker))
            }
            Display::Json => {
                let counters = Arc::clone(&counters);
                let ticker = tokio::spawn(async move {
                    let mut interval = tokio::time::interval(JSON_EVERY);
                    loop {
                        interval.tick().await;
                        crate::out!("{}", json_line(&counters));
                    }
                });
                (None, Some(ticker))
            }
            Display::Off => (None, None),
        };
        Arc::new(Self {
            counters,
            telemetry,
            bar,
            ticker,
            objects,
            started: Instant::now(),
            exporter,
        })
    }

    /// Children already recorded, and those already finished, when the run starts.
    pub(crate) fn set_children(&self, total: u64, finished: u64) {
        self.counters.children_total.store(total, Ordering::Relaxed);
        self.counters
            .children_finished
            .store(finished, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, for a reader that outlives this borrow (the metrics endpoint).
    pub(crate) fn shared_counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    pub(crate) fn finish(&self) {
        if let Some((_, bar)) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }

    /// The last JSON progress line, when reporting to `--workers`.
    pub(crate) fn final_json(&self) -> String {
        json_line(&self.counters)
    }

    fn refresh(&self) {
        if let Some((_, bar)) = &self.bar {
            let c = &self.counters;
            bar.set_length(c.total.load(Ordering::Relaxed));
            bar.set_position(c.finished_before.load(Ordering::Relaxed) + c.finished());
            bar.set_message(format!(
                "(done {}, failed {}, skipped {}){} {}",
                c.done.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
                c.skipped.load(Ordering::Relaxed),
                children_text(c),
                bytes_text(c, self.started.elapsed()),
            ));
        }
    }
}

/// `3.0 MiB (1.5 MiB/s)`: the bytes moved by this run, and their rate since it began.
fn bytes_text(c: &Counters, elapsed: Duration) -> String {
    let bytes = c.bytes.load(Ordering::Relaxed);
    if bytes == 0 {
        return human_bytes(0);
    }
    let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
    format!("{} ({}/s)", human_bytes(bytes), human_bytes(rate as u64))
}

/// `Progress: 10/21000 (done 8, failed 2, skipped 0) 350 items/s, 1.2 MiB (400.0 KiB/s)`
fn line(c: &Counters, elapsed: Duration) -> String {
    let finished = c.finished();
    let rate = finished as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "Progress: {}/{} (done {}, failed {}, skipped {}){} {:.0} items/s, {}",
        c.finished_before.load(Ordering::Relaxed) + finished,
        c.total.load(Ordering::Relaxed),
        c.done.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.skipped.load(Ordering::Relaxed),
        children_text(c),
        rate,
        bytes_text(c, elapsed),
    )
}

/// `  big.bin: 120.0 MiB/300.0 MiB, 40.0 MiB/s, ETA 5s`: one large object moving.
fn object_line(object: &Moving, elapsed: Duration) -> String {
    let bytes = object.bytes.load(Ordering::Relaxed);
    let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
    let mut text = format!("  {}: {}", object.name, human_bytes(bytes));
    if let Some(size) = object.size {
        text.push_str(&format!("/{}", human_bytes(size)));
    }
    text.push_str(&format!(", {}/s", human_bytes(rate as u64)));
    if let Some(size) = object.size
        && rate > 0.0
    {
        let left = size.saturating_sub(bytes) as f64 / rate;
        text.push_str(&format!(", ETA {}s", left.ceil() as u64));
    }
    text
}

/// A large object's bar under the job's: bytes, rate and ETA (or bytes and rate when its
/// size is unknown).
fn object_bar(multi: &MultiProgress, name: &str, size: Option<u64>) -> ProgressBar {
    let (bar, template) = match size {
        Some(size) => (
            ProgressBar::new(size),
            "  {msg:30!} [{bar:20}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ),
        None => (
            ProgressBar::no_length(),
            "  {msg:30!} {bytes} {bytes_per_sec}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(name.to_owned());
    multi.add(bar)
}

/// `-v`: one line per step an item finished, as rclone's `Copied (new)`:
/// `copy a/b.json → s3://bucket/a/b.json: 2.0 KiB in 31 ms` (keys and targets masked).
fn finished_line(event: &redrive_core::engine::StepEvent<'_>) {
    use redrive_core::engine::StepStatus;
    if tracing::level_filters::LevelFilter::current() < tracing::Level::INFO {
        return;
    }
    let key = match event.parent {
        Some(parent) => format!("{parent}/{}", event.key),
        None => event.key.to_owned(),
    };
    let key = redrive_core::secrets::redact(&key);
    let ms = (event.seconds * 1000.0).round();
    match event.status {
        StepStatus::Done => {
            let target = event
                .target
                .map(|t| format!(" → {}", redrive_core::secrets::redact(t)))
                .unwrap_or_default();
            tracing::info!(
                "{} {key}{target}: {} in {ms} ms",
                event.step,
                human_bytes(event.bytes)
            );
        }
        StepStatus::Skipped => tracing::info!(
            "{} {key}: skipped ({})",
            event.step,
            event.error.unwrap_or_default()
        ),
        _ => {}
    }
}

/// What a worker tells `--workers`: its totals so far.
fn json_line(c: &Counters) -> String {
    let finished = c.finished();
    serde_json::json!({
        "total": c.total.load(Ordering::Relaxed),
        "finished": c.finished_before.load(Ordering::Relaxed) + finished,
        "done": c.done.load(Ordering::Relaxed),
        "failed": c.failed.load(Ordering::Relaxed),
        "skipped": c.skipped.load(Ordering::Relaxed),
        "bytes": c.bytes.load(Ordering::Relaxed),
    })
    .to_string()
}

/// ` files 120/800 (failed 2)` under `[expand]`, else nothing.
fn children_text(c: &Counters) -> String {
    let total = c.children_total.load(Ordering::Relaxed);
    if total == 0 {
        return String::new();
    }
    format!(
        " children {}/{} (failed {})",
        c.children_finished.load(Ordering::Relaxed),
        total,
        c.children_failed.load(Ordering::Relaxed)
    )
}

impl Reporter for Progress {
    fn loaded(&self, n: u64) {
        self.counters.total.fetch_add(n, Ordering::Relaxed);
        self.refresh();
    }

    fn finished(&self, status: Status) {
        let counter = match status {
            Status::Done => &self.counters.done,
            Status::Skipped => &self.counters.skipped,
            Status::Failed => &self.counters.failed,
            Status::Pending | Status::Running => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }

    fn bytes(&self, n: u64) {
        self.counters.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn object(&self, name: &str, size: Option<u64>) -> Option<Box<dyn ObjectProgress>> {
        if self.ticker.is_none() && self.bar.is_none() {
            return None;
        }
        let moving = Arc::new(Moving {
            name: name.to_owned(),
            size,
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        });
        let shown = {
            let mut objects = self.objects.lock().ok()?;
            objects.push(Arc::clone(&moving));
            objects.len() <= OBJECTS_SHOWN
        };
        let bar = match &self.bar {
            Some((multi, _)) if shown => Some(object_bar(multi, name, size)),
            _ => None,
        };
        Some(Box::new(ObjectHandle {
            moving,
            objects: Arc::clone(&self.objects),
            bar,
        }))
    }

    fn step(&self, event: &redrive_core::engine::StepEvent<'_>) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.write(event);
        }
        if let Some(exporter) = &self.exporter {
            exporter.step(event);
        }
        finished_line(event);
    }

    fn children_loaded(&self, n: u64) {
        self.counters.children_total.fetch_add(n, Ordering::Relaxed);
    }

    fn child_finished(&self, status: Status) {
        self.counters
            .children_finished
            .fetch_add(1, Ordering::Relaxed);
        if status == Status::Failed {
            self.counters
                .children_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        self.refresh();
    }

    fn retried(&self, step: &str, throttled: bool) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        if throttled {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(exporter) = &self.exporter {
            exporter.retried(step, throttled);
        }
    }

    fn limits(&self, limits: &[(String, Arc<redrive_core::throttle::AdaptiveLimit>)]) {
        if let Some(exporter) = &self.exporter {
            exporter.limits(limits);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_counts_items_rate_and_bytes() {
        let counters = Counters::default();
        counters.total.store(21_000, Ordering::Relaxed);
        counters.finished_before.store(2, Ordering::Relaxed);
        counters.done.store(6, Ordering::Relaxed);
        counters.failed.store(2, Ordering::Relaxed);
        counters.bytes.store(3 * 1024 * 1024, Ordering::Relaxed);
        assert_eq!(
            line(&counters, Duration::from_secs(2)),
            "Progress: 10/21000 (done 6, failed 2, skipped 0) 4 items/s, 3.0 MiB (1.5 MiB/s)"
        );
    }

    #[test]
    fn a_large_object_line_has_bytes_rate_and_eta() {
        let mib = 1024 * 1024;
        let object = Moving {
            name: "s3://b/big.bin".to_owned(),
            size: Some(300 * mib),
            bytes: AtomicU64::new(100 * mib),
            started: Instant::now(),
        };
        assert_eq!(
            object_line(&object, Duration::from_secs(4)),
            "  s3://b/big.bin: 100.0 MiB/300.0 MiB, 25.0 MiB/s, ETA 8s"
        );
        let unknown = Moving {
            size: None,
            ..object
        };
        assert_eq!(
            object_line(&unknown, Duration::from_secs(4)),
            "  s3://b/big.bin: 100.0 MiB, 25.0 MiB/s"
        );
    }

    #[tokio::test]
    async fn large_objects_are_listed_while_they_move() {
        let progress = Progress::start(Display::Lines, 1, 0, None, None);
        let first = progress.object("a.bin", Some(10)).expect("shown");
        let second = progress.object("b.bin", None).expect("shown");
        first.add(4);
        let names = |p: &Progress| -> Vec<(String, u64)> {
            p.objects
                .lock()
                .unwrap()
                .iter()
                .map(|o| (o.name.clone(), o.bytes.load(Ordering::Relaxed)))
                .collect()
        };
        assert_eq!(
            names(&progress),
            [("a.bin".to_owned(), 4), ("b.bin".to_owned(), 0)]
        );
        drop(first);
        assert_eq!(names(&progress), [("b.bin".to_owned(), 0)]);
        drop(second);
        assert!(names(&progress).is_empty());
        progress.finish();
        assert!(
            Progress::start(Display::Off, 1, 0, None, None)
                .object("c", None)
                .is_none()
        );
    }
}
