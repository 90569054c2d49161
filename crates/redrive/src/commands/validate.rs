//! `redrive validate PLAN`.

use crate::cli::ValidateArgs;
use crate::exit::ExitStatus;
use redrive_connectors::{BuildError, Plan};
use redrive_core::engine::Pipeline;
use redrive_core::job::PlanError;

pub(crate) fn validate(args: &ValidateArgs) -> anyhow::Result<ExitStatus> {
    if args.json {
        return Ok(as_json(args));
    }
    let plan = super::load_plan(&args.plan)?;
    let pipeline = redrive_connectors::build(&plan)?;
    let fields: Vec<String> = pipeline.source.fields().into_iter().collect();
    let steps: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    crate::out!("{}: ok", args.plan.display());
    crate::out!("  job     {}", plan.name);
    crate::out!(
        "  source  {} (fields: {})",
        plan.source.kind.name(),
        fields.join(", ")
    );
    crate::out!("  key     {}", pipeline.key);
    if let (Some(spec), Some(expansion)) = (&plan.expand, &pipeline.expand) {
        let fields: Vec<String> = expansion.source.fields().into_iter().collect();
        crate::out!(
            "  expand  {} (fields: {}; key {})",
            spec.kind.name(),
            fields.join(", "),
            expansion.key
        );
    }
    crate::out!("  steps   {}", steps.join(" → "));
    crate::out!("  state   {}", plan.state);
    crate::out!(
        "  limits  items {}, retries {}",
        plan.limits.items,
        plan.limits.retries
    );
    Ok(ExitStatus::Success)
}

/// `validate --json`: the plan as checked, or where and why it is wrong.
fn as_json(args: &ValidateArgs) -> ExitStatus {
    let checked = Plan::load(&args.plan)
        .map_err(BuildError::from)
        .and_then(|plan| redrive_connectors::build(&plan).map(|pipeline| (plan, pipeline)));
    let (value, status) = match checked {
        Ok((plan, pipeline)) => (described(&args.plan, &plan, &pipeline), ExitStatus::Success),
        Err(error) => (refused(&args.plan, &error), ExitStatus::Error),
    };
    crate::out!("{value}");
    status
}

fn described(path: &std::path::Path, plan: &Plan, pipeline: &Pipeline) -> serde_json::Value {
    let fields = |source: &dyn redrive_core::source::Source| -> Vec<String> {
        source.fields().into_iter().collect()
    };
    let expand = match (&plan.expand, &pipeline.expand) {
        (Some(spec), Some(expansion)) => serde_json::json!({
            "kind": spec.kind.name(),
            "fields": fields(expansion.source.as_ref()),
            "key": expansion.key.to_string(),
        }),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "ok": true,
        "plan": path.display().to_string(),
        "job": plan.name,
        "source": {
            "kind": plan.source.kind.name(),
            "fields": fields(pipeline.source.as_ref()),
        },
        "key": pipeline.key.to_string(),
        "expand": expand,
        "steps": plan.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "state": redrive_core::secrets::redact(&plan.state),
        "limits": { "items": plan.limits.items, "retries": plan.limits.retries },
    })
}

fn refused(path: &std::path::Path, error: &BuildError) -> serde_json::Value {
    let problems: Vec<(Option<String>, String)> = match error {
        BuildError::Plan(PlanError::Invalid { table, message, .. }) => {
            vec![(Some(table.clone()), message.clone())]
        }
        BuildError::Plan(PlanError::Several { problems, .. }) => problems
            .iter()
            .map(|(table, message)| (Some(table.clone()), message.clone()))
            .collect(),
        BuildError::Plan(PlanError::Syntax { message, .. }) => vec![(None, message.clone())],
        other => vec![(None, error_chain(other))],
    };
    let masked = |message: &str| redrive_core::secrets::redact(message).into_owned();
    let errors: Vec<serde_json::Value> = problems
        .iter()
        .map(|(table, message)| serde_json::json!({ "table": table, "message": masked(message) }))
        .collect();
    // `table` and `message` are the first problem's; `errors` has them all.
    let (table, message) = problems.first().cloned().unwrap_or_default();
    serde_json::json!({
        "ok": false,
        "file": path.display().to_string(),
        "table": table,
        "message": masked(&message),
        "errors": errors,
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}
