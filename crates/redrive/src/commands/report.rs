//! `redrive report`: reads the state (changes nothing) and writes the job's HTML report. The
//! totals and clocks are aggregated by the store; failed and skipped items are read a page at
//! a time and grouped by reason in bounded memory, so a 10M-item state fits as 1,000 do.

use anyhow::Context as _;
use redrive_core::item::Status;
use redrive_core::secrets::redact;

use crate::cli::ReportArgs;
use crate::exit::ExitStatus;
use crate::report::{Reasons, Report};

const PAGE: usize = 1_000;
/// Slices of the job's span in the throughput chart.
const BUCKETS: u32 = 60;
/// Items in the slowest table.
const SLOWEST: usize = 10;

pub(crate) async fn report(args: &ReportArgs) -> anyhow::Result<ExitStatus> {
    let (plan, opened) = super::open_existing(&args.plan, &args.state).await?;
    let store = &opened.store;
    let state_error = |e| super::state_error(e, &args.plan);
    let summary = store.summary().await.map_err(state_error)?;
    let activity = store
        .activity(BUCKETS, SLOWEST)
        .await
        .map_err(state_error)?;
    let mut grouped = [Reasons::default(), Reasons::default()];
    for (status, reasons) in [Status::Failed, Status::Skipped]
        .into_iter()
        .zip(&mut grouped)
    {
        let mut cursor = 0;
        loop {
            let page = store
                .items_with_status(status, cursor, PAGE)
                .await
                .map_err(state_error)?;
            let Some(last) = page.last() else { break };
            cursor = last.id;
            for item in &page {
                let key = match &item.parent_key {
                    Some(parent) => format!("{parent}/{}", item.key),
                    None => item.key.clone(),
                };
                let step = super::inspect::step_name(plan.as_ref(), item);
                reasons.add(
                    &step,
                    &redact(item.error.as_deref().unwrap_or("")),
                    &redact(&key),
                    &[&key, &item.key],
                );
            }
        }
    }
    let [failures, skips] = grouped;
    let mut activity = activity;
    for item in &mut activity.slowest {
        item.key = redact(&item.key).into_owned();
    }
    let report = Report {
        job: plan
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.name.clone()),
        state: redact(opened.location.as_str()).into_owned(),
        generated_at: jiff::Zoned::now()
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        summary,
        activity,
        failures,
        skips,
    };
    let page = crate::report::html(&report);
    if args.output.as_os_str() == "-" {
        crate::out_part!("{page}");
    } else {
        std::fs::write(&args.output, page)
            .with_context(|| format!("cannot write the report to {}", args.output.display()))?;
        eprintln!(
            "Wrote {}: open it in a browser (it needs no network).",
            args.output.display()
        );
    }
    Ok(ExitStatus::Success)
}
