//! `redrive report`'s page: one self-contained HTML file (inline CSS and SVG, nothing fetched)
//! drawn from what the state aggregates. What goes into it is gathered by
//! `commands::report`; this module only renders.

use std::collections::HashMap;
use std::fmt::Write as _;

use redrive_core::item::Status;
use redrive_core::state::{Activity, DURATION_BOUNDS, Summary};

use crate::summary::human_bytes;

/// Distinct reasons kept per table; items with further reasons are counted together.
const REASONS_KEPT: usize = 200;
/// Reasons shown per table.
const REASONS_SHOWN: usize = 25;
/// Example keys kept per reason.
const EXAMPLES: usize = 3;

/// Everything the page shows.
pub(crate) struct Report {
    pub(crate) job: String,
    pub(crate) state: String,
    pub(crate) generated_at: String,
    pub(crate) summary: Summary,
    pub(crate) activity: Activity,
    pub(crate) failures: Reasons,
    pub(crate) skips: Reasons,
}

/// Items grouped by step and reason, in bounded memory: at most [`REASONS_KEPT`] groups.
#[derive(Default)]
pub(crate) struct Reasons {
    groups: Vec<Group>,
    index: HashMap<(String, String), usize>,
    /// Items whose reason came after the groups were full.
    others: u64,
}

struct Group {
    step: String,
    reason: String,
    count: u64,
    examples: Vec<String>,
}

impl Reasons {
    /// Counts one item that ended at `step` for `error`; `names` are the item's own names
    /// (its key, a child's own key), left out of the reason as quoted text is.
    pub(crate) fn add(&mut self, step: &str, error: &str, key: &str, names: &[&str]) {
        let mut error = error.to_owned();
        for name in names.iter().filter(|n| !n.is_empty()) {
            error = error.replace(name, "…");
        }
        let reason = reason_of(&error);
        let slot = (step.to_owned(), reason);
        let i = match self.index.get(&slot) {
            Some(&i) => i,
            None if self.groups.len() < REASONS_KEPT => {
                self.groups.push(Group {
                    step: slot.0.clone(),
                    reason: slot.1.clone(),
                    count: 0,
                    examples: Vec::new(),
                });
                self.index.insert(slot, self.groups.len() - 1);
                self.groups.len() - 1
            }
            None => {
                self.others += 1;
                return;
            }
        };
        let group = &mut self.groups[i];
        group.count += 1;
        if group.examples.len() < EXAMPLES {
            group.examples.push(key.to_owned());
        }
    }

    fn total(&self) -> u64 {
        self.groups.iter().map(|g| g.count).sum::<u64>() + self.others
    }
}

/// An error's reason, for grouping: its first line with what is quoted in it (keys, paths,
/// URLs) left out, so one cause met by many items is one row.
pub(crate) fn reason_of(error: &str) -> String {
    let line = error.lines().next().unwrap_or("").trim();
    let mut reason = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => {
                reason.push('…');
                reason.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                reason.push(c);
                quote = Some(c);
            }
            None => reason.push(c),
        }
    }
    if quote.is_some() {
        reason.push('…');
    }
    if reason.chars().count() > 300 {
        reason = reason.chars().take(300).collect::<String>() + "…";
    }
    reason
}

