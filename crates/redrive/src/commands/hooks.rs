//! `[[job.before]]` and `[[job.after]]`: SQL run once around a job's items (drop an index
//! before a load, recreate it after). `before` runs when a run starts with work left to do,
//! `after` when a run leaves every item ended; a rerun of a finished job runs neither. A run
//! interrupted in between runs `before` again when it resumes, so write it to be repeatable
//! (`DROP INDEX IF EXISTS …`).

use redrive_connectors::plan::Plan;
use redrive_connectors::sql::Database;
use redrive_core::item::{Fields, Status};
use redrive_core::job::Hook;
use redrive_core::state::Summary;

use crate::exit::Hinted;

/// The job's hooks around one run, the same for `run` and `run --workers`: `before` when
/// the run starts with work left, `after` when it leaves every item ended and was not
/// interrupted. A disarmed one (`--no-hooks`, a shard) runs neither.
pub(crate) struct Around<'a> {
    after: &'a [Hook],
    armed: bool,
}

impl<'a> Around<'a> {
    /// Runs the plan's `before` hooks when `enabled` and the job has work left (`before`: the
    /// state's summary now; `None` when it is being discarded, so all of it is work).
    pub(crate) async fn start(
        plan: &'a Plan,
        enabled: bool,
        before: Option<&Summary>,
        retry_failed: bool,
    ) -> anyhow::Result<Self> {
        let armed = enabled && before.is_none_or(|s| has_work(s, retry_failed));
        if armed {
            run("before", &plan.before).await?;
        }
        Ok(Self {
            after: &plan.after,
            armed,
        })
    }

    /// Runs the `after` hooks when this run left every item ended (`after`: the summary now).
    pub(crate) async fn finish(
        self,
        after: Option<&Summary>,
        interrupted: bool,
    ) -> anyhow::Result<()> {
        if self.armed && !interrupted && after.is_some_and(all_ended) {
            run("after", self.after).await?;
        }
        Ok(())
    }
}

/// Runs `hooks` in order; the first failure stops the run.
async fn run(which: &str, hooks: &[Hook]) -> anyhow::Result<()> {
    for (index, hook) in hooks.iter().enumerate() {
        let label = format!("[[job.{which}]] #{}", index + 1);
        let url = hook.url.render(&Fields::new())?;
        let db = Database::connect(&url, 1).map_err(|e| Hinted {
            message: format!("{label}: {e}"),
            hint: "fix the hook's `url`".to_owned(),
        })?;
        tracing::info!(hook = %label, database = %db.shown(), "Running a hook.");
        eprintln!("Running {label} on {}", db.shown());
        db.execute_script(&hook.sql).await.map_err(|e| Hinted {
            message: format!("{label} failed: {e}"),
            hint: format!(
                "fix the SQL or the database, then rerun; the items have {} run",
                if which == "before" { "not" } else { "all" }
            ),
        })?;
    }
    Ok(())
}

/// Has the job work left: a source not read to the end, or items not ended?
fn has_work(summary: &Summary, retry_failed: bool) -> bool {
    !summary.source_complete
        || summary.count(Status::Pending) + summary.count(Status::Running) > 0
        || summary.no_input > 0
        || (retry_failed && summary.count(Status::Failed) > 0)
}

/// Has every item ended (done, skipped for good, or failed)?
fn all_ended(summary: &Summary) -> bool {
    summary.source_complete
        && summary.count(Status::Pending) + summary.count(Status::Running) == 0
        && summary.no_input == 0
}
