//! `redrive reset` and `redrive skip`: change items' status by hand.

use redrive_core::item::Status;
use redrive_core::state::Requeue;

use crate::cli::{ResetArgs, SkipArgs};
use crate::exit::{ExitStatus, Hinted};

pub(crate) async fn reset(args: &ResetArgs) -> anyhow::Result<ExitStatus> {
    let (_, opened) = super::open_alone(&args.plan, &args.state).await?;
    let store = &opened.store;
    let which = match &args.status {
        Some(status) => {
            let status: Status = status.parse().map_err(|e| Hinted {
                message: format!("{e}"),
                hint: "e.g. `redrive reset plan.toml --status failed`".to_owned(),
            })?;
            Requeue::Status(status)
        }
        None => Requeue::Keys(args.keys.clone()),
    };
    let asked = args.keys.len();
    let changed = store
        .requeue(which)
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;
    crate::out!(
        "Reset {} to pending; the next run starts {} from {} first step.",
        crate::summary::items(changed),
        if changed == 1 { "it" } else { "them" },
        if changed == 1 { "its" } else { "their" }
    );
    if args.status.is_none() && (changed as usize) < asked {
        eprintln!(
            "warning: {} of the {asked} keys are not in the state",
            asked - changed as usize
        );
    }
    Ok(ExitStatus::Success)
}

pub(crate) async fn skip(args: &SkipArgs) -> anyhow::Result<ExitStatus> {
    let (_, opened) = super::open_alone(&args.plan, &args.state).await?;
    let store = &opened.store;
    let changed = store
        .skip(args.keys.clone(), args.reason.clone())
        .await
        .map_err(|e| super::state_error(e, &args.plan))?;
    crate::out!("Marked {} skipped.", crate::summary::items(changed));
    if (changed as usize) < args.keys.len() {
        eprintln!(
            "warning: {} of the {} keys are not in the state",
            args.keys.len() - changed as usize,
            args.keys.len()
        );
    }
    Ok(ExitStatus::Success)
}