/// The page.
pub(crate) fn html(report: &Report) -> String {
    let mut page = String::new();
    let title = format!("redrive report: {}", report.job);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n\
         <p class=\"meta\">State {} · generated {}</p>\n",
        esc(&title),
        esc(&title),
        esc(&report.state),
        esc(&report.generated_at)
    );
    totals(&mut page, &report.summary);
    throughput(&mut page, &report.activity);
    durations(&mut page, &report.activity);
    step_durations(&mut page, &report.activity);
    let failed_by = "<code>redrive failed</code> lists each";
    let skipped_by =
        "the state's <code>items</code> table holds each (<code>status = 'skipped'</code>)";
    reasons(
        &mut page,
        "Failures by reason",
        "failed",
        failed_by,
        &report.failures,
    );
    reasons(
        &mut page,
        "Skips by reason",
        "skipped",
        skipped_by,
        &report.skips,
    );
    slowest(&mut page, &report.activity);
    page.push_str("</body></html>\n");
    page
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:960px;\
color:#1d2330;padding:0 1em}h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.15em;\
margin-top:2em;border-bottom:1px solid #dde;padding-bottom:.2em}.meta{color:#667;margin-top:0}\
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #dde;border-radius:6px;\
padding:.5em .9em;min-width:7em}.card b{display:block;font-size:1.35em}.card span{color:#667;\
font-size:.85em}.done b{color:#1a7f37}.failed b{color:#c62828}.skipped b{color:#8a6d00}\
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{text-align:left;padding:.3em .5em;\
border-bottom:1px solid #eef;vertical-align:top}td.n,th.n{text-align:right;white-space:nowrap}\
code{font-size:.9em;word-break:break-all}svg{width:100%;height:auto}.none{color:#667}\
.legend{font-size:.85em;color:#667}.sw{display:inline-block;width:.8em;height:.8em;\
margin:0 .3em 0 1em;vertical-align:-.05em}.bar{background:#eef;height:.4em;min-width:3em}\
.bar div{background:#1a7f37;height:100%}";

fn totals(page: &mut String, summary: &Summary) {
    let waiting = summary.count(Status::Pending) + summary.count(Status::Running);
    let mut cards = vec![
        ("", summary.total().to_string(), "items".to_owned()),
        (
            "done",
            summary.count(Status::Done).to_string(),
            "done".to_owned(),
        ),
        (
            "skipped",
            summary.count(Status::Skipped).to_string(),
            "skipped".to_owned(),
        ),
        (
            "failed",
            summary.count(Status::Failed).to_string(),
            "failed".to_owned(),
        ),
        ("", waiting.to_string(), "pending or running".to_owned()),
        ("", human_bytes(summary.bytes), "moved".to_owned()),
        (
            "",
            human_seconds(summary.active_seconds),
            "active".to_owned(),
        ),
    ];
    let finished = summary.count(Status::Done)
        + summary.count(Status::Skipped)
        + summary.count(Status::Failed);
    if summary.active_seconds > 0.0 && finished > 0 {
        cards.push((
            "",
            per_second(finished as f64 / summary.active_seconds),
            "items/s".to_owned(),
        ));
    }
    if summary.children_total() > 0 {
        cards.push((
            "",
            summary.children_total().to_string(),
            "children".to_owned(),
        ));
    }
    page.push_str("<h2>Totals</h2>\n<div class=\"cards\">");
    for (class, value, label) in cards {
        let _ = write!(
            page,
            "<div class=\"card {class}\"><b>{}</b><span>{}</span></div>",
            esc(&value),
            esc(&label)
        );
    }
    page.push_str("</div>\n");
    if !summary.source_complete {
        page.push_str(
            "<p class=\"none\">The source is not wholly loaded yet: more items may come.</p>\n",
        );
    }
}

fn throughput(page: &mut String, activity: &Activity) {
    page.push_str("<h2>Throughput over time</h2>\n");
    let Some((start, end)) = activity.span else {
        page.push_str("<p class=\"none\">No item has finished yet.</p>\n");
        return;
    };
    let width = activity.bucket_seconds;
    let buckets = activity
        .timeline
        .iter()
        .map(|b| b.index + 1)
        .max()
        .unwrap_or(1)
        .max(((end - start) / width).ceil() as u64)
        .max(1);
    let max_items = activity
        .timeline
        .iter()
        .map(|b| b.items)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        / width;
    let max_bytes = activity.timeline.iter().map(|b| b.bytes).max().unwrap_or(0) as f64 / width;
    let (w, h, left, right, top, bottom) = (900.0, 240.0, 64.0, 80.0, 12.0, 28.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let slot = plot_w / buckets as f64;
    let _ = write!(
        page,
        "<svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"items per second over time\">\
         <line x1=\"{left}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#99a\"/>\
         <text x=\"{lx}\" y=\"{ty}\" font-size=\"12\" text-anchor=\"end\" fill=\"#2f6fdf\">{}</text>\
         <text x=\"{lx}\" y=\"{y0}\" font-size=\"12\" text-anchor=\"end\" fill=\"#667\">0</text>",
        esc(&per_second(max_items)),
        y0 = top + plot_h,
        x1 = left + plot_w,
        lx = left - 6.0,
        ty = top + 10.0,
    );
    for bucket in &activity.timeline {
        let rate = bucket.items as f64 / width;
        let bar_h = plot_h * rate / max_items;
        let _ = write!(
            page,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#2f6fdf\"><title>{} items/s</title></rect>",
            left + slot * bucket.index as f64,
            top + plot_h - bar_h,
            (slot - 1.0).max(0.5),
            bar_h,
            esc(&per_second(rate))
        );
    }
    if max_bytes > 0.0 {
        let points: Vec<String> = activity
            .timeline
            .iter()
            .map(|b| {
                format!(
                    "{:.1},{:.1}",
                    left + slot * (b.index as f64 + 0.5),
                    top + plot_h - plot_h * (b.bytes as f64 / width) / max_bytes
                )
            })
            .collect();
        let _ = write!(
            page,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#e07b00\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#e07b00\">{}/s</text>",
            points.join(" "),
            left + plot_w + 6.0,
            top + 10.0,
            esc(&human_bytes(max_bytes as u64))
        );
    }
    let _ = writeln!(
        page,
        "<text x=\"{left}\" y=\"{:.1}\" font-size=\"12\" fill=\"#667\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"#667\">{}</text></svg>",
        h - 8.0,
        esc(&clock(start)),
        left + plot_w,
        h - 8.0,
        esc(&clock(end))
    );
    let _ = writeln!(
        page,
        "<p class=\"legend\"><span class=\"sw\" style=\"background:#2f6fdf\"></span>items done per second\
         {}; one bar per {} (UTC)</p>",
        if max_bytes > 0.0 {
            "<span class=\"sw\" style=\"background:#e07b00\"></span>bytes per second"
        } else {
            ""
        },
        esc(&human_seconds(width))
    );
}

fn durations(page: &mut String, activity: &Activity) {
    page.push_str("<h2>How long items took</h2>\n");
    let total: u64 = activity.durations.iter().sum();
    if total == 0 {
        page.push_str("<p class=\"none\">No item is done yet.</p>\n");
        return;
    }
    let labels = duration_labels();
    let max = activity.durations.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, h, top, bottom) = (900.0, 200.0, 18.0, 28.0);
    let slot = w / labels.len() as f64;
    let plot_h = h - top - bottom;
    let _ = write!(
        page,
        "<svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"items by duration\">"
    );
    for (i, (label, n)) in labels.iter().zip(&activity.durations).enumerate() {
        let bar_h = plot_h * (*n as f64) / max;
        let x = slot * i as f64;
        let _ = write!(
            page,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#1a7f37\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{n}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#667\">{}</text>",
            x + 8.0,
            top + plot_h - bar_h,
            slot - 16.0,
            bar_h,
            x + slot / 2.0,
            top + plot_h - bar_h - 4.0,
            x + slot / 2.0,
            h - 8.0,
            esc(label)
        );
    }
    page.push_str("</svg>\n<p class=\"legend\">Items done, by the time their last attempt took from start to finish (all steps).</p>\n");
}

/// One row per step: how many times it ended, its mean, and its durations as a bar per bucket.
fn step_durations(page: &mut String, activity: &Activity) {
    page.push_str("<h2>How long each step took</h2>\n");
    if activity.steps.iter().all(|step| step.total() == 0) {
        page.push_str(
            "<p class=\"none\">No step has ended yet (or the runs recorded no step times).</p>\n",
        );
        return;
    }
    let labels = duration_labels();
    page.push_str("<table><tr><th>step</th><th class=\"n\">ended</th><th class=\"n\">mean</th>");
    for label in &labels {
        let _ = write!(page, "<th class=\"n\">{}</th>", esc(label));
    }
    page.push_str("</tr>\n");
    for step in &activity.steps {
        let total = step.total();
        if total == 0 {
            continue;
        }
        let _ = write!(
            page,
            "<tr><td><code>{}</code></td><td class=\"n\">{total}</td><td class=\"n\">{}</td>",
            esc(&step.name),
            esc(&human_seconds(step.seconds / total as f64))
        );
        for n in &step.counts {
            let share = 100.0 * (*n as f64) / total as f64;
            let _ = write!(
                page,
                "<td class=\"n\">{n}<div class=\"bar\"><div style=\"width:{share:.0}%\"></div></div></td>"
            );
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n<p class=\"legend\">Each step's wall time per item, retries included, over every item it ended (done, skipped or failed), as the runs measured it.</p>\n");
}

fn duration_labels() -> Vec<String> {
    let text = |s: f64| {
        if s < 1.0 {
            format!("{} ms", (s * 1000.0).round())
        } else if s < 60.0 {
            format!("{s} s")
        } else {
            format!("{} min", s / 60.0)
        }
    };
    let mut labels = Vec::new();
    let mut lower: Option<f64> = None;
    for bound in DURATION_BOUNDS {
        labels.push(match lower {
            None => format!("< {}", text(bound)),
            Some(low) => format!("{} – {}", text(low), text(bound)),
        });
        lower = Some(bound);
    }
    labels.push(format!("≥ {}", text(lower.unwrap_or(0.0))));
    labels
}

fn reasons(page: &mut String, title: &str, what: &str, listed_by: &str, reasons: &Reasons) {
    let _ = writeln!(page, "<h2>{}</h2>", esc(title));
    let total = reasons.total();
    if total == 0 {
        let _ = writeln!(page, "<p class=\"none\">No item {what}.</p>");
        return;
    }
    let mut groups: Vec<&Group> = reasons.groups.iter().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    page.push_str("<table><tr><th>step</th><th>reason</th><th class=\"n\">items</th><th>for example</th></tr>\n");
    for group in groups.iter().take(REASONS_SHOWN) {
        let examples: Vec<String> = group
            .examples
            .iter()
            .map(|k| format!("<code>{}</code>", esc(k)))
            .collect();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&group.step),
            esc(&group.reason),
            group.count,
            examples.join("<br>")
        );
    }
    let hidden: u64 = groups
        .iter()
        .skip(REASONS_SHOWN)
        .map(|g| g.count)
        .sum::<u64>()
        + reasons.others;
    if hidden > 0 {
        let _ = writeln!(
            page,
            "<tr><td></td><td class=\"none\">other reasons</td><td class=\"n\">{hidden}</td><td></td></tr>"
        );
    }
    let _ = writeln!(
        page,
        "</table>\n<p class=\"legend\">{total} {} {what} in all; {listed_by}.</p>",
        if total == 1 { "item" } else { "items" }
    );
}

fn slowest(page: &mut String, activity: &Activity) {
    page.push_str("<h2>Slowest items</h2>\n");
    if activity.slowest.is_empty() {
        page.push_str("<p class=\"none\">No item has finished yet.</p>\n");
        return;
    }
    page.push_str("<table><tr><th>key</th><th>status</th><th class=\"n\">took</th><th class=\"n\">bytes</th></tr>\n");
    for item in &activity.slowest {
        let _ = writeln!(
            page,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&item.key),
            item.status.as_str(),
            esc(&human_seconds(item.seconds)),
            esc(&human_bytes(item.bytes))
        );
    }
    page.push_str("</table>\n");
}

/// `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 10 min`.
fn human_seconds(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{} ms", (seconds * 1000.0).round())
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// `272.5/s`, `12,400/s`.
fn per_second(rate: f64) -> String {
    if rate < 1000.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{}/s", crate::summary::grouped(rate.round() as u64))
    }
}

/// Seconds since the epoch as `2026-12-02 13:05:09`.
fn clock(epoch: f64) -> String {
    jiff::Timestamp::from_millisecond((epoch * 1000.0) as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| format!("{epoch:.0}"))
}

/// Text made safe inside HTML elements and attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_leaves_out_what_is_quoted() {
        assert_eq!(
            reason_of("copy: source `in/a.txt` not found\ncaused by: x"),
            "copy: source `…` not found"
        );
        assert_eq!(
            reason_of("HTTP 503 from \"https://x/y\""),
            "HTTP 503 from \"…\""
        );
        assert_eq!(reason_of("unclosed `quote"), "unclosed `…");
    }

    #[test]
    fn reasons_are_grouped_in_bounded_memory() {
        let mut reasons = Reasons::default();
        for i in 0..(REASONS_KEPT + 10) {
            reasons.add("copy", &format!("error {i}"), &format!("k{i}"), &[]);
        }
        for i in 0..5 {
            reasons.add("copy", "error 0", &format!("again{i}"), &[]);
        }
        assert_eq!(reasons.groups.len(), REASONS_KEPT);
        assert_eq!(reasons.others, 10);
        assert_eq!(reasons.total(), (REASONS_KEPT + 15) as u64);
        assert_eq!(reasons.groups[0].count, 6);
        assert_eq!(reasons.groups[0].examples.len(), EXAMPLES);
    }

    #[test]
    fn an_items_own_names_are_left_out_of_its_reason() {
        let mut reasons = Reasons::default();
        reasons.add("convert", "crashed on a.txt (a.txt)", "a.txt", &["a.txt"]);
        reasons.add(
            "convert",
            "crashed on b.txt (b.txt)",
            "job/b.txt",
            &["job/b.txt", "b.txt"],
        );
        assert_eq!(reasons.groups.len(), 1);
        assert_eq!(reasons.groups[0].reason, "crashed on … (…)");
        assert_eq!(reasons.groups[0].examples, ["a.txt", "job/b.txt"]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn rates_and_times_read_as_people_write_them() {
        assert_eq!(per_second(272.46), "272.5/s");
        assert_eq!(per_second(12_400.2), "12,400/s");
        assert_eq!(per_second(1_234_567.0), "1,234,567/s");
        assert_eq!(human_seconds(0.031), "31 ms");
        assert_eq!(human_seconds(245.0), "4 min 05 s");
        assert_eq!(duration_labels()[0], "< 10 ms");
        assert_eq!(duration_labels()[2], "100 ms – 1 s");
        assert_eq!(duration_labels()[6], "≥ 10 min");
    }
}
