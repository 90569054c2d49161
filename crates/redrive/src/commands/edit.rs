//! `redrive reset` and `redrive skip`: change items' status by hand.

use std::collections::HashSet;

use redrive_core::item::Status;
use redrive_core::state::{Requeue, StateStore};

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
        warn_missing(store.as_ref(), &args.keys).await?;
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
        warn_missing(store.as_ref(), &args.keys).await?;
    }
    Ok(ExitStatus::Success)
}

/// Keys named at most, of those not in the state.
const NAMED: usize = 5;

/// Says which of `keys` are not items of the state, and what its keys look like: a key given
/// as a file's name where the state keys by its path (or the other way round) matched nothing,
/// and the warning said only how many.
async fn warn_missing(store: &dyn StateStore, keys: &[String]) -> anyhow::Result<()> {
    let known: HashSet<String> = store
        .statuses_of(keys.to_vec())
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let missing: Vec<&String> = keys.iter().filter(|key| !known.contains(*key)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut named: Vec<String> = missing
        .iter()
        .take(NAMED)
        .map(|key| format!("`{key}`"))
        .collect();
    if missing.len() > NAMED {
        named.push(format!("and {} more", missing.len() - NAMED));
    }
    let example = match store.last_item().await? {
        Some(item) => format!(" (its keys look like `{}`)", item.key),
        None => " (it has no items yet)".to_owned(),
    };
    let warning = format!(
        "warning: {} of the {} keys are not in the state, nothing was done for them: {}{example}",
        missing.len(),
        keys.len(),
        named.join(", ")
    );
    // Keys can be URLs, and a URL can carry a token.
    eprintln!("{}", redrive_core::secrets::redact(&warning));
    Ok(())
}
