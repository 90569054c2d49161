//! `redrive status` and `redrive failed`: read the state, change nothing.

use std::path::Path;

use anyhow::Context as _;
use redrive_connectors::Plan;
use redrive_core::item::{Status, StoredItem};
use redrive_core::secrets::redact;

use crate::cli::{CsvFormat, FailedArgs, StatusArgs};
use crate::exit::ExitStatus;
use crate::summary;

const PAGE: usize = 1_000;
/// Work items listed by `status`.
const PARENTS_SHOWN: usize = 20;

pub(crate) async fn status(args: &StatusArgs) -> anyhow::Result<ExitStatus> {
    let Some(seconds) = args.watch else {
        return status_once(args).await;
    };
    // Like `watch redrive status`: on a terminal the screen is redrawn in place; into a pipe
    // or file each refresh follows the last (JSON lines with --json). Ctrl-C ends it.
    let redraw = !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if redraw {
            let now = jiff::Zoned::now().strftime("%H:%M:%S");
            crate::out_part!("\x1b[H\x1b[2J");
            crate::out!(
                "Every {seconds}s: redrive status {} — {now} (Ctrl-C to stop)\n",
                args.plan.display()
            );
        }
        let status = status_once(args).await?;
        if status != ExitStatus::Success {
            return Ok(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(seconds)) => {}
            _ = &mut interrupted => return Ok(ExitStatus::Success),
        }
    }
}

async fn status_once(args: &StatusArgs) -> anyhow::Result<ExitStatus> {
    if let Some(status) = shard_status(args).await? {
        return Ok(status);
    }
    let (plan, opened) = super::open_existing(&args.plan, &args.state).await?;
    let store = &opened.store;
    let summary = store
        .summary()
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;
    let job = plan.as_ref().map_or("-", |p| p.name.as_str());
    let parents = if summary.children_total() > 0 {
        store
            .parents(&[Status::Running, Status::Failed], PARENTS_SHOWN)
            .await
            .map_err(|e| super::state_error(e, &args.plan))?
    } else {
        Vec::new()
    };
    let workers = store
        .workers()
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;
    if args.json {
        let mut value = summary::json(job, opened.location.as_str(), &summary);
        if !workers.is_empty() {
            value["workers"] = serde_json::to_value(&workers)?;
        }
        value["parents"] = serde_json::Value::Array(
            parents
                .iter()
                .map(|(item, counts)| {
                    serde_json::json!({
                        "key": redact(&item.key), "status": item.status.as_str(),
                        "children_total": counts.total, "children_done": counts.done,
                        "children_skipped": counts.skipped, "children_failed": counts.failed,
                    })
                })
                .collect(),
        );
        crate::out!("{value}");
    } else {
        crate::out_part!(
            "{}",
            summary::table(job, opened.location.as_str(), &summary)
        );
        if !parents.is_empty() {
            crate::out!(
                "Items in progress or failed, with their children (first {PARENTS_SHOWN}):"
            );
            crate::out!(
                "  {:<8} {:>7} {:>7} {:>7}  key",
                "status",
                "total",
                "done",
                "failed"
            );
            for (item, counts) in &parents {
                crate::out!(
                    "  {:<8} {:>7} {:>7} {:>7}  {}",
                    item.status.as_str(),
                    counts.total,
                    counts.done + counts.skipped,
                    counts.failed,
                    redact(&item.key)
                );
            }
        }
        if !workers.is_empty() {
            crate::out_part!("{}", workers_table(&workers));
        }
    }
    Ok(ExitStatus::Success)
}

/// The processes sharing a job (a PostgreSQL state), one line each.
fn workers_table(workers: &[redrive_core::state::WorkerInfo]) -> String {
    let mut text = format!(
        "Workers ({}):\n  {:<24} {:>8}  {:<20} {:>9} {:>9} {:>9} {:>8}\n",
        workers.len(),
        "host",
        "pid",
        "started",
        "heartbeat",
        "in flight",
        "finished",
        "items/s"
    );
    for w in workers {
        text.push_str(&format!(
            "  {:<24} {:>8}  {:<20} {:>8.0}s {:>9} {:>9} {:>8.1}\n",
            w.host, w.pid, w.started_at, w.heartbeat_age_s, w.in_flight, w.finished, w.rate
        ));
    }
    text
}

