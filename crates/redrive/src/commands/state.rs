//! Where a job's state is, from `--state` or the plan, opened through `redrive-state`'s front
//! door ([`StateLocation`]) with the CLI's hints on its errors.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use redrive_connectors::Plan;
use redrive_core::state::StateError;
use redrive_state::{LocationError, OpenError, OpenState, StateLocation};

use crate::cli::StateArg;
use crate::exit::Hinted;

/// `--state`, else the plan's `[job] state`.
pub(crate) fn target(plan: Option<&Plan>, arg: &StateArg) -> anyhow::Result<StateLocation> {
    let text = match (&arg.state, plan) {
        (Some(state), _) => state.display().to_string(),
        (None, Some(plan)) => plan.state.clone(),
        (None, None) => {
            anyhow::bail!("no plan and no --state: give the plan file, or the state with --state")
        }
    };
    StateLocation::parse(&text, plan.map(|p| p.name.as_str())).map_err(|error| {
        let hint = match error {
            LocationError::NeedsJob => "give the plan file too",
            _ => "use a file path, or postgres://USER@HOST:PORT/DATABASE",
        };
        anyhow::Error::new(Hinted {
            message: error.to_string(),
            hint: hint.to_owned(),
        })
    })
}

/// Opens (or creates) the state for a run, taking the run lock; `restart` discards it first
/// (after `confirm`). `lease`: how long a PostgreSQL state leases the items this run claims.
pub(crate) async fn open_for_run(
    target: &StateLocation,
    lease: std::time::Duration,
    restart: bool,
    confirm: impl FnOnce(&str) -> anyhow::Result<()>,
    plan_path: &Path,
) -> anyhow::Result<OpenState> {
    target
        .open_for_run(lease, restart, confirm)
        .await
        .map_err(|error| match error {
            OpenError::State(e) => super::state_error(e, plan_path),
            OpenError::Declined(e) => e,
        })
}

/// Opens an existing state for a hand edit, alone (refused while a run holds it).
pub(crate) async fn open_alone(
    target: &StateLocation,
    plan_path: &Path,
) -> anyhow::Result<OpenState> {
    target.open_alone().await.map_err(|error| match error {
        StateError::Missing { .. } => anyhow::Error::new(Hinted {
            message: error.to_string(),
            hint: format!("run `redrive run {}` first", plan_path.display()),
        }),
        StateError::Locked { .. } => anyhow::Error::new(Hinted {
            message: error.to_string(),
            hint: "a run is using this state: change items by hand once it has stopped (Ctrl-C drains it)".to_owned(),
        }),
        other => super::state_error(other, plan_path),
    })
}

/// Opens an existing state for reading.
pub(crate) async fn open_existing(
    target: &StateLocation,
    plan_path: &Path,
) -> anyhow::Result<OpenState> {
    target.open_existing().await.map_err(|error| match error {
        StateError::Missing { .. } => anyhow::Error::new(Hinted {
            message: error.to_string(),
            hint: format!("run `redrive run {}` first", plan_path.display()),
        }),
        other => super::state_error(other, plan_path),
    })
}

/// Asks before `--restart` discards `what` (unless `--yes`); without a terminal to ask, refuses.
pub(crate) fn confirm_restart(what: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Hinted {
            message: format!("--restart would discard the state `{what}`"),
            hint: "add --yes to confirm".to_owned(),
        }
        .into());
    }
    eprint!("Discard the state `{what}` and start over? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not restarted: the state is kept")
    }
}
