//! `redrive validate PLAN`.

use crate::cli::PlanArg;
use crate::exit::ExitStatus;

pub(crate) fn validate(args: &PlanArg) -> anyhow::Result<ExitStatus> {
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