/// `status` of a job run with `--workers` (or `--shard`): its shards' states beside the
/// plan's state file, summed, with one line per shard. `None` when there are none.
async fn shard_status(args: &StatusArgs) -> anyhow::Result<Option<ExitStatus>> {
    let plan = super::plan_unless_state_only(&args.plan, &args.state)?;
    let target = super::state::target(plan.as_ref(), &args.state)?;
    let redrive_state::StateLocation::File(path) = &target else {
        return Ok(None);
    };
    if path.exists() {
        return Ok(None);
    }
    let shards = target.shard_files();
    // Several shardings may lie side by side (`--workers 2`, later `--workers 4`): the most
    // recently written one is the job's.
    let newest = shards
        .iter()
        .max_by_key(|(_, p)| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .map(|(shard, _)| shard.count);
    let Some(count) = newest else {
        return Ok(None);
    };
    let mut parts = Vec::new();
    let mut rows = Vec::new();
    for (shard, file) in shards.iter().filter(|(s, _)| s.count == count) {
        let opened = super::state::open_existing(
            &redrive_state::StateLocation::File(file.clone()),
            &args.plan,
        )
        .await?;
        let part = opened
            .store
            .summary()
            .await
            .map_err(|e| super::state_error(e, &args.plan))?;
        rows.push((*shard, opened.location.clone(), part.clone()));
        parts.push(part);
    }
    let total = summary::sum(&parts);
    let job = plan.as_ref().map_or("-", |p| p.name.as_str());
    let location = format!("{count} shards, {}.shard-*", path.display());
    if args.json {
        let mut value = summary::json(job, &location, &total);
        value["shards"] = serde_json::Value::Array(
            rows.iter()
                .map(|(shard, state, part)| {
                    serde_json::json!({
                        "shard": shard.to_string(), "state": state,
                        "source_complete": part.source_complete, "total": part.total(),
                        "done": part.count(Status::Done), "failed": part.count(Status::Failed),
                        "skipped": part.count(Status::Skipped), "pending": part.count(Status::Pending),
                        "running": part.count(Status::Running),
                    })
                })
                .collect(),
        );
        crate::out!("{value}");
    } else {
        crate::out_part!("{}", summary::table(job, &location, &total));
        crate::out!("Shards:");
        crate::out!(
            "  {:<6} {:>9} {:>9} {:>9} {:>9} {:>9}  state",
            "shard",
            "total",
            "done",
            "failed",
            "skipped",
            "pending"
        );
        for (shard, state, part) in &rows {
            crate::out!(
                "  {:<6} {:>9} {:>9} {:>9} {:>9} {:>9}  {state}{}",
                shard.to_string(),
                part.total(),
                part.count(Status::Done),
                part.count(Status::Failed),
                part.count(Status::Skipped),
                part.count(Status::Pending) + part.count(Status::Running),
                if part.source_complete {
                    ""
                } else {
                    " (loading)"
                }
            );
        }
    }
    Ok(Some(ExitStatus::Success))
}

pub(crate) fn step_name(plan: Option<&Plan>, item: &StoredItem) -> String {
    plan.and_then(|p| p.steps.get(item.step))
        .map_or_else(|| format!("#{}", item.step + 1), |s| s.name.clone())
}

pub(crate) async fn failed(args: &FailedArgs) -> anyhow::Result<ExitStatus> {
    let (plan, opened) = super::open_existing(&args.plan, &args.state).await?;
    let store = &opened.store;
    let mut csv_out: Option<(csv::Writer<std::fs::File>, Vec<String>)> = None;
    let mut batch_out: Option<csv::Writer<std::fs::File>> = None;
    let mut cursor = 0;
    let mut count = 0u64;
    loop {
        let page = store
            .items_with_status(Status::Failed, cursor, PAGE)
            .await
            .map_err(|e| super::state_error(e, &args.plan))?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for item in &page {
            count += 1;
            match &args.csv {
                Some(path) if args.csv_format == CsvFormat::S3Batch => {
                    write_s3_batch_row(&mut batch_out, path, item)?;
                }
                Some(path) => write_csv_row(&mut csv_out, path, item)?,
                None if args.json => {
                    let key = match &item.parent_key {
                        Some(parent) => format!("{parent}/{}", item.key),
                        None => item.key.clone(),
                    };
                    let line = serde_json::json!({
                        "key": key,
                        "step": step_name(plan.as_ref(), item),
                        "attempts": item.attempts,
                        "error": item.error.as_deref().unwrap_or(""),
                        "fields": item.fields,
                    });
                    crate::out!("{}", redact(&line.to_string()));
                }
                None => {
                    if count == 1 {
                        crate::out!("key\tstep\tattempts\terror");
                    }
                    crate::out!(
                        "{}\t{}\t{}\t{}",
                        redact(&match &item.parent_key {
                            Some(parent) => format!("{parent}/{}", item.key),
                            None => item.key.clone(),
                        }),
                        step_name(plan.as_ref(), item),
                        item.attempts,
                        redact(item.error.as_deref().unwrap_or("")).replace(['\n', '\t'], " ")
                    );
                }
            }
        }
    }
    if let Some((mut writer, _)) = csv_out {
        writer.flush().context("cannot write the CSV file")?;
    }
    if let Some(mut writer) = batch_out {
        writer.flush().context("cannot write the CSV file")?;
    }
    match (&args.csv, count) {
        (_, 0) => eprintln!("No failed items."),
        (Some(path), n) if args.csv_format == CsvFormat::S3Batch => eprintln!(
            "Wrote {} to {} as an S3 Batch Operations completion report (no header: Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage)",
            crate::summary::items(n).replacen(" item", " failed item", 1),
            path.display()
        ),
        (Some(path), n) => eprintln!(
            "Wrote {} to {}; use it as a source: [source] csv = \"{}\"",
            crate::summary::items(n).replacen(" item", " failed item", 1),
            path.display(),
            path.display()
        ),
        (None, n) => eprintln!("{} failed.", crate::summary::items(n)),
    }
    Ok(ExitStatus::Success)
}

fn write_csv_row(
    out: &mut Option<(csv::Writer<std::fs::File>, Vec<String>)>,
    path: &Path,
    item: &StoredItem,
) -> anyhow::Result<()> {
    if out.is_none() {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create `{}`", path.display()))?;
        let mut writer = csv::Writer::from_writer(file);
        let header: Vec<String> = item.fields.keys().cloned().collect();
        writer
            .write_record(&header)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        *out = Some((writer, header));
    }
    if let Some((writer, header)) = out {
        let row: Vec<&str> = header
            .iter()
            .map(|name| item.fields.get(name).map_or("", String::as_str))
            .collect();
        writer
            .write_record(&row)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    Ok(())
}

/// One row of an S3 Batch Operations completion report for a failed object (the report has no
/// header): `Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage`.
fn write_s3_batch_row(
    out: &mut Option<csv::Writer<std::fs::File>>,
    path: &Path,
    item: &StoredItem,
) -> anyhow::Result<()> {
    let Some((bucket, key)) = s3_object(&item.fields) else {
        return Err(crate::exit::Hinted {
            message: format!(
                "item `{}` is not an S3 object: it has no `url` field (s3://BUCKET/KEY) and no `bucket` and `key` fields",
                redact(&item.key)
            ),
            hint: "--csv-format s3-batch reports S3 objects (a `list` of s3://…, an S3 inventory); use --csv FILE for other items".to_owned(),
        }
        .into());
    };
    if out.is_none() {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create `{}`", path.display()))?;
        *out = Some(
            csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(file),
        );
    }
    let error = redact(item.error.as_deref().unwrap_or("")).replace(['\n', '\r'], " ");
    let row = [
        bucket.as_str(),
        key.as_str(),
        item.fields.get("version_id").map_or("", String::as_str),
        "failed",
        "PermanentFailure",
        http_status(&error).unwrap_or(""),
        error.as_str(),
    ];
    if let Some(writer) = out {
        writer
            .write_record(row)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    Ok(())
}

/// The bucket and key of an item that is an S3 object.
fn s3_object(fields: &redrive_core::item::Fields) -> Option<(String, String)> {
    if let Some(rest) = fields.get("url").and_then(|url| url.strip_prefix("s3://"))
        && let Some((bucket, key)) = rest.split_once('/')
    {
        return Some((bucket.to_owned(), key.to_owned()));
    }
    Some((fields.get("bucket")?.clone(), fields.get("key")?.clone()))
}

/// The HTTP status an error text names (`HTTP 503`, `status 403`, `status code: 404`).
fn http_status(error: &str) -> Option<&str> {
    for marker in [
        "HTTP ",
        "status code: ",
        "status code ",
        "status: ",
        "status ",
    ] {
        let mut rest = error;
        while let Some(at) = rest.find(marker) {
            let after = &rest[at + marker.len()..];
            let digits = after
                .get(..3)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
            if let Some(code) = digits
                && after[3..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_digit())
                && (100..600).contains(&code.parse::<u16>().unwrap_or(0))
            {
                return Some(code);
            }
            rest = after;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_status_is_found_in_an_error_text() {
        assert_eq!(http_status("GET failed: HTTP 503 Slow Down"), Some("503"));
        assert_eq!(
            http_status("Unexpected (permanent) at read, context: { status: 403 }"),
            Some("403")
        );
        assert_eq!(http_status("status code: 404, body"), Some("404"));
        assert_eq!(http_status("HTTP 1.1 oddity, then HTTP 500"), Some("500"));
        assert_eq!(http_status("exited with code 3"), None);
        assert_eq!(http_status("status 12345"), None);
    }

    #[test]
    fn an_s3_object_is_its_url_or_its_bucket_and_key() {
        let mut fields = redrive_core::item::Fields::new();
        fields.insert("url".into(), "s3://b/a/k.txt".into());
        assert_eq!(s3_object(&fields), Some(("b".into(), "a/k.txt".into())));
        let mut fields = redrive_core::item::Fields::new();
        fields.insert("bucket".into(), "b".into());
        fields.insert("key".into(), "k".into());
        assert_eq!(s3_object(&fields), Some(("b".into(), "k".into())));
        assert_eq!(s3_object(&redrive_core::item::Fields::new()), None);
    }
}
