//! One module per subcommand, and what they share: finding the plan and its state.

pub(crate) mod cp;
pub(crate) mod diff;
pub(crate) mod edit;
pub(crate) mod hooks;
pub(crate) mod inspect;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod signals;
pub(crate) mod state;
pub(crate) mod validate;
pub(crate) mod workers;

use std::path::Path;

use redrive_connectors::Plan;
use redrive_core::state::StateError;

use crate::cli::StateArg;
use crate::exit::Hinted;

/// Reads and checks the plan file.
pub(crate) fn load_plan(path: &Path) -> anyhow::Result<Plan> {
    Plan::load(path).map_err(|error| match error {
        redrive_core::job::PlanError::Read { .. } => anyhow::Error::new(Hinted {
            message: error.to_string(),
            hint: "give the path of a plan file (TOML); see README.md for an example".to_owned(),
        }),
        other => anyhow::Error::new(other),
    })
}

/// The plan (when its file exists or no `--state` is given) and the existing state.
pub(crate) async fn open_existing(
    plan_path: &Path,
    arg: &StateArg,
) -> anyhow::Result<(Option<Plan>, redrive_state::OpenState)> {
    let plan = plan_unless_state_only(plan_path, arg)?;
    let target = state::target(plan.as_ref(), arg)?;
    let opened = state::open_existing(&target, plan_path).await?;
    Ok((plan, opened))
}

/// The plan and the existing state, opened alone for a hand edit (`reset`, `skip`).
pub(crate) async fn open_alone(
    plan_path: &Path,
    arg: &StateArg,
) -> anyhow::Result<(Option<Plan>, redrive_state::OpenState)> {
    let plan = plan_unless_state_only(plan_path, arg)?;
    let target = state::target(plan.as_ref(), arg)?;
    let opened = state::open_alone(&target, plan_path).await?;
    Ok((plan, opened))
}

/// The plan, unless `--state` is given and the plan file does not exist (reading a state
/// without its plan).
pub(crate) fn plan_unless_state_only(
    plan_path: &Path,
    arg: &StateArg,
) -> anyhow::Result<Option<Plan>> {
    if arg.state.is_some() && !plan_path.exists() {
        Ok(None)
    } else {
        load_plan(plan_path).map(Some)
    }
}

/// A state error, with the hint that fixes it.
pub(crate) fn state_error(error: StateError, plan_path: &Path) -> anyhow::Error {
    let hint = match &error {
        StateError::PlanChanged { .. } | StateError::OtherJob { .. } => Some(format!(
            "the plan's source or steps changed since this state was written; run `redrive run {} --restart` to discard the old state, or set [job] state to a new file",
            plan_path.display()
        )),
        StateError::Locked { .. } => Some(
            "wait for the other run to finish (`redrive status` shows its progress), or give this run its own state with --state".to_owned(),
        ),
        StateError::Backend { location, .. } if location.starts_with("postgres") => Some(
            "check that the PostgreSQL server is running and reachable at that address, that the database exists, and that the user may create schemas in it".to_owned(),
        ),
        StateError::Backend { .. } => Some(
            "check that the state file's disk is writable and not full, and that no other redrive run uses it".to_owned(),
        ),
        _ => None,
    };
    match hint {
        Some(hint) => Hinted {
            message: error.to_string(),
            hint,
        }
        .into(),
        None => anyhow::Error::new(error),
    }
}
