//! `redrive diff SRC DST --missing FILE [--present FILE] [--map TEMPLATE]`.

use std::sync::Arc;

use anyhow::Context as _;
use redrive_connectors::storage::{Env, Stores};

use crate::cli::DiffArgs;
use crate::exit::ExitStatus;

pub(crate) async fn diff(args: &DiffArgs) -> anyhow::Result<ExitStatus> {
    let here = std::env::current_dir().context("cannot read the current directory")?;
    let stores = Arc::new(Stores::new(&here, Vec::new(), Env::from_process()));
    let report = redrive_connectors::diff::diff(
        &stores,
        &here,
        &args.src,
        &args.dst,
        Some(&args.map),
        &args.missing,
        args.present.as_deref(),
    )
    .await?;
    eprintln!(
        "{} keys: {} with a counterpart, {} missing (written to {}){}",
        report.total,
        report.present,
        report.missing,
        args.missing.display(),
        if report.merged {
            ""
        } else {
            "; compared through an on-disk index (a side was not in key order)"
        }
    );
    Ok(ExitStatus::Success)
}
