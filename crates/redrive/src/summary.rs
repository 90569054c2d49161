//! The summary table (end of a run, and `status`) and its JSON form.

use std::fmt::Write as _;

use redrive_core::item::Status;
use redrive_core::state::Summary;
use serde_json::json;

/// `12,400`: a whole number with its thousands set apart.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 item`, `3 items`: a count with its noun, singular or plural as people write it.
pub(crate) fn items(n: u64) -> String {
    if n == 1 {
        "1 item".to_owned()
    } else {
        format!("{n} items")
    }
}

/// `1.5 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Items finished per second over the job's active time.
fn rate(summary: &Summary) -> Option<f64> {
    let finished = summary.count(Status::Done)
        + summary.count(Status::Skipped)
        + summary.count(Status::Failed);
    (summary.active_seconds > 0.0 && finished > 0).then(|| finished as f64 / summary.active_seconds)
}

fn eta_seconds(summary: &Summary) -> Option<f64> {
    let remaining = summary.count(Status::Pending) + summary.count(Status::Running);
    if remaining == 0 {
        return Some(0.0);
    }
    rate(summary).map(|rate| remaining as f64 / rate)
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The table people read.
pub(crate) fn table(job: &str, state: &str, summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Job {job} (state {state})");
    if summary.children_total() > 0 {
        let _ = writeln!(out, "  {:<8} {:>10} {:>10}", "status", "items", "children");
        for ((status, items), (_, children)) in
            summary.by_status.iter().zip(&summary.children_by_status)
        {
            let _ = writeln!(out, "  {:<8} {items:>10} {children:>10}", status.as_str());
        }
        let _ = writeln!(
            out,
            "  {:<8} {:>10} {:>10}",
            "total",
            summary.total(),
            summary.children_total()
        );
    } else {
        let _ = writeln!(out, "  {:<8} {:>10}", "status", "items");
        for (status, count) in &summary.by_status {
            let _ = writeln!(out, "  {:<8} {:>10}", status.as_str(), count);
        }
        let _ = writeln!(out, "  {:<8} {:>10}", "total", summary.total());
    }
    if summary.no_input > 0 {
        let _ = writeln!(
            out,
            "  ({} skipped for `no input`: tried again on the next run)",
            summary.no_input
        );
    }
    if !summary.source_complete {
        let _ = writeln!(
            out,
            "  (the source is not fully loaded yet: the total will grow)"
        );
    }
    let what = if summary.children_total() > 0 {
        "children"
    } else {
        "items"
    };
    let rate = rate(summary).map_or_else(|| "-".to_owned(), |r| format!("{r:.1} {what}/s"));
    let eta = eta_seconds(summary).map_or_else(|| "-".to_owned(), human_duration);
    let _ = writeln!(
        out,
        "  bytes {}  rate {rate}  ETA {eta}",
        human_bytes(summary.bytes)
    );
    if !summary.by_step.is_empty() {
        let _ = writeln!(out, "Unfinished and failed items by step:");
        let width = summary
            .by_step
            .iter()
            .map(|(step, _, _)| step.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(out, "  {:<width$} {:<8} {:>10}", "step", "status", "items");
        for (step, status, count) in &summary.by_step {
            let _ = writeln!(out, "  {step:<width$} {:<8} {count:>10}", status.as_str());
        }
    }
    out
}

/// The same, for `status --json`.
pub(crate) fn json(job: &str, state: &str, summary: &Summary) -> serde_json::Value {
    let items: serde_json::Map<String, serde_json::Value> = summary
        .by_status
        .iter()
        .map(|(status, n)| (status.as_str().to_owned(), json!(n)))
        .collect();
    let children: serde_json::Map<String, serde_json::Value> = summary
        .children_by_status
        .iter()
        .map(|(status, n)| (status.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "job": job,
        "state": state,
        "source_complete": summary.source_complete,
        "items": items,
        "total": summary.total(),
        "children": children,
        "children_total": summary.children_total(),
        "no_input": summary.no_input,
        "bytes": summary.bytes,
        "items_per_sec": rate(summary),
        "eta_seconds": eta_seconds(summary),
        "by_step": summary.by_step.iter().map(|(step, status, n)| json!({
            "step": step, "status": status.as_str(), "items": n
        })).collect::<Vec<_>>(),
    })
}

/// The sum of several shards' summaries: counts added, the active time the longest.
pub(crate) fn sum(parts: &[Summary]) -> Summary {
    let mut total = Summary {
        source_complete: !parts.is_empty(),
        ..Summary::default()
    };
    let add = |into: &mut Vec<(Status, u64)>, from: &[(Status, u64)]| {
        for (status, n) in from {
            match into.iter_mut().find(|(s, _)| s == status) {
                Some((_, count)) => *count += n,
                None => into.push((*status, *n)),
            }
        }
    };
    for part in parts {
        total.source_complete &= part.source_complete;
        add(&mut total.by_status, &part.by_status);
        add(&mut total.children_by_status, &part.children_by_status);
        for (step, status, n) in &part.by_step {
            match total
                .by_step
                .iter_mut()
                .find(|(s, st, _)| s == step && st == status)
            {
                Some((_, _, count)) => *count += n,
                None => total.by_step.push((step.clone(), *status, *n)),
            }
        }
        total.no_input += part.no_input;
        total.bytes += part.bytes;
        total.active_seconds = total.active_seconds.max(part.active_seconds);
    }
    total
        .by_status
        .sort_by_key(|(s, _)| Status::ALL.iter().position(|a| a == s));
    total
        .children_by_status
        .sort_by_key(|(s, _)| Status::ALL.iter().position(|a| a == s));
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(human_duration(5.2), "5s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7322.0), "2h02m");
    }

    #[test]
    fn table_lists_statuses_total_and_steps() {
        let summary = Summary {
            source_complete: true,
            by_status: vec![
                (Status::Pending, 1),
                (Status::Running, 0),
                (Status::Done, 7),
                (Status::Skipped, 0),
                (Status::Failed, 2),
            ],
            children_by_status: Status::ALL.iter().map(|s| (*s, 0)).collect(),
            no_input: 0,
            by_step: vec![
                ("copy".into(), Status::Failed, 2),
                ("copy".into(), Status::Pending, 1),
            ],
            bytes: 2048,
            active_seconds: 9.0,
        };
        let text = table("j", "s.db", &summary);
        assert!(text.contains("  done              7\n"), "{text}");
        assert!(text.contains("  total            10\n"), "{text}");
        assert!(
            text.contains("bytes 2.0 KiB  rate 1.0 items/s  ETA 1s"),
            "{text}"
        );
        assert!(text.contains("  copy failed            2\n"), "{text}");
    }
}
